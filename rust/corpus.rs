//! Corpus readers: input discovery (files and directories, in a stable sorted order) and a
//! streaming reader that yields records (JSONL lines or whole text files) in batches, hashing
//! every input file as it goes. JSON parsing happens later, in parallel, in `with_record`.

use crate::digest::Hasher;
use crate::error::{codes, Error, Result};
use crate::huge::HugeSlice;
use crate::jsonl;
use crate::offload::Offload;
use rayon::prelude::*;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Jsonl,
    JsonlGz,
    JsonlZst,
    /// One document per row: the content column (a UTF-8 string or binary column).
    Parquet,
    /// One document per file.
    Text,
}

impl InputKind {
    /// The kind's name, as a run's settings record it: how the file was read.
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Jsonl => "jsonl",
            InputKind::JsonlGz => "jsonl.gz",
            InputKind::JsonlZst => "jsonl.zst",
            InputKind::Parquet => "parquet",
            InputKind::Text => "text",
        }
    }
}

#[derive(Debug, Clone)]
pub struct InputFile {
    pub path: PathBuf,
    pub kind: InputKind,
    pub size: u64,
}

/// Extensions of text files picked up when walking a directory (explicit file arguments are
/// always taken): source code and prose.
pub const DEFAULT_TEXT_EXTENSIONS: &[&str] = &[
    "py", "pyi", "txt", "md", "rst", "c", "h", "cc", "cpp", "hpp", "rs", "go", "java", "js", "ts",
    "jsx", "tsx", "rb", "php", "sh", "cs", "kt", "swift", "scala", "lua", "sql", "toml", "yaml",
    "yml", "html", "css",
];

/// The kind of an input, from its file name (case-insensitive suffixes).
fn kind_of(name: &OsStr) -> InputKind {
    let name = name.as_encoded_bytes();
    let ends = |suffixes: &[&str]| suffixes.iter().any(|s| ends_with(name, s));
    if ends(&[".jsonl", ".ndjson"]) {
        InputKind::Jsonl
    } else if ends(&[".jsonl.gz", ".ndjson.gz"]) {
        InputKind::JsonlGz
    } else if ends(&[".jsonl.zst", ".ndjson.zst"]) {
        InputKind::JsonlZst
    } else if ends(&[".parquet"]) {
        InputKind::Parquet
    } else {
        InputKind::Text
    }
}

/// Names of JSON files (`.json`, plain or compressed), JSON Lines when named as inputs
/// (codeparrot-clean ships `file-NNN.json.gz`) but passed over in directories, where they are
/// as often a source tree's config or fixture files (`package.json`, pretty-printed
/// `*.json.gz` test data) as a corpus.
const JSON_SUFFIXES: [(&str, InputKind); 3] = [
    (".json", InputKind::Jsonl),
    (".json.gz", InputKind::JsonlGz),
    (".json.zst", InputKind::JsonlZst),
];

/// Whether `name` ends with `suffix`, compared case-insensitively (ASCII).
fn ends_with(name: &[u8], suffix: &str) -> bool {
    name.len() >= suffix.len()
        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// The kind of a JSON file's name (`JSON_SUFFIXES`; a name that is only the suffix is a
/// hidden file, not JSON), or None.
fn json_kind(name: &OsStr) -> Option<InputKind> {
    let name = name.as_encoded_bytes();
    JSON_SUFFIXES
        .iter()
        .find_map(|&(s, kind)| (name.len() > s.len() && ends_with(name, s)).then_some(kind))
}

/// The kind of a file named as an input: as in a directory (`kind_of`), and JSON files as JSON
/// Lines.
fn named_kind(name: &OsStr) -> InputKind {
    match kind_of(name) {
        InputKind::Text => json_kind(name).unwrap_or(InputKind::Text),
        kind => kind,
    }
}

/// Whether a text file's name has one of `exts` (lower case) as its extension (`Path`'s: after
/// the last dot that does not start the name), compared in lower case.
fn has_extension(name: &OsStr, exts: &[String]) -> bool {
    let name = name.as_encoded_bytes();
    let ext = match name.iter().rposition(|&b| b == b'.') {
        Some(dot) if dot > 0 => &name[dot + 1..],
        _ => &[],
    };
    exts.iter().any(|x| x.as_bytes().eq_ignore_ascii_case(ext))
}

/// Expands paths into input files: directories recursively, entries sorted by name, hidden
/// entries skipped; in directories, text files only with one of `text_extensions`. A file
/// named as an input is always taken (a JSON file as JSON Lines, `named_kind`). When the
/// directories yield no input and no file is named, that is an error (`codes::INPUT`) naming
/// what they hold, rather than a run of nothing; a directory that yields nothing beside inputs
/// that do is fine (a tree's `lib-dynload` of `.so` files). `cancel` stops a long walk
/// (`Error::interrupted`): a tree of millions of files takes minutes to list.
pub fn discover(
    paths: &[PathBuf],
    text_extensions: &[String],
    cancel: &AtomicBool,
) -> Result<Vec<InputFile>> {
    let mut out = Vec::new();
    let mut dirs = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| {
            Error::corpus(
                codes::INPUT,
                format!("{}: cannot open input: {e}", p.display()),
            )
        })?;
        if meta.is_dir() {
            out.extend(walk(p, text_extensions, &[], cancel)?);
            dirs.push(p.as_path());
        } else {
            let kind = p.file_name().map_or(InputKind::Text, named_kind);
            out.push(InputFile {
                path: p.clone(),
                kind,
                size: meta.len(),
            });
        }
    }
    if out.is_empty() && !dirs.is_empty() {
        return Err(no_inputs_in(&dirs, text_extensions));
    }
    Ok(out)
}

/// The error for directories with no input file in them: what they hold instead (the first
/// few files, hidden ones left out, and how many; how many are JSON files, which are taken when
/// named), and what would be taken.
fn no_inputs_in(dirs: &[&Path], exts: &[String]) -> Error {
    #[derive(Default)]
    struct Held {
        names: Vec<String>,
        count: usize,
        json: usize,
    }
    fn files_under(dir: &Path, shown_as: &dyn Fn(&Path) -> String, held: &mut Held) {
        let Ok(listing) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = listing
            .flatten()
            .filter(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            // The listing's type, followed through a symlink as `walk` does.
            let is_dir = match entry.file_type() {
                Ok(t) if !t.is_symlink() => t.is_dir(),
                _ => path.is_dir(),
            };
            if is_dir {
                files_under(&path, shown_as, held);
                continue;
            }
            held.count += 1;
            held.json += json_kind(&entry.file_name()).is_some() as usize;
            if held.names.len() < 5 {
                held.names.push(shown_as(&path));
            }
        }
    }
    let mut held = Held::default();
    for &dir in dirs {
        // Relative to its directory when there is one, else with the directory's name.
        let shown_as = |f: &Path| match dirs.len() {
            1 => f.strip_prefix(dir).unwrap_or(f).display().to_string(),
            _ => f.display().to_string(),
        };
        files_under(dir, &shown_as, &mut held);
    }
    let what = if held.count == 0 {
        "no files at all".to_string()
    } else {
        let more = if held.count > held.names.len() {
            ", ..."
        } else {
            ""
        };
        format!(
            "{} file(s) passed over ({}{more})",
            held.count,
            held.names.join(", ")
        )
    };
    let json = match held.json {
        0 => String::new(),
        n => format!(
            " {n} of them are JSON files (.json, .json.gz or .json.zst): those are read as JSON \
             Lines when named as inputs, e.g. `--corpus DIR/*.json.gz`."
        ),
    };
    let listed: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Error::corpus(
        codes::INPUT,
        format!(
            "{}: no corpus files in {}: {what}.{json} Taken from directories: \
             .jsonl and .ndjson files (plain, .gz or .zst), .parquet files, and text files with \
             the extensions {} (--text-extensions; one document per file)",
            listed.join(", "),
            if dirs.len() == 1 {
                "this directory"
            } else {
                "these directories"
            },
            exts.join(", ")
        ),
    )
}

/// The input files under `dir`, in order. The entries of a directory are taken in parallel,
/// on the rayon pool this runs in (encode-corpus's; elsewhere rayon's global one): a tree of
/// many small files spends its discovery waiting on a stat per file. `above` are the
/// directories `dir` is inside of (canonical paths): a symbolic link back to one of them is a
/// cycle, which is an error (`codes::INPUT`) rather than a walk that never ends (two links to
/// `.` make it exponential).
fn walk(
    dir: &Path,
    exts: &[String],
    above: &[PathBuf],
    cancel: &AtomicBool,
) -> Result<Vec<InputFile>> {
    let listing_err = |e: std::io::Error| Error::io(dir, "list directory", &e);
    let here = std::fs::canonicalize(dir).map_err(listing_err)?;
    if let Some(outer) = above.iter().find(|a| **a == here) {
        return Err(Error::corpus(
            codes::INPUT,
            format!(
                "{}: a symbolic link to {}, a directory it is inside of: the tree has a cycle; \
                 remove the link or name the inputs without it",
                dir.display(),
                outer.display()
            ),
        ));
    }
    let above: Vec<PathBuf> = above.iter().cloned().chain([here]).collect();
    let above = above.as_slice();
    let mut entries: Vec<(OsString, std::fs::DirEntry)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(listing_err)? {
        let entry = entry.map_err(listing_err)?;
        let name = entry.file_name();
        if !name.as_encoded_bytes().starts_with(b".") {
            entries.push((name, entry));
        }
    }
    // By name: the order of the entries' paths (they differ in their last component only),
    // without comparing paths component by component.
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let found: Vec<Result<Found>> = entries
        .into_par_iter()
        .map(|(name, entry)| take(dir, &name, &entry, exts, above, cancel))
        .collect();
    let mut out = Vec::new();
    for f in found {
        match f? {
            Found::File(f) => out.push(f),
            Found::Dir(files) => out.extend(files),
            Found::Nothing => {}
        }
    }
    Ok(out)
}

/// What one directory entry holds for the corpus.
enum Found {
    File(InputFile),
    Dir(Vec<InputFile>),
    Nothing,
}

fn take(
    dir: &Path,
    name: &OsStr,
    entry: &std::fs::DirEntry,
    exts: &[String],
    above: &[PathBuf],
    cancel: &AtomicBool,
) -> Result<Found> {
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::interrupted());
    }
    let path = || dir.join(name);
    // The directory listing's own file type where it has one (no stat), and a stat only for a
    // file that is taken (its size), made relative to the directory rather than walking the
    // whole path again; a symlink (or an unknown type) is followed, as `fs::metadata` does.
    let listed = entry.file_type().ok();
    let stat = || match listed {
        Some(t) if !t.is_symlink() => entry.metadata(),
        _ => std::fs::metadata(path()),
    };
    let stat_err = |err: std::io::Error| Error::io(&path(), "stat", &err);
    let is_dir = match listed.filter(|t| t.is_dir() || t.is_file()) {
        Some(t) => t.is_dir(),
        None => stat().map_err(stat_err)?.is_dir(),
    };
    if is_dir {
        return walk(&path(), exts, above, cancel).map(Found::Dir);
    }
    let kind = kind_of(name);
    if kind == InputKind::Text && !has_extension(name, exts) {
        return Ok(Found::Nothing);
    }
    let size = stat().map_err(stat_err)?.len();
    Ok(Found::File(InputFile {
        path: path(),
        kind,
        size,
    }))
}

