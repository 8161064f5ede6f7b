//! Profiling driver for perf / callgrind: encodes the standard library (or the files given)
//! with a fresh tokenizer, one thread, and prints time per stage.
//!
//! cargo run --profile profiling --example profile_encode -- TOKENIZER [FILES...]

use aprx::Tokenizer;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        for e in v {
            if !e.ends_with("site-packages") {
                collect(&e, out);
            }
        }
    } else if p.extension().is_some_and(|x| x == "py") {
        out.push(p.to_path_buf());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tok_path = args
        .get(1)
        .expect("usage: profile_encode TOKENIZER [FILES...]");
    let mut files = Vec::new();
    if args.len() > 2 {
        for a in &args[2..] {
            collect(Path::new(a), &mut files);
        }
    } else {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sysconfig;print(sysconfig.get_paths()['stdlib'])",
            ])
            .output()
            .expect("python3");
        collect(
            Path::new(String::from_utf8_lossy(&out.stdout).trim()),
            &mut files,
        );
    }
    let docs: Vec<String> = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect();
    let bytes: usize = docs.iter().map(|d| d.len()).sum();
    let t = Instant::now();
    let tok = Tokenizer::from_path(Path::new(tok_path)).expect("tokenizer");
    eprintln!("load {:.3}s", t.elapsed().as_secs_f64());
    if std::env::var("MODE").as_deref() == Ok("scan") {
        let pre =
            aprx::pretok::PreTokenizer::new(&[aprx::pretok::QWEN2_PATTERN.to_string()], false)
                .unwrap();
        for _ in 0..3 {
            let t = Instant::now();
            let mut n = 0usize;
            for d in &docs {
                pre.for_each_piece(d, |_| n += 1).unwrap();
            }
            let s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let m: usize = docs
                .iter()
                .map(|d| aprx::bitscan::piece_ends(d.as_bytes()).len())
                .sum();
            let b = t.elapsed().as_secs_f64();
            // The bit-parallel scanner's windows: how many, how far each one advances.
            let (mut windows, mut advance) = (0usize, 0usize);
            for d in &docs {
                let s = d.as_bytes();
                let mut pos = 0;
                while pos < s.len() {
                    let (_, next) = aprx::bitscan::window(s, pos);
                    pos = if next == 0 {
                        aprx::pretok::next_cl100k(s, pos, 1) // one piece, scalar
                    } else {
                        windows += 1;
                        advance += next;
                        pos + next
                    };
                }
            }
            eprintln!(
                "bit-parallel windows: {windows}, {:.1} bytes and {:.1} pieces each on average",
                advance as f64 / windows as f64,
                m as f64 / windows as f64
            );
            eprintln!(
                "scan only: scalar scanner {n} pieces {:.3}s {:.1} MB/s; bit-parallel {m} pieces \
                 {:.3}s {:.1} MB/s",
                s,
                bytes as f64 / s / 1e6,
                b,
                bytes as f64 / b / 1e6
            );
        }
    }
    if std::env::var("MODE").as_deref() == Ok("bpe") {
        // The merging a cold encode does, alone: each distinct piece BPE splits, once, in
        // batches of CH pieces (16, the encoder's batch, unless set).
        let mut batched = std::collections::HashSet::new();
        let mut long = std::collections::HashSet::new();
        for d in &docs {
            for p in tok.pre_tokenize(d).unwrap() {
                let b = p.into_bytes();
                if b.len() > aprx::bpe::BATCHED_LONG {
                    long.insert(b);
                } else if b.len() > 1 {
                    batched.insert(b);
                }
            }
        }
        let bpe = tok.bpe();
        let split = |p: &Vec<u8>| {
            let mut v = Vec::new();
            bpe.encode_piece(p, None, &mut v);
            v.len() > 1
        };
        let batched: Vec<Vec<u8>> = batched.into_iter().filter(split).collect();
        if std::env::var("HIST").is_ok() {
            // HIST=1: how many ids BPE gives the cold pieces (11 = 11 or more), overall and by
            // piece length (0..8, 8..16, 16..24, 24..32 bytes).
            let mut h = [0usize; 12];
            let mut hb = [[0usize; 12]; 4];
            for p in &batched {
                let mut v = Vec::new();
                bpe.encode_piece(p, None, &mut v);
                h[v.len().min(11)] += 1;
                hb[(p.len() / 8).min(3)][v.len().min(11)] += 1;
            }
            eprintln!("ids per cold piece: {:?}", h);
            for (i, r) in hb.iter().enumerate() {
                eprintln!("  len {}..: {:?}", i * 8, r);
            }
        }
        let long: Vec<Vec<u8>> = long.into_iter().collect();
        let nbytes = |v: &[Vec<u8>]| v.iter().map(|p| p.len()).sum::<usize>();
        // The pieces one after another, as in a text (not each in its own allocation).
        let buf: Vec<u8> = batched.concat();
        let mut spans = Vec::new();
        let mut at = 0;
        for p in &batched {
            spans.push(at..at + p.len());
            at += p.len();
        }
        for _ in 0..3 {
            let t = Instant::now();
            let (mut out, mut ends) = (Vec::new(), Vec::new());
            let ch: usize = std::env::var("CH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(16);
            for b in spans.chunks(ch) {
                bpe.merge_batch(b.len(), |k| &buf[b[k].clone()], None, &mut out, &mut ends);
            }
            let s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut lo = Vec::new();
            for p in &long {
                bpe.encode_piece(p, None, &mut lo);
            }
            let l = t.elapsed().as_secs_f64();
            eprintln!(
                "bpe only: {} pieces of up to {} bytes ({} bytes, {} ids) {:.1} ms, {:.0} ns each; \
                 {} longer ({} bytes) {:.1} ms",
                batched.len(),
                aprx::bpe::BATCHED_LONG,
                nbytes(&batched),
                out.len(),
                s * 1e3,
                s * 1e9 / batched.len() as f64,
                long.len(),
                nbytes(&long),
                l * 1e3
            );
        }
    }
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // COLD=1: every rep on a fresh thread, so with an empty piece cache (profiles the cold path).
    let cold = std::env::var("COLD").as_deref() == Ok("1");
    // CHECK=1: fold every id into a checksum (outside no timer), to compare two builds' ids.
    let check = std::env::var("CHECK").as_deref() == Ok("1");
    // FRESH=1: a freshly loaded tokenizer for every rep (its shared table empty of merged
    // pieces too), so with COLD=1 every rep is a first encode; the encode thread is named
    // `encode`, to tell its samples from the loading's (`perf report --comms encode`).
    let fresh = std::env::var("FRESH").as_deref() == Ok("1");
    for rep in 0..reps {
        let reloaded;
        let tok = if fresh && rep > 0 {
            reloaded = Tokenizer::from_path(Path::new(tok_path)).expect("tokenizer");
            &reloaded
        } else {
            &tok
        };
        let run = || {
            if std::env::var("PRIME").as_deref() == Ok("1") {
                // the thread's cache set up before the timer (what a warm-up call does)
                tok.encode_into("x", false, &mut Vec::new()).unwrap();
            }
            let t = Instant::now();
            let mut n = 0;
            let mut sum = 0u64;
            let mut out = Vec::new();
            for d in &docs {
                out.clear();
                tok.encode_into(d, false, &mut out).unwrap();
                n += out.len();
                if check {
                    for &id in &out {
                        sum = (sum ^ id as u64).wrapping_mul(0x100_0000_01b3);
                    }
                }
            }
            if check {
                eprintln!("ids checksum {sum:016x}");
            }
            (n, t.elapsed().as_secs_f64())
        };
        let (cpu0, faults) = usage();
        let threads: usize = std::env::var("THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let (n, s) = if threads > 1 {
            // THREADS=k: the documents dealt round-robin to k fresh threads encoding at once.
            let t = Instant::now();
            let n: usize = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..threads)
                    .map(|i| {
                        let docs = &docs;
                        let tok = &tok;
                        std::thread::Builder::new()
                            .name("encode".into())
                            .spawn_scoped(sc, move || {
                                let mut out = Vec::new();
                                let mut n = 0;
                                for d in docs.iter().skip(i).step_by(threads) {
                                    out.clear();
                                    tok.encode_into(d, false, &mut out).unwrap();
                                    n += out.len();
                                }
                                n
                            })
                            .expect("spawn")
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            });
            (n, t.elapsed().as_secs_f64())
        } else if cold {
            std::thread::scope(|sc| {
                std::thread::Builder::new()
                    .name("encode".into())
                    .spawn_scoped(sc, run)
                    .unwrap()
                    .join()
                    .unwrap()
            })
        } else {
            run()
        };
        eprintln!(
            "rep {rep}: {} docs {:.1} MB {n} tokens {:.3}s ({:.3}s CPU) {:.1} MB/s {:.2} M tokens/s, {} page faults",
            docs.len(),
            bytes as f64 / 1e6,
            s,
            usage().0 - cpu0,
            bytes as f64 / s / 1e6,
            n as f64 / s / 1e6,
            usage().1 - faults
        );
    }
    if std::env::var("SMAPS").as_deref() == Ok("1") {
        // How much of the process is on transparent huge pages (the tables are advised to be).
        let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
        for line in rollup
            .lines()
            .filter(|l| l.starts_with("AnonHugePages") || l.starts_with("Rss"))
        {
            eprintln!("{line}");
        }
    }
}

/// (CPU seconds, user + system; minor page faults) of the process so far (zeros where
/// getrusage is unavailable).
fn usage() -> (f64, i64) {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes into the zeroed struct we pass.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
            return (t(u.ru_utime) + t(u.ru_stime), u.ru_minflt);
        }
    }
    (0.0, 0)
}
