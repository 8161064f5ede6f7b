//! encode-corpus: a streaming pipeline from corpus files to u32 token shards.
//!
//! reader thread (files -> batches of records, hashing inputs) -> parallel parse + encode of
//! each batch (order kept) -> one writer (shards, document index, progress, manifest).
//! Shards are written under temporary names and renamed when complete; `progress.json`
//! records, after every completed shard, where in the input the next shard starts, so a run
//! killed at any point resumes to output byte-identical to an uninterrupted run.

use crate::corpus::{self, hex, InputFile, InputKind, Item, Record, Reject};
use crate::error::{codes, Error, Result};
use crate::offload::Offload;
use crate::parallel;
use crate::tokenizer::{Normalizer, Tokenizer};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub const SHARDS_SCHEMA: &str = "aprx.shards/1";
const PROGRESS: &str = "progress.json";
/// The inputs done and the lines skipped so far, one JSON line each (`LogEntry`), appended at
/// each progress record, which says how many of its bytes it covers: a record stays small
/// however many input files the corpus has (it listed them all, rewritten at every shard; see
/// ARCHITECTURE for what that cost).
const PROGRESS_LOG: &str = "progress.log";
const MANIFEST: &str = "manifest.json";
/// Text per parallel batch; bounds memory together with the channel depth.
const BATCH_BYTES: usize = 2 << 20;
const BATCH_RECORDS: usize = 2048;
/// Plain JSONL files (mapped) a batch ends after, at most (see the reader).
const BATCH_FILES: usize = 64;
/// The first batch's text, and the least of a batch near the end of the input.
const FIRST_BATCH_BYTES: usize = 128 << 10;
const CHANNEL_DEPTH: usize = 4;
/// The encoder's result for a run of a batch's items: the documents' ids one after another in
/// one buffer (so a document costs no allocation of its own, and the writer frees one buffer
/// per run, not one per document), and for each item where its ids end and their largest id
/// (None for an item that is not a record, the reason for a record that is not a document).
/// The largest id is taken by the worker, while the ids are in its cache: in the writer it was
/// a second pass over ids last held by another core.
struct Part {
    ids: Vec<u32>,
    ends: Vec<Option<std::result::Result<(usize, u32), Reject>>>,
}
/// A batch's runs, in order.
type Encoded = Vec<Part>;
/// Runs per thread a batch is cut into (enough for the threads to even out).
const RUNS_PER_THREAD: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EosPolicy {
    /// EOS between consecutive documents (not after the last).
    Between,
    /// EOS after every document.
    After,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    Fail,
    Skip,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub tokenizer_path: String,
    pub shard_tokens: u64,
    pub content_field: String,
    pub eos_policy: EosPolicy,
    pub eos_id: Option<u32>,
    /// None: the tokenizer's own normalizer.
    pub normalization: Option<Normalizer>,
    pub num_workers: Option<usize>,
    pub resume: bool,
    pub overwrite: bool,
    pub on_error: OnError,
    pub progress: bool,
    pub text_extensions: Vec<String>,
    /// Encode only this task's contiguous slice of the input files (scale-out; see
    /// `corpus::task_slice`). With EOS `between`, every task but the last ends its last
    /// document with EOS, so the tasks' outputs in order form the single-machine token stream.
    pub num_tasks: u32,
    pub task_index: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ShardInfo {
    file: String,
    index: String,
    tokens: u64,
    documents: u64,
    /// The `.bin`'s digest.
    #[serde(flatten)]
    digest: FileDigest,
}

/// A file's digest, as hex: its BLAKE3 (`digest`), or the SHA-256 that an aprx before 0.2
/// took, which a run resuming one of its runs keeps as it was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
struct FileDigest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    blake3: String,
    #[serde(
        default,
        deserialize_with = "legacy_digest",
        skip_serializing_if = "Option::is_none"
    )]
    sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Skipped {
    file: String,
    line: u64,
    code: String,
    reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
struct InputDone {
    path: String,
    size: u64,
    #[serde(flatten)]
    digest: FileDigest,
    records: u64,
    documents: u64,
    empty_documents: u64,
    skipped: u64,
    blank_lines: u64,
}

/// A `sha256` of a record written before 0.2, where the input being read when the run
/// stopped has an empty one (`current`, not yet hashed): that is no digest, and the resumed
/// run hashes the file again.
fn legacy_digest<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// Everything needed to continue a run after its last completed shard. The inputs done and
/// the lines skipped are the run's in memory; a progress record has them in `PROGRESS_LOG`
/// instead (a record written before the log existed has them inline, and is read as such).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    /// The run's settings; in a record, with the input list as its count and digest
    /// (`RunConfig::for_record`).
    config: Value,
    shards: Vec<ShardInfo>,
    /// Input file and records consumed in it at the start of the next shard.
    next_file: usize,
    next_record: u64,
    #[serde(default, skip_serializing)]
    inputs: Vec<InputDone>,
    /// Counts so far for the input file at `next_file`.
    current: InputDone,
    #[serde(default, skip_serializing)]
    skipped: Vec<Skipped>,
    documents: u64,
    tokens: u64,
    max_token_id: Option<u32>,
    elapsed_s: f64,
    /// Bytes of `PROGRESS_LOG` this record covers.
    #[serde(default)]
    log_bytes: u64,
}

/// A line of `PROGRESS_LOG`: `{"input": {...}}` or `{"skipped": {...}}`.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum LogLine<'a> {
    Input(&'a InputDone),
    Skipped(&'a Skipped),
}

/// `LogLine`, read back.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum LogEntry {
    Input(InputDone),
    Skipped(Skipped),
}

/// A run's settings, as the manifest's `config` holds them (`I`: the input list) and, with the
/// input list as its count and SHA-256, as progress records do (`Config::for_record`), so a
/// record's size does not grow with the number of files. Serialized from the run's own input
/// list: as JSON values, building it cost as much as walking the tree of files.
#[derive(Serialize)]
struct Config<'a, I> {
    tokenizer_sha256: &'a str,
    inputs: I,
    #[serde(flatten)]
    settings: Settings<'a>,
}

/// The settings besides the tokenizer and the inputs (serialized after them).
#[derive(Serialize, Clone, Copy)]
struct Settings<'a> {
    shard_tokens: u64,
    content_field: &'a str,
    eos_policy: EosPolicy,
    eos_id: Option<u32>,
    normalization: &'static str,
    on_error: OnError,
    num_tasks: u32,
    task_index: u32,
}

/// An input file as the config lists it, with how it is read (`kind`: a file read another
/// way, e.g. a `.json` named as an input, text before it was JSON Lines, is another run's
/// input, so a resume or a finished run's output is refused rather than mixed).
#[derive(Serialize)]
struct ConfigInput<'a> {
    #[serde(serialize_with = "display_path")]
    path: &'a Path,
    size: u64,
    kind: &'static str,
}

fn display_path<S: serde::Serializer>(p: &&Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

type RunConfig<'a> = Config<'a, Vec<ConfigInput<'a>>>;

impl<'a> RunConfig<'a> {
    fn new(
        opts: &'a Options,
        tok: &'a Tokenizer,
        files: &'a [InputFile],
        eos: Option<u32>,
    ) -> Self {
        Config {
            tokenizer_sha256: &tok.info().fingerprint,
            inputs: files
                .iter()
                .map(|f| ConfigInput {
                    path: &f.path,
                    size: f.size,
                    kind: f.kind.name(),
                })
                .collect(),
            settings: Settings {
                shard_tokens: opts.shard_tokens,
                content_field: &opts.content_field,
                eos_policy: opts.eos_policy,
                eos_id: eos,
                normalization: norm_name(opts.normalization.unwrap_or(tok.normalizer())),
                on_error: opts.on_error,
                num_tasks: opts.num_tasks,
                task_index: opts.task_index,
            },
        }
    }

    fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("serialisable")
    }

    /// As a progress record holds it. The input list's digest stays SHA-256 (it is compared,
    /// not verified against a file): a record written before 0.2 must still match it.
    fn for_record(&self) -> Value {
        let bytes = serde_json::to_vec(&self.inputs).expect("serialisable");
        let digest = <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let record = Config {
            tokenizer_sha256: self.tokenizer_sha256,
            inputs: json!({"count": self.inputs.len(), "sha256": hex(&digest)}),
            settings: self.settings,
        };
        serde_json::to_value(record).expect("serialisable")
    }
}

/// Appends `lines` to `PROGRESS_LOG` at byte `at` (anything after it, from a record never
/// completed, is dropped), synced; the log's new length. With no lines, nothing is touched:
/// whatever lies past `at` is never read, and the next append cuts it off.
fn append_log(dir: &Path, at: u64, lines: &[u8]) -> Result<u64> {
    if lines.is_empty() {
        return Ok(at);
    }
    let path = dir.join(PROGRESS_LOG);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, "open", &e))?;
    f.set_len(at)
        .map_err(|e| Error::io(&path, "truncate", &e))?;
    f.seek(std::io::SeekFrom::Start(at))
        .map_err(|e| Error::io(&path, "seek", &e))?;
    f.write_all(lines)
        .map_err(|e| Error::io(&path, "write", &e))?;
    f.sync_data().map_err(|e| Error::io(&path, "sync", &e))?;
    Ok(at + lines.len() as u64)
}