/// Task `index` of `num_tasks`: a contiguous slice of `files` (in their sorted order),
/// balanced by bytes: a file belongs to the task whose byte range holds its midpoint. The
/// tasks' slices, in task order, are exactly `files`.
pub fn task_slice(files: Vec<InputFile>, num_tasks: u32, index: u32) -> Vec<InputFile> {
    if num_tasks <= 1 {
        return files;
    }
    let total: u128 = files.iter().map(|f| f.size as u128).sum::<u128>().max(1);
    let mut before = 0u128;
    let mut out = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        // Midpoint (doubled to stay integral); files of size 0 count by position.
        let mid = 2 * before + f.size as u128 + (i as u128 % 2);
        let task = (mid * num_tasks as u128 / (2 * total)).min(num_tasks as u128 - 1) as u32;
        before += f.size as u128;
        if task == index {
            out.push(f);
        }
    }
    out
}

/// A reader that hashes every byte it passes on (and counts them, `counting`).
pub struct HashingReader<R> {
    inner: R,
    hasher: FileHasher,
    counter: Option<Arc<AtomicU64>>,
}

/// Files of at least this many bytes are hashed on a thread of their own (`Offload`); smaller
/// ones inline, as a thread per file would cost more than it saves.
const OFFLOAD_HASH_BYTES: u64 = 4 << 20;

enum FileHasher {
    Inline(Box<Hasher>),
    Background(Offload<std::io::Sink>),
}

impl<R: Read> HashingReader<R> {
    /// Hashes on a thread of its own when `size` (the file's) is large.
    pub fn new(inner: R, size: u64) -> std::io::Result<Self> {
        let hasher = if size >= OFFLOAD_HASH_BYTES {
            FileHasher::Background(Offload::new("aprx-hash-input", std::io::sink())?)
        } else {
            FileHasher::Inline(Box::default())
        };
        Ok(HashingReader {
            inner,
            hasher,
            counter: None,
        })
    }

    /// Adds every byte read to `counter` as well (the run's input progress).
    pub fn counting(mut self, counter: &Arc<AtomicU64>) -> Self {
        self.counter = Some(Arc::clone(counter));
        self
    }

