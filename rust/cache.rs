//! Piece -> ids tables. Pieces of up to 16 bytes (nearly all of them in code) are keyed by the
//! piece packed into two u64 words, in flat open-addressing tables of 32-byte slots, so a hit is
//! one probe and two integer compares, with one or two ids inline: `SharedTable`, one per
//! tokenizer and shared lock-free by the threads (the one-token vocabulary, then the pieces the
//! threads merge), and `PieceCache`, one per thread, for what the shared table has no room
//! for. Longer pieces use a per-thread hash map.

use crate::huge::HugeSlice;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

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
/// Largest per-thread short table (32 bytes a slot: 16 MiB); past half full at this size it is
/// cleared, bounding memory per thread. Used only once the shared table is full.
const MAX_SLOTS: usize = 1 << 19;
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

    /// A slot index in a table of `mask + 1` (a power of two, at most 2^24) for this key,
    /// from the hash's high bits (its low bits depend only on the key's low bytes).
    #[inline]
    pub fn slot(&self, mask: usize) -> usize {
        (self.hash >> 40) as usize & mask
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
        let hash = (k0 ^ k1.rotate_left(29) ^ len as u64).wrapping_mul(K);
        ShortKey { k0, k1, len, hash }
    }
}

/// The ids of pieces of up to `SHORT` bytes, shared by all threads: built at load with every
/// piece that is one vocabulary token (single bytes included), then every thread adds the
/// pieces it merges, until the table is half full; a piece it lacks after that is cached in the
/// thread's own `PieceCache`. So a piece is one probe whatever it is, the threads never merge
/// the same piece twice (while there is room), and each vocabulary entry is in memory once.
///
/// No locks. A slot is written once: a thread claims an empty one by swapping its `len` from 0
/// to `LOCKED`, writes the key and ids, then publishes it with a release store of the real
/// length; a reader loads `len` with acquire and reads the rest only when it is the key's
/// length, so it sees a slot either empty, being written (skipped), or complete. Two threads
/// adding the same piece at once may both add it; both entries hold the same ids. Ids beyond
/// two go to an append-only spill area claimed with an atomic add and written before the slot
/// is published. Slots and spill are only touched through raw pointers and atomics once the
/// table is shared, never through references.
pub struct SharedTable {
    slots: HugeSlice<Slot>,
    mask: usize,
    /// Entries past which no more are added (half the slots).
    limit: usize,
    spill: HugeSlice<u32>,
    /// The two counters threads write, each on cache lines of its own: every lookup reads
    /// the fields above, and a counter beside them would send their line from core to core
    /// at each insert.
    used: Padded<AtomicUsize>,
    spill_used: Padded<AtomicUsize>,
}

/// A value alone on its cache lines (128 bytes: adjacent-line prefetchers pair lines).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

// SAFETY: the slots and spill are written only as described on the type (claim with a
// compare-exchange, publish with a release store, read after an acquire load), so shared access
// from several threads has no data race.
unsafe impl Sync for SharedTable {}
// SAFETY: the table owns its memory, like a Vec.
unsafe impl Send for SharedTable {}

impl std::fmt::Debug for SharedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTable")
            .field("slots", &self.slots.len())
            .field("used", &self.used.load(Ordering::Relaxed))
            .finish()
    }
}

/// A claimed slot being written (no key has this length).
const LOCKED: u32 = u32::MAX;
/// Spilled ids the shared table can hold (4 MiB).
const SHARED_SPILL: usize = 1 << 20;

