//! The BPE model: token bytes, the byte -> id table, merge ranks in a compact open-addressing
//! table keyed by the (left, right) id pair, and the merge loop (fixed-size arrays and a
//! branch-free minimum for pieces of up to 64 symbols, a heap for longer ones so a 1 MB run of
//! one char stays O(n log n)).

use crate::huge::HugeSlice;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub const NO_ID: u32 = u32::MAX;
/// No merge for a pair.
pub const NO_RANK: u32 = u32::MAX;

const ID_BITS: u32 = 21;
const RANK_BITS: u32 = 22;
/// Largest token id the merge table can hold (ids are packed in 21 bits): two million, far
/// above any real vocabulary.
pub const MAX_ID: u32 = (1 << ID_BITS) - 2;
/// Most merges the table can hold.
pub const MAX_MERGES: usize = (1 << RANK_BITS) - 2;

/// (left, right) -> rank, open addressing with linear probing, one u64 per pair: left and
/// right id (21 bits each) over the rank (22 bits), so eight entries share a cache line and
/// the Qwen2 table (151k merges) is 2 MiB. The merged id is `rank_to_id[rank]`, read only
/// when a merge is applied. Cold encoding is bound by the latency of these probes.
#[derive(Debug, Clone)]
pub struct MergeTable {
    entries: HugeSlice<u64>,
    mask: usize,
    rank_to_id: Vec<u32>,
    /// `Some(c)` when every merge of rank `r` makes id `r + c` (GPT-2, Qwen2 and tiktoken
    /// vocabularies order their merges so): the merged id is then arithmetic, not a load.
    id_offset: Option<u32>,
}

const EMPTY: u64 = u64::MAX;
const RANK_MASK: u64 = (1 << RANK_BITS) - 1;
/// Slots per probe: eight u64, one cache line.
const LINE: usize = 8;

#[inline(always)]
fn pair_key(a: u32, b: u32) -> u64 {
    ((a as u64) << ID_BITS) | b as u64
}

#[inline(always)]
fn hash64(k: u64) -> usize {
    (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 29) as usize
}

impl MergeTable {
    /// `merges[rank] = (left, right, merged)`; every id at most `MAX_ID` and at most
    /// `MAX_MERGES` merges (the loader checks both).
    pub fn new(merges: &[(u32, u32, u32)]) -> Self {
        assert!(merges.len() <= MAX_MERGES);
        // At most ~60% full.
        let cap = (merges.len() * 5 / 3 + 1).next_power_of_two().max(2 * LINE);
        let mut t = MergeTable {
            entries: HugeSlice::filled(cap, EMPTY),
            mask: cap - 1,
            rank_to_id: merges.iter().map(|m| m.2).collect(),
            id_offset: None,
        };
        if let Some(first) = merges.first() {
            let c = first.2;
            if merges
                .iter()
                .enumerate()
                .all(|(r, m)| m.2.checked_sub(r as u32) == Some(c))
            {
                t.id_offset = Some(c);
            }
        }
        for (rank, &(a, b, _)) in merges.iter().enumerate() {
            assert!(a <= MAX_ID && b <= MAX_ID);
            let k = pair_key(a, b);
            let mut i = t.line_of(k);
            loop {
                let e = t.entries[i];
                if e == EMPTY {
                    t.entries[i] = (k << RANK_BITS) | rank as u64;
                    break;
                }
                if e >> RANK_BITS == k {
                    // A repeated merge keeps its first (lowest) rank, as HF does.
                    break;
                }
                i = (i + 1) & t.mask;
            }
        }
        t
    }

    /// First slot of the line of `LINE` slots where the pair `k` is placed or looked for:
    /// linear probing that starts at a line's first slot, so a lookup reads whole lines.
    #[inline(always)]
    fn line_of(&self, k: u64) -> usize {
        hash64(k) & self.mask & !(LINE - 1)
    }

