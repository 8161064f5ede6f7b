//! The BPE model: token bytes, the byte -> id table, merge ranks in a flat open-addressing
//! table keyed by the (left, right) id pair, and the merge loop (linear scan for short pieces,
//! a heap for long ones so a 1 MB run of one char stays O(n log n)).

use crate::huge::HugeSlice;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub const NO_ID: u32 = u32::MAX;

/// One slot: the packed pair, its rank and merged id, in one 16-byte entry so a probe
/// touches one cache line (the table is larger than L2: misses dominate cold encoding).
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u64,
    rank: u32,
    id: u32,
}

/// (left, right) -> (rank, merged id), open addressing with linear probing.
#[derive(Debug, Clone)]
pub struct MergeTable {
    entries: HugeSlice<Entry>,
    mask: usize,
}

const EMPTY: u64 = u64::MAX;

#[inline(always)]
fn pair_key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

#[inline(always)]
fn hash64(k: u64) -> usize {
    (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 29) as usize
}

impl MergeTable {
    pub fn new(merges: &[(u32, u32, u32)]) -> Self {
        let cap = (merges.len() * 2).next_power_of_two().max(16);
        let mut t = MergeTable {
            entries: HugeSlice::filled(
                cap,
                Entry {
                    key: EMPTY,
                    rank: u32::MAX,
                    id: NO_ID,
                },
            ),
            mask: cap - 1,
        };
        for (rank, &(a, b, m)) in merges.iter().enumerate() {
            let k = pair_key(a, b);
            let mut i = hash64(k) & t.mask;
            loop {
                let e = &mut t.entries[i];
                if e.key == EMPTY {
                    *e = Entry {
                        key: k,
                        rank: rank as u32,
                        id: m,
                    };
                    break;
                }
                if e.key == k {
                    // A repeated merge keeps its first (lowest) rank, as HF does.
                    break;
                }
                i = (i + 1) & t.mask;
            }
        }
        t
    }

