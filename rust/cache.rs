//! A per-thread piece -> ids cache. No locks: each thread owns its cache, tagged with the
//! tokenizer it belongs to. Pieces of up to 16 bytes (nearly all of them in code) live in a
//! flat open-addressing table keyed by the piece packed into two u64 words, so a hit is one
//! probe and two integer compares; one or two ids are stored inline. Longer pieces use a
//! hash map.

use crate::huge::HugeSlice;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash-style hasher: fast on short byte strings, no DoS resistance needed here.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    h: u64,
}

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.h;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            h = (h.rotate_left(26) ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(K);
        }
        let r = chunks.remainder();
        if !r.is_empty() {
            let mut buf = [0u8; 8];
            buf[..r.len()].copy_from_slice(r);
            h = (h.rotate_left(26) ^ u64::from_le_bytes(buf)).wrapping_mul(K);
        }
        self.h = h;
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.h = (self.h.rotate_left(26) ^ n as u64).wrapping_mul(K);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.h.rotate_left(20)
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;

/// Cached ids of one long piece.
#[derive(Clone)]
pub enum Ids {
    One(u32),
    Two(u32, u32),
    Many(Box<[u32]>),
}

impl Ids {
    #[inline(always)]
    pub fn extend_into(&self, out: &mut Vec<u32>) {
        match self {
            Ids::One(a) => out.push(*a),
            Ids::Two(a, b) => {
                out.push(*a);
                out.push(*b)
            }
            Ids::Many(v) => out.extend_from_slice(v),
        }
    }

    pub fn from_slice(v: &[u32]) -> Self {
        match *v {
            [a] => Ids::One(a),
            [a, b] => Ids::Two(a, b),
            _ => Ids::Many(v.into()),
        }
    }
}

/// Longest piece kept in the short table.
pub const SHORT: usize = 16;
/// Pieces longer than this are not cached (rare; long runs of one character, such as comment
/// rulers, are cached up to this length because their BPE is the costliest).
pub const MAX_CACHED_PIECE: usize = 1024;
const MIN_SLOTS: usize = 1 << 10;
/// Largest short table (32 bytes a slot: 32 MiB), unless the vocabulary alone needs more;
/// past half full at this size it is cleared (back to the vocabulary), bounding memory per
/// thread.
const MAX_SLOTS: usize = 1 << 20;
/// The long-piece map is cleared past this many entries or this many bytes (keys and ids).
const MAX_LONG: usize = 1 << 16;
const MAX_LONG_BYTES: usize = 16 << 20;

/// One short-table slot. `len == 0` is empty. `n` ids: inline in `a`, `b` when `n <= 2`,
/// else `a` is an offset into `spill`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(align(32))]
struct Slot {
    k0: u64,
    k1: u64,
    len: u32,
    n: u32,
    a: u32,
    b: u32,
}

pub struct PieceCache {
    owner: u64,
    slots: HugeSlice<Slot>,
    mask: usize,
    used: usize,
    spill: Vec<u32>,
    long: HashMap<Box<[u8]>, Ids, FxBuild>,
    long_bytes: usize,
}

/// `KEEP_LOW_BYTES[n]`: masks keeping the low `n` bytes of a 16-byte little-endian word, as
/// its low and high halves (a table load instead of a variable 128-bit shift).
const KEEP_LOW_BYTES: [(u64, u64); SHORT + 1] = {
    let mut t = [(0u64, 0u64); SHORT + 1];
    let mut n = 1;
    while n <= SHORT {
        let m = u128::MAX >> (128 - 8 * n);
        t[n] = (m as u64, (m >> 64) as u64);
        n += 1;
    }
    t
};

/// A short piece packed for the table.
#[derive(Clone, Copy)]
pub struct ShortKey {
    pub k0: u64,
    k1: u64,
    len: u32,
    hash: u64,
}

impl ShortKey {
    /// Whether both keys are of the same piece.
    #[inline]
    pub fn same(&self, other: &ShortKey) -> bool {
        self.matches(other.k0, other.k1, other.len)
    }

    /// A slot index in a table of `mask + 1` (a power of two) for this key.
    #[inline]
    pub fn slot(&self, mask: usize) -> usize {
        self.hash as usize & mask
    }

    /// A key no piece has (length 0).
    pub const EMPTY: ShortKey = ShortKey {
        k0: 0,
        k1: 0,
        len: 0,
        hash: 0,
    };

    /// Packs `text[start..start + len]` (`1 <= len <= SHORT`): one 16-byte load and a mask,
    /// no branch on the length.
    #[inline(always)]
    pub fn new(text: &[u8], start: usize, len: usize) -> Self {
        debug_assert!((1..=SHORT).contains(&len));
        let (lo, hi) = match text.get(start..start + 16) {
            Some(b) => (
                u64::from_le_bytes(b[..8].try_into().unwrap()),
                u64::from_le_bytes(b[8..].try_into().unwrap()),
            ),
            None => {
                let mut buf = [0u8; 16];
                buf[..len].copy_from_slice(&text[start..start + len]);
                (
                    u64::from_le_bytes(buf[..8].try_into().unwrap()),
                    u64::from_le_bytes(buf[8..].try_into().unwrap()),
                )
            }
        };
        let (m0, m1) = KEEP_LOW_BYTES[len];
        Self::from_words(lo & m0, hi & m1, len as u32)
    }