    /// The digest (BLAKE3) of everything read, as hex.
    pub fn finish(self) -> std::io::Result<String> {
        let digest: [u8; 32] = match self.hasher {
            FileHasher::Inline(h) => h.finalize(),
            FileHasher::Background(o) => o.finish()?.1,
        };
        Ok(hex(&digest))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        match &mut self.hasher {
            FileHasher::Inline(h) => h.update(&buf[..n]),
            FileHasher::Background(o) => o.write(&buf[..n])?,
        }
        if let Some(c) = &self.counter {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// One unit of input: a JSONL line or a whole text file.
pub struct Record {
    pub file: u32,
    /// 1-based line number (1 for a text file, the row number for Parquet).
    pub line: u64,
    pub data: Data,
    /// Set when the reader already knows the record is not a document (a Parquet null).
    pub invalid: Option<Reject>,
}

/// Bytes records point into: a block read into memory, or a window of a file mapped read-only
/// (plain JSONL on a regular file: no copy, and no fresh memory to zero and fault in).
pub enum Buf {
    Heap(HugeSlice<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Buf::Heap(h) => h,
            Buf::Mapped(m) => m,
        }
    }
}

/// A record's bytes: a buffer of its own (a text file, a Parquet row) or a range of a block
/// (or mapped window) shared with the other JSONL lines read with it.
pub struct Data {
    buf: Arc<Buf>,
    start: usize,
    end: usize,
}

impl Data {
    fn range(buf: &Arc<Buf>, start: usize, end: usize) -> Self {
        debug_assert!(start <= end && end <= buf.len());
        Data {
            buf: Arc::clone(buf),
            start,
            end,
        }
    }
}

impl From<Vec<u8>> for Data {
    fn from(v: Vec<u8>) -> Self {
        let end = v.len();
        Data {
            buf: Arc::new(Buf::Heap(HugeSlice::from_vec(v))),
            start: 0,
            end,
        }
    }
}

impl std::ops::Deref for Data {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

/// What the reader produces, in input order.
pub enum Item {
    Record(Record),
    /// A blank JSONL line (counted, not a document).
    Blank {
        file: u32,
    },
    /// The end of an input file, with its digest and record count.
    FileEnd {
        file: u32,
        digest: String,
        records: u64,
    },
}

/// Small text files read at once by `read_items`'s helper threads, at most: a group's files
/// are read in parallel, then emitted in order.
const READ_GROUP: usize = 64;
/// A group's bytes (by the sizes found at discovery), at most, beyond its first file: the
/// group is in memory until its files are emitted (64 files of up to `OFFLOAD_HASH_BYTES`
/// each would be 256 MiB).
const READ_GROUP_BYTES: u64 = 8 << 20;

/// Calls `emit` for every item of `files[start_file..]`, skipping the first `skip_records`
/// records of `start_file` (resume). Stops early when `emit` returns false. With a
/// `read_pool`, runs of small text files (a tree of source files) are read `READ_GROUP` at a
/// time by its threads: one thread opening, reading, hashing and closing each file in turn
/// caps a many-core run on such a tree. With `ahead` above 1, up to `ahead` compressed and
/// Parquet inputs (of `AHEAD_MIN_BYTES` or more) are decoded at once, each on a thread of its
/// own (`decode_ahead`), and passed on in order: one thread inflating a gzip corpus capped a
/// 16-core run near 100 M tokens/s. Either way the items, digests and errors are those of one
/// thread reading every file in turn.
pub fn read_items(
    files: &[InputFile],
    start_file: usize,
    skip_records: u64,
    field: &str,
    (read_pool, ahead): (Option<&rayon::ThreadPool>, usize),
    read_bytes: &Arc<AtomicU64>,
    mut emit: impl FnMut(Item) -> bool,
) -> Result<()> {
    let small_text = |f: &InputFile| f.kind == InputKind::Text && f.size < OFFLOAD_HASH_BYTES;
    let skip_in = |fi: usize| if fi == start_file { skip_records } else { 0 };
    let decoded_ahead = |f: &InputFile| ahead > 1 && decoded(f.kind) && f.size >= AHEAD_MIN_BYTES;
    std::thread::scope(|scope| {
        // The jobs of files decoded ahead (`jobs_of`), in input order: those not started yet,
        // and those started (None: no thread could be started for it; it is run here, in its
        // turn).
        let mut pending: VecDeque<(usize, Job)> = VecDeque::new();
        let mut decoding: VecDeque<(usize, Job, Option<AheadFile>)> = VecDeque::new();
        let mut next_to_start = start_file;
        let mut top_up = |decoding: &mut VecDeque<(usize, Job, Option<AheadFile>)>| {
            while decoding.len() < ahead {
                if pending.is_empty() {
                    let Some(i) = (next_to_start..files.len()).find(|&i| decoded_ahead(&files[i]))
                    else {
                        next_to_start = files.len();
                        return;
                    };
                    pending.extend(jobs_of(&files[i]).into_iter().map(|job| (i, job)));
                    next_to_start = i + 1;
                }
                let Some((i, job)) = pending.pop_front() else {
                    return;
                };
                let started = decode_ahead(scope, &files[i], i, skip_in(i), field, job.clone());
                decoding.push_back((i, job, started));
                #[cfg(test)]
                tests::note_decoding(decoding.len());
            }
        };
        let mut fi = start_file;
        while fi < files.len() {
            let f = &files[fi];
            let skip = skip_in(fi);
            top_up(&mut decoding);
            if decoded_ahead(f) {
                // Its jobs were started when the window reached them, after every earlier one.
                // A hashing job comes first, so that it runs beside the rows; its digest is
                // taken after them.
                let mut records = 0;
                let mut hashing = None;
                let digest = loop {
                    let (job, started) = match decoding.pop_front() {
                        Some((at, job, started)) if at == fi => (job, started),
                        _ => unreachable!("input {fi} is decoded ahead, first in the window"),
                    };
                    top_up(&mut decoding);
                    if job == Job::Hash {
                        hashing = Some(started);
                        continue;
                    }
                    let mut run = |job: &Job, started: Option<AheadFile>| match started {
                        Some(file) => emit_decoded(f, &file, read_bytes, &mut emit),
                        None => {
                            let read = (read_bytes, || false);
                            run_job(f, fi as u32, skip, field, job, read, &mut emit)
                        }
                    };
                    let Some((n, digest)) = run(&job, started)? else {
                        return Ok(());
                    };
                    records += n;
                    match job {
                        Job::Rows(_, false) => {}
                        Job::Rows(_, true) => {
                            let Some((_, digest)) = run(&Job::Hash, hashing.take().flatten())?
                            else {
                                return Ok(());
                            };
                            break digest;
                        }
                        _ => break digest,
                    }
                };
                if !emit(Item::FileEnd {
                    file: fi as u32,
                    digest,
                    records,
                }) {
                    return Ok(());
                }
                fi += 1;
                continue;
            }
            if f.kind == InputKind::Text {
                // A run of small text files on the reading threads, or else this one file here.
                let read: Vec<Result<(Vec<u8>, String)>> = match read_pool {
                    Some(pool) if small_text(f) => {
                        let mut bytes = 0;
                        let group = files[fi..]
                            .iter()
                            .take(READ_GROUP)
                            .enumerate()
                            .take_while(|&(k, f)| {
                                bytes += f.size;
                                small_text(f) && (k == 0 || bytes <= READ_GROUP_BYTES)
                            })
                            .count();
                        pool.install(|| {
                            files[fi..fi + group]
                                .par_iter()
                                .map(|f| read_text(f, read_bytes))
                                .collect()
                        })
                    }
                    _ => vec![read_text(f, read_bytes)],
                };
                for r in read {
                    let (data, digest) = r?;
                    if !emit_text(fi as u32, data, digest, skip_in(fi), &mut emit) {
                        return Ok(());
                    }
                    fi += 1;
                }
                continue;
            }
            let file = File::open(&f.path).map_err(|e| Error::io(&f.path, "open", &e))?;
            let fi32 = fi as u32;
            // Mapped where the file system can map it, else read.
            let mut mapped = None;
            if f.kind == InputKind::Jsonl
                && use_mmap()
                && file.metadata().is_ok_and(|m| m.is_file() && m.len() > 0)
            {
                let mut hasher =
                    RangeHasher::new(f.size).map_err(|e| Error::io(&f.path, "hash", &e))?;
                let mapped_read = (&mut hasher, &**read_bytes);
                match read_lines_mapped(&file, &f.path, fi32, skip, &mut emit, BLOCKS, mapped_read)?
                {
                    Some(Some(n)) => {
                        let digest = hasher
                            .finish()
                            .map_err(|e| Error::io(&f.path, "hash", &e))?;
                        mapped = Some((n, digest));
                    }
                    Some(None) => return Ok(()),
                    None => {} // cannot be mapped: read below
                }
            }
            let (records, digest) = match mapped {
                Some(done) => done,
                None => match read_file(file, f, fi32, skip, field, read_bytes, &mut emit)? {
                    Some(done) => done,
                    None => return Ok(()),
                },
            };
            if !emit(Item::FileEnd {
                file: fi32,
                digest,
                records,
            }) {
                return Ok(());
            }
            fi += 1;
        }
        Ok(())
    })
}

/// Inputs whose reading is mostly decoding (decompression; Parquet pages), which
/// `read_items` spreads over threads of their own when it is given more than one.
fn decoded(kind: InputKind) -> bool {
    matches!(
        kind,
        InputKind::JsonlGz | InputKind::JsonlZst | InputKind::Parquet
    )
}

/// A file decoded ahead is read by one job, or, a Parquet file of several row groups, by one
/// hashing the file and a job for each run of them, so that one large file is decoded on
/// several threads too.
#[derive(Clone, Debug, PartialEq)]
enum Job {
    /// The whole file, as `read_file` reads it: its records, record count and digest.
    Whole,
    /// The rows of these row groups (`read_parquet`): their records and count; whether they
    /// are the file's last.
    Rows(std::ops::Range<usize>, bool),
    /// The file's digest.
    Hash,
}

/// Row groups of a Parquet file decoded by one job: runs of at least this many bytes (as
/// stored), so that a job's records fill about its queue.
const AHEAD_PART_BYTES: u64 = if cfg!(test) { 16 << 10 } else { 4 << 20 };

/// The jobs reading `f` ahead: a Parquet file of several runs of `AHEAD_PART_BYTES` in its row
/// groups by one hashing the file and a job for each run; any other file (and a Parquet file
/// whose metadata cannot be read: its job gives the error) by one job.
fn jobs_of(f: &InputFile) -> Vec<Job> {
    if f.kind == InputKind::Parquet {
        if let Some(parts) = parquet_parts(&f.path).filter(|p| p.len() > 1) {
            let last = parts.len() - 1;
            let rows = parts.into_iter().enumerate();
            let jobs = rows.map(|(i, groups)| Job::Rows(groups, i == last));
            return std::iter::once(Job::Hash).chain(jobs).collect();
        }
    }
    vec![Job::Whole]
}

/// A Parquet file's row groups cut into runs of at least `AHEAD_PART_BYTES` (the last one may be
/// shorter), from its metadata; None if that cannot be read.
fn parquet_parts(path: &Path) -> Option<Vec<std::ops::Range<usize>>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    // A file the reader cannot open (or panics on, see `parquet_call`) is read whole, where
    // its error is reported.
    let open = || SerializedFileReader::new(File::open(path).ok()?).ok();
    let reader = crate::error::catch_quietly(open).ok().flatten()?;
    let groups = reader.metadata().row_groups();
    let (mut parts, mut start, mut bytes) = (Vec::new(), 0, 0u64);
    for (i, g) in groups.iter().enumerate() {
        bytes += g.compressed_size().max(0) as u64;
        if bytes >= AHEAD_PART_BYTES {
            parts.push(start..i + 1);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < groups.len() {
        parts.push(start..groups.len());
    }
    Some(parts)
}

/// Runs one job reading input `f` (number `fi`): its records (rows up to `skip` passed over),
/// then its record count and the file's digest (empty for `Job::Rows`); None if `emit` asked
/// to stop, or if `cancelled` says so between a hashing job's reads.
fn run_job(
    f: &InputFile,
    fi: u32,
    skip: u64,
    field: &str,
    job: &Job,
    (read_bytes, cancelled): (&Arc<AtomicU64>, impl Fn() -> bool),
    emit: &mut impl FnMut(Item) -> bool,
) -> Result<Option<(u64, String)>> {
    match job {
        Job::Whole => {
            let file = File::open(&f.path).map_err(|e| Error::io(&f.path, "open", &e))?;
            read_file(file, f, fi, skip, field, read_bytes, emit)
        }
        Job::Rows(groups, _) => {
            let rows = read_parquet(
                &f.path,
                fi,
                skip,
                field,
                Some(groups.clone()),
                (f.size, read_bytes),
                emit,
            )?;
            Ok(rows.map(|n| (n, String::new())))
        }
        Job::Hash => Ok(hash_file(f, cancelled)?.map(|digest| (0, digest))),
    }
}

/// The digest of the file `f` (`digest::digest_file`), as hex; None if `cancelled` says so
/// between two reads (the reader has dropped the job).
fn hash_file(f: &InputFile, cancelled: impl Fn() -> bool) -> Result<Option<String>> {
    Ok(crate::digest::digest_file(&f.path, cancelled)?.map(|d| hex(&d)))
}

/// What a thread decoding an input ahead sends: its items in runs of about
/// `AHEAD_BATCH_BYTES` (with their record bytes, let into the file's queue by its `Gate`),
/// then the file's end, each with the stored bytes read for it since the last (the run's
/// progress counts them as the items are passed on).
enum Ahead {
    Items(Vec<Item>, usize, u64),
    End(Result<Option<(u64, String)>>, u64),
}

/// Compressed and Parquet files of at least this many bytes (as stored) are decoded ahead;
/// smaller ones are read by the reader, in their turn, as a thread per file would cost about
/// what it saves.
const AHEAD_MIN_BYTES: u64 = if cfg!(test) { 4 << 10 } else { 1 << 20 };
/// Record bytes a thread decoding ahead sends at once (or `BATCH_ITEMS_AHEAD` items).
const AHEAD_BATCH_BYTES: usize = 1 << 20;
/// Items a thread decoding ahead sends at once, at most (short records).
const BATCH_ITEMS_AHEAD: usize = 4096;
/// Record bytes a file ahead may have sent and the reader not yet taken (one run more when the
/// queue is empty: a record longer than this). A file ahead runs until its queue is full, then
/// at the pace the reader takes it, so the queue is what a run gains from reading ahead: a
/// file's decoding takes (size - queue) / (one thread's speed) after its turn comes. On 16
/// cores, the stdlib 10 times as 4 `.jsonl.gz` files of 27 MB of text, 16 workers: 104.7 M
/// tokens/s with one file at a time, 118.9 with 4 MiB queues, 166.3 with 16 MiB (`benches/ab.py
/// --api encode-corpus --threads 16 --format jsonl.gz --files 4 --copies 10`). A file ahead
/// holds its queue, the run being filled, the blocks they are ranges of (4 MiB each) and, from
/// 4 MiB stored, its hashing thread's chunks: some 30 MiB, 240 MiB with 8 files ahead.
const AHEAD_QUEUE_BYTES: usize = 16 << 20;

/// The record bytes queued from one file ahead, bounded by `AHEAD_QUEUE_BYTES`; closed when the
/// reader drops the file, which wakes its thread to stop.
#[derive(Default)]
struct Gate {
    /// (bytes queued, closed)
    state: std::sync::Mutex<(usize, bool)>,
    room: std::sync::Condvar,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `n` more bytes fit the queue (or it is empty); false once the reader has
    /// dropped the file.
    fn enter(&self, n: usize) -> bool {
        let mut s = self.lock();
        while !s.1 && s.0 > 0 && s.0 + n > AHEAD_QUEUE_BYTES {
            s = self.room.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if !s.1 {
            s.0 += n;
        }
        !s.1
    }

    fn leave(&self, n: usize) {
        self.lock().0 -= n;
        self.room.notify_one();
    }

    fn closed(&self) -> bool {
        self.lock().1
    }

    fn close(&self) {
        self.lock().1 = true;
        self.room.notify_one();
    }
}

/// The reader's end of a file decoded ahead.
struct AheadFile {
    rx: Receiver<Ahead>,
    gate: Arc<Gate>,
}

impl Drop for AheadFile {
    fn drop(&mut self) {
        self.gate.close();
    }
}

/// Starts `job` reading `f` (input number `fi`) on a thread of the scope: its items and
/// result (`run_job`), through a channel bounded by a `Gate`. The thread stops once the reader
/// drops the file. None if no thread could be started (the reader then runs the job itself).
fn decode_ahead<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    f: &'scope InputFile,
    fi: usize,
    skip: u64,
    field: &'scope str,
    job: Job,
) -> Option<AheadFile> {
    let (tx, rx) = std::sync::mpsc::channel::<Ahead>();
    let gate = Arc::new(Gate::default());
    let thread_gate = Arc::clone(&gate);
    std::thread::Builder::new()
        .name("aprx-decode".into())
        .spawn_scoped(scope, move || {
            let read = Arc::new(AtomicU64::new(0));
            let (mut batch, mut bytes) = (Vec::new(), 0);
            let send = |batch: Vec<Item>, bytes: usize| {
                thread_gate.enter(bytes)
                    && tx
                        .send(Ahead::Items(batch, bytes, read.swap(0, Ordering::Relaxed)))
                        .is_ok()
            };
            // A hashing job sends no items: it looks at its gate between reads instead.
            let cancelled = || thread_gate.closed();
            let r = run_job(
                f,
                fi as u32,
                skip,
                field,
                &job,
                (&read, cancelled),
                &mut |item| {
                    if let Item::Record(r) = &item {
                        bytes += r.data.len();
                    }
                    batch.push(item);
                    if bytes < AHEAD_BATCH_BYTES && batch.len() < BATCH_ITEMS_AHEAD {
                        return true;
                    }
                    send(std::mem::take(&mut batch), std::mem::take(&mut bytes))
                },
            );
            // The items read before an error are passed on before it, as by the reader.
            if !matches!(r, Ok(None)) && !batch.is_empty() && !send(batch, bytes) {
                return;
            }
            let _ = tx.send(Ahead::End(r, read.swap(0, Ordering::Relaxed)));
        })
        .ok()?;
    Some(AheadFile { rx, gate })
}

/// Passes on the items of a job run ahead (`decode_ahead`) on input `f`, then gives its result
/// (`run_job`'s): its error, if it failed, once the items before it are passed on. None if
/// `emit` asked to stop.
fn emit_decoded(
    f: &InputFile,
    file: &AheadFile,
    read_bytes: &AtomicU64,
    emit: &mut impl FnMut(Item) -> bool,
) -> Result<Option<(u64, String)>> {
    loop {
        match file.rx.recv() {
            Ok(Ahead::Items(items, bytes, n)) => {
                file.gate.leave(bytes);
                read_bytes.fetch_add(n, Ordering::Relaxed);
                for item in items {
                    if !emit(item) {
                        return Ok(None);
                    }
                }
            }
            Ok(Ahead::End(r, n)) => {
                read_bytes.fetch_add(n, Ordering::Relaxed);
                return r;
            }
            Err(_) => {
                return Err(Error::io(
                    &f.path,
                    "read",
                    &std::io::Error::other("its reading thread ended early"),
                ))
            }
        }
    }
}

/// A text file's bytes and digest (its one record), on one of `read_items`'s reading threads
/// or the reader's own (read to the end: two reads, the second finding it).
fn read_text(f: &InputFile, read_bytes: &Arc<AtomicU64>) -> Result<(Vec<u8>, String)> {
    let file = File::open(&f.path).map_err(|e| Error::io(&f.path, "open", &e))?;
    let mut hr = HashingReader::new(file, f.size)
        .map_err(|e| Error::io(&f.path, "hash", &e))?
        .counting(read_bytes);
    let mut data = Vec::with_capacity(f.size as usize);
    hr.read_to_end(&mut data)
        .map_err(|e| Error::io(&f.path, "read", &e))?;
    let digest = hr.finish().map_err(|e| Error::io(&f.path, "hash", &e))?;
    Ok((data, digest))
}

/// A text file's one record (unless resuming past it) and its end; false if `emit` asked to
/// stop.
fn emit_text(
    file: u32,
    data: Vec<u8>,
    digest: String,
    skip: u64,
    emit: &mut impl FnMut(Item) -> bool,
) -> bool {
    let record = Record {
        file,
        line: 1,
        data: data.into(),
        invalid: None,
    };
    (skip > 0 || emit(Item::Record(record)))
        && emit(Item::FileEnd {
            file,
            digest,
            records: 1,
        })
}

/// One input file read through `std::io::Read` (compressed input, Parquet, and JSONL when it
/// is not mapped; text files are `read_text`'s): its record count and digest, or None if `emit` asked to stop.
fn read_file(
    file: File,
    f: &InputFile,
    fi32: u32,
    skip: u64,
    field: &str,
    read_bytes: &Arc<AtomicU64>,
    emit: &mut impl FnMut(Item) -> bool,
) -> Result<Option<(u64, String)>> {
    // Counted as read from the file: for compressed input, the compressed bytes (the run's
    // progress is in the inputs' sizes); a Parquet file by its rows (`read_parquet`), as it is
    // hashed only after them.
    let mut hr = HashingReader::new(file, f.size).map_err(|e| Error::io(&f.path, "hash", &e))?;
    if f.kind != InputKind::Parquet {
        hr = hr.counting(read_bytes);
    }
    let records = match f.kind {
        InputKind::Text => unreachable!("read_items reads text files with read_text"),
        InputKind::Jsonl => match read_lines(&mut hr, &f.path, fi32, skip, emit, BLOCKS)? {
            Some(n) => n,
            None => return Ok(None),
        },
        InputKind::JsonlGz => {
            let mut r = flate2::read::MultiGzDecoder::new(&mut hr);
            match read_lines(&mut r, &f.path, fi32, skip, emit, BLOCKS)? {
                Some(n) => n,
                None => return Ok(None),
            }
        }
        InputKind::Parquet => {
            match read_parquet(&f.path, fi32, skip, field, None, (f.size, read_bytes), emit)? {
                Some(n) => n,
                None => return Ok(None),
            }
        }
        InputKind::JsonlZst => {
            let mut r = zstd::stream::read::Decoder::new(&mut hr)
                .map_err(|e| compression_error(&f.path, &e))?;
            match read_lines(&mut r, &f.path, fi32, skip, emit, BLOCKS)? {
                Some(n) => n,
                None => return Ok(None),
            }
        }
    };
    // Hash what the decoder did not need (trailing bytes) so the digest covers the file.
    std::io::copy(&mut hr, &mut std::io::sink()).map_err(|e| Error::io(&f.path, "read", &e))?;
    let digest = hr.finish().map_err(|e| Error::io(&f.path, "hash", &e))?;
    Ok(Some((records, digest)))
}

/// A call into the parquet crate, which panics on some corrupt files (e.g. a column chunk of
/// negative length, in its metadata) instead of answering an error: a panic there is that
/// file's error (`CORPUS_COMPRESSION`, as any other corruption), not a crash.
fn parquet_call<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::error::catch_quietly(f).unwrap_or_else(|p| {
        Err(Error::corpus(
            codes::CORPUS_COMPRESSION,
            format!(
                "{}: corrupt or unreadable Parquet (the reader failed: {})",
                path.display(),
                crate::error::panic_message(&p)
            ),
        ))
    })
}

/// Rows of a Parquet file, or of its row groups `groups`: the `field` column of each row is
/// one record, numbered from the file's first row (rows up to `skip` are passed over). Returns
/// the number of rows read, or None if `emit` asked to stop.
fn read_parquet(
    path: &Path,
    file: u32,
    skip: u64,
    field: &str,
    groups: Option<std::ops::Range<usize>>,
    (size, read_bytes): (u64, &AtomicU64),
    emit: &mut impl FnMut(Item) -> bool,
) -> Result<Option<u64>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::reader::RowIter;
    use parquet::record::Field as PqField;
    use parquet::schema::types::Type;
    let corrupt = |e: parquet::errors::ParquetError| {
        Error::corpus(
            codes::CORPUS_COMPRESSION,
            format!("{}: corrupt or unreadable Parquet: {e}", path.display()),
        )
    };
    let f = File::open(path).map_err(|e| Error::io(path, "open", &e))?;
    let reader = parquet_call(path, || SerializedFileReader::new(f).map_err(corrupt))?;
    // Progress: the file's size in step with its rows (the row reader's own reads are not
    // counted; the file is hashed after its rows).
    let total_rows = reader.metadata().file_metadata().num_rows().max(1) as u128;
    let row_groups = reader.metadata().row_groups();
    let groups = groups.unwrap_or(0..row_groups.len());
    let Some(before) = row_groups.get(..groups.start) else {
        return Err(Error::corpus(
            codes::CORPUS_COMPRESSION,
            format!(
                "{}: the file changed while it was read (it has {} row groups now, fewer than {})",
                path.display(),
                row_groups.len(),
                groups.start
            ),
        ));
    };
    let first_row: u64 = before.iter().map(|g| g.num_rows().max(0) as u64).sum();
    let mut counted = (size as u128 * (first_row as u128).min(total_rows) / total_rows) as u64;
    let mut count_to = |rows: u64| {
        let at = (size as u128 * (rows as u128).min(total_rows) / total_rows) as u64;
        read_bytes.fetch_add(at.saturating_sub(counted), Ordering::Relaxed);
        counted = counted.max(at);
    };
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let root = schema.root_schema();
    let column = root
        .get_fields()
        .iter()
        .find(|c| c.name() == field)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = root.get_fields().iter().map(|c| c.name()).collect();
            Error::corpus(
                codes::CORPUS_FIELD_MISSING,
                format!(
                    "{}: no column {field:?} (columns: {})",
                    path.display(),
                    names.join(", ")
                ),
            )
        })?;
    let projection = Type::group_type_builder(root.name())
        .with_fields(vec![column])
        .build()
        .map_err(corrupt)?;
    let mut n = first_row;
    for g in groups {
        let group = parquet_call(path, || reader.get_row_group(g).map_err(corrupt))?;
        let mut rows = parquet_call(path, || {
            RowIter::from_row_group(Some(projection.clone()), group.as_ref()).map_err(corrupt)
        })?;
        while let Some(row) = parquet_call(path, || Ok(rows.next()))? {
            let row = row.map_err(corrupt)?;
            n += 1;
            count_to(n);
            if n <= skip {
                continue;
            }
            let value = row.get_column_iter().next().map(|(_, v)| v);
            let (data, invalid) = match value {
                Some(PqField::Str(s)) => (s.clone().into_bytes(), None),
                Some(PqField::Bytes(b)) => (b.data().to_vec(), None),
                other => {
                    let what = match other {
                        Some(PqField::Null) | None => "null".to_string(),
                        Some(v) => format!("{v:?}"),
                    };
                    let reject = Reject {
                        code: codes::CORPUS_FIELD_TYPE,
                        reason: format!("column {field:?} is {what}, not a string"),
                        line: None,
                    };
                    (Vec::new(), Some(reject))
                }
            };
            if !emit(Item::Record(Record {
                file,
                line: n,
                data: data.into(),
                invalid,
            })) {
                return Ok(None);
            }
        }
    }
    Ok(Some(n - first_row))
}