    /// Rank of the pair, or `NO_RANK`.
    #[inline(always)]
    pub fn rank(&self, a: u32, b: u32) -> u32 {
        let k = pair_key(a, b);
        let mut i = self.line_of(k);
        loop {
            let e = self.entries[i];
            if e >> RANK_BITS == k {
                return (e & RANK_MASK) as u32;
            }
            if e == EMPTY {
                return NO_RANK;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// `rank` with AVX2, a line at a time and without a branch on what the line holds (the
    /// answer, found or absent, is as unpredictable as the text): the pair is in its first
    /// line unless that line is full, rare at this load.
    ///
    /// # Safety
    /// The CPU has AVX2 (the caller is compiled for x86-64-v3).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub unsafe fn rank_avx2(&self, a: u32, b: u32) -> u32 {
        use std::arch::x86_64::*;
        let k = pair_key(a, b);
        let want = _mm256_set1_epi64x(k as i64);
        let empty = _mm256_set1_epi64x(EMPTY as i64);
        let base = self.entries.as_ptr();
        let mut i = self.line_of(k);
        loop {
            // SAFETY: `i` is a line's first slot (the table has whole lines: its length is a
            // power of two of at least `2 * LINE`), so both loads are inside the table.
            let (lo, hi) = unsafe {
                let p = base.add(i) as *const __m256i;
                (_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1)))
            };
            let mask = |v: __m256i| _mm256_movemask_pd(_mm256_castsi256_pd(v)) as u32;
            let hit = mask(_mm256_cmpeq_epi64(
                _mm256_srli_epi64::<{ RANK_BITS as i32 }>(lo),
                want,
            )) | mask(_mm256_cmpeq_epi64(
                _mm256_srli_epi64::<{ RANK_BITS as i32 }>(hi),
                want,
            )) << 4;
            let open = mask(_mm256_cmpeq_epi64(lo, empty)) | mask(_mm256_cmpeq_epi64(hi, empty));
            // SAFETY: `i + 0..LINE` is inside the table (above).
            let e = unsafe { *base.add(i + (hit | 1 << LINE).trailing_zeros() as usize % LINE) };
            let rank = if hit != 0 {
                (e & RANK_MASK) as u32
            } else {
                NO_RANK
            };
            if hit | open != 0 {
                return rank;
            }
            i = (i + LINE) & self.mask;
        }
    }

    /// Starts loading the line where `rank(a, b)` will look first.
    #[inline(always)]
    pub fn prefetch(&self, a: u32, b: u32) {
        crate::cache::prefetch(
            self.entries
                .as_ptr()
                .wrapping_add(self.line_of(pair_key(a, b))),
        );
    }

    /// Id the merge of rank `rank` produces.
    #[inline(always)]
    pub fn merged(&self, rank: u32) -> u32 {
        match self.id_offset {
            Some(c) => rank + c,
            None => self.rank_to_id[rank as usize],
        }
    }

    /// (rank, merged id) of the pair, or None.
    #[inline(always)]
    pub fn get(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        let r = self.rank(a, b);
        (r != NO_RANK).then(|| (r, self.merged(r)))
    }
}

/// Longest piece `Bpe::merge_batch` merges in lanes with other pieces (longer ones
/// merge alone).
pub const BATCHED_LONG: usize = 32;

/// Pieces of up to this many symbols merge in fixed-size arrays (`merge_small`); longer ones
/// use the heap-based merge.
const SMALL_MAX: usize = 64;

/// A pair that cannot merge (a dead position, the last symbol, or no merge rule) in
/// `merge_small`'s keys; every live key is below it.
const NO_KEY: i32 = i32::MAX;

/// `merge_small`'s key of the pair at `i`: rank over position, so the least key is the
/// lowest-ranked, leftmost pair. Ranks have 22 bits and positions 6, so keys fit in an i32
/// (signed, so that SSE2 finds the least of four at once).
#[inline(always)]
fn small_key(rank: u32, i: usize) -> i32 {
    if rank == NO_RANK {
        NO_KEY
    } else {
        ((rank << 6) | i as u32) as i32
    }
}