    /// Whether a slot holding (`k0`, `k1`, `len`) is this key: one branch.
    #[inline(always)]
    fn matches(&self, k0: u64, k1: u64, len: u32) -> bool {
        self.len == len && self.k0 == k0 && self.k1 == k1
    }

    #[inline(always)]
    fn from_words(k0: u64, k1: u64, len: u32) -> Self {
        let hash = (k0 ^ k1.rotate_left(29).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len as u64)
            .wrapping_mul(K);
        ShortKey { k0, k1, len, hash }
    }
}

/// The pieces of up to `SHORT` bytes that are one vocabulary token (single bytes included),
/// laid out as a piece cache: built once per tokenizer, read-only, and copied into every
/// thread's cache when it starts or is cleared. A thread's cache therefore always holds the
/// whole short vocabulary, and a piece the cache lacks is one that needs merging.
#[derive(Debug, Clone)]
pub struct VocabTable {
    slots: HugeSlice<Slot>,
    used: usize,
}

impl VocabTable {
    /// `entries`: (piece bytes, id); pieces outside `1..=SHORT` bytes are skipped.
    pub fn new<'a>(entries: impl Iterator<Item = (&'a [u8], u32)> + Clone) -> Self {
        let short = |b: &&[u8]| (1..=SHORT).contains(&b.len());
        let n = entries.clone().filter(|(b, _)| short(b)).count();
        // At most a third full, so the threads' caches have room before they grow.
        let cap = (n * 3).next_power_of_two().max(MIN_SLOTS);
        let mut c = PieceCache {
            owner: 0,
            slots: HugeSlice::filled(cap, Slot::default()),
            mask: cap - 1,
            used: 0,
            spill: Vec::new(),
            long: HashMap::default(),
            long_bytes: 0,
        };
        for (b, id) in entries.filter(|(b, _)| short(b)) {
            let k = ShortKey::new(b, 0, b.len());
            c.place(
                k.hash,
                Slot {
                    k0: k.k0,
                    k1: k.k1,
                    len: k.len,
                    n: 1,
                    a: id,
                    b: 0,
                },
            );
        }
        VocabTable {
            slots: c.slots,
            used: c.used,
        }
    }

    /// Entries in the table.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }
}