fn compression_error(path: &Path, e: &std::io::Error) -> Error {
    Error::corpus(
        codes::CORPUS_COMPRESSION,
        format!(
            "{}: corrupt or truncated compressed input: {e}",
            path.display()
        ),
    )
}

/// The first block of a file (small, so the workers start early); each next one doubles, up to
/// `BLOCK`.
const FIRST_BLOCK: usize = 256 << 10;
/// Text read at once into one block; a line longer than this grows its block.
const BLOCK: usize = 4 << 20;
const BLOCKS: (usize, usize) = (FIRST_BLOCK, BLOCK);
/// Free blocks the reader keeps for reuse (a block is free once its records are dropped).
const KEPT_BLOCKS: usize = 16;

/// Returns the number of records (lines) read, or None if `emit` asked to stop.
///
/// The input is read in blocks of `sizes.0` bytes, doubling up to `sizes.1`. Every complete
/// line of a block becomes a record holding the block and its range, so no line is copied;
/// the unfinished line at a block's end is copied to the start of the next block, and a line
/// longer than a block grows it. Blocks whose records are all dropped are reused, so a long
/// run keeps touching the same memory.
fn read_lines(
    r: &mut impl Read,
    path: &Path,
    file: u32,
    skip: u64,
    emit: &mut impl FnMut(Item) -> bool,
    sizes: (usize, usize),
) -> Result<Option<u64>> {
    let read_error = |e: std::io::Error| {
        // The decoders' ways of saying "corrupt" (flate2 reports a bad header or CRC as
        // `InvalidInput`); a plain file's read fails with none of these.
        if e.kind() == std::io::ErrorKind::InvalidData
            || e.kind() == std::io::ErrorKind::InvalidInput
            || e.kind() == std::io::ErrorKind::UnexpectedEof
            || e.kind() == std::io::ErrorKind::Other
        {
            compression_error(path, &e)
        } else {
            Error::io(path, "read", &e)
        }
    };
    let (mut size, max) = sizes;
    let mut line_no = 0u64;
    let mut kept: Vec<Arc<Buf>> = Vec::new();
    let mut cur = HugeSlice::filled(size, 0u8);
    let mut filled = 0;
    loop {
        let mut eof = false;
        while filled < cur.len() {
            match r.read(&mut cur[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(e)),
            }
        }
        // The block's complete lines end at its last newline (at the end of the input: at its
        // end). A full block without one holds part of a single line: grow it.
        let end = match (eof, memchr::memrchr(b'\n', &cur[..filled])) {
            (true, _) => filled,
            (false, Some(i)) => i + 1,
            (false, None) => {
                let mut grown = HugeSlice::filled(2 * cur.len(), 0u8);
                grown[..filled].copy_from_slice(&cur[..filled]);
                cur = grown;
                continue;
            }
        };
        let block = Arc::new(Buf::Heap(std::mem::replace(
            &mut cur,
            HugeSlice::from_vec(Vec::new()),
        )));
        if !emit_lines(&block, end, file, skip, &mut line_no, emit) {
            return Ok(None);
        }
        if eof {
            return Ok(Some(line_no));
        }
        // The next block: a kept one no record holds any more, or a new one; the unfinished
        // line moves to its start.
        size = (2 * size).min(max);
        let tail = filled - end;
        let want = size.max(2 * tail);
        kept.retain(|b| b.len() >= size); // the smaller first blocks are not kept for reuse
        cur = match kept
            .iter()
            .position(|b| Arc::strong_count(b) == 1 && b.len() >= want)
        {
            Some(i) => match Arc::into_inner(kept.swap_remove(i)) {
                Some(Buf::Heap(h)) => h,
                _ => unreachable!("kept blocks are the reader's own, with no other holder"),
            },
            None => HugeSlice::filled(want, 0u8),
        };
        cur[..tail].copy_from_slice(&block[end..filled]);
        filled = tail;
        if block.len() <= max && kept.len() < KEPT_BLOCKS {
            kept.push(block);
        }
    }
}