/// The inputs done and lines skipped in the first `bytes` of `PROGRESS_LOG`.
fn read_log(dir: &Path, bytes: u64) -> Result<(Vec<InputDone>, Vec<Skipped>)> {
    let path = dir.join(PROGRESS_LOG);
    let damaged = |why: String| {
        Error::corpus(
            codes::RESUME_MISMATCH,
            format!("{}: {why}; use --overwrite", path.display()),
        )
    };
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && bytes == 0 => Vec::new(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(damaged(format!(
                "is missing; its progress record covers {bytes} bytes"
            )))
        }
        Err(e) => return Err(Error::io(&path, "read", &e)),
    };
    if (data.len() as u64) < bytes {
        return Err(damaged(format!(
            "holds {} bytes, its progress record covers {bytes}",
            data.len()
        )));
    }
    let (mut inputs, mut skipped) = (Vec::new(), Vec::new());
    for (i, line) in data[..bytes as usize].split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<LogEntry>(line) {
            Ok(LogEntry::Input(d)) => inputs.push(d),
            Ok(LogEntry::Skipped(k)) => skipped.push(k),
            Err(e) => return Err(damaged(format!("line {}: {e}", i + 1))),
        }
    }
    Ok((inputs, skipped))
}

/// The shard being written.
struct OpenShard {
    n: usize,
    /// The `.bin` file, written and hashed on a thread of its own.
    bin: Offload<ShardFile>,
    tokens: u64,
    ends: Vec<u64>,
}

/// A shard's `.bin` file as `Offload` writes it: handed to the kernel for writing back every
/// `WRITEBACK_BYTES`.
struct ShardFile {
    file: File,
    written: u64,
    /// Bytes already handed to the kernel for writing back (`start_writeback`).
    flushing: u64,
}

impl Write for ShardFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.flushing >= WRITEBACK_BYTES {
            start_writeback(&self.file, self.flushing, self.written);
            self.flushing = self.written;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Bytes written between two requests to start writing a shard back to disk.
const WRITEBACK_BYTES: u64 = 2 << 20;

/// Asks the kernel to start writing `file[from..to]` to disk now, without waiting, so the
/// `sync_all` that closes the shard finds little left to do (Linux; elsewhere the sync does
/// it all). A hint: the sync reports any error.
fn start_writeback(file: &File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on an open descriptor; no memory is passed.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                from as libc::off64_t,
                (to - from) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to);
}

/// Waits for a shard's bytes to be hashed and written, syncs them, writes its document index,
/// and renames both from their temporary names: the shard is then complete.
fn complete_shard(dir: &Path, shard: OpenShard) -> Result<ShardInfo> {
    let (bin, idx) = shard_name(shard.n);
    let bin_tmp = dir.join(format!("{bin}.tmp"));
    let idx_tmp = dir.join(format!("{idx}.tmp"));
    let (f, digest) = shard
        .bin
        .finish()
        .map_err(|e| Error::io(&bin_tmp, "write", &e))?;
    f.file
        .sync_all()
        .map_err(|e| Error::io(&bin_tmp, "sync", &e))?;
    let mut idx_bytes = Vec::with_capacity(shard.ends.len() * 8);
    for e in &shard.ends {
        idx_bytes.extend_from_slice(&e.to_le_bytes());
    }
    let mut fi = File::create(&idx_tmp).map_err(|e| Error::io(&idx_tmp, "create", &e))?;
    fi.write_all(&idx_bytes)
        .and_then(|_| fi.sync_all())
        .map_err(|e| Error::io(&idx_tmp, "write", &e))?;
    std::fs::rename(&bin_tmp, dir.join(&bin)).map_err(|e| Error::io(&bin_tmp, "rename", &e))?;
    std::fs::rename(&idx_tmp, dir.join(&idx)).map_err(|e| Error::io(&idx_tmp, "rename", &e))?;
    Ok(ShardInfo {
        file: bin,
        index: idx,
        tokens: shard.tokens,
        documents: shard.ends.len() as u64,
        digest: FileDigest {
            blake3: hex(&digest),
            sha256: None,
        },
    })
}

fn write_progress(dir: &Path, progress: &Progress) -> Result<()> {
    let data = serde_json::to_vec_pretty(progress).expect("serialisable");
    write_atomic(&dir.join(PROGRESS), &data)
}

/// Removes a shard that will not be completed.
fn discard_shard(dir: &Path, shard: OpenShard) {
    drop(shard.bin); // waits for its thread, which closes the file
    remove_temporaries(dir, shard.n);
}

/// Removes shard `n`'s temporary `.bin` and index, where they exist.
fn remove_temporaries(dir: &Path, n: usize) {
    let (bin, idx) = shard_name(n);
    for name in [bin, idx] {
        let _ = std::fs::remove_file(dir.join(format!("{name}.tmp")));
    }
}

/// A rotated shard and the progress to record once it is complete, with the log lines (the
/// inputs done and lines skipped since the last record) to append first.
struct Closing {
    shard: OpenShard,
    progress: Progress,
    log: Vec<u8>,
}

/// Completes rotated shards on a thread of its own (`aprx-shard-close`), in order, each
/// followed by its progress record, so that the writer goes on with the next shard instead of
/// waiting for a shard's three syncs (and every worker with it). The files reach the disk in
/// the same order as before: a shard's `.bin` and index renamed, then `progress.json` naming
/// it; a resume drops whatever came after the last progress record.
struct Closer {
    dir: PathBuf,
    tx: Option<std::sync::mpsc::SyncSender<Closing>>,
    thread: Option<std::thread::JoinHandle<Result<Vec<ShardInfo>>>>,
    /// Set by the thread when it stops on an error; it then discards what it is sent.
    failed: Arc<AtomicBool>,
}

impl Closer {
    /// `shards`: those completed before (a resumed run's); `log_bytes`: the length of
    /// `PROGRESS_LOG` their last record covers.
    fn new(dir: &Path, mut shards: Vec<ShardInfo>, mut log_bytes: u64) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Closing>(CLOSING_SHARDS);
        let failed = Arc::new(AtomicBool::new(false));
        let (dir_owned, f) = (dir.to_path_buf(), failed.clone());
        let thread = std::thread::Builder::new()
            .name("aprx-shard-close".into())
            .spawn(move || {
                let dir = dir_owned.as_path();
                let mut queue = rx.iter();
                for Closing {
                    shard,
                    mut progress,
                    log,
                } in queue.by_ref()
                {
                    let n = shard.n;
                    let done = complete_shard(dir, shard).and_then(|info| {
                        shards.push(info);
                        progress.shards = shards.clone();
                        log_bytes = append_log(dir, log_bytes, &log)?;
                        progress.log_bytes = log_bytes;
                        write_progress(dir, &progress)
                    });
                    if let Err(e) = done {
                        f.store(true, Ordering::Release);
                        remove_temporaries(dir, n);
                        // Until the writer learns of it (it sends no more once `failed` is
                        // set), what was queued is removed, never left half-written.
                        for c in queue {
                            discard_shard(dir, c.shard);
                        }
                        return Err(e);
                    }
                }
                Ok(shards)
            })
            .map_err(|e| Error::io(dir, "start its shard-closing thread", &e))?;
        Ok(Closer {
            dir: dir.to_path_buf(),
            tx: Some(tx),
            thread: Some(thread),
            failed,
        })
    }

    /// Queues `shard`, or, once the thread has stopped on an error, removes it and returns
    /// that error.
    fn close(&mut self, shard: OpenShard, progress: Progress, log: Vec<u8>) -> Result<()> {
        if !self.failed.load(Ordering::Acquire) {
            let tx = self.tx.as_ref().expect("open until finish");
            match tx.send(Closing {
                shard,
                progress,
                log,
            }) {
                Ok(()) => return Ok(()),
                Err(std::sync::mpsc::SendError(c)) => discard_shard(&self.dir, c.shard),
            }
        } else {
            discard_shard(&self.dir, shard);
        }
        self.join().map(|_| ())
    }

    /// Waits for every queued shard; all completed shards, the resumed run's first.
    fn finish(mut self) -> Result<Vec<ShardInfo>> {
        self.join()
    }

    fn join(&mut self) -> Result<Vec<ShardInfo>> {
        self.tx = None; // the thread's loop ends after the last shard
        let stopped =
            |why: &str| Error::io(&self.dir, "complete a shard", &std::io::Error::other(why));
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(stopped("the shard-closing thread panicked"))),
            None => Err(stopped(
                "the shard-closing thread stopped on an earlier error",
            )),
        }
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}

/// How the reader cuts the items into batches. Batches start small, so the workers start
/// early, and end small, so the last ones finish together (plain inputs only: their size is
/// the text's). A file's end does not end the batch: a tree of small files (one document each)
/// goes in batches of the same size as a JSONL file's lines, not one batch, one hand-off and
/// one wake-up per file. At most `BATCH_FILES` plain JSONL files a batch, though: each mapped
/// file stays mapped until its batch is written, and the mappings a process may hold are
/// limited (65530 by default on Linux). Other files are read into memory, which the batch's
/// bytes bound: a tree of small text files goes in batches of up to `BATCH_BYTES`, not 64
/// files (90 KB for the stdlib cut into 40-line files: 350 batches, each a hand-off and a
/// wake-up).
struct Batcher {
    batch: Vec<Item>,
    /// Record bytes pushed so far, all batches (the run's progress), and where this batch's
    /// began: the batch holds `total - batch_start`.
    total: u64,
    batch_start: u64,
    mapped_files: usize,
    limit: usize,
    /// Text not yet read, for plain inputs.
    left: Option<usize>,
}

impl Batcher {
    fn new(plain_bytes: Option<usize>) -> Self {
        Batcher {
            batch: Vec::new(),
            total: 0,
            batch_start: 0,
            mapped_files: 0,
            limit: FIRST_BATCH_BYTES,
            left: plain_bytes,
        }
    }