    /// (rank, merged id) of the pair, or None.
    #[inline(always)]
    pub fn get(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        let k = pair_key(a, b);
        let mut i = hash64(k) & self.mask;
        loop {
            let e = self.entries[i];
            if e.key == k {
                return Some((e.rank, e.id));
            }
            if e.key == EMPTY {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// Pieces longer than this (in bytes) use the heap-based merge.
const LINEAR_MAX: usize = 128;

/// Byte-level BPE over ids.
#[derive(Debug, Clone)]
pub struct Bpe {
    pub byte_ids: [u32; 256],
    pub merges: MergeTable,
}

impl Bpe {
    /// Appends the ids of one piece (raw bytes) to `out`. Bytes without a token are dropped,
    /// as HF does for a BPE without `unk_token`; with `unk`, they become `unk`.
    #[inline]
    pub fn encode_piece(&self, piece: &[u8], unk: Option<u32>, out: &mut Vec<u32>) {
        if piece.len() == 1 {
            let id = self.byte_ids[piece[0] as usize];
            if id != NO_ID {
                out.push(id);
            } else if let Some(u) = unk {
                out.push(u);
            }
            return;
        }
        let start = out.len();
        for &b in piece {
            let id = self.byte_ids[b as usize];
            if id != NO_ID {
                out.push(id);
            } else if let Some(u) = unk {
                out.push(u);
            }
        }
        if out.len() - start > LINEAR_MAX {
            let merged = self.merge_heap(&out[start..]);
            out.truncate(start);
            out.extend_from_slice(&merged);
        } else {
            self.merge_linear(out, start);
        }
    }

    /// Merges `v[start..]` in place by repeatedly applying the lowest-ranked, leftmost pair.
    #[inline]
    fn merge_linear(&self, v: &mut Vec<u32>, start: usize) {
        let n = v.len() - start;
        if n < 2 {
            return;
        }
        // (rank, merged id) of the pair starting at each symbol: a merge needs no second lookup.
        const NONE: (u32, u32) = (u32::MAX, NO_ID);
        let mut pairs = [NONE; LINEAR_MAX];
        let sym = &mut v[start..];
        let mut len = n;
        for i in 0..len - 1 {
            pairs[i] = self.merges.get(sym[i], sym[i + 1]).unwrap_or(NONE);
        }
        loop {
            let mut best = u32::MAX;
            let mut at = 0;
            for (i, &(r, _)) in pairs[..len - 1].iter().enumerate() {
                if r < best {
                    best = r;
                    at = i;
                }
            }
            if best == u32::MAX {
                break;
            }
            sym[at] = pairs[at].1;
            sym.copy_within(at + 2..len, at + 1);
            if at + 2 < len {
                pairs.copy_within(at + 2..len - 1, at + 1);
            }
            len -= 1;
            if at + 1 < len {
                pairs[at] = self.merges.get(sym[at], sym[at + 1]).unwrap_or(NONE);
            }
            if at > 0 {
                pairs[at - 1] = self.merges.get(sym[at - 1], sym[at]).unwrap_or(NONE);
            }
            if len == 1 {
                break;
            }
        }
        v.truncate(start + len);
    }

    /// Heap-based merge over a linked list of symbols, O(n log n).
    fn merge_heap(&self, ids: &[u32]) -> Vec<u32> {
        let n = ids.len();
        let mut sym = ids.to_vec();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some((r, _)) = self.merges.get(sym[i], sym[i + 1]) {
                heap.push(Reverse((r, i, sym[i], sym[i + 1])));
            }
        }
        while let Some(Reverse((_, i, a, b))) = heap.pop() {
            if !alive[i] || sym[i] != a {
                continue;
            }
            let j = next[i];
            if j >= n || sym[j] != b {
                continue;
            }
            let (_, m) = self.merges.get(a, b).expect("ranked pair");
            sym[i] = m;
            alive[j] = false;
            let k = next[j];
            next[i] = k;
            if k < n {
                prev[k] = i;
                if let Some((r2, _)) = self.merges.get(m, sym[k]) {
                    heap.push(Reverse((r2, i, m, sym[k])));
                }
            }
            let p = prev[i];
            if p < n {
                if let Some((r2, _)) = self.merges.get(sym[p], m) {
                    heap.push(Reverse((r2, p, sym[p], m)));
                }
            }
        }
        (0..n).filter(|&i| alive[i]).map(|i| sym[i]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny vocabulary: bytes a=0 b=1 c=2; merges ab=3 (rank 0), bc=4 (rank 1), abc=5 (3+c).
    fn tiny() -> Bpe {
        let mut byte_ids = [NO_ID; 256];
        byte_ids[b'a' as usize] = 0;
        byte_ids[b'b' as usize] = 1;
        byte_ids[b'c' as usize] = 2;
        Bpe {
            byte_ids,
            merges: MergeTable::new(&[(0, 1, 3), (1, 2, 4), (3, 2, 5), (0, 0, 6)]),
        }
    }

    #[test]
    fn merges_by_rank() {
        let bpe = tiny();
        let mut out = Vec::new();
        bpe.encode_piece(b"abc", None, &mut out);
        assert_eq!(out, [5]);
        out.clear();
        bpe.encode_piece(b"bcab", None, &mut out);
        assert_eq!(out, [4, 3]);
        out.clear();
        bpe.encode_piece(b"axb", None, &mut out);
        assert_eq!(
            out,
            [3],
            "unknown byte dropped without unk, neighbours merge"
        );
        out.clear();
        bpe.encode_piece(b"axb", Some(9), &mut out);
        assert_eq!(out, [0, 9, 1]);
    }

    #[test]
    fn heap_and_linear_agree() {
        let bpe = tiny();
        let mut seed = 7u64;
        for len in [2usize, 3, 50, 127, 128, 129, 300, 1000] {
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    b"abc"[(seed >> 33) as usize % 3]
                })
                .collect();
            let ids: Vec<u32> = text.iter().map(|&b| bpe.byte_ids[b as usize]).collect();
            let heap = bpe.merge_heap(&ids);
            let mut lin = ids.clone();
            if len <= LINEAR_MAX {
                bpe.merge_linear(&mut lin, 0);
                assert_eq!(heap, lin, "len {len}");
            }
            // "aaaa..." pairs left to right
            let run = vec![0u32; len];
            let h = bpe.merge_heap(&run);
            assert_eq!(h.len(), len.div_ceil(2));
        }
    }
}
