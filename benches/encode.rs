//! Criterion benches for the Rust core over the interpreter's standard library sources: the
//! Qwen2 pre-tokenizer scan always; full encoding, warm (cache filled) and cold (a fresh thread
//! per iteration), and the BPE of the short pieces that are not one token (one at a time, and in
//! the batches the encoder merges them in), when APRX_BENCH_TOKENIZER names a tokenizer.json.

use aprx::pretok::{PreTokenizer, QWEN2_PATTERN};
use aprx::Tokenizer;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::path::{Path, PathBuf};

fn stdlib_text(limit: usize) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig;print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .ok();
    let root = out
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| PathBuf::from("/usr/lib/python3"));
    let mut files = Vec::new();
    fn walk(p: &Path, files: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            entries.sort();
            for e in entries {
                if e.is_dir() && !e.ends_with("site-packages") {
                    walk(&e, files);
                } else if e.extension().is_some_and(|x| x == "py") {
                    files.push(e);
                }
            }
        }
    }
    walk(&root, &mut files);
    let mut text = String::new();
    for f in files {
        if let Ok(s) = std::fs::read_to_string(&f) {
            text.push_str(&s);
            if text.len() >= limit {
                break;
            }
        }
    }
    text
}

fn benches(c: &mut Criterion) {
    let text = stdlib_text(8 << 20);
    let mut g = c.benchmark_group("stdlib");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(10);
    let pre = PreTokenizer::new(&[QWEN2_PATTERN.to_string()], false).unwrap();
    g.bench_function("pretokenize_qwen2_scanner", |b| {
        b.iter(|| {
            let mut n = 0usize;
            pre.for_each_piece(&text, |_| n += 1).unwrap();
            n
        })
    });
    if let Ok(path) = std::env::var("APRX_BENCH_TOKENIZER") {
        let tok = Tokenizer::from_path(Path::new(&path)).expect("tokenizer");
        g.bench_function("encode_ordinary_warm", |b| {
            b.iter(|| tok.encode(&text, false).unwrap().len())
        });
        // Each iteration on a fresh thread: an empty piece cache, as for a corpus seen once.
        g.bench_function("encode_ordinary_cold", |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    s.spawn(|| tok.encode(&text, false).unwrap().len())
                        .join()
                        .unwrap()
                })
            })
        });
        // Distinct pieces of 2..=BATCHED_LONG bytes that BPE splits: what a cold encode
        // merges in batches.
        let mut pieces: Vec<Vec<u8>> = tok
            .pre_tokenize(&text)
            .unwrap()
            .into_iter()
            .filter(|p| (2..=aprx::bpe::BATCHED_LONG).contains(&p.len()))
            .map(String::into_bytes)
            .collect();
        pieces.sort_unstable();
        pieces.dedup();
        let bpe = tok.bpe();
        pieces.retain(|p| {
            let mut v = Vec::new();
            bpe.encode_piece(p, None, &mut v);
            v.len() > 1
        });
        g.throughput(Throughput::Elements(pieces.len() as u64));
        g.bench_function("cold_pieces_bpe_one_at_a_time", |b| {
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                for p in &pieces {
                    bpe.encode_piece(p, None, &mut out);
                }
                out.len()
            })
        });
        g.bench_function("cold_pieces_bpe_batches_of_16", |b| {
            let (mut out, mut ends) = (Vec::new(), Vec::new());
            b.iter(|| {
                out.clear();
                for batch in pieces.chunks(16) {
                    ends.clear();
                    bpe.merge_batch(batch.len(), |k| &batch[k], None, &mut out, &mut ends);
                }
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(all, benches);
criterion_main!(all);