/// Emits the lines of `block[..end]` (all newline-terminated, but for an input's last line) as
/// records, or `Blank` items, numbering them on from `line_no`; lines up to `skip` are passed
/// over. False when `emit` asked to stop.
fn emit_lines(
    block: &Arc<Buf>,
    end: usize,
    file: u32,
    skip: u64,
    line_no: &mut u64,
    emit: &mut impl FnMut(Item) -> bool,
) -> bool {
    let mut start = 0;
    while start < end {
        let next = memchr::memchr(b'\n', &block[start..end]).map_or(end, |i| start + i + 1);
        *line_no += 1;
        if *line_no > skip {
            let mut stop = next;
            if block[stop - 1] == b'\n' {
                stop -= 1;
                if stop > start && block[stop - 1] == b'\r' {
                    stop -= 1;
                }
            }
            let item = if block[start..stop].iter().all(u8::is_ascii_whitespace) {
                Item::Blank { file }
            } else {
                Item::Record(Record {
                    file,
                    line: *line_no,
                    data: Data::range(block, start, stop),
                    invalid: None,
                })
            };
            if !emit(item) {
                return false;
            }
        }
        start = next;
    }
    true
}

/// `read_lines` for a regular file, through read-only mappings of it: windows of `sizes.0`
/// bytes doubling up to `sizes.1`, each starting at the first line the previous one did not
/// finish (a line longer than a window widens it). Records are ranges of their window, which is
/// unmapped once they are all dropped; nothing is copied and no memory is allocated for the
/// text. `hasher` gets every byte once, in order. The file's length is taken at the start; a
/// file that shrinks while it is read is an error (where the system lets a mapped file shrink,
/// reading a page past its new end would end the process, so this is checked per window).
/// `Ok(None)` when the file system cannot map the file: its first window fails to map, before
/// anything is emitted or hashed (the caller reads it instead).
fn read_lines_mapped(
    f: &File,
    path: &Path,
    file: u32,
    skip: u64,
    emit: &mut impl FnMut(Item) -> bool,
    sizes: (usize, usize),
    (hasher, read_bytes): (&mut RangeHasher, &AtomicU64),
) -> Result<Option<Option<u64>>> {
    let len = f.metadata().map_err(|e| Error::io(path, "stat", &e))?.len();
    let (mut size, max) = sizes;
    let (mut pos, mut hashed, mut line_no) = (0u64, 0u64, 0u64);
    while pos < len {
        let want = (size as u64).min(len - pos) as usize;
        let now = f.metadata().map_err(|e| Error::io(path, "stat", &e))?.len();
        if now < len {
            return Err(Error::corpus(
                codes::INPUT,
                format!(
                    "{}: the file shrank from {len} to {now} bytes while it was read",
                    path.display()
                ),
            ));
        }
        // SAFETY: a read-only private mapping of bytes the file holds (checked just above);
        // nothing in this process writes the file.
        let map = match unsafe { memmap2::MmapOptions::new().offset(pos).len(want).map(f) } {
            Ok(map) => map,
            Err(_) if hashed == 0 => return Ok(None),
            Err(e) => return Err(Error::io(path, "map", &e)),
        };
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        let block = Arc::new(Buf::Mapped(map));
        let eof = pos + want as u64 == len;
        if pos + want as u64 > hashed {
            hasher.update(&block, (hashed - pos) as usize, want);
            hashed = pos + want as u64;
        }
        let end = match (eof, memchr::memrchr(b'\n', &block)) {
            (true, _) => want,
            (false, Some(i)) => i + 1,
            (false, None) => {
                size = 2 * size.max(1);
                continue;
            }
        };
        if !emit_lines(&block, end, file, skip, &mut line_no, emit) {
            return Ok(Some(None));
        }
        pos += end as u64;
        read_bytes.fetch_add(end as u64, Ordering::Relaxed);
        size = (2 * size).min(max);
    }
    Ok(Some(Some(line_no)))
}

/// The digest of a mapped file, fed its windows in order: inline for a small file, else on a
/// thread of its own, which gets each window's range (and keeps the window mapped until
/// hashed), so no byte is copied.
pub(crate) enum RangeHasher {
    Inline(Box<Hasher>),
    Background {
        tx: std::sync::mpsc::SyncSender<(Arc<Buf>, usize, usize)>,
        thread: std::thread::JoinHandle<[u8; 32]>,
    },
}

impl RangeHasher {
    fn new(size: u64) -> std::io::Result<Self> {
        if size < OFFLOAD_HASH_BYTES {
            return Ok(RangeHasher::Inline(Box::default()));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Arc<Buf>, usize, usize)>(4);
        let thread = std::thread::Builder::new()
            .name("aprx-hash-input".into())
            .spawn(move || {
                let mut h = Hasher::new();
                for (buf, start, end) in rx {
                    h.update(&buf[start..end]);
                }
                h.finalize()
            })?;
        Ok(RangeHasher::Background { tx, thread })
    }

    fn update(&mut self, buf: &Arc<Buf>, start: usize, end: usize) {
        match self {
            RangeHasher::Inline(h) => h.update(&buf[start..end]),
            RangeHasher::Background { tx, .. } => {
                // The thread only stops when `tx` is dropped, so the send cannot fail.
                let _ = tx.send((Arc::clone(buf), start, end));
            }
        }
    }

    fn finish(self) -> std::io::Result<String> {
        let digest: [u8; 32] = match self {
            RangeHasher::Inline(h) => h.finalize(),
            RangeHasher::Background { tx, thread } => {
                drop(tx);
                thread
                    .join()
                    .map_err(|_| std::io::Error::other("the hashing thread failed"))?
            }
        };
        Ok(hex(&digest))
    }
}

/// Whether plain JSONL files are read through mappings (`APRX_MMAP=0` turns it off, for
/// inputs on file systems where a mapping is unwise, e.g. files others may truncate).
fn use_mmap() -> bool {
    std::env::var_os("APRX_MMAP").is_none_or(|v| v != "0")
}

/// Lower-case hex digits of `bytes` (one per input file: no formatting machinery per byte).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits: Vec<u8> = bytes
        .iter()
        .flat_map(|&b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .collect();
    String::from_utf8(digits).expect("hex digits are ASCII")
}

/// Why a record is not a document: a stable code and a reason.
#[derive(Debug, Clone)]
pub struct Reject {
    pub code: &'static str,
    pub reason: String,
    /// Line within a text-file record where the problem is.
    pub line: Option<u64>,
}

/// Extracts the document text of a record (the whole data for text files and Parquet rows,
/// the `field` of the JSON object for JSONL) and returns `f` of it. `f` gets the text where it
/// lies: in the record, or, for a JSON string with escapes (every line break in code is one),
/// in the parser's buffer of the unescaped text, so the text is never copied again.
pub fn with_record<R>(
    data: &[u8],
    kind: InputKind,
    field: &str,
    f: impl FnOnce(&str) -> R,
) -> std::result::Result<R, Reject> {
    let text = std::str::from_utf8(data).map_err(|e| {
        let at = e.valid_up_to();
        let line = data[..at].iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        Reject {
            code: codes::CORPUS_UTF8,
            reason: format!("invalid UTF-8 at byte {at}"),
            line: (kind == InputKind::Text).then_some(line),
        }
    })?;
    if kind == InputKind::Text || kind == InputKind::Parquet {
        return Ok(f(text));
    }
    // The fast path (`jsonl::field_text`) answers for nearly every line; serde_json for the
    // rest, with the precise error when there is one. The text buffer is the thread's, taken
    // out while `f` runs (a nested call, from work stolen while `f` waits, gets a new one).
    let mut f = Some(f);
    let mut buf = JSON_TEXT.with_borrow_mut(std::mem::take);
    buf.clear();
    let fast = jsonl::field_text(text.as_bytes(), field.as_bytes(), &mut buf).then(|| {
        // The line is valid UTF-8 and the unescaping keeps it so: the runs between escapes are
        // copied whole (an escape starts at an ASCII backslash, so no run ends inside a
        // character), and each escape becomes one char's UTF-8 (a surrogate escape is left to
        // serde_json). Checked in tests and debug builds, not again here.
        debug_assert!(std::str::from_utf8(&buf).is_ok());
        // SAFETY: valid UTF-8, as above.
        f.take().expect("called once")(unsafe { std::str::from_utf8_unchecked(&buf) })
    });
    if buf.capacity() <= MAX_KEPT_TEXT {
        JSON_TEXT.with_borrow_mut(|b| *b = buf);
    }
    match (fast, f) {
        (Some(r), _) => Ok(r),
        (None, Some(f)) => serde_field(text, field, f),
        (None, None) => unreachable!("`f` is taken only when the fast path answers"),
    }
}