/// One piece's merge state, for pieces of up to N <= 64 symbols. Symbols stay where they
/// are: merged-away ones leave the `live` set, so a merge moves nothing, its neighbours are a
/// bit scan away, and the lowest pair is a branch-free minimum over N keys. After a merge,
/// the pairs of the merged symbol (`at`) with its neighbours (`right`, `left`) are ranked at
/// the start of the next `step`, so a batch can prefetch them first.
#[derive(Clone, Copy)]
struct Lane<const N: usize> {
    sym: [u32; N],
    keys: [i32; N],
    live: u64,
    at: u8,
    right: u8,
    left: u8,
}

impl<const N: usize> Lane<N> {
    const NONE: u8 = u8::MAX;

    /// The `n` symbols `id(0..n)` (2 <= n <= N); `rank0(i)` is the rank of the pair at `i`.
    #[inline(always)]
    fn new(n: usize, id: impl Fn(usize) -> u32, rank0: impl Fn(usize) -> u32) -> Self {
        debug_assert!((2..=N).contains(&n) && N <= 64);
        let mut lane = Lane {
            sym: [0; N],
            keys: [NO_KEY; N],
            live: u64::MAX >> (64 - n),
            at: 0,
            right: Self::NONE,
            left: Self::NONE,
        };
        for (i, s) in lane.sym[..n].iter_mut().enumerate() {
            *s = id(i);
        }
        for (i, k) in lane.keys[..n - 1].iter_mut().enumerate() {
            *k = small_key(rank0(i), i);
        }
        lane
    }

    /// Ranks the pairs the last merge changed, then applies the lowest-ranked, leftmost merge;
    /// false when no pair merges. The keys are read before the two new ones are stored (both
    /// their places hold `NO_KEY` then, see `apply`) and the minimum is that of the keys read
    /// and the new ones: reading the keys back just after the stores would wait for them (a
    /// wide load over narrow stores in flight is not forwarded), 7% of the merging time.
    #[inline(always)]
    fn step<const V3: bool>(&mut self, merges: &MergeTable) -> bool {
        let rank = |a: u32, b: u32| {
            #[cfg(target_arch = "x86_64")]
            if V3 {
                // SAFETY: `V3` only in copies compiled for x86-64-v3 (`merge_batch_v3`).
                return unsafe { merges.rank_avx2(a, b) };
            }
            merges.rank(a, b)
        };
        let old = self.keys;
        let at = self.at as usize % N;
        let (mut key_at, mut key_left) = (NO_KEY, NO_KEY);
        if self.right != Self::NONE {
            key_at = small_key(rank(self.sym[at], self.sym[self.right as usize % N]), at);
            self.keys[at] = key_at;
            self.right = Self::NONE;
        }
        if self.left != Self::NONE {
            let p = self.left as usize % N;
            key_left = small_key(rank(self.sym[p], self.sym[at]), p);
            self.keys[p] = key_left;
            self.left = Self::NONE;
        }
        // `old` holds NO_KEY at both positions (see `apply`).
        let best = old.iter().copied().fold(NO_KEY, i32::min);
        self.apply(best.min(key_at).min(key_left), merges)
    }

    /// Applies the merge of key `best` (the least key); false for `NO_KEY`.
    #[inline(always)]
    fn apply(&mut self, best: i32, merges: &MergeTable) -> bool {
        if best == NO_KEY {
            return false;
        }
        let i = (best & 63) as usize % N;
        let above = !(u64::MAX >> (63 - i));
        // The live symbol after i (there is one: only such pairs have keys).
        let j = (self.live & above).trailing_zeros() as usize % N;
        self.sym[i] = merges.merged(best as u32 >> 6);
        self.live &= !(1u64 << j);
        self.keys[j] = NO_KEY;
        self.keys[i] = NO_KEY;
        self.at = i as u8;
        let after = self.live & above;
        self.right = if after == 0 {
            Self::NONE
        } else {
            after.trailing_zeros() as u8
        };
        let before = self.live & ((1u64 << i) - 1);
        self.left = if before == 0 {
            Self::NONE
        } else {
            let p = 63 - before.leading_zeros();
            // The pair (p, i) changed: its key is stale until ranked again (`step`).
            self.keys[p as usize % N] = NO_KEY;
            p as u8
        };
        true
    }