/// Starts loading the cache line at `p` (a hint: any address, never faults).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint and never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch(p as *const i8, _MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl PieceCache {
    /// A cache for tokenizer `owner`, holding `vocab` to begin with.
    fn new(owner: u64, vocab: &VocabTable) -> Self {
        PieceCache {
            owner,
            slots: vocab.slots.clone(),
            mask: vocab.slots.len() - 1,
            used: vocab.used,
            spill: Vec::with_capacity(1 << 16),
            long: HashMap::default(),
            long_bytes: 0,
        }
    }

    #[inline(always)]
    fn index(&self, h: u64) -> usize {
        (h >> 32) as usize & self.mask
    }

    #[inline(always)]
    fn emit(&self, s: &Slot, out: &mut Vec<u32>) {
        match s.n {
            1 => out.push(s.a),
            2 => {
                out.push(s.a);
                out.push(s.b)
            }
            n => out.extend_from_slice(&self.spill[s.a as usize..(s.a + n) as usize]),
        }
    }

    /// Starts loading the main-table slot `key` probes first.
    #[inline(always)]
    pub fn prefetch(&self, key: &ShortKey) {
        prefetch(self.slots.as_ptr().wrapping_add(self.index(key.hash)));
    }

    /// Appends the cached ids of `key` to `out`; false on a miss.
    #[inline(always)]
    pub fn get(&self, key: &ShortKey, out: &mut Vec<u32>) -> bool {
        let mut i = self.index(key.hash);
        loop {
            // SAFETY: `index` and the step below mask with `mask` = `slots.len() - 1`.
            let s = unsafe { self.slots.get_unchecked(i) };
            if key.matches(s.k0, s.k1, s.len) {
                let len = out.len();
                if s.n <= 2 && out.capacity() - len >= 2 {
                    // Both inline words are written and the length moves by `n`: no branch
                    // on one id or two.
                    // SAFETY: two u32 of spare capacity were checked just above.
                    unsafe {
                        let p = out.as_mut_ptr().add(len);
                        p.write(s.a);
                        p.add(1).write(s.b);
                        out.set_len(len + s.n as usize);
                    }
                } else {
                    self.emit(s, out);
                }
                return true;
            }
            if s.len == 0 {
                return false;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Caches the ids of a short piece; `vocab` is what a full cache is reset to.
    pub fn insert_short(&mut self, key: &ShortKey, ids: &[u32], vocab: &VocabTable) {
        if ids.is_empty() {
            return;
        }
        if (self.used + 1) * 2 > self.slots.len() {
            if self.slots.len() < MAX_SLOTS.max(2 * vocab.slots.len()) {
                self.grow();
            } else {
                self.clear(vocab);
            }
        }
        let (a, b) = match *ids {
            [a] => (a, 0),
            [a, b] => (a, b),
            _ => {
                let off = self.spill.len() as u32;
                self.spill.extend_from_slice(ids);
                (off, 0)
            }
        };
        let slot = Slot {
            k0: key.k0,
            k1: key.k1,
            len: key.len,
            n: ids.len() as u32,
            a,
            b,
        };
        self.place(key.hash, slot);
    }

    fn place(&mut self, h: u64, slot: Slot) {
        let mut i = self.index(h);
        loop {
            let s = &mut self.slots[i];
            if s.len == 0 {
                *s = slot;
                self.used += 1;
                return;
            }
            if s.len == slot.len && s.k0 == slot.k0 && s.k1 == slot.k1 {
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    fn grow(&mut self) {
        let bigger = HugeSlice::filled(self.slots.len() * 2, Slot::default());
        let old = std::mem::replace(&mut self.slots, bigger);
        self.mask = self.slots.len() - 1;
        self.used = 0;
        for &s in old.iter().filter(|s| s.len != 0) {
            let key = ShortKey::from_words(s.k0, s.k1, s.len);
            self.place(key.hash, s);
        }
    }

    fn clear(&mut self, vocab: &VocabTable) {
        self.slots = vocab.slots.clone();
        self.mask = self.slots.len() - 1;
        self.used = vocab.used;
        self.spill.clear();
        self.long.clear();
        self.long_bytes = 0;
    }

    #[inline]
    pub fn get_long(&self, piece: &[u8], out: &mut Vec<u32>) -> bool {
        match self.long.get(piece) {
            Some(ids) => {
                ids.extend_into(out);
                true
            }
            None => false,
        }
    }

    pub fn insert_long(&mut self, piece: &[u8], ids: &[u32]) {
        if self.long.len() >= MAX_LONG || self.long_bytes >= MAX_LONG_BYTES {
            self.long.clear();
            self.long_bytes = 0;
        }
        self.long_bytes += piece.len() + 4 * ids.len();
        self.long.insert(piece.into(), Ids::from_slice(ids));
    }
}

thread_local! {
    static CACHE: RefCell<Option<PieceCache>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's cache for tokenizer `owner` (reset to `vocab` if it held
/// another's).
#[inline]
pub fn with_cache<R>(owner: u64, vocab: &VocabTable, f: impl FnOnce(&mut PieceCache) -> R) -> R {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|p| p.owner != owner) {
            *c = Some(PieceCache::new(owner, vocab));
        }
        f(c.as_mut().expect("cache"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_hold_exactly_the_piece_bytes() {
        // 0xFF filler after the piece: the masks must keep the piece's bytes and no others.
        let text: Vec<u8> = (1..=40u8).chain(std::iter::repeat_n(0xFF, 16)).collect();
        let check = |text: &[u8], start: usize, len: usize| {
            let k = ShortKey::new(text, start, len);
            let mut want = [0u8; 16];
            want[..len].copy_from_slice(&text[start..start + len]);
            let w = u128::from_le_bytes(want);
            assert_eq!(
                (k.k0, k.k1, k.len),
                (w as u64, (w >> 64) as u64, len as u32)
            );
        };
        for len in 1..=SHORT {
            for start in [0, 3, 40 - len] {
                check(&text, start, len);
            }
            // a piece at the very end of the text (no 16-byte load possible)
            check(&text[..40], 40 - len, len);
        }
    }

    #[test]
    fn short_keys_distinguish_pieces_and_round_trip() {
        let text = b"abcdefghijklmnopqrstuvwxyz";
        let vocab = VocabTable::new(std::iter::empty());
        let mut c = PieceCache::new(1, &vocab);
        let mut out = Vec::new();
        for len in 1..=SHORT {
            for start in 0..text.len() - len + 1 {
                let k = ShortKey::new(text, start, len);
                assert!(!c.get(&k, &mut out));
                let ids: Vec<u32> = (0..(len as u32 % 4 + 1))
                    .map(|x| x + start as u32)
                    .collect();
                c.insert_short(&k, &ids, &vocab);
                out.clear();
                assert!(c.get(&k, &mut out));
                assert_eq!(out, ids);
                out.clear();
            }
        }
        // A key near the end of the buffer equals the same bytes elsewhere.
        let a = ShortKey::new(b"xxhello", 2, 5);
        let b = ShortKey::new(b"hello world, long enough", 0, 5);
        assert!(a.k0 == b.k0 && a.k1 == b.k1 && a.len == b.len);
        // Growing and clearing keep the table consistent.
        for i in 0..100_000u32 {
            let s = format!("{i:>12}");
            let k = ShortKey::new(s.as_bytes(), 0, 12);
            c.insert_short(&k, &[i], &vocab);
        }
        let k = ShortKey::new(b"       99999", 0, 12);
        out.clear();
        assert!(c.get(&k, &mut out));
        assert_eq!(out, [99999]);
    }
}