thread_local! {
    /// The unescaped text of the JSONL line being encoded on this thread.
    static JSON_TEXT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A thread keeps its text buffer up to this size (one huge document's is dropped).
const MAX_KEPT_TEXT: usize = 16 << 20;

/// `with_record` for a JSONL line through serde_json: `f` of the `field` member's text, or
/// why the line has none.
pub(crate) fn serde_field<R>(
    text: &str,
    field: &str,
    f: impl FnOnce(&str) -> R,
) -> std::result::Result<R, Reject> {
    // A line that opens a JSON array: likely a whole file holding one array (pretty-printed or
    // not), which is JSON but not JSON Lines. Looked at only for a line that is rejected.
    let array_hint = || {
        if text.trim_start().starts_with('[') {
            " (encode-corpus reads JSON Lines, one object per line; a file holding one JSON \
             array needs converting first, e.g. with `jq -c '.[]'`)"
        } else {
            ""
        }
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let found = FieldSeed { field, f }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v))
        .map_err(|e| {
            // The line ends inside a value: a pretty-printed file, one value over many lines.
            let array_hint = array_hint();
            let eof_hint = if e.is_eof() && array_hint.is_empty() {
                " (JSON Lines needs each object whole on its line; a pretty-printed JSON file \
                 is not JSON Lines)"
            } else {
                ""
            };
            Reject {
                code: codes::CORPUS_JSON,
                reason: format!("invalid JSON: {e}{array_hint}{eof_hint}"),
                line: None,
            }
        })?;
    match found {
        Field::Text(r) => Ok(r),
        Field::Missing => Err(Reject {
            code: codes::CORPUS_FIELD_MISSING,
            reason: format!("no {field:?} field"),
            line: None,
        }),
        Field::WrongType(t) => Err(Reject {
            code: codes::CORPUS_FIELD_TYPE,
            reason: format!("field {field:?} is {t}, not a string"),
            line: None,
        }),
        Field::NotObject(t) => Err(Reject {
            code: codes::CORPUS_JSON,
            reason: format!("the line is a JSON {t}, not an object{}", array_hint()),
            line: None,
        }),
    }
}

/// The document text of a record, copied (see `with_record`).
#[cfg(test)]
pub fn parse_record(
    data: &[u8],
    kind: InputKind,
    field: &str,
) -> std::result::Result<String, Reject> {
    with_record(data, kind, field, str::to_owned)
}

enum Field<R> {
    /// What the caller's function made of the field's text.
    Text(R),
    Missing,
    WrongType(&'static str),
    NotObject(&'static str),
}

/// Deserializes a JSON object, keeping only `field` (other values are skipped unparsed), and
/// hands the field's text to `f`.
struct FieldSeed<'f, F> {
    field: &'f str,
    f: F,
}

impl<'de, 'f, R, F: FnOnce(&str) -> R> DeserializeSeed<'de> for FieldSeed<'f, F> {
    type Value = Field<R>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Field<R>, D::Error> {
        d.deserialize_any(self)
    }
}

/// The value of the wanted field: `f` of its text when it is a string, else its type.
struct ValueSeed<F>(F);

impl<'de, R, F: FnOnce(&str) -> R> DeserializeSeed<'de> for ValueSeed<F> {
    type Value = Field<R>;
    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Field<R>, D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! wrong_type {
    ($($m:ident: $t:ty => $name:expr),*) => {
        $(fn $m<E: de::Error>(self, _: $t) -> std::result::Result<Field<R>, E> {
            Ok(Field::WrongType($name))
        })*
    };
}

/// A whole line that is a JSON scalar: not an object (APRX-C201), not a field of the wrong type.
macro_rules! not_object {
    ($($m:ident: $t:ty => $name:expr),*) => {
        $(fn $m<E: de::Error>(self, _: $t) -> std::result::Result<Field<R>, E> {
            Ok(Field::NotObject($name))
        })*
    };
}

impl<'de, R, F: FnOnce(&str) -> R> Visitor<'de> for ValueSeed<F> {
    type Value = Field<R>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    // Borrowed text (no escapes) and unescaped text both arrive here, as `&str`.
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Field<R>, E> {
        Ok(Field::Text((self.0)(v)))
    }
    wrong_type!(visit_bool: bool => "a boolean", visit_i64: i64 => "a number",
                visit_u64: u64 => "a number", visit_f64: f64 => "a number");
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Field<R>, E> {
        Ok(Field::WrongType("null"))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> std::result::Result<Field<R>, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::WrongType("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<Field<R>, A::Error> {
        while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::WrongType("an object"))
    }
}

impl<'de, 'f, R, F: FnOnce(&str) -> R> Visitor<'de> for FieldSeed<'f, F> {
    type Value = Field<R>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<Field<R>, A::Error> {
        let mut f = Some(self.f);
        let mut found = Field::Missing;
        while let Some(key) = a.next_key::<std::borrow::Cow<'de, str>>()? {
            // The first occurrence of the field counts (`f` is taken then), later ones are
            // skipped.
            match (key == self.field, f.take()) {
                (true, Some(f)) => found = a.next_value_seed(ValueSeed(f))?,
                (_, f_back) => {
                    f = f_back;
                    a.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> std::result::Result<Field<R>, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::NotObject("array"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Field<R>, E> {
        Ok(Field::NotObject("string"))
    }
    not_object!(visit_bool: bool => "boolean", visit_i64: i64 => "number",
                visit_u64: u64 => "number", visit_f64: f64 => "number");
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Field<R>, E> {
        Ok(Field::NotObject("null"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Directories are walked in sorted order, hidden entries and other extensions skipped,
    /// symlinks (to a file or a directory) followed, and each file's size is its own.
    #[test]
    fn discovery_walks_sorted_follows_symlinks_and_sizes_files() {
        let root = std::env::temp_dir().join(format!("aprx-discover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |rel: &str, n: usize| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, vec![b'x'; n]).unwrap();
        };
        write("b/two.py", 20);
        write("b/skip.pyc", 5);
        write("a.py", 10);
        write(".hidden/x.py", 1);
        write("c.jsonl", 30);
        write("elsewhere/real.py", 40);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.join("elsewhere"), root.join("d")).unwrap();
            std::os::unix::fs::symlink(root.join("a.py"), root.join("e.py")).unwrap();
        }
        let exts = vec!["py".to_string()];
        let found = discover(std::slice::from_ref(&root), &exts, &AtomicBool::new(false)).unwrap();
        let got: Vec<(String, InputKind, u64)> = found
            .iter()
            .map(|f| {
                let rel = f.path.strip_prefix(&root).unwrap();
                (rel.display().to_string(), f.kind, f.size)
            })
            .collect();
        let mut want = vec![
            ("a.py".to_string(), InputKind::Text, 10),
            ("b/two.py".to_string(), InputKind::Text, 20),
            ("c.jsonl".to_string(), InputKind::Jsonl, 30),
        ];
        if cfg!(unix) {
            want.push(("d/real.py".to_string(), InputKind::Text, 40));
            want.push(("e.py".to_string(), InputKind::Text, 10));
        }
        want.push(("elsewhere/real.py".to_string(), InputKind::Text, 40));
        assert_eq!(got, want);
        // Stopped: an interruption, not a partial list.
        let e = discover(std::slice::from_ref(&root), &exts, &AtomicBool::new(true)).unwrap_err();
        assert_eq!(e.code, codes::INTERRUPTED);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn discovery_stops_at_a_symlink_cycle() {
        let root = std::env::temp_dir().join(format!("aprx-cycle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("src/pkg")).unwrap();
        std::fs::write(root.join("src/pkg/a.py"), "x = 1\n").unwrap();
        // Two links back up: without cycle detection the walk doubles at every level.
        std::os::unix::fs::symlink("..", root.join("src/pkg/up")).unwrap();
        std::os::unix::fs::symlink(".", root.join("src/pkg/here")).unwrap();
        let exts = vec!["py".to_string()];
        let e = discover(std::slice::from_ref(&root), &exts, &AtomicBool::new(false)).unwrap_err();
        assert_eq!(e.code, codes::INPUT);
        assert!(e.message.contains("src/pkg/"), "{}", e.message);
        assert!(e.message.contains("cycle"), "{}", e.message);
        // A link to a directory elsewhere is followed as before.
        std::fs::remove_file(root.join("src/pkg/up")).unwrap();
        std::fs::remove_file(root.join("src/pkg/here")).unwrap();
        std::fs::create_dir_all(root.join("other")).unwrap();
        std::fs::write(root.join("other/b.py"), "y = 2\n").unwrap();
        std::os::unix::fs::symlink(root.join("other"), root.join("src/pkg/ext")).unwrap();
        let found = discover(&[root.join("src")], &exts, &AtomicBool::new(false)).unwrap();
        assert_eq!(found.len(), 2);
        std::fs::remove_dir_all(&root).unwrap();
    }

    thread_local! {
        /// (files started ahead, most at once) by `read_items` on this thread.
        static DECODING: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
    }

    pub(super) fn note_decoding(window: usize) {
        DECODING.set((DECODING.get().0 + 1, DECODING.get().1.max(window)));
    }

    #[test]
    fn text_files_read_by_helper_threads_come_in_order_with_their_digests() {
        let root = std::env::temp_dir().join(format!("aprx-read-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        // More small text files than a group, a JSONL file and an empty file among them, and
        // compressed JSONL files, alone and in runs (one of several `AHEAD_BATCH_BYTES`).
        // Lines that do not compress to nothing.
        let mix = |k: usize| (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
        let lines = |n: usize, tag: usize| -> Vec<u8> {
            let mut out = Vec::new();
            for k in 0..n {
                match k % 5 {
                    3 => out.extend_from_slice(b" \n"),
                    _ => out.extend(
                        format!("{{\"content\": \"{tag} line {k} {}\"}}\n", mix(k)).bytes(),
                    ),
                }
            }
            out
        };
        let gz = |raw: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, raw).unwrap();
            e.finish().unwrap()
        };
        let zst = |raw: &[u8]| zstd::encode_all(raw, 1).unwrap();
        let mut files = Vec::new();
        for i in 0..150usize {
            let (name, body) = match i {
                70 => (
                    format!("f{i:03}.jsonl"),
                    b"{\"content\": \"x\"}\n\n{}\n".to_vec(),
                ),
                71 => (format!("f{i:03}.py"), Vec::new()),
                20 => (format!("f{i:03}.jsonl.gz"), gz(&lines(40 + i, i))),
                21 => (format!("f{i:03}.jsonl.zst"), zst(&lines(30 + i, i))),
                80 | 122 => (format!("f{i:03}.jsonl.gz"), gz(&lines(3000 + i, i))),
                121 => (format!("f{i:03}.jsonl.zst"), zst(&lines(3000 + i, i))),
                23 => (format!("f{i:03}.jsonl.gz"), gz(b"")),
                120 => (format!("f{i:03}.jsonl.gz"), gz(&lines(150_000, i))),
                _ => (
                    format!("f{i:03}.py"),
                    format!("# file {i}\n").repeat(i % 7 + 1).into_bytes(),
                ),
            };
            let path = root.join(&name);
            std::fs::write(&path, &body).unwrap();
            let kind = kind_of(OsStr::new(&name));
            files.push(InputFile {
                path,
                kind,
                size: body.len() as u64,
            });
        }
        type Seen = Vec<(u32, u64, Vec<u8>, String)>;
        type Read<'p> = (Option<&'p rayon::ThreadPool>, usize);
        let read_from = |files: &[InputFile], pool: Read, start, skip, stop| {
            let mut seen: Seen = Vec::new();
            let read_bytes = Arc::default();
            read_items(files, start, skip, "content", pool, &read_bytes, |item| {
                seen.push(match item {
                    Item::Record(r) => (r.file, r.line, r.data.to_vec(), String::new()),
                    Item::Blank { file } => (file, 0, Vec::new(), String::new()),
                    Item::FileEnd {
                        file,
                        digest,
                        records,
                    } => (file, records, Vec::new(), digest),
                });
                seen.len() < stop
            })
            .unwrap();
            (seen, read_bytes.load(Ordering::Relaxed))
        };
        let read = |pool, start, skip, stop| read_from(&files, pool, start, skip, stop).0;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let (all, read_bytes) = read_from(&files, (None, 0), 0, 0, usize::MAX);
        // Every file: its digest, and its text as its one record; every stored byte counted.
        let ends: Vec<_> = all.iter().filter(|s| !s.3.is_empty()).collect();
        assert_eq!(ends.len(), files.len());
        for (e, f) in ends.iter().zip(&files) {
            assert_eq!(
                e.3,
                hex(&crate::digest::digest(&std::fs::read(&f.path).unwrap()))
            );
        }
        let stored: u64 = files.iter().map(|f| f.size).sum();
        assert_eq!(read_bytes, stored);
        assert!(all.contains(&(5, 1, std::fs::read(&files[5].path).unwrap(), String::new())));
        let line = |k: usize| format!("{{\"content\": \"120 line {k} {}\"}}", mix(k)).into_bytes();
        assert!(all.contains(&(120, 149_998, line(149_997), String::new())));
        // Small compressed files are read in their turn; the others are decoded ahead, as many
        // at once as asked for.
        let ahead: Vec<usize> = (0..files.len())
            .filter(|&i| decoded(files[i].kind) && files[i].size >= AHEAD_MIN_BYTES)
            .collect();
        assert_eq!(ahead, [80, 120, 121, 122]);
        DECODING.set((0, 0));
        assert_eq!(read_from(&files, (None, 3), 0, 0, usize::MAX).0, all);
        assert_eq!(DECODING.get(), (ahead.len(), 3));
        for read_with in [(Some(&pool), 0), (Some(&pool), 3), (None, 2), (None, 8)] {
            assert_eq!(
                read_from(&files, read_with, 0, 0, usize::MAX),
                (all.clone(), stored)
            );
            for (start, skip, stop) in [
                (3, 1, usize::MAX),
                (70, 1, usize::MAX),
                (64, 0, 9),
                (0, 0, 140),
                (20, 7, 60),
                (80, 3, usize::MAX),
                (21, 0, 40_000),
                (0, 0, 200),
                (119, 0, 3),
            ] {
                assert_eq!(
                    read(read_with, start, skip, stop),
                    read((None, 0), start, skip, stop),
                    "from file {start}, skipping {skip}, stopping after {stop} items, {read_with:?}"
                );
            }
        }
        // Files that discovery found large (4 MiB - 1 each, whatever they hold now): a group
        // ends after READ_GROUP_BYTES of them.
        let mut large = files.clone();
        for f in &mut large[10..40] {
            f.size = OFFLOAD_HASH_BYTES - 1;
        }
        assert_eq!(read_from(&large, (Some(&pool), 3), 0, 0, usize::MAX).0, all);
        // A file that cannot be read, or a corrupt one ahead of it: the same error, after the
        // same items, whether files are read ahead or not.
        let truncated = std::fs::read(&files[120].path).unwrap();
        std::fs::write(&files[120].path, &truncated[..truncated.len() / 2]).unwrap();
        std::fs::remove_file(&files[100].path).unwrap();
        let fail = |read_with, start| {
            let mut n = 0;
            let e = read_items(
                &files,
                start,
                0,
                "content",
                read_with,
                &Arc::default(),
                |_| {
                    n += 1;
                    true
                },
            )
            .unwrap_err();
            (e.code, e.message, n)
        };
        for (gone, start) in [(100, 0), (120, 101)] {
            let want = fail((None, 0), start);
            assert!(want.1.contains(&format!("f{gone}.")), "{}", want.1);
            let before = all.iter().skip_while(|s| s.0 < start as u32);
            let files_before = before.take_while(|s| s.0 < gone).count();
            // The truncated file's first lines come before its error.
            assert!(want.2 >= files_before + usize::from(gone == 120) * 10_000);
            for read_with in [(Some(&pool), 0), (Some(&pool), 3), (None, 4)] {
                assert_eq!(fail(read_with, start), want, "{read_with:?}");
            }
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A Parquet file of one OPTIONAL UTF-8 column `content`, a row group per `rows_per_group`
    /// rows (None: a null).
    fn write_parquet(path: &Path, texts: &[Option<String>], rows_per_group: usize) {
        use parquet::data_type::{ByteArray, ByteArrayType};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        let schema = "message schema { OPTIONAL BYTE_ARRAY content (UTF8); }";
        let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
        let props = Arc::new(WriterProperties::builder().build());
        let file = File::create(path).unwrap();
        let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
        for rows in texts.chunks(rows_per_group) {
            let mut group = w.next_row_group().unwrap();
            let mut col = group.next_column().unwrap().unwrap();
            let values: Vec<ByteArray> = rows.iter().flatten().map(|t| t.as_str().into()).collect();
            let defs: Vec<i16> = rows.iter().map(|t| i16::from(t.is_some())).collect();
            col.typed::<ByteArrayType>()
                .write_batch(&values, Some(&defs), None)
                .unwrap();
            col.close().unwrap();
            group.close().unwrap();
        }
        w.close().unwrap();
    }

    #[test]
    fn a_parquet_file_is_read_by_a_job_per_run_of_row_groups() {
        let dir = std::env::temp_dir().join(format!("aprx-pq-parts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mix = |k: usize| (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20;
        let texts: Vec<Option<String>> = (0..6000)
            .map(|k| (k % 997 != 5).then(|| format!("row {k} {:x}\n", mix(k)).repeat(k % 4 + 1)))
            .collect();
        let mut files = Vec::new();
        for (name, rows_per_group) in [("a.parquet", 100), ("b.jsonl", 0), ("c.parquet", 7000)] {
            let path = dir.join(name);
            if rows_per_group == 0 {
                std::fs::write(&path, "{\"content\": \"between\"}\n").unwrap();
            } else {
                write_parquet(&path, &texts, rows_per_group);
            }
            let size = std::fs::metadata(&path).unwrap().len();
            let kind = kind_of(OsStr::new(name));
            files.push(InputFile { path, kind, size });
        }
        // a.parquet: 60 row groups in runs of at least AHEAD_PART_BYTES, read by a job each,
        // and one hashing it; c.parquet, one row group: one job.
        let parts = parquet_parts(&files[0].path).unwrap();
        assert!(parts.len() >= 4, "{parts:?}");
        assert_eq!(parts.first().unwrap().start, 0);
        assert_eq!(parts.last().unwrap().end, 60);
        assert!(parts.windows(2).all(|p| p[0].end == p[1].start));
        assert_eq!(jobs_of(&files[0]).len(), parts.len() + 1);
        assert_eq!(jobs_of(&files[2]), [Job::Whole]);
        type Seen = Vec<(u32, u64, Vec<u8>, bool, String)>;
        let read = |ahead: usize, start, skip, stop: usize| {
            let mut seen: Seen = Vec::new();
            let read_bytes = Arc::default();
            DECODING.set((0, 0));
            let r = read_items(
                &files,
                start,
                skip,
                "content",
                (None, ahead),
                &read_bytes,
                |item| {
                    seen.push(match item {
                        Item::Record(r) => (
                            r.file,
                            r.line,
                            r.data.to_vec(),
                            r.invalid.is_some(),
                            String::new(),
                        ),
                        Item::Blank { file } => (file, 0, Vec::new(), false, String::new()),
                        Item::FileEnd {
                            file,
                            digest,
                            records,
                        } => (file, records, Vec::new(), false, digest),
                    });
                    seen.len() < stop
                },
            );
            r.unwrap();
            (seen, read_bytes.load(Ordering::Relaxed), DECODING.get())
        };
        let (all, read_bytes, _) = read(0, 0, 0, usize::MAX);
        assert_eq!(all.len(), 2 * 6000 + 1 + 3);
        assert_eq!(
            all[6000],
            (
                0,
                6000,
                Vec::new(),
                false,
                hex(&crate::digest::digest(
                    &std::fs::read(&files[0].path).unwrap()
                ))
            )
        );
        assert!(all[5].3 && all[6].2 == texts[6].as_ref().unwrap().as_bytes());
        assert_eq!(read_bytes, files.iter().map(|f| f.size).sum::<u64>());
        let got = read(3, 0, 0, usize::MAX);
        assert_eq!((got.0, got.1), (all.clone(), read_bytes));
        assert_eq!(got.2, (parts.len() + 2, 3));
        for (start, skip, stop) in [
            (0, 2500, usize::MAX),
            (0, 0, 3333),
            (2, 17, 40),
            (0, 5999, 9),
        ] {
            let want = read(0, start, skip, stop).0;
            assert_eq!(read(3, start, skip, stop).0, want, "{start} {skip} {stop}");
            assert_eq!(read(8, start, skip, stop).0, want, "{start} {skip} {stop}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_hashing_job_stops_between_reads_once_dropped() {
        let path = std::env::temp_dir().join(format!("aprx-hash-job-{}", std::process::id()));
        let body: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &body).unwrap();
        let f = InputFile {
            path: path.clone(),
            kind: InputKind::Parquet,
            size: body.len() as u64,
        };
        let want = hex(&crate::digest::digest(&body));
        assert_eq!(hash_file(&f, || false).unwrap(), Some(want.clone()));
        let checks = std::cell::Cell::new(0);
        let cancelled = || {
            checks.set(checks.get() + 1);
            checks.get() > 2
        };
        assert_eq!(hash_file(&f, cancelled).unwrap(), None);
        assert_eq!(checks.get(), 3); // two 1 MiB reads, not the whole file
        let job = run_job(
            &f,
            0,
            0,
            "content",
            &Job::Hash,
            (&Arc::default(), || false),
            &mut |_| true,
        );
        assert_eq!(job.unwrap(), Some((0, want)));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_file_ahead_queues_at_most_its_budget_and_stops_when_dropped() {
        let mib = 1 << 20;
        let gate = Arc::new(Gate::default());
        // A record longer than the whole queue goes when the queue is empty.
        assert!(gate.enter(AHEAD_QUEUE_BYTES + 5 * mib));
        gate.leave(AHEAD_QUEUE_BYTES + 5 * mib);
        assert!(gate.enter(AHEAD_QUEUE_BYTES - mib));
        assert!(gate.enter(mib)); // full now
        let (tx, rx) = std::sync::mpsc::channel();
        let g = Arc::clone(&gate);
        let waiter = std::thread::spawn(move || {
            let _ = tx.send(g.enter(2 * mib));
            let _ = tx.send(g.enter(AHEAD_QUEUE_BYTES));
        });
        let wait = std::time::Duration::from_millis(100);
        assert!(rx.recv_timeout(wait).is_err(), "entered a full queue");
        gate.leave(mib);
        assert!(
            rx.recv_timeout(wait).is_err(),
            "entered with too little room"
        );
        gate.leave(mib);
        assert_eq!(rx.recv_timeout(10 * wait), Ok(true));
        // Waiting for room, then the reader drops the file.
        assert!(rx.recv_timeout(wait).is_err());
        gate.close();
        assert_eq!(rx.recv_timeout(10 * wait), Ok(false));
        waiter.join().unwrap();
        assert!(!gate.enter(1));
    }

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn kinds_and_extensions_are_read_from_names_case_insensitively() {
        let os = |s: &str| OsString::from(s);
        assert_eq!(kind_of(&os("a.JSONL")), InputKind::Jsonl);
        assert_eq!(kind_of(&os("a.ndjson.Gz")), InputKind::JsonlGz);
        assert_eq!(kind_of(&os("a.jsonl.zst")), InputKind::JsonlZst);
        // JSON files are JSON Lines only when named as inputs (codeparrot's `file-NNN.json.gz`);
        // in a directory, text (so passed over unless `json` is a text extension).
        for (name, named) in [
            ("file-000000000001.json.gz", InputKind::JsonlGz),
            ("a.JSON.zst", InputKind::JsonlZst),
            ("package.json", InputKind::Jsonl),
            ("b.ndjson.gz", InputKind::JsonlGz),
            ("c.parquet", InputKind::Parquet),
            ("d.py", InputKind::Text),
            (".json", InputKind::Text),
            ("e.json.bz2", InputKind::Text),
        ] {
            assert_eq!(named_kind(&os(name)), named, "{name}");
            let in_dir = match name {
                "b.ndjson.gz" | "c.parquet" => named,
                _ => InputKind::Text,
            };
            assert_eq!(kind_of(&os(name)), in_dir, "{name}");
        }
        assert_eq!(kind_of(&os("a.PARQUET")), InputKind::Parquet);
        assert_eq!(kind_of(&os("jsonl")), InputKind::Text);
        assert_eq!(kind_of(&os("a.jsonl.bak")), InputKind::Text);
        let exts = ["py".to_string(), "md".to_string()];
        for (name, taken) in [
            ("A.PY", true),
            ("b.tar.md", true),
            ("c.pyc", false),
            ("py", false),
            ("d.", false),
            ("e.p", false),
        ] {
            assert_eq!(has_extension(&os(name), &exts), taken, "{name}");
            // The same rule as `Path::extension`.
            let ext = Path::new(name)
                .extension()
                .map(|x| x.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            assert_eq!(exts.contains(&ext), taken, "{name}");
        }
    }

    #[test]
    fn task_slices_are_contiguous_and_cover_everything() {
        let files: Vec<InputFile> = (0..37u64)
            .map(|i| InputFile {
                path: PathBuf::from(format!("f{i:02}")),
                kind: InputKind::Text,
                size: (i * 7919) % 1000 + 1,
            })
            .collect();
        for k in 1..6u32 {
            let mut joined = Vec::new();
            for t in 0..k {
                joined.extend(task_slice(files.clone(), k, t).into_iter().map(|f| f.path));
            }
            let all: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
            assert_eq!(joined, all, "k={k}");
        }
    }

    /// A reader giving at most a few bytes per call, and `Interrupted` now and then.
    struct Trickle<'a> {
        data: &'a [u8],
        rnd: Box<dyn FnMut(usize) -> usize>,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if (self.rnd)(7) == 0 {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = ((self.rnd)(40) + 1).min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// What `read_lines` gives: (line number, bytes) per record, None for a blank line.
    type Lines = Vec<Option<(u64, Vec<u8>)>>;

    fn lines_of(
        mut r: impl Read,
        skip: u64,
        stop_after: usize,
        sizes: (usize, usize),
    ) -> (Lines, Option<u64>) {
        let mut got = Vec::new();
        let n = read_lines(
            &mut r,
            Path::new("t.jsonl"),
            0,
            skip,
            &mut collect(&mut got, stop_after),
            sizes,
        )
        .unwrap();
        (got, n)
    }

    /// An `emit` that records each item (None for a blank line) and stops after `stop_after`.
    fn collect(got: &mut Lines, stop_after: usize) -> impl FnMut(Item) -> bool + '_ {
        move |item: Item| {
            got.push(match item {
                Item::Record(r) => Some((r.line, r.data.to_vec())),
                _ => None,
            });
            got.len() < stop_after
        }
    }

    /// `lines_of` through `read_lines_mapped` on a file holding `data`; also checks the
    /// digest of a complete read (inline and on the hashing thread).
    fn mapped_lines_of(
        data: &[u8],
        skip: u64,
        stop_after: usize,
        sizes: (usize, usize),
        case: usize,
    ) -> (Lines, Option<u64>) {
        let path = std::env::temp_dir().join(format!(
            "aprx-mapped-{}-{case}-{stop_after}.jsonl",
            std::process::id()
        ));
        std::fs::write(&path, data).unwrap();
        let f = File::open(&path).unwrap();
        let mut got = Vec::new();
        let background = if case.is_multiple_of(2) {
            0
        } else {
            OFFLOAD_HASH_BYTES
        };
        let mut hasher = RangeHasher::new(background).unwrap();
        let read = AtomicU64::new(0);
        let n = read_lines_mapped(
            &f,
            &path,
            0,
            skip,
            &mut collect(&mut got, stop_after),
            sizes,
            (&mut hasher, &read),
        )
        .unwrap()
        .expect("a regular file maps");
        if n.is_some() {
            assert_eq!(hasher.finish().unwrap(), hex(&crate::digest::digest(data)));
            // Every byte counted as read, once (the run's progress).
            assert_eq!(read.into_inner(), data.len() as u64);
        } else {
            assert!(read.into_inner() <= data.len() as u64);
        }
        std::fs::remove_file(&path).unwrap();
        (got, n)
    }

    /// Lines split at `\n`, less one `\r` before it; the last one counted only if not empty.
    fn reference_lines(data: &[u8], skip: u64) -> (Lines, u64) {
        let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        if parts.last().is_some_and(|p| p.is_empty()) {
            parts.pop(); // after the final newline (or an empty input)
        }
        let n = parts.len();
        let mut out = Vec::new();
        for (i, p) in parts.into_iter().enumerate() {
            let line = i as u64 + 1;
            if line <= skip {
                continue;
            }
            let terminated = i + 1 < n || data.ends_with(b"\n");
            let p = match p.strip_suffix(b"\r") {
                Some(q) if terminated => q,
                _ => p,
            };
            out.push((!p.iter().all(u8::is_ascii_whitespace)).then(|| (line, p.to_vec())));
        }
        (out, n as u64)
    }

    #[test]
    fn block_and_mapped_readers_split_lines_like_the_reference() {
        let mut rnd = crate::test_rng::draws(0xb10c_4ead_u64);
        for case in 0..400 {
            let mut data = Vec::new();
            for _ in 0..rnd(30) {
                let len = match rnd(10) {
                    0 => 0,
                    1 => 40 + rnd(300), // longer than the smallest blocks
                    _ => rnd(20),
                };
                let alphabet = b"ab {}\"\r \t\xc3\xa9";
                for _ in 0..len {
                    data.push(alphabet[rnd(alphabet.len())]);
                }
                match rnd(6) {
                    0 => data.extend_from_slice(b"\r\n"),
                    1 => data.extend_from_slice(b" \n"),
                    _ => data.push(b'\n'),
                }
            }
            if rnd(2) == 0 {
                data.truncate(data.len().saturating_sub(rnd(5))); // no final newline
            }
            let skip = if rnd(4) == 0 { rnd(8) as u64 } else { 0 };
            let (want, total) = reference_lines(&data, skip);
            let sizes = [(4, 16), (1, 1), (16, 64), (FIRST_BLOCK, BLOCK)][case % 4];
            let seed = rnd(1 << 30) as u64 + 1;
            let trickle = Trickle {
                data: &data,
                rnd: Box::new(crate::test_rng::draws(seed)),
            };
            let (got, n) = lines_of(trickle, skip, usize::MAX, sizes);
            assert_eq!(
                got,
                want,
                "case {case}: {:?}",
                String::from_utf8_lossy(&data)
            );
            assert_eq!(n, Some(total), "case {case}");
            let (got, n) = lines_of(&data[..], skip, usize::MAX, sizes);
            assert_eq!(
                (got, n),
                (want.clone(), Some(total)),
                "case {case}, whole reads"
            );
            if !data.is_empty() {
                let (got, n) = mapped_lines_of(&data, skip, usize::MAX, sizes, case);
                assert_eq!((got, n), (want.clone(), Some(total)), "case {case}, mapped");
            }
            // Stopping early: the items up to the stop, and None.
            if !want.is_empty() {
                let k = rnd(want.len()) + 1;
                let (got, n) = lines_of(&data[..], skip, k, sizes);
                assert_eq!(
                    (&got[..], n),
                    (&want[..k], None),
                    "case {case}, stop after {k}"
                );
                let (got, n) = mapped_lines_of(&data, skip, k, sizes, case);
                assert_eq!(
                    (&got[..], n),
                    (&want[..k], None),
                    "case {case}, mapped, stop after {k}"
                );
            }
        }
    }

    fn text(data: &str) -> std::result::Result<String, &'static str> {
        parse_record(data.as_bytes(), InputKind::Jsonl, "content").map_err(|r| r.code)
    }

    #[test]
    fn extracts_the_field() {
        assert_eq!(
            text(r#"{"a": [1, {"b": 2}], "content": "x\ny"}"#).unwrap(),
            "x\ny"
        );
        assert_eq!(text(r#"{"content": "plain"}"#).unwrap(), "plain");
        assert_eq!(text(r#"{"other": 1}"#), Err(codes::CORPUS_FIELD_MISSING));
        assert_eq!(text(r#"{"content": 5}"#), Err(codes::CORPUS_FIELD_TYPE));
        assert_eq!(text(r#"{"content": null}"#), Err(codes::CORPUS_FIELD_TYPE));
        assert_eq!(text(r#"{"content": "x""#), Err(codes::CORPUS_JSON));
        assert_eq!(
            text(r#"{"content": "x"} trailing"#),
            Err(codes::CORPUS_JSON)
        );
        assert_eq!(text("[1, 2]"), Err(codes::CORPUS_JSON));
        // The first occurrence of the field counts; later ones are only checked as JSON.
        assert_eq!(
            text(r#"{"content": "a\tb", "content": "c"}"#).unwrap(),
            "a\tb"
        );
        assert_eq!(
            text(r#"{"content": 5, "content": "c"}"#),
            Err(codes::CORPUS_FIELD_TYPE)
        );
        assert_eq!(
            text(r#"{"content": "a", "content": "c\x"}"#),
            Err(codes::CORPUS_JSON)
        );
        // The caller's function sees the unescaped text in place, once.
        let mut calls = 0;
        let n = with_record(
            br#"{"content": "x\u00e9\n"}"#,
            InputKind::Jsonl,
            "content",
            |s| {
                calls += 1;
                s.chars().count()
            },
        );
        assert_eq!((n.unwrap(), calls), (3, 1));
        // A line that is a JSON scalar is not an object (C201), not a mistyped field (C204).
        for line in ["5", "-1.5", "true", "null", r#""content""#] {
            let r = parse_record(line.as_bytes(), InputKind::Jsonl, "content").unwrap_err();
            assert_eq!(r.code, codes::CORPUS_JSON, "{line}");
            assert!(r.reason.contains("not an object"), "{line}: {}", r.reason);
            assert!(!r.reason.contains("JSON Lines"), "{line}: {}", r.reason);
        }
        // A line that opens an array, whole or the first line of a pretty-printed file: the
        // reason says that a file of one array is not JSON Lines.
        for line in [r#"[{"content": "x"}, {"content": "y"}]"#, "[", "  [{"] {
            let r = parse_record(line.as_bytes(), InputKind::Jsonl, "content").unwrap_err();
            assert_eq!(r.code, codes::CORPUS_JSON, "{line}");
            assert!(r.reason.contains("one JSON array"), "{line}: {}", r.reason);
        }
        // A line that ends inside an object (a pretty-printed file's first line) says so; a
        // complete line with a bad value does not.
        for (line, hint) in [("{", true), (r#"{"content": "x","#, true), ("{]", false)] {
            let r = parse_record(line.as_bytes(), InputKind::Jsonl, "content").unwrap_err();
            assert_eq!(r.code, codes::CORPUS_JSON, "{line}");
            assert_eq!(
                r.reason.contains("pretty-printed"),
                hint,
                "{line}: {}",
                r.reason
            );
        }
        let bad = b"{\"content\": \"\xff\"}";
        assert_eq!(
            parse_record(bad, InputKind::Jsonl, "content")
                .unwrap_err()
                .code,
            codes::CORPUS_UTF8
        );
    }
}
