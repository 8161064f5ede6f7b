//! Criterion benches for the Rust core over the interpreter's standard library sources: the
//! Qwen2 pre-tokenizer scan always; full encoding, warm (cache filled) and cold (a fresh thread
//! per iteration), and the BPE of the short pieces that are not one token (one at a time, and in
//! the batches the encoder merges them in), when APRX_BENCH_TOKENIZER names a tokenizer.json.
//! Group `pipeline`: encode-corpus's other hot loops over the whole standard library: the JSONL
//! `content` field's extraction, the digest of 32 MB not in cache (BLAKE3, and the SHA-256 it
//! replaced), and the UTF-8 of the non-ASCII files' PEP 393 characters.

use aprx::pretok::{PreTokenizer, QWEN2_PATTERN};
use aprx::utf8::{push_utf8, Units};
use aprx::Tokenizer;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn stdlib_text(limit: usize) -> String {
    let mut text = String::new();
    for s in stdlib_files(limit) {
        text.push_str(&s);
    }
    text
}

/// The stdlib's `*.py` files that are UTF-8, in path order, until `limit` bytes are read.
fn stdlib_files(limit: usize) -> Vec<String> {
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
    let (mut texts, mut bytes) = (Vec::new(), 0);
    for f in files {
        if let Ok(s) = std::fs::read_to_string(&f) {
            bytes += s.len();
            texts.push(s);
            if bytes >= limit {
                break;
            }
        }
    }
    texts
}

fn pipeline(c: &mut Criterion) {
    let files = stdlib_files(usize::MAX);
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10);

    let jsonl: Vec<String> = files
        .iter()
        .map(|t| serde_json::json!({ "content": t }).to_string())
        .collect();
    g.throughput(Throughput::Bytes(
        jsonl.iter().map(|l| l.len() as u64).sum(),
    ));
    g.bench_function("jsonl_field_text_stdlib", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            let mut n = 0;
            for line in &jsonl {
                out.clear();
                assert!(aprx::jsonl::field_text(
                    line.as_bytes(),
                    b"content",
                    &mut out
                ));
                n += out.len();
            }
            n
        })
    });

    // What every JSONL line costs before parsing: its UTF-8 validation.
    g.bench_function("utf8_validate_jsonl_stdlib", |b| {
        b.iter(|| {
            jsonl
                .iter()
                .map(|l| std::str::from_utf8(l.as_bytes()).map_or(0, str::len))
                .sum::<usize>()
        })
    });

    // 32 MB windows of a 512 MB buffer, one after another: each is out of cache in its turn.
    // The digest encode-corpus takes of every input and shard (BLAKE3), beside the SHA-256 it
    // replaced.
    const WINDOW: usize = 32 << 20;
    let data: Vec<u8> = (0..16 * WINDOW).map(|i| (i * 7 + i / 4093) as u8).collect();
    g.throughput(Throughput::Bytes(WINDOW as u64));
    for (name, blake3) in [
        ("blake3_32mb_out_of_cache", true),
        ("sha256_32mb_out_of_cache", false),
    ] {
        let mut k = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                k = (k + 1) % 16;
                let w = &data[k * WINDOW..(k + 1) * WINDOW];
                if blake3 {
                    aprx::digest::digest(w)
                } else {
                    Sha256::digest(w).into()
                }
            })
        });
    }

    // The non-ASCII files as CPython keeps them: 1, 2 or 4 bytes a character.
    let wide: Vec<(u32, Vec<u32>)> = files
        .iter()
        .filter(|t| !t.is_ascii())
        .map(|t| {
            let cps: Vec<u32> = t.chars().map(|c| c as u32).collect();
            let max = cps.iter().copied().max().unwrap_or(0);
            (
                if max < 0x100 {
                    1
                } else if max < 0x10000 {
                    2
                } else {
                    4
                },
                cps,
            )
        })
        .collect();
    let latin1: Vec<Vec<u8>> = wide
        .iter()
        .filter(|w| w.0 == 1)
        .map(|w| w.1.iter().map(|&c| c as u8).collect())
        .collect();
    let ucs2: Vec<Vec<u16>> = wide
        .iter()
        .filter(|w| w.0 == 2)
        .map(|w| w.1.iter().map(|&c| c as u16).collect())
        .collect();
    let ucs4: Vec<Vec<u32>> = wide
        .iter()
        .filter(|w| w.0 == 4)
        .map(|w| w.1.clone())
        .collect();
    g.throughput(Throughput::Elements(
        wide.iter().map(|w| w.1.len() as u64).sum(),
    ));
    g.bench_function("utf8_of_non_ascii_stdlib_files", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            out.clear();
            for u in &latin1 {
                push_utf8(Units::Latin1(u), &mut out).unwrap();
            }
            for u in &ucs2 {
                push_utf8(Units::Ucs2(u), &mut out).unwrap();
            }
            for u in &ucs4 {
                push_utf8(Units::Ucs4(u), &mut out).unwrap();
            }
            out.len()
        })
    });
    g.finish();
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

criterion_group!(all, benches, pipeline);
criterion_main!(all);