    /// Starts loading the merge-table slots the next `step` will read.
    #[inline(always)]
    fn prefetch(&self, merges: &MergeTable) {
        let at = self.at as usize % N;
        if self.right != Self::NONE {
            merges.prefetch(self.sym[at], self.sym[self.right as usize % N]);
        }
        if self.left != Self::NONE {
            merges.prefetch(self.sym[self.left as usize % N], self.sym[at]);
        }
    }

    /// Appends the live symbols to `out`.
    #[inline(always)]
    fn emit(&self, out: &mut Vec<u32>) {
        let mut live = self.live;
        while live != 0 {
            out.push(self.sym[live.trailing_zeros() as usize % N]);
            live &= live - 1;
        }
    }
}

/// Byte-level BPE over ids.
#[derive(Debug, Clone)]
pub struct Bpe {
    pub byte_ids: [u32; 256],
    pub merges: MergeTable,
    /// Rank of merging the tokens of bytes (x, y), at `x << 8 | y`, when every byte has a
    /// token: the first round of every piece's merge needs no hashing.
    byte_pair_rank: Option<Box<[u32]>>,
}

impl Bpe {
    pub fn new(byte_ids: [u32; 256], merges: MergeTable) -> Self {
        let byte_pair_rank = byte_ids.iter().all(|&i| i != NO_ID).then(|| {
            (0..1usize << 16)
                .map(|xy| merges.rank(byte_ids[xy >> 8], byte_ids[xy & 255]))
                .collect()
        });
        Bpe {
            byte_ids,
            merges,
            byte_pair_rank,
        }
    }

    /// Appends the ids of one piece (raw bytes) to `out`. Bytes without a token are dropped,
    /// as HF does for a BPE without `unk_token`; with `unk`, they become `unk`.
    #[inline]
    pub fn encode_piece(&self, piece: &[u8], unk: Option<u32>, out: &mut Vec<u32>) {
        let n = piece.len();
        if n == 1 {
            let id = self.byte_ids[piece[0] as usize];
            if id != NO_ID {
                out.push(id);
            } else if let Some(u) = unk {
                out.push(u);
            }
            return;
        }
        if let Some(grid) = &self.byte_pair_rank {
            // Every byte has a token: the symbols are the bytes' ids and the first ranks come
            // from the byte-pair grid.
            let rank0 = |i: usize| grid[(piece[i] as usize) << 8 | piece[i + 1] as usize];
            let id = |i: usize| self.byte_ids[piece[i] as usize];
            match n {
                0 => {}
                2..=16 => self.merge_small::<16>(n, id, rank0, out),
                17..=32 => self.merge_small::<32>(n, id, rank0, out),
                33..=SMALL_MAX => self.merge_small::<SMALL_MAX>(n, id, rank0, out),
                _ => {
                    let ids: Vec<u32> = (0..n).map(id).collect();
                    out.extend(self.merge_heap(&ids));
                }
            }
            return;
        }
        let ids: Vec<u32> = piece
            .iter()
            .filter_map(|&b| match self.byte_ids[b as usize] {
                NO_ID => unk,
                id => Some(id),
            })
            .collect();
        let n = ids.len();
        let rank0 = |i: usize| self.merges.rank(ids[i], ids[i + 1]);
        match n {
            0 => {}
            1 => out.push(ids[0]),
            2..=SMALL_MAX => self.merge_small::<SMALL_MAX>(n, |i| ids[i], rank0, out),
            _ => out.extend(self.merge_heap(&ids)),
        }
    }