    /// Adds `item` (`mapped`: the end of a file that may be mapped); the batch, once full.
    fn push(&mut self, item: Item, mapped: bool) -> Option<Vec<Item>> {
        if let Item::Record(r) = &item {
            self.total += r.data.len() as u64;
        }
        self.mapped_files += usize::from(mapped);
        self.batch.push(item);
        let bytes = (self.total - self.batch_start) as usize;
        let full = bytes >= self.limit
            || self.batch.len() >= BATCH_RECORDS
            || self.mapped_files >= BATCH_FILES;
        if !full {
            return None;
        }
        self.mapped_files = 0;
        self.left = self.left.map(|l| l.saturating_sub(bytes));
        self.limit = (2 * self.limit).min(BATCH_BYTES);
        if let Some(l) = self.left {
            self.limit = self.limit.min(l / 8).max(FIRST_BATCH_BYTES);
        }
        self.batch_start = self.total;
        Some(std::mem::take(&mut self.batch))
    }
}

/// Rotated shards queued for the closer, at most, besides the one it is completing (each
/// holds its chunks not yet hashed and written: at most its pool, 3 MiB).
const CLOSING_SHARDS: usize = 2;

/// Workers from which a shard's writes get a thread apart from its hashing. On 16 cores, one
/// thread hashing and writing the shards was busy 80% of the run (8 and 16 workers:
/// `aprx-shard-out` 112-164 ms of CPU in 140-183 ms, `benches/threads.py encode-corpus
/// --copies 10`), the cap of the whole pipeline; on 2 cores the extra thread only adds
/// hand-offs.
const SPLIT_WRITES_FROM: usize = 4;

/// Threads reading small text files for `workers` encoding threads (`corpus::read_items`):
/// none apart from the reader below `SPLIT_WRITES_FROM` workers, where every core already has
/// a thread of the pipeline; else one for every two workers, up to 8. On 16 cores (8 and 16
/// workers, a tree of 44,694 small files), the one reader capped the run at 29-34 M tokens/s;
/// with 8 reading threads it ran at 38-47 (`benches/threads.py encode-corpus --tree
/// --doc-lines 40 --shard-tokens 500000 --copies 2`, two rounds). As many compressed and
/// Parquet files are decoded at once (`corpus::read_items`'s `ahead`): on 16 cores, 16
/// `.jsonl.gz` files, 111.5 -> 220.4 M tokens/s (`benches/ab.py --api encode-corpus --threads
/// 16 --format jsonl.gz --files 16 --copies 10`).
fn read_threads(workers: usize) -> usize {
    if workers < SPLIT_WRITES_FROM {
        1
    } else {
        (workers / 2).clamp(2, 8)
    }
}

struct Writer<'a> {
    dir: &'a Path,
    opts: &'a Options,
    eos: Option<u32>,
    state: Progress,
    open: Option<OpenShard>,
    /// Number of the next shard to open.
    next_shard: usize,
    /// Completes the shards rotated out during the run (started at the first rotation).
    closer: Option<Closer>,
    /// Each shard's bytes are written on a thread of their own, apart from their hashing
    /// (`Offload::with_writer_thread`): with `SPLIT_WRITES_FROM` workers or more, one thread
    /// doing both caps the run.
    split_writes: bool,
    /// Position (file, records consumed) of the record being processed.
    pos_file: usize,
    pos_record: u64,
    started: Instant,
    prior_elapsed: f64,
    last_report: Instant,
    /// Bytes of the records written (their text, as stored in the input: MB/s).
    bytes_done: u64,
    /// What the reader has read so far: bytes of the inputs as stored (their sizes on disk,
    /// compressed or not) and bytes of the records it made of them. The progress fraction is
    /// the records written (`bytes_done`) at that ratio, out of the inputs' sizes
    /// (`bytes_total`): in step with the writer, and right for compressed input, whose
    /// records are several times its size (record bytes alone put a `.jsonl.gz` corpus at
    /// 100% a fifth of the way in; the reader's position alone runs ahead by the batches in
    /// flight).
    input_read: Arc<AtomicU64>,
    records_read: Arc<AtomicU64>,
    bytes_total: u64,
    tokens_this_run: u64,
    /// The run's settings as progress records hold them (`RunConfig::for_record`).
    progress_config: Value,
    /// Inputs done and lines skipped already in `PROGRESS_LOG` (or handed to the closer for
    /// it); the log's length that the last record covers is `state.log_bytes`.
    logged_inputs: usize,
    logged_skipped: usize,
}

fn shard_name(n: usize) -> (String, String) {
    (format!("shard-{n:05}.bin"), format!("shard-{n:05}.idx"))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, "create", &e))?;
    f.write_all(data)
        .map_err(|e| Error::io(&tmp, "write", &e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, "sync", &e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "rename", &e))
}

impl<'a> Writer<'a> {
    /// Appends a document of `ids` (not empty), whose largest id is `max_id`.
    fn add_doc(&mut self, ids: &[u32], max_id: u32) -> Result<()> {
        // The previous document is in the open shard, except right after a resume: progress is
        // saved when a shard rotates, after the previous document's EOS went into that shard.
        if self.state.documents > 0 && self.open.is_some() {
            if self.opts.eos_policy == EosPolicy::Between {
                let eos = self.eos.expect("checked");
                self.push_tokens(&[eos])?;
                let shard = self.open.as_mut().expect("open shard");
                *shard.ends.last_mut().expect("previous doc") += 1;
                self.note_max(eos);
            }
            if self
                .open
                .as_ref()
                .is_some_and(|s| s.tokens >= self.opts.shard_tokens)
            {
                self.rotate_shard()?;
            }
        }
        self.push_tokens(ids)?;
        if self.opts.eos_policy == EosPolicy::After {
            let eos = self.eos.expect("checked");
            self.push_tokens(&[eos])?;
            self.note_max(eos);
        }
        let shard = self.open.as_mut().expect("open shard");
        shard.ends.push(shard.tokens);
        self.state.documents += 1;
        self.note_max(max_id);
        Ok(())
    }

    /// Tracks the largest id written (an EOS counts only once it is in a shard).
    fn note_max(&mut self, id: u32) {
        self.state.max_token_id = Some(self.state.max_token_id.map_or(id, |x| x.max(id)));
    }

    fn push_tokens(&mut self, ids: &[u32]) -> Result<()> {
        if self.open.is_none() {
            let n = self.next_shard;
            self.next_shard += 1;
            let path = self.dir.join(format!("{}.tmp", shard_name(n).0));
            let file = File::create(&path).map_err(|e| Error::io(&path, "create", &e))?;
            let shard_file = ShardFile {
                file,
                written: 0,
                flushing: 0,
            };
            let bin = if self.split_writes {
                Offload::with_writer_thread("aprx-shard-out", "aprx-shard-write", shard_file)
            } else {
                Offload::new("aprx-shard-out", shard_file)
            }
            .map_err(|e| Error::io(&path, "start its writing thread", &e))?;
            self.open = Some(OpenShard {
                n,
                bin,
                tokens: 0,
                ends: Vec::new(),
            });
        }
        let shard = self.open.as_mut().expect("open shard");
        // SAFETY: u32 has no padding; the shard format is little-endian u32.
        let bytes: &[u8] = if cfg!(target_endian = "little") {
            unsafe { std::slice::from_raw_parts(ids.as_ptr() as *const u8, ids.len() * 4) }
        } else {
            unreachable!("big-endian hosts are not supported")
        };
        if let Err(e) = shard.bin.write(bytes) {
            let path = self.dir.join(format!("{}.tmp", shard_name(shard.n).0));
            return Err(Error::io(&path, "write", &e));
        }
        shard.tokens += ids.len() as u64;
        self.state.tokens += ids.len() as u64;
        self.tokens_this_run += ids.len() as u64;
        Ok(())
    }

    /// Completes the open shard here, on the writer's thread (the last one of a run).
    fn close_shard(&mut self) -> Result<()> {
        if let Some(shard) = self.open.take() {
            let info = complete_shard(self.dir, shard)?;
            self.state.shards.push(info);
        }
        Ok(())
    }

    /// Hands the open shard to the closer, with the progress to record once it is complete.
    fn rotate_shard(&mut self) -> Result<()> {
        let Some(shard) = self.open.take() else {
            return Ok(());
        };
        if self.closer.is_none() {
            self.closer = Some(Closer::new(
                self.dir,
                self.state.shards.clone(),
                self.state.log_bytes,
            )?);
        }
        let progress = self.progress_now();
        let mut log = Vec::new();
        for d in &self.state.inputs[self.logged_inputs..] {
            serde_json::to_writer(&mut log, &LogLine::Input(d)).expect("serialisable");
            log.push(b'\n');
        }
        for k in &self.state.skipped[self.logged_skipped..] {
            serde_json::to_writer(&mut log, &LogLine::Skipped(k)).expect("serialisable");
            log.push(b'\n');
        }
        self.logged_inputs = self.state.inputs.len();
        self.logged_skipped = self.state.skipped.len();
        self.closer
            .as_mut()
            .expect("started")
            .close(shard, progress, log)
    }