impl SharedTable {
    /// `entries`: (piece bytes, id) of the pieces that are one token; pieces outside
    /// `1..=SHORT` bytes are skipped.
    pub fn new<'a>(entries: impl Iterator<Item = (&'a [u8], u32)> + Clone) -> Self {
        let short = |b: &&[u8]| (1..=SHORT).contains(&b.len());
        let n = entries.clone().filter(|(b, _)| short(b)).count();
        // At most a fifth full with the vocabulary, leaving room for the merged pieces: 2^20
        // slots (32 MiB) for Qwen2, where a third full (2^19) made the cold stdlib encode 3.5-4.4%
        // slower (more pieces a second probe from their slot) and 2^21 was no faster.
        let cap = (n * 5).next_power_of_two().max(MIN_SLOTS);
        let t = SharedTable {
            slots: HugeSlice::filled(cap, Slot::default()),
            mask: cap - 1,
            limit: cap / 2,
            spill: HugeSlice::filled(SHARED_SPILL, 0),
            used: Padded(AtomicUsize::new(0)),
            spill_used: Padded(AtomicUsize::new(0)),
        };
        // The slots are random lines of megabytes: each insert starts loading the slot of the
        // one `AHEAD` on, so the misses overlap (a tenth of a load's time, one by one).
        const AHEAD: usize = 16;
        let keys: Vec<(ShortKey, u32)> = entries
            .filter(|(b, _)| short(b))
            .map(|(b, id)| (ShortKey::new(b, 0, b.len()), id))
            .collect();
        for (k, (key, id)) in keys.iter().enumerate() {
            if let Some((next, _)) = keys.get(k + AHEAD) {
                prefetch(t.slot(t.index(next.hash)));
            }
            t.insert(key, &[*id]);
        }
        t
    }

    #[inline(always)]
    fn index(&self, h: u64) -> usize {
        (h >> 32) as usize & self.mask
    }

    #[inline(always)]
    fn slot(&self, i: usize) -> *mut Slot {
        // `i` is always masked with `mask` = `slots.len() - 1`.
        self.slots.raw().wrapping_add(i)
    }

    #[inline(always)]
    fn len_of(&self, p: *mut Slot) -> &AtomicU32 {
        // SAFETY: `p` is a slot of this table (aligned, alive as long as `self`); its `len` is
        // only accessed atomically once the table is built.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*p).len)) }
    }

    /// The slot at `p` if it holds `key`, given its length `len` loaded with acquire.
    #[inline(always)]
    fn holding(&self, p: *mut Slot, len: u32, key: &ShortKey) -> Option<Slot> {
        if len != key.len {
            return None; // empty, being written, or another length
        }
        // SAFETY: a published slot (its length seen with acquire): written once, before the
        // release store of `len`, never again.
        let s = unsafe { p.read() };
        key.matches(s.k0, s.k1, s.len).then_some(s)
    }

    /// Starts loading the slot `key` probes first, into L2: the scan prefetches a chunk of
    /// pieces (64) at once, and into L1 their lines would push out each other and the
    /// scanner's own (1-2% faster cold encodes of the standard library than into L1).
    #[inline(always)]
    pub fn prefetch(&self, key: &ShortKey) {
        prefetch_l2(self.slot(self.index(key.hash)));
    }

    /// Appends the ids of `key` to `out`; false when the table lacks the piece.
    #[inline(always)]
    pub fn get(&self, key: &ShortKey, out: &mut Vec<u32>) -> bool {
        let mut i = self.index(key.hash);
        loop {
            let p = self.slot(i);
            let len = self.len_of(p).load(Ordering::Acquire);
            if let Some(s) = self.holding(p, len, key) {
                emit_ids(s.a, s.b, s.n, out, |a, n| {
                    // SAFETY: spilled ids are written before their slot is published and lie
                    // within the spill area (checked when claimed).
                    unsafe {
                        std::slice::from_raw_parts(self.spill.raw().add(a as usize), n as usize)
                    }
                });
                return true;
            }
            if len == 0 {
                return false;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds the ids of `key` (not empty); false when the table is full, or its spill area
    /// for more than two ids.
    pub fn insert(&self, key: &ShortKey, ids: &[u32]) -> bool {
        if ids.is_empty() || self.used.load(Ordering::Relaxed) >= self.limit {
            return false;
        }
        let (a, b) = match *ids {
            [a] => (a, 0),
            [a, b] => (a, b),
            _ => {
                let off = self.spill_used.fetch_add(ids.len(), Ordering::Relaxed);
                if off + ids.len() > SHARED_SPILL {
                    return false;
                }
                // SAFETY: this thread alone claimed `off..off + len` (atomic add), within the
                // spill area; no reader looks at it before the slot below is published.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        ids.as_ptr(),
                        self.spill.raw().add(off),
                        ids.len(),
                    )
                };
                (off as u32, 0)
            }
        };
        let mut i = self.index(key.hash);
        loop {
            let p = self.slot(i);
            let len = self.len_of(p);
            let cur = len.load(Ordering::Acquire);
            if cur == 0 {
                if len
                    .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    continue; // another thread claimed it: look at it again
                }
                // SAFETY: the slot is ours (claimed above); readers skip it until published.
                unsafe {
                    std::ptr::addr_of_mut!((*p).k0).write(key.k0);
                    std::ptr::addr_of_mut!((*p).k1).write(key.k1);
                    std::ptr::addr_of_mut!((*p).n).write(ids.len() as u32);
                    std::ptr::addr_of_mut!((*p).a).write(a);
                    std::ptr::addr_of_mut!((*p).b).write(b);
                }
                len.store(key.len, Ordering::Release);
                self.used.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            if self.holding(p, cur, key).is_some() {
                return true;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Entries in the table.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Appends ids held as (`a`, `b`, `n`) (see `Slot`); `spilled(a, n)` gives the ids when
/// `n > 2`.
#[inline(always)]
fn emit_ids<'s>(
    a: u32,
    b: u32,
    n: u32,
    out: &mut Vec<u32>,
    spilled: impl FnOnce(u32, u32) -> &'s [u32],
) {
    let len = out.len();
    if n <= 2 && out.capacity() - len >= 2 {
        // Both inline words are written and the length moves by `n`: no branch on one id or
        // two.
        // SAFETY: two u32 of spare capacity were checked just above.
        unsafe {
            let p = out.as_mut_ptr().add(len);
            p.write(a);
            p.add(1).write(b);
            out.set_len(len + n as usize);
        }
    } else if n <= 2 {
        out.push(a);
        if n == 2 {
            out.push(b);
        }
    } else {
        out.extend_from_slice(spilled(a, n));
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{_MM_HINT_T0 as TO_L1, _MM_HINT_T1 as TO_L2};
#[cfg(not(target_arch = "x86_64"))]
const TO_L1: i32 = 0;
#[cfg(not(target_arch = "x86_64"))]
const TO_L2: i32 = 0;

/// Starts loading the cache line at `p` into the cache level `HINT` names (a hint: any
/// address, never faults; nothing where there is no prefetch instruction).
#[inline(always)]
fn prefetch_to<const HINT: i32, T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<HINT>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Starts loading the cache line at `p` into L1.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    prefetch_to::<TO_L1, T>(p);
}

/// Starts loading the cache line at `p` into L2, not L1.
#[inline(always)]
pub(crate) fn prefetch_l2<T>(p: *const T) {
    prefetch_to::<TO_L2, T>(p);
}

/// Starts loading the first `PREFETCHED_TEXT` bytes of `text`: called for the next text of a
/// batch while one is encoded, so a short text (whose bytes the hardware prefetcher cannot
/// guess: each is an allocation of its own) is in cache when its turn comes.
#[inline(always)]
pub fn prefetch_text(text: &str) {
    let p = text.as_ptr();
    for off in (0..text.len().min(PREFETCHED_TEXT)).step_by(64) {
        prefetch(p.wrapping_add(off));
    }
}

/// Bytes of the next text that `prefetch_text` starts loading.
const PREFETCHED_TEXT: usize = 256;

impl PieceCache {
    fn new(owner: u64) -> Self {
        PieceCache {
            owner,
            slots: HugeSlice::filled(MIN_SLOTS, Slot::default()),
            mask: MIN_SLOTS - 1,
            used: 0,
            spill: Vec::new(),
            long: HashMap::default(),
            long_bytes: 0,
        }
    }

    #[inline(always)]
    fn index(&self, h: u64) -> usize {
        (h >> 32) as usize & self.mask
    }

    /// Appends the cached ids of `key` to `out`; false on a miss.
    #[inline(always)]
    pub fn get(&self, key: &ShortKey, out: &mut Vec<u32>) -> bool {
        let mut i = self.index(key.hash);
        loop {
            // SAFETY: `index` and the step below mask with `mask` = `slots.len() - 1`.
            let s = unsafe { self.slots.get_unchecked(i) };
            if key.matches(s.k0, s.k1, s.len) {
                emit_ids(s.a, s.b, s.n, out, |a, n| {
                    &self.spill[a as usize..(a + n) as usize]
                });
                return true;
            }
            if s.len == 0 {
                return false;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Caches the ids of a short piece.
    pub fn insert_short(&mut self, key: &ShortKey, ids: &[u32]) {
        if ids.is_empty() {
            return;
        }
        if (self.used + 1) * 2 > self.slots.len() {
            if self.slots.len() < MAX_SLOTS {
                self.grow();
            } else {
                self.clear();
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

    fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = Slot::default());
        self.used = 0;
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
        // A piece merged twice (a long piece repeated while it waited) is counted once.
        if self
            .long
            .insert(piece.into(), Ids::from_slice(ids))
            .is_none()
        {
            self.long_bytes += piece.len() + 4 * ids.len();
        }
    }
}

thread_local! {
    static CACHE: RefCell<Option<PieceCache>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's cache for tokenizer `owner` (reset if it held another's).
#[inline]
pub fn with_cache<R>(owner: u64, f: impl FnOnce(&mut PieceCache) -> R) -> R {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|p| p.owner != owner) {
            *c = Some(PieceCache::new(owner));
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
    fn shared_table_is_consistent_under_concurrent_inserts() {
        let vocab: Vec<(Vec<u8>, u32)> = (0..3000u32)
            .map(|i| (format!("v{i}").into_bytes(), i))
            .collect();
        let t = SharedTable::new(vocab.iter().map(|(b, id)| (&b[..], *id)));
        assert_eq!(t.len(), 3000);
        // The ids a piece gets: one, two or several (spilled), from the piece alone.
        let ids_of = |i: u32| -> Vec<u32> { (0..i % 5 + 1).map(|j| i * 7 + j).collect() };
        let piece = |i: u32| format!("p{i:>9}");
        // Four threads add overlapping ranges of pieces and read back what any of them added.
        std::thread::scope(|sc| {
            for w in 0..4u32 {
                let t = &t;
                sc.spawn(move || {
                    let mut out = Vec::new();
                    for i in (w * 500)..(w * 500 + 3000) {
                        let p = piece(i);
                        let k = ShortKey::new(p.as_bytes(), 0, p.len());
                        out.clear();
                        if t.get(&k, &mut out) {
                            assert_eq!(out, ids_of(i));
                        } else {
                            assert!(t.insert(&k, &ids_of(i)));
                            out.clear();
                            assert!(t.get(&k, &mut out));
                            assert_eq!(out, ids_of(i));
                        }
                    }
                });
            }
        });
        let mut out = Vec::new();
        for i in 0..4500u32 {
            let p = piece(i);
            out.clear();
            assert!(t.get(&ShortKey::new(p.as_bytes(), 0, p.len()), &mut out));
            assert_eq!(out, ids_of(i));
        }
        for (b, id) in &vocab {
            out.clear();
            assert!(t.get(&ShortKey::new(b, 0, b.len()), &mut out));
            assert_eq!(out, [*id]);
        }
        let absent = b"not there";
        assert!(!t.get(&ShortKey::new(absent, 0, absent.len()), &mut out));
        // Past half full, nothing more is added (the caller keeps it per thread).
        let added = (0..t.slots.len() as u32)
            .take_while(|&i| t.insert(&ShortKey::new(piece(10_000 + i).as_bytes(), 0, 10), &[1]))
            .count();
        assert!(added < t.slots.len());
        assert!(t.len() >= t.slots.len() / 2);
        let more = piece(2_000_000);
        assert!(!t.insert(&ShortKey::new(more.as_bytes(), 0, 10), &[1]));
        assert!(!t.get(&ShortKey::new(more.as_bytes(), 0, 10), &mut out));
    }

    #[test]
    fn short_keys_distinguish_pieces_and_round_trip() {
        let text = b"abcdefghijklmnopqrstuvwxyz";
        let mut c = PieceCache::new(1);
        let mut out = Vec::new();
        for len in 1..=SHORT {
            for start in 0..text.len() - len + 1 {
                let k = ShortKey::new(text, start, len);
                assert!(!c.get(&k, &mut out));
                let ids: Vec<u32> = (0..(len as u32 % 4 + 1))
                    .map(|x| x + start as u32)
                    .collect();
                c.insert_short(&k, &ids);
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
            c.insert_short(&k, &[i]);
        }
        let k = ShortKey::new(b"       99999", 0, 12);
        out.clear();
        assert!(c.get(&k, &mut out));
        assert_eq!(out, [99999]);
    }
}