    /// Merges the `n` symbols `id(0..n)` (2 <= n <= N) by repeatedly applying the
    /// lowest-ranked, leftmost pair (`rank0(i)`: the rank of the pair at `i` before any
    /// merge), appending the result to `out`.
    #[inline(always)]
    fn merge_small<const N: usize>(
        &self,
        n: usize,
        id: impl Fn(usize) -> u32,
        rank0: impl Fn(usize) -> u32,
        out: &mut Vec<u32>,
    ) {
        let mut lane = Lane::<N>::new(n, id, rank0);
        while lane.step::<false>(&self.merges) {}
        lane.emit(out);
    }

    /// BPE of many pieces at once (`piece(0..count)`, each at least two bytes), their ids
    /// appended to `out` one piece after another and each piece's end in `out` pushed to
    /// `ends`: the same ids as `encode_piece` on each. Merging one piece is a chain of
    /// dependent merge-table probes, each a likely cache miss (the table is megabytes), so
    /// the pieces advance in turn, one merge each, and the probes a merge needs are
    /// prefetched then and made on the piece's next turn: the misses of all the pieces
    /// overlap instead of following one another. Pieces of up to 16 bytes merge in 16-symbol
    /// lanes and those of 17..=32 bytes (long identifiers) in 32-symbol lanes, both kinds in
    /// the same rounds; longer ones merge alone.
    pub fn merge_batch<'a>(
        &self,
        count: usize,
        piece: impl Fn(usize) -> &'a [u8],
        unk: Option<u32>,
        out: &mut Vec<u32>,
        ends: &mut Vec<usize>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_x86_64_v3() {
            // SAFETY: the CPU has the features `merge_batch_v3` is compiled for (checked above).
            return unsafe { self.merge_batch_v3(count, piece, unk, out, ends) };
        }
        self.merge_batch_with::<false>(count, piece, unk, out, ends)
    }

    crate::simd::x86_64_v3_fn! {
        /// `merge_batch` compiled for x86-64-v3: each merge's minimum over the lane's keys is
        /// a few AVX2 instructions, and the bit scans are single instructions. Same ids.
        unsafe fn merge_batch_v3<'a>(
            &self,
            count: usize,
            piece: impl Fn(usize) -> &'a [u8],
            unk: Option<u32>,
            out: &mut Vec<u32>,
            ends: &mut Vec<usize>,
        ) {
            self.merge_batch_with::<true>(count, piece, unk, out, ends)
        }
    }

    /// The body of `merge_batch`, inlined into each of its copies.
    #[inline(always)]
    fn merge_batch_with<'a, const V3: bool>(
        &self,
        count: usize,
        piece: impl Fn(usize) -> &'a [u8],
        unk: Option<u32>,
        out: &mut Vec<u32>,
        ends: &mut Vec<usize>,
    ) {
        let Some(grid) = &self.byte_pair_rank else {
            for k in 0..count {
                self.encode_piece(piece(k), unk, out);
                ends.push(out.len());
            }
            return;
        };
        fn lane<const N: usize>(bpe: &Bpe, grid: &[u32], p: &[u8]) -> Lane<N> {
            Lane::new(
                p.len(),
                |i| bpe.byte_ids[p[i] as usize],
                |i| grid[(p[i] as usize) << 8 | p[i + 1] as usize],
            )
        }
        let mut short: Vec<Lane<16>> = Vec::with_capacity(count);
        let mut long: Vec<Lane<32>> = Vec::new();
        for k in 0..count {
            let p = piece(k);
            match p.len() {
                2..=16 => short.push(lane(self, grid, p)),
                17..=BATCHED_LONG => long.push(lane(self, grid, p)),
                _ => {}
            }
        }
        let mut active_short: Vec<u32> = (0..short.len() as u32).collect();
        let mut active_long: Vec<u32> = (0..long.len() as u32).collect();
        while !(active_short.is_empty() && active_long.is_empty()) {
            self.merge_round::<16, V3>(&mut short, &mut active_short);
            self.merge_round::<32, V3>(&mut long, &mut active_long);
        }
        let (mut s, mut l) = (short.iter(), long.iter());
        for k in 0..count {
            let p = piece(k);
            match p.len() {
                2..=16 => s.next().expect("a lane per short piece").emit(out),
                17..=BATCHED_LONG => l.next().expect("a lane per long piece").emit(out),
                _ => self.encode_piece(p, unk, out),
            }
            ends.push(out.len());
        }
    }

    /// One round of `merge_batch`: each active lane makes the probes its last merge
    /// prefetched and its next merge (`Lane::step`), prefetching that one's probes; lanes
    /// with nothing left to merge leave `active`.
    #[inline(always)]
    fn merge_round<const N: usize, const V3: bool>(
        &self,
        lanes: &mut [Lane<N>],
        active: &mut Vec<u32>,
    ) {
        let mut kept = 0;
        for t in 0..active.len() {
            let lane = &mut lanes[active[t] as usize];
            if lane.step::<V3>(&self.merges) {
                lane.prefetch(&self.merges);
                active[kept] = active[t];
                kept += 1;
            }
        }
        active.truncate(kept);
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
        Bpe::new(
            byte_ids,
            MergeTable::new(&[(0, 1, 3), (1, 2, 4), (3, 2, 5), (0, 0, 6)]),
        )
    }

    /// `rank`, and `rank_avx2` where the CPU has AVX2, give `want` for the pair.
    fn assert_ranks(t: &MergeTable, a: u32, b: u32, want: u32) {
        assert_eq!(t.rank(a, b), want, "({a}, {b})");
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            assert_eq!(unsafe { t.rank_avx2(a, b) }, want, "({a}, {b}) with AVX2");
        }
    }

    /// Every pair's rank against a map, for tables of many sizes filled to ~60%: pairs
    /// present (the first rank of a repeated one) and absent; and pairs whose run of slots goes
    /// past the last slot and wraps to the first.
    #[test]
    fn rank_matches_a_map() {
        let mut rnd = crate::test_rng::draws(0xfeed_f00d);
        for n in [1usize, 2, 9, 10, 100, 600, 5000, 40_000] {
            let mut merges = Vec::new();
            let mut want = std::collections::HashMap::new();
            for r in 0..n {
                let (a, b) = (rnd(3000) as u32, rnd(3000) as u32);
                merges.push((a, b, 3000 + r as u32));
                want.entry((a, b)).or_insert(r as u32);
            }
            let t = MergeTable::new(&merges);
            for (&(a, b), &r) in &want {
                assert_ranks(&t, a, b, r);
                assert_eq!(t.get(a, b), Some((r, 3000 + r)));
            }
            for _ in 0..20_000 {
                let (a, b) = (rnd(3100) as u32, rnd(3100) as u32);
                let r = want.get(&(a, b)).copied().unwrap_or(NO_RANK);
                assert_ranks(&t, a, b, r);
            }
        }
        // Nine pairs whose home is the last line of a 16-slot table: they fill it and the
        // ninth wraps to the first slot; a pair absent from that full line is looked for in
        // the first line too.
        let home_last = |&(a, b): &(u32, u32)| hash64(pair_key(a, b)) & 15 >= LINE;
        let last: Vec<(u32, u32, u32)> = (0..1u32 << 20)
            .map(|x| (x >> 10, x & 1023))
            .filter(home_last)
            .take(9)
            .enumerate()
            .map(|(r, (a, b))| (a, b, 5000 + r as u32))
            .collect();
        let t = MergeTable::new(&last);
        assert_eq!(t.mask, 15);
        assert!(t.entries[LINE..].iter().all(|&e| e != EMPTY) && t.entries[0] != EMPTY);
        assert!(t.entries[1..LINE].iter().all(|&e| e == EMPTY));
        for (r, &(a, b, _)) in last.iter().enumerate() {
            assert_ranks(&t, a, b, r as u32);
        }
        let absent = (0..1u32 << 20)
            .map(|x| (x >> 10 | 1024, x & 1023))
            .filter(home_last)
            .take(50);
        for (a, b) in absent {
            assert_ranks(&t, a, b, NO_RANK);
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
            if len <= SMALL_MAX {
                let mut lin = Vec::new();
                bpe.encode_piece(&text, None, &mut lin);
                assert_eq!(heap, lin, "len {len}");
            }
            // "aaaa..." pairs left to right
            let run = vec![0u32; len];
            let h = bpe.merge_heap(&run);
            assert_eq!(h.len(), len.div_ceil(2));
        }
    }

    /// Every byte has a token (so the byte-pair grid is used) and 600 random merges over
    /// a four-letter alphabet, some of them repeated: the fixed-array merge of every size
    /// class gives what the heap gives.
    #[test]
    fn small_merge_matches_heap_with_the_byte_grid() {
        let mut byte_ids = [0u32; 256];
        for (b, id) in byte_ids.iter_mut().enumerate() {
            *id = b as u32;
        }
        let mut seed = 11u64;
        let mut rnd = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        let mut ids: Vec<u32> = b"abcd".iter().map(|&b| b as u32).collect();
        let mut merges = Vec::new();
        for r in 0..600u32 {
            let a = ids[rnd(ids.len() as u64) as usize];
            let b = ids[rnd(ids.len() as u64) as usize];
            merges.push((a, b, 256 + r));
            ids.push(256 + r);
        }
        let bpe = Bpe::new(byte_ids, MergeTable::new(&merges));
        assert!(bpe.byte_pair_rank.is_some());
        // A batch of pieces, lengths 2..=40 mixed (both lane sizes and pieces merged
        // alone), against one piece at a time: the baseline copy of the batch merge, and the
        // x86-64-v3 one where this CPU has it.
        let batch: Vec<Vec<u8>> = (0..300)
            .map(|_| {
                let len = (if rnd(3) == 0 {
                    17 + rnd(24)
                } else {
                    2 + rnd(15)
                }) as usize;
                (0..len).map(|_| b"abcd"[rnd(4) as usize]).collect()
            })
            .collect();
        type Batch<'b> = Box<dyn Fn(&mut Vec<u32>, &mut Vec<usize>) + 'b>;
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut copies: Vec<(&str, Batch)> = vec![(
            "baseline",
            Box::new(|ids, ends| {
                bpe.merge_batch_with::<false>(batch.len(), |k| &batch[k], None, ids, ends)
            }),
        )];
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_x86_64_v3() {
            copies.push((
                "x86-64-v3",
                // SAFETY: the CPU has the features (checked just above).
                Box::new(|ids, ends| unsafe {
                    bpe.merge_batch_v3(batch.len(), |k| &batch[k], None, ids, ends)
                }),
            ));
        }
        for (copy, merge_batch) in &copies {
            let (mut ids, mut ends) = (vec![7u32], Vec::new());
            merge_batch(&mut ids, &mut ends);
            let mut start = 1;
            for (p, &end) in batch.iter().zip(&ends) {
                let mut one = Vec::new();
                bpe.encode_piece(p, None, &mut one);
                let piece = String::from_utf8_lossy(p);
                assert_eq!(ids[start..end], one[..], "{copy}: {piece:?}");
                start = end;
            }
            assert_eq!((ids[0], start, ends.len()), (7, ids.len(), batch.len()));
        }
        for len in (2..=70).chain([100, 128, 129, 200]) {
            for _ in 0..40 {
                let text: Vec<u8> = (0..len).map(|_| b"abcd"[rnd(4) as usize]).collect();
                let mut small = Vec::new();
                bpe.encode_piece(&text, None, &mut small);
                let ids: Vec<u32> = text.iter().map(|&b| b as u32).collect();
                assert_eq!(
                    small,
                    bpe.merge_heap(&ids),
                    "{:?}",
                    String::from_utf8_lossy(&text)
                );
            }
        }
    }
}