    /// Waits for the closer's shards to be complete; they join the state's.
    fn finish_closing(&mut self) -> Result<()> {
        match self.closer.take() {
            Some(c) => {
                self.state.shards = c.finish()?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The state to record now: everything before the current record is in shards.
    fn progress_now(&self) -> Progress {
        let st = &self.state;
        Progress {
            config: self.progress_config.clone(),
            shards: Vec::new(), // the closer's list, which it fills in
            next_file: self.pos_file,
            next_record: self.pos_record,
            inputs: Vec::new(), // in the log
            current: st.current.clone(),
            skipped: Vec::new(), // in the log
            documents: st.documents,
            tokens: st.tokens,
            max_token_id: st.max_token_id,
            elapsed_s: self.prior_elapsed + self.started.elapsed().as_secs_f64(),
            log_bytes: 0, // the closer's, which it fills in
        }
    }

    fn report(&mut self, force: bool) {
        if !self.opts.progress || (!force && self.last_report.elapsed() < progress_interval()) {
            return;
        }
        self.last_report = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let mbs = self.bytes_done as f64 / secs / 1e6;
        let stored = self.input_read.load(Ordering::Relaxed) as f64;
        let records = self.records_read.load(Ordering::Relaxed) as f64;
        let frac = if force {
            1.0
        } else if self.bytes_total > 0 && records > 0.0 {
            (self.bytes_done as f64 * stored / records / self.bytes_total as f64).min(1.0)
        } else {
            0.0
        };
        let eta = if frac > 0.0 {
            secs * (1.0 - frac) / frac
        } else {
            0.0
        };
        eprint!(
            "\raprx encode-corpus: {:>5.1}%  {} docs  {} tokens  {:.1} MB/s  {:.2} M tokens/s  ETA {:.0}s   ",
            frac * 100.0,
            self.state.documents,
            self.state.tokens,
            mbs,
            self.tokens_this_run as f64 / secs / 1e6,
            eta
        );
        if force {
            eprintln!();
        }
    }
}

/// Time between progress lines: 500 ms, or `APRX_PROGRESS_MS` (tests set 0: a line per batch).
fn progress_interval() -> std::time::Duration {
    static MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ms = *MS.get_or_init(|| {
        std::env::var("APRX_PROGRESS_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500)
    });
    std::time::Duration::from_millis(ms)
}

fn norm_name(n: Normalizer) -> &'static str {
    match n {
        Normalizer::Nfc => "nfc",
        Normalizer::None => "none",
    }
}

/// Whether `name` is one aprx gives a file of its own in an output directory: the manifest,
/// the progress files, `shard-NNNNN.bin` / `.idx`, and the `.tmp` files each is written as
/// first. Only such files are taken for an earlier run's (resumed, or deleted by
/// `--overwrite`): a user's `shard-00000.jsonl` or `manifest.json.bak` is not.
fn is_our_name(name: &str) -> bool {
    let name = name.strip_suffix(".tmp").unwrap_or(name);
    if [MANIFEST, PROGRESS, PROGRESS_LOG].contains(&name) {
        return true;
    }
    shard_number(name).is_some()
}

/// The number of a shard file named as `shard_name` names it (`shard-NNNNN.bin` / `.idx`,
/// five digits or more; `usize::MAX` for more digits than a number holds).
fn shard_number(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("shard-")?;
    let d = rest
        .strip_suffix(".bin")
        .or_else(|| rest.strip_suffix(".idx"))?;
    (d.len() >= 5 && d.bytes().all(|b| b.is_ascii_digit())).then(|| d.parse().unwrap_or(usize::MAX))
}

/// Files of ours in an output directory (`is_our_name`).
fn our_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    if !dir.exists() {
        return Ok(v);
    }
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list directory", &e))?;
    for e in rd.flatten() {
        if is_our_name(&e.file_name().to_string_lossy()) {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// An input of this run that is one of `ours` (files named as aprx names its output, in the
/// output directory): such a file is never resumed over or deleted, the run stops instead.
fn input_among_ours(inputs: &[InputFile], ours: &[PathBuf]) -> Option<PathBuf> {
    if ours.is_empty() {
        return None;
    }
    let ours: Vec<PathBuf> = ours
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    inputs
        .iter()
        .filter(|f| ours.iter().any(|o| o.file_name() == f.path.file_name()))
        .find(|f| std::fs::canonicalize(&f.path).is_ok_and(|c| ours.contains(&c)))
        .map(|f| f.path.clone())
}

fn remove(path: &Path) -> Result<()> {
    std::fs::remove_file(path).map_err(|e| Error::io(path, "remove", &e))
}

/// Gives the calling thread the lowest CPU priority (Linux: nice 19, this thread only), so
/// that deleting an overwritten run's files (freeing their cached pages: milliseconds per 30
/// MB) takes the cores when the workers leave them idle, not from the workers.
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on this thread's own id; a failure leaves the priority as is.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

/// Names of an overwritten run's files while they wait to be deleted.
const OLD_PREFIX: &str = ".aprx-old-";

/// Moves an earlier run's files out of the way (a rename each) and returns the paths to
/// delete, with any left by a run that stopped before deleting them. Deleting a shard frees
/// its cached pages, milliseconds per 30 MB, so it happens on a thread of its own while the
/// new run goes on; the renamed files can never be taken for the new run's.
fn set_aside(dir: &Path, files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut old = Vec::new();
    for p in files {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        let to = dir.join(format!("{OLD_PREFIX}{name}"));
        std::fs::rename(p, &to).map_err(|e| Error::io(p, "move aside", &e))?;
        old.push(to);
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let path = e.path();
            if e.file_name().to_string_lossy().starts_with(OLD_PREFIX) && !old.contains(&path) {
                old.push(path);
            }
        }
    }
    Ok(old)
}

/// `manifest.json`, serialized from the run's own lists (no copy of them as JSON values: with
/// many input files, each copy cost as much as the rest of writing the manifest).
#[derive(Serialize)]
struct Manifest<'a> {
    schema: &'a str,
    dtype: &'a str,
    byte_order: &'a str,
    tokenizer: Value,
    eos_policy: EosPolicy,
    eos_id: Option<u32>,
    normalization: &'a str,
    content_field: &'a str,
    shard_tokens: u64,
    shards: &'a [ShardInfo],
    total_tokens: u64,
    total_documents: u64,
    empty_documents: u64,
    blank_lines: u64,
    max_token_id: Option<u32>,
    inputs: &'a [InputDone],
    skipped_count: usize,
    skipped: &'a [Skipped],
    task: Value,
    config: &'a RunConfig<'a>,
    run: Value,
}

/// Runs encode-corpus; returns the manifest, as written to `manifest.json`. `cancel` stops
/// the run between batches (completed shards and progress stay, so `resume` continues).
pub fn encode_corpus(tok: &Tokenizer, opts: &Options, cancel: &AtomicBool) -> Result<String> {
    let started = Instant::now();
    let dir = opts.output.as_path();
    if opts.shard_tokens == 0 {
        return Err(Error::corpus(codes::INPUT, "shard_tokens must be positive"));
    }
    if opts.num_tasks == 0 || opts.task_index >= opts.num_tasks {
        return Err(Error::corpus(
            codes::INPUT,
            format!(
                "task index {} is not below the number of tasks {}",
                opts.task_index, opts.num_tasks
            ),
        ));
    }
    let dropped = tok.bytes_dropped();
    if !dropped.is_empty() {
        let shown: Vec<String> = dropped
            .iter()
            .take(8)
            .map(|b| format!("0x{b:02X}"))
            .collect();
        return Err(Error::corpus(
            codes::INPUT,
            format!(
                "the tokenizer has no token for {} byte(s) text can hold ({}{}) and no \
                 unk_token: their text would be dropped from the shards without a trace (HF \
                 drops it too); use a tokenizer with a token for every byte, or an unk_token",
                dropped.len(),
                shown.join(", "),
                if dropped.len() > 8 { ", ..." } else { "" }
            ),
        ));
    }
    let eos = match opts.eos_policy {
        EosPolicy::None => opts.eos_id,
        _ => Some(opts.eos_id.ok_or_else(|| {
            Error::corpus(
                codes::NO_EOS,
                "the tokenizer has no end-of-text token; pass --eos-token or --eos-policy none",
            )
        })?),
    };
    if let Some(e) = eos {
        if tok.id_to_token(e).is_none() {
            return Err(Error::corpus(
                codes::NO_EOS,
                format!(
                    "EOS id {e} is not in the tokenizer (size {})",
                    tok.vocab_size()
                ),
            ));
        }
    }
    // The pool's threads take a directory's entries in parallel.
    let pool = parallel::pool(opts.num_workers)?;
    let all_files =
        pool.install(|| corpus::discover(&opts.inputs, &opts.text_extensions, cancel))?;
    let files: Vec<InputFile> = corpus::task_slice(all_files, opts.num_tasks, opts.task_index);
    let config = RunConfig::new(opts, tok, &files, eos);
    let record_config = config.for_record();

    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create directory", &e))?;
    let existing = our_files(dir)?;
    if let Some(input) = input_among_ours(&files, &existing) {
        return Err(Error::corpus(
            codes::INPUT,
            format!(
                "{}: is an input of this run, in its output directory under a name aprx gives \
                 its own files; it is left as it is: move it, or write the output elsewhere",
                input.display()
            ),
        ));
    }
    let mut old_files = Vec::new();
    let mut state: Option<Progress> = None;
    // The record read has its inputs inline (written before the progress log): none of them
    // is in the log yet.
    let mut inline = false;
    if !existing.is_empty() {
        if opts.overwrite {
            old_files = set_aside(dir, &existing)?;
        } else if opts.resume {
            let manifest_path = dir.join(MANIFEST);
            if manifest_path.exists() {
                let bytes = std::fs::read(&manifest_path)
                    .map_err(|e| Error::io(&manifest_path, "read", &e))?;
                let bad = |e: &dyn std::fmt::Display| {
                    let what = format!("{}: {e}", manifest_path.display());
                    Error::corpus(codes::RESUME_MISMATCH, what)
                };
                let m: Value = serde_json::from_slice(&bytes).map_err(|e| bad(&e))?;
                let text = String::from_utf8(bytes).map_err(|e| bad(&e))?;
                if m.get("config") == Some(&config.to_value()) {
                    return Ok(text); // already complete
                }
                return Err(Error::corpus(
                    codes::RESUME_MISMATCH,
                    format!(
                        "{}: holds a finished run with other settings or inputs; use --overwrite",
                        dir.display()
                    ),
                ));
            }
            let pp = dir.join(PROGRESS);
            if pp.exists() {
                let mut p: Progress = serde_json::from_slice(
                    &std::fs::read(&pp).map_err(|e| Error::io(&pp, "read", &e))?,
                )
                .map_err(|e| {
                    Error::corpus(codes::RESUME_MISMATCH, format!("{}: {e}", pp.display()))
                })?;
                // A record from before the progress log has its inputs, and the whole input
                // list in its config, inline.
                inline = p.config.get("inputs").is_some_and(Value::is_array);
                let full;
                let want = if inline {
                    full = config.to_value();
                    &full
                } else {
                    &record_config
                };
                if p.config != *want {
                    let key = want
                        .as_object()
                        .and_then(|c| c.iter().find(|(k, v)| p.config.get(*k) != Some(v)))
                        .map_or("?".to_string(), |(k, _)| k.clone());
                    return Err(Error::corpus(
                        codes::RESUME_MISMATCH,
                        format!(
                            "{}: cannot resume: {key:?} differs from the interrupted run",
                            dir.display()
                        ),
                    ));
                }
                if inline {
                    p.log_bytes = 0; // the log starts again, with every input (below)
                } else {
                    (p.inputs, p.skipped) = read_log(dir, p.log_bytes)?;
                    if p.inputs.len() != p.next_file {
                        return Err(Error::corpus(
                            codes::RESUME_MISMATCH,
                            format!(
                                "{}: lists {} inputs done, its progress record {}; use --overwrite",
                                dir.join(PROGRESS_LOG).display(),
                                p.inputs.len(),
                                p.next_file
                            ),
                        ));
                    }
                }
                state = Some(p);
            }
            // Remove partial shards and any completed after the last progress record.
            let keep = state.as_ref().map_or(0, |p| p.shards.len());
            for p in &existing {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                // (`existing` holds our names only: the manifest, progress files and shards)
                let stale =
                    name.ends_with(".tmp") || shard_number(&name).is_some_and(|n| n >= keep);
                if stale {
                    remove(p)?;
                }
            }
            if let Some(p) = &state {
                for s in &p.shards {
                    let path = dir.join(&s.file);
                    let len = std::fs::metadata(&path)
                        .map(|m| m.len())
                        .unwrap_or(u64::MAX);
                    if len != s.tokens * 4 {
                        return Err(Error::corpus(
                            codes::SHARD_MISMATCH,
                            format!("{}: completed shard is damaged ({len} bytes, expected {}); use --overwrite", path.display(), s.tokens * 4),
                        ));
                    }
                }
            }
        } else {
            return Err(Error::corpus(
                codes::OUTPUT_EXISTS,
                format!(
                    "{}: holds another run's shards ({}); pass --resume to continue it or --overwrite to replace it",
                    dir.display(),
                    existing[0].file_name().unwrap().to_string_lossy()
                ),
            ));
        }
    }
    if old_files.is_empty() {
        old_files = set_aside(dir, &[])?; // left by an overwriting run that stopped
    }
    let resumed = state.is_some();
    let state = state.unwrap_or(Progress {
        config: Value::Null, // records take `Writer::progress_config`
        shards: Vec::new(),
        next_file: 0,
        next_record: 0,
        inputs: Vec::new(),
        current: InputDone::default(),
        skipped: Vec::new(),
        documents: 0,
        tokens: 0,
        max_token_id: None,
        elapsed_s: 0.0,
        log_bytes: 0,
    });
    let (start_file, skip) = (state.next_file, state.next_record);
    let bytes_total: u64 = files.iter().skip(start_file).map(|f| f.size).sum();
    let mut w = Writer {
        dir,
        opts,
        eos,
        prior_elapsed: state.elapsed_s,
        next_shard: state.shards.len(),
        state,
        open: None,
        closer: None,
        split_writes: pool.current_num_threads() >= SPLIT_WRITES_FROM,
        pos_file: start_file,
        pos_record: skip,
        started,
        last_report: Instant::now(),
        bytes_done: 0,
        input_read: Arc::new(AtomicU64::new(0)),
        records_read: Arc::new(AtomicU64::new(0)),
        bytes_total,
        tokens_this_run: 0,
        progress_config: record_config,
        logged_inputs: 0,
        logged_skipped: 0,
    };
    w.state.inputs.truncate(start_file);
    if !inline {
        w.logged_inputs = w.state.inputs.len();
        w.logged_skipped = w.state.skipped.len();
    }

    let plain_bytes = files
        .iter()
        .all(|f| matches!(f.kind, InputKind::Jsonl | InputKind::Text))
        .then_some(bytes_total as usize);
    let normalizer = opts.normalization.unwrap_or(tok.normalizer());
    // Helper threads for the reader on many cores, for trees of small files (`read_items`).
    let readers = read_threads(pool.current_num_threads());
    let read_pool = if readers > 1 && files.iter().any(|f| f.kind == InputKind::Text) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(readers)
            .thread_name(|i| format!("aprx-read-{i}"))
            .build()
            .map_err(|e| Error::io(dir, "start its reading threads", &std::io::Error::other(e)))?;
        Some(pool)
    } else {
        None
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Item>>(CHANNEL_DEPTH);
    let stop = AtomicBool::new(false);
    let result: Result<()> = std::thread::scope(|scope| {
        if !old_files.is_empty() {
            // Best effort: a file that cannot be deleted now is tried again by the next run.
            let _ = std::thread::Builder::new()
                .name("aprx-remove".into())
                .spawn_scoped(scope, move || {
                    lowest_priority();
                    for p in old_files {
                        let _ = std::fs::remove_file(p);
                    }
                });
        }
        let files_ref = &files;
        let read_pool = read_pool.as_ref();
        let field = opts.content_field.as_str();
        let stop_ref = &stop;
        let input_read = Arc::clone(&w.input_read);
        let records_read = Arc::clone(&w.records_read);
        let reader = std::thread::Builder::new()
            .name("aprx-reader".into())
            .spawn_scoped(scope, move || {
                let mut batcher = Batcher::new(plain_bytes);
                let read = (read_pool, readers);
                let r = corpus::read_items(files_ref, start_file, skip, field, read, &input_read, |item| {
                    let mapped = matches!(
                        &item,
                        Item::FileEnd { file, .. } if files_ref[*file as usize].kind == InputKind::Jsonl
                    );
                    let batch = batcher.push(item, mapped);
                    records_read.store(batcher.total, Ordering::Relaxed);
                    if let Some(batch) = batch {
                        if tx.send(batch).is_err() {
                            return false;
                        }
                    }
                    !stop_ref.load(Ordering::Relaxed)
                });
                let rest = batcher.batch;
                if !rest.is_empty() {
                    let _ = tx.send(rest);
                }
                r
            })
            .map_err(|e| Error::io(dir, "start its reader thread", &e))?;
        // Encoding and writing overlap, and so do batches: up to `in_flight` batches are being
        // encoded or wait to be written at once, so a thread that finishes its part of one
        // batch starts on the next instead of waiting for the slowest document. The writer
        // puts them back in order and hands back a permit for each batch it has written.
        let in_flight = pool.current_num_threads() + 2;
        let (etx, erx) = std::sync::mpsc::channel::<(usize, Vec<Item>, Encoded)>();
        let (permit_tx, permit_rx) = std::sync::mpsc::sync_channel::<()>(in_flight);
        for _ in 0..in_flight {
            permit_tx
                .send(())
                .expect("the permit channel has room for every permit");
        }
        let wref = &mut w;
        let writer = std::thread::Builder::new()
            .name("aprx-writer".into())
            .spawn_scoped(scope, move || -> Result<()> {
                let w = wref;
                let files = files_ref;
                let mut pending = std::collections::BTreeMap::new();
                let mut next = 0;
                let ordered = std::iter::from_fn(|| loop {
                    if let Some(b) = pending.remove(&next) {
                        next += 1;
                        return Some(b);
                    }
                    let (seq, batch, encoded) = erx.recv().ok()?;
                    pending.insert(seq, (batch, encoded));
                });
                for (batch, encoded) in ordered {
                    let results = encoded.iter().flat_map(|part| {
                        let mut start = 0;
                        part.ends.iter().map(move |e| {
                            e.as_ref().map(|r| {
                                r.as_ref().map(|&(end, max_id)| {
                                    let ids = &part.ids[start..end];
                                    start = end;
                                    (ids, max_id)
                                })
                            })
                        })
                    });
                    for (item, enc) in batch.iter().zip(results) {
                        match item {
                            Item::Record(r) => {
                                w.pos_file = r.file as usize;
                                w.pos_record = r.line - 1;
                                w.state.current.records = r.line;
                                w.bytes_done += r.data.len() as u64;
                                match enc.expect("encoded record") {
                                    Ok(([], _)) => w.state.current.empty_documents += 1,
                                    Ok((ids, max_id)) => {
                                        w.add_doc(ids, max_id)?;
                                        w.state.current.documents += 1;
                                    }
                                    Err(rej) => {
                                        let rej = rej.clone();
                                        let f = &files[r.file as usize];
                                        let line = rej.line.unwrap_or(r.line);
                                        if opts.on_error == OnError::Fail {
                                            return Err(Error::corpus(
                                                rej.code,
                                                format!(
                                                    "{}:{line}: {}",
                                                    f.path.display(),
                                                    rej.reason
                                                ),
                                            ));
                                        }
                                        w.state.current.skipped += 1;
                                        w.state.skipped.push(Skipped {
                                            file: f.path.display().to_string(),
                                            line,
                                            code: rej.code.to_string(),
                                            reason: rej.reason,
                                        });
                                    }
                                }
                            }
                            Item::Blank { .. } => {
                                w.state.current.blank_lines += 1;
                                w.state.current.records += 1;
                            }
                            Item::FileEnd {
                                file,
                                digest,
                                records,
                            } => {
                                let f = &files[*file as usize];
                                w.state.current.path = f.path.display().to_string();
                                w.state.current.size = f.size;
                                w.state.current.digest.blake3 = digest.clone();
                                w.state.current.records = *records;
                                w.state.inputs.push(std::mem::take(&mut w.state.current));
                                w.pos_file = *file as usize + 1;
                                w.pos_record = 0;
                            }
                        }
                    }
                    w.report(false);
                    let _ = permit_tx.send(());
                }
                Ok(())
            })
            .map_err(|e| {
                // Let the reader see the stop and drain what it sends until it does.
                stop.store(true, Ordering::Relaxed);
                while rx.recv().is_ok() {}
                Error::io(dir, "start its writer thread", &e)
            })?;
        let encode_run = |items: &[Item]| -> Part {
            // Room for the run's ids at once (a third of its bytes: code has about four bytes
            // a token), not grown record by record, each growth a copy into fresh memory.
            let room: usize = items
                .iter()
                .map(|item| match item {
                    Item::Record(r) => r.data.len() / 3 + 1,
                    _ => 0,
                })
                .sum();
            let mut ids = Vec::with_capacity(room);
            let ends = items
                .iter()
                .map(|item| match item {
                    Item::Record(Record {
                        invalid: Some(rej), ..
                    }) => Some(Err(rej.clone())),
                    Item::Record(r) => {
                        let start = ids.len();
                        let encoded = corpus::with_record(
                            &r.data,
                            files[r.file as usize].kind,
                            &opts.content_field,
                            |text| {
                                ids.reserve(text.len() / 3 + 1);
                                tok.encode_ordinary_with(text, normalizer, &mut ids)
                                    .map_err(|e| Reject {
                                        code: e.code,
                                        reason: e.message,
                                        line: None,
                                    })
                            },
                        )
                        .and_then(|r| r);
                        if encoded.is_err() {
                            ids.truncate(start); // nothing of a rejected record is kept
                        }
                        Some(encoded.map(|()| {
                            let max_id = crate::simd::max_u32(&ids[start..]).unwrap_or(0);
                            (ids.len(), max_id)
                        }))
                    }
                    _ => None,
                })
                .collect();
            Part { ids, ends }
        };
        let threads = pool.current_num_threads();
        let encode_batch = |batch: &[Item]| -> Encoded {
            let run = batch.len().div_ceil(threads * RUNS_PER_THREAD).max(1);
            batch.par_chunks(run).map(encode_run).collect()
        };
        let run = pool.in_place_scope(|jobs| -> Result<()> {
            for (seq, batch) in rx.iter().enumerate() {
                if cancel.load(Ordering::Relaxed) {
                    return Err(Error::interrupted());
                }
                if permit_rx.recv().is_err() {
                    // The writer stopped on an error, which its join reports.
                    break;
                }
                let etx = etx.clone();
                let encode_batch = &encode_batch;
                jobs.spawn(move |_| {
                    let encoded = encode_batch(&batch);
                    let _ = etx.send((seq, batch, encoded));
                });
            }
            Ok(())
        });
        drop(etx);
        let wrote = writer
            .join()
            .unwrap_or_else(|p| Err(Error::from_panic("the shard writer", p)));
        let run = run.and(wrote);
        if run.is_err() {
            stop.store(true, Ordering::Relaxed);
            drop(rx);
        }
        let read = reader
            .join()
            .unwrap_or_else(|p| Err(Error::from_panic("the corpus reader", p)));
        run.and(read)
    });
    let result = result.and_then(|_| w.finish_closing());
    if let Err(e) = result {
        // Leave no half-written shard; completed shards and progress stay for --resume (the
        // closer completes those already handed to it).
        let _ = w.finish_closing();
        if let Some(s) = w.open.take() {
            discard_shard(dir, s);
        }
        if opts.progress {
            eprintln!();
        }
        return Err(e);
    }
    if opts.eos_policy == EosPolicy::Between && opts.task_index + 1 < opts.num_tasks {
        if let (Some(e), true) = (eos, w.open.is_some()) {
            w.push_tokens(&[e])?;
            let shard = w.open.as_mut().expect("open shard");
            *shard.ends.last_mut().expect("a document") += 1;
            w.state.max_token_id = Some(w.state.max_token_id.map_or(e, |x| x.max(e)));
        }
    }
    w.close_shard()?;
    // No progress record for the last shard: the manifest, written next, says the run is
    // complete, and the progress file is removed then. A run stopped between the two resumes
    // from the last shard rotation, redoing the last shard into the same bytes.
    w.report(true);
    let elapsed = w.prior_elapsed + started.elapsed().as_secs_f64();
    let st = &w.state;
    let run = json!({
        "elapsed_s": elapsed,
        "tokens_per_s": if elapsed > 0.0 { st.tokens as f64 / elapsed } else { 0.0 },
        "num_workers": pool.current_num_threads(),
        "resumed": resumed,
    });
    let manifest = Manifest {
        schema: SHARDS_SCHEMA,
        dtype: "uint32",
        byte_order: "little",
        tokenizer: json!({
            "path": opts.tokenizer_path,
            "sha256": tok.info().fingerprint,
            "vocab_size": tok.vocab_size(),
        }),
        eos_policy: opts.eos_policy,
        eos_id: eos,
        normalization: norm_name(normalizer),
        content_field: &opts.content_field,
        shard_tokens: opts.shard_tokens,
        shards: &st.shards,
        total_tokens: st.tokens,
        total_documents: st.documents,
        empty_documents: st.inputs.iter().map(|i| i.empty_documents).sum(),
        blank_lines: st.inputs.iter().map(|i| i.blank_lines).sum(),
        max_token_id: st.max_token_id,
        inputs: &st.inputs,
        skipped_count: st.skipped.len(),
        skipped: &st.skipped,
        task: json!({"num_tasks": opts.num_tasks, "task_index": opts.task_index}),
        config: &config,
        run,
    };
    let data = serde_json::to_string_pretty(&manifest).expect("serialisable");
    write_atomic(&dir.join(MANIFEST), data.as_bytes())?;
    let _ = std::fs::remove_file(dir.join(PROGRESS));
    let _ = std::fs::remove_file(dir.join(PROGRESS_LOG));
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    /// `encode_corpus`, its manifest parsed.
    fn run(tok: &Tokenizer, opts: &Options, cancel: &AtomicBool) -> Result<Value> {
        encode_corpus(tok, opts, cancel).map(|m| serde_json::from_str(&m).expect("JSON"))
    }

    /// A byte-level tokenizer with no merges: one id per byte, `<|endoftext|>` = 256.
    fn byte_tokenizer() -> Tokenizer {
        let mut vocab = Map::new();
        for b in 0..=255u8 {
            vocab.insert(
                crate::bytelevel::byte_to_char(b).to_string(),
                json!(b as u32),
            );
        }
        let v = json!({
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                              "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel"},
            "added_tokens": [{"id": 256, "content": "<|endoftext|>", "special": true,
                              "normalized": false}],
            "model": {"type": "BPE", "vocab": vocab, "merges": []}
        });
        Tokenizer::from_value(&v, "bytes").unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aprx-shards-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn options(input: PathBuf, output: PathBuf, policy: EosPolicy, shard_tokens: u64) -> Options {
        Options {
            inputs: vec![input],
            output,
            tokenizer_path: "bytes".into(),
            shard_tokens,
            content_field: "content".into(),
            eos_policy: policy,
            eos_id: Some(256),
            normalization: None,
            num_workers: Some(2),
            resume: false,
            overwrite: true,
            on_error: OnError::Fail,
            progress: false,
            text_extensions: vec!["txt".into()],
            num_tasks: 1,
            task_index: 0,
        }
    }

    fn read_u32(p: &Path) -> Vec<u32> {
        std::fs::read(p)
            .unwrap()
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Shard `n` of `ids` (one document), written under its temporary name, as the writer
    /// hands it on.
    fn written_shard(dir: &Path, n: usize, ids: &[u32]) -> OpenShard {
        let file = File::create(dir.join(format!("{}.tmp", shard_name(n).0))).unwrap();
        let sink = ShardFile {
            file,
            written: 0,
            flushing: 0,
        };
        let mut bin = Offload::new("test-shard-out", sink).unwrap();
        let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        bin.write(&bytes).unwrap();
        OpenShard {
            n,
            bin,
            tokens: ids.len() as u64,
            ends: vec![ids.len() as u64],
        }
    }

    fn progress_at(next_record: u64) -> Progress {
        Progress {
            config: json!({}),
            shards: Vec::new(),
            next_file: 0,
            next_record,
            inputs: Vec::new(),
            current: InputDone::default(),
            skipped: Vec::new(),
            documents: next_record,
            tokens: 0,
            max_token_id: None,
            elapsed_s: 0.0,
            log_bytes: 0,
        }
    }

    /// A progress-log line for an input file named `name`.
    fn input_line(name: &str) -> Vec<u8> {
        let d = InputDone {
            path: name.into(),
            ..InputDone::default()
        };
        let mut v = serde_json::to_vec(&LogLine::Input(&d)).unwrap();
        v.push(b'\n');
        v
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_closer_completes_shards_in_order_each_then_its_progress() {
        let dir = scratch("closer");
        let before = ShardInfo {
            file: "shard-00000.bin".into(),
            index: "shard-00000.idx".into(),
            tokens: 0,
            documents: 0,
            // A shard of an aprx that took SHA-256 digests, which a resume keeps as it was.
            digest: FileDigest {
                blake3: String::new(),
                sha256: Some("resumed".into()),
            },
        };
        // A resumed run's log, with a line past its last record (from a record never made).
        let kept = input_line("f0");
        std::fs::write(
            dir.join(PROGRESS_LOG),
            [&kept[..], b"{\"input\": {\"pa"].concat(),
        )
        .unwrap();
        let mut c = Closer::new(&dir, vec![before], kept.len() as u64).unwrap();
        let data: Vec<Vec<u32>> = (1..4).map(|n| (0..5000 * n).collect()).collect();
        for (k, ids) in data.iter().enumerate() {
            c.close(
                written_shard(&dir, k + 1, ids),
                progress_at(10 * k as u64 + 10),
                input_line(&format!("f{}", k + 1)),
            )
            .unwrap();
        }
        let shards = c.finish().unwrap();
        assert_eq!(shards.len(), 4);
        assert_eq!(shards[0].digest.sha256.as_deref(), Some("resumed"));
        assert_eq!(shards[0].digest.blake3, "");
        for (k, ids) in data.iter().enumerate() {
            let s = &shards[k + 1];
            assert_eq!(s.file, shard_name(k + 1).0);
            assert_eq!((s.tokens, s.documents), (ids.len() as u64, 1));
            assert_eq!(read_u32(&dir.join(&s.file)), *ids);
            let want = std::fs::read(dir.join(&s.file)).unwrap();
            assert_eq!(s.digest.blake3, hex(&crate::digest::digest(&want)));
            assert_eq!(s.digest.sha256, None);
            let idx = std::fs::read(dir.join(&s.index)).unwrap();
            assert_eq!(idx, (ids.len() as u64).to_le_bytes());
        }
        // The last progress record is the last shard's, and lists every shard.
        let p: Progress =
            serde_json::from_slice(&std::fs::read(dir.join(PROGRESS)).unwrap()).unwrap();
        assert_eq!(p.next_record, 30);
        assert_eq!(p.shards.len(), 4);
        // The record writes each shard's own digest, and no empty one.
        let raw: Value =
            serde_json::from_slice(&std::fs::read(dir.join(PROGRESS)).unwrap()).unwrap();
        assert_eq!(raw["shards"][0]["sha256"], json!("resumed"));
        assert!(raw["shards"][0].get("blake3").is_none());
        assert_eq!(raw["shards"][1]["blake3"], json!(shards[1].digest.blake3));
        assert!(raw["shards"][1].get("sha256").is_none());
        // Its log holds the inputs appended with each record, after the resumed run's (the
        // unfinished line dropped), and the record covers all of it.
        let log = std::fs::read(dir.join(PROGRESS_LOG)).unwrap();
        assert_eq!(p.log_bytes, log.len() as u64);
        let (inputs, skipped) = read_log(&dir, p.log_bytes).unwrap();
        let paths: Vec<&str> = inputs.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["f0", "f1", "f2", "f3"]);
        assert!(skipped.is_empty());
        // A log shorter than its record says is damaged, not silently short.
        assert_eq!(
            read_log(&dir, p.log_bytes + 1).unwrap_err().code,
            codes::RESUME_MISMATCH
        );
        assert!(
            names(&dir).iter().all(|n| !n.ends_with(".tmp")),
            "{:?}",
            names(&dir)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_closer_error_is_the_runs_and_leaves_no_half_written_shard() {
        let dir = scratch("closer-error");
        let mut c = Closer::new(&dir, Vec::new(), 0).unwrap();
        let first = written_shard(&dir, 0, &[1, 2, 3]);
        // The rename that completes it fails: its temporary file is gone.
        std::fs::remove_file(dir.join(format!("{}.tmp", shard_name(0).0))).unwrap();
        c.close(first, progress_at(1), Vec::new()).unwrap();
        // Shards handed on after the failure are removed, whether the closer is still
        // draining its queue or has stopped.
        let mut err = None;
        for n in 1..6 {
            if let Err(e) = c.close(
                written_shard(&dir, n, &[4, 5]),
                progress_at(1 + n as u64),
                Vec::new(),
            ) {
                err = Some(e);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let err = match err {
            Some(e) => e,
            None => c.finish().unwrap_err(),
        };
        let msg = err.to_string();
        assert!(
            msg.contains("shard-00000.bin.tmp") && msg.contains("rename"),
            "{msg}"
        );
        let left = names(&dir);
        assert!(
            !left
                .iter()
                .any(|n| n.ends_with(".tmp") || n.starts_with("shard-")),
            "{left:?}"
        );
        assert!(!dir.join(PROGRESS).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn batches_end_by_bytes_records_or_mapped_files() {
        let rec = |n: usize| {
            Item::Record(Record {
                file: 0,
                line: 1,
                data: vec![b'x'; n].into(),
                invalid: None,
            })
        };
        let end = |file: u32| Item::FileEnd {
            file,
            digest: String::new(),
            records: 1,
        };
        let file_ends = |batch: &[Item]| {
            batch
                .iter()
                .filter(|i| matches!(i, Item::FileEnd { .. }))
                .count()
        };
        // Plain JSONL files (mapped): a batch ends at its 64th file, however small.
        let mut b = Batcher::new(None);
        let mut files = Vec::new();
        for f in 0..200 {
            for (item, mapped) in [(rec(10), false), (end(f), true)] {
                files.extend(b.push(item, mapped).map(|batch| file_ends(&batch)));
            }
        }
        assert_eq!(files, [BATCH_FILES; 3]);
        // Small text files: their ends do not count; a batch ends at BATCH_RECORDS items.
        let mut b = Batcher::new(None);
        let mut items = Vec::new();
        for f in 0..2000 {
            for item in [rec(10), end(f)] {
                items.extend(b.push(item, false).map(|batch| batch.len()));
            }
        }
        assert_eq!(items, [BATCH_RECORDS; 1]);
        assert_eq!(b.batch.len(), 2 * 2000 - BATCH_RECORDS);
        // Bytes: the first batch's, then doubling up to BATCH_BYTES.
        let mut b = Batcher::new(None);
        let mut bytes = Vec::new();
        for _ in 0..200 {
            bytes.extend(
                b.push(rec(64 << 10), false)
                    .map(|batch| batch.len() * (64 << 10)),
            );
        }
        assert_eq!(
            bytes[..6],
            [
                FIRST_BATCH_BYTES,
                256 << 10,
                512 << 10,
                1 << 20,
                2 << 20,
                BATCH_BYTES
            ]
        );
        assert!(bytes[5..].iter().all(|&n| n == BATCH_BYTES));
        // A plain input of known size: near its end, batches of an eighth of what is left.
        let total = 200 * (64 << 10);
        let mut b = Batcher::new(Some(total));
        let mut bytes = Vec::new();
        for _ in 0..200 {
            bytes.extend(
                b.push(rec(64 << 10), false)
                    .map(|batch| batch.len() * (64 << 10)),
            );
        }
        let last = bytes[bytes.len() - 3..].to_vec();
        assert!(last.iter().all(|&n| n < BATCH_BYTES / 2), "{bytes:?}");
        assert!(bytes.iter().all(|&n| n >= FIRST_BATCH_BYTES), "{bytes:?}");
    }

    #[test]
    fn max_token_id_counts_only_written_eos() {
        let dir = scratch("max");
        let input = dir.join("one.jsonl");
        std::fs::write(&input, "{\"content\": \"ab\"}\n").unwrap();
        let cancel = AtomicBool::new(false);
        let tok = byte_tokenizer();
        // One document and "between": no EOS is written, so it is not the max id.
        let m = run(
            &tok,
            &options(input.clone(), dir.join("b"), EosPolicy::Between, 100),
            &cancel,
        )
        .unwrap();
        assert_eq!(read_u32(&dir.join("b/shard-00000.bin")), [97, 98]);
        assert_eq!(m["max_token_id"], json!(98));
        let m = run(
            &tok,
            &options(input, dir.join("a"), EosPolicy::After, 100),
            &cancel,
        )
        .unwrap();
        assert_eq!(read_u32(&dir.join("a/shard-00000.bin")), [97, 98, 256]);
        assert_eq!(m["max_token_id"], json!(256));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotates_after_the_eos_and_never_splits_documents() {
        let dir = scratch("rotate");
        let input = dir.join("docs.jsonl");
        std::fs::write(
            &input,
            "{\"content\": \"aaa\"}\n\n{\"content\": \"bb\"}\n{\"content\": \"\"}\n{\"content\": \"cccc\"}\n",
        )
        .unwrap();
        let cancel = AtomicBool::new(false);
        let m = run(
            &byte_tokenizer(),
            &options(input, dir.join("o"), EosPolicy::Between, 4),
            &cancel,
        )
        .unwrap();
        // "aaa" + EOS reaches 4 tokens: the shard rotates when "bb" arrives.
        assert_eq!(read_u32(&dir.join("o/shard-00000.bin")), [97, 97, 97, 256]);
        assert_eq!(
            read_u32(&dir.join("o/shard-00001.bin")),
            [98, 98, 256, 99, 99, 99, 99]
        );
        let idx = std::fs::read(dir.join("o/shard-00001.idx")).unwrap();
        let ends: Vec<u64> = idx
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(ends, [3, 7]);
        assert_eq!(m["total_documents"], json!(3));
        assert_eq!(m["empty_documents"], json!(1));
        assert_eq!(m["blank_lines"], json!(1));
        assert!(!dir.join("o/progress.json").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A corpus of many files, with lines skipped, stopped late (a damaged gzip file) after
    /// several shards: the inputs done and the lines skipped are in the progress log, not in
    /// the records, and a resume with the file repaired gives what a run without the damage
    /// gives, its manifest listing every input and skipped line once.
    #[test]
    fn resumes_many_files_from_the_progress_log() {
        use std::io::Write as _;
        let dir = scratch("progress-log");
        let src = dir.join("in");
        std::fs::create_dir_all(&src).unwrap();
        for k in 0..12 {
            std::fs::write(
                src.join(format!("t{k:02}.txt")),
                format!("text {k} {}\n", "x".repeat(k)),
            )
            .unwrap();
        }
        let mut jsonl = String::new();
        for k in 0..9 {
            if k % 3 == 1 {
                jsonl += "{not json\n";
            } else {
                jsonl += &format!("{{\"content\": \"line {k} of u\"}}\n");
            }
        }
        std::fs::write(src.join("u.jsonl"), jsonl).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for k in 0..20 {
            writeln!(gz, "{{\"content\": \"gz document {k} {}\"}}", "y".repeat(k)).unwrap();
        }
        let good = gz.finish().unwrap();
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff; // same size, so the same inputs for the resume
        let cancel = AtomicBool::new(false);
        let tok = byte_tokenizer();
        let mut opts = options(src.clone(), dir.join("ref"), EosPolicy::Between, 40);
        opts.on_error = OnError::Skip;
        std::fs::write(src.join("z.jsonl.gz"), &good).unwrap();
        let want = run(&tok, &opts, &cancel).unwrap();
        std::fs::write(src.join("z.jsonl.gz"), &bad).unwrap();
        opts.output = dir.join("o");
        // Each stopped run resumed as it is, and as a record from before the log would have
        // been written (the inputs and lines skipped inline, the whole input list in the
        // settings, no log); and with 4 workers, whose text files are read by helper threads.
        for (old_format, workers) in [(false, 2), (true, 2), (false, 4)] {
            opts.num_workers = Some(workers);
            std::fs::write(src.join("z.jsonl.gz"), &bad).unwrap();
            opts.overwrite = true;
            opts.resume = false;
            assert!(run(&tok, &opts, &cancel).is_err());
            let out = dir.join("o");
            let p: Progress =
                serde_json::from_slice(&std::fs::read(out.join(PROGRESS)).unwrap()).unwrap();
            assert!(p.shards.len() >= 3, "{} shards", p.shards.len());
            let record = std::fs::read_to_string(out.join(PROGRESS)).unwrap();
            assert!(
                !record.contains("t05.txt"),
                "the inputs are in the log, not the record"
            );
            let (inputs, skipped) = read_log(&out, p.log_bytes).unwrap();
            assert_eq!(inputs.len(), p.next_file);
            assert!(
                inputs.len() >= 12 && !skipped.is_empty(),
                "{inputs:?} {skipped:?}"
            );
            if old_format {
                let mut v: Value = serde_json::from_str(&record).unwrap();
                v["inputs"] = serde_json::to_value(&inputs).unwrap();
                v["skipped"] = serde_json::to_value(&skipped).unwrap();
                v["config"] = want["config"].clone();
                v.as_object_mut().unwrap().remove("log_bytes");
                std::fs::write(out.join(PROGRESS), serde_json::to_vec(&v).unwrap()).unwrap();
                std::fs::remove_file(out.join(PROGRESS_LOG)).unwrap();
            }
            std::fs::write(src.join("z.jsonl.gz"), &good).unwrap();
            opts.overwrite = false;
            opts.resume = true;
            let got = run(&tok, &opts, &cancel).unwrap();
            assert_eq!(got["run"]["resumed"], json!(true));
            for key in [
                "shards",
                "total_tokens",
                "total_documents",
                "inputs",
                "skipped",
                "config",
            ] {
                assert_eq!(got[key], want[key], "{key}");
            }
            for s in want["shards"].as_array().unwrap() {
                let name = s["file"].as_str().unwrap();
                assert_eq!(
                    std::fs::read(dir.join("ref").join(name)).unwrap(),
                    std::fs::read(out.join(name)).unwrap(),
                    "{name}"
                );
            }
            assert!(!out.join(PROGRESS).exists() && !out.join(PROGRESS_LOG).exists());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// 40 JSONL documents, the i-th with `i % m` copies of `fill`.
    fn forty_docs(fill: char, m: usize) -> Vec<String> {
        (0..40)
            .map(|i| {
                format!(
                    "{{\"content\": \"doc {i} {}\"}}",
                    fill.to_string().repeat(i % m)
                )
            })
            .collect()
    }

    /// Writes `dir/in.jsonl`: `docs`, line 30 replaced by `line30`.
    fn write_with_line_30(dir: &Path, docs: &[String], line30: &str) {
        let mut lines = docs.to_vec();
        lines[29] = line30.to_string();
        std::fs::write(dir.join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    }

    /// A run stopped by aprx 0.1 (SHA-256 digests, an empty one for the input being read)
    /// resumed by this version: the shards done keep their `sha256`, the rest get `blake3`,
    /// and the input, hashed again, has its `blake3` and no empty `sha256`.
    #[test]
    fn resumes_a_run_stopped_by_a_version_with_sha256_digests() {
        let dir = scratch("resume-sha256");
        let docs = forty_docs('y', 5);
        let write = |line30: &str| write_with_line_30(&dir, &docs, line30);
        let cancel = AtomicBool::new(false);
        let tok = byte_tokenizer();
        let mut opts = options(
            dir.join("in.jsonl"),
            dir.join("ref"),
            EosPolicy::Between,
            20,
        );
        write(r#"{"content":"5"}"#);
        let want = run(&tok, &opts, &cancel).unwrap();
        write(r#"{"content":555}"#);
        opts.output = dir.join("o");
        run(&tok, &opts, &cancel).unwrap_err();
        // The progress record as 0.1 wrote it.
        let pp = dir.join("o").join(PROGRESS);
        let mut p: Value = serde_json::from_slice(&std::fs::read(&pp).unwrap()).unwrap();
        let done = p["shards"].as_array().unwrap().len();
        assert!(done >= 2);
        for s in p["shards"].as_array_mut().unwrap() {
            let m = s.as_object_mut().unwrap();
            let d = m.remove("blake3").unwrap();
            m.insert(
                "sha256".into(),
                json!(format!("old-{}", d.as_str().unwrap())),
            );
        }
        let cur = p["current"].as_object_mut().unwrap();
        assert!(cur.remove("blake3").is_none()); // not hashed yet: none written
        cur.insert("sha256".into(), json!(""));
        std::fs::write(&pp, serde_json::to_vec_pretty(&p).unwrap()).unwrap();
        write(r#"{"content":"5"}"#);
        opts.overwrite = false;
        opts.resume = true;
        let got = run(&tok, &opts, &cancel).unwrap();
        assert_eq!(got["run"]["resumed"], json!(true));
        let (gs, ws) = (
            got["shards"].as_array().unwrap(),
            want["shards"].as_array().unwrap(),
        );
        assert_eq!(gs.len(), ws.len());
        for (k, (g, w)) in gs.iter().zip(ws).enumerate() {
            let name = w["file"].as_str().unwrap();
            assert_eq!(
                std::fs::read(dir.join("ref").join(name)).unwrap(),
                std::fs::read(dir.join("o").join(name)).unwrap()
            );
            if k < done {
                let old = format!("old-{}", w["blake3"].as_str().unwrap());
                assert_eq!((g.get("blake3"), &g["sha256"]), (None, &json!(old)), "{k}");
            } else {
                assert_eq!((&g["blake3"], g.get("sha256")), (&w["blake3"], None), "{k}");
            }
        }
        assert_eq!(got["inputs"], want["inputs"]);
        assert!(got["inputs"][0].get("sha256").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resumes_after_a_stop_to_identical_output() {
        let dir = scratch("resume");
        let docs = forty_docs('x', 7);
        // Line 30 is bad; the fixed line has the same size, so the inputs' config still matches.
        let write = |line30: &str| write_with_line_30(&dir, &docs, line30);
        let cancel = AtomicBool::new(false);
        let tok = byte_tokenizer();
        for policy in [EosPolicy::Between, EosPolicy::After, EosPolicy::None] {
            let mut opts = options(dir.join("in.jsonl"), dir.join("ref"), policy, 20);
            write(r#"{"content":"5"}"#);
            let want = run(&tok, &opts, &cancel).unwrap();
            write(r#"{"content":555}"#);
            opts.output = dir.join("o");
            let e = run(&tok, &opts, &cancel).unwrap_err();
            assert_eq!(e.code, codes::CORPUS_FIELD_TYPE);
            assert!(dir.join("o").join(PROGRESS).exists());
            assert!(dir.join("o/shard-00003.bin").exists());
            write(r#"{"content":"5"}"#);
            opts.overwrite = false;
            opts.resume = true;
            let got = run(&tok, &opts, &cancel).unwrap();
            assert_eq!(got["run"]["resumed"], json!(true));
            for s in want["shards"].as_array().unwrap() {
                for key in ["file", "index"] {
                    let name = s[key].as_str().unwrap();
                    assert_eq!(
                        std::fs::read(dir.join("ref").join(name)).unwrap(),
                        std::fs::read(dir.join("o").join(name)).unwrap(),
                        "{policy:?} {name}"
                    );
                }
            }
            for key in [
                "shards",
                "total_tokens",
                "total_documents",
                "max_token_id",
                "inputs",
            ] {
                assert_eq!(got[key], want[key], "{policy:?} {key}");
            }
            std::fs::remove_dir_all(dir.join("o")).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
