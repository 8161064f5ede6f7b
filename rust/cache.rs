//! A per-thread piece -> ids cache. No locks: each thread owns its cache, tagged with the
//! tokenizer it belongs to; most pieces of real text hit it in one probe.

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

/// Cached ids of one piece: up to two inline (most pieces), more on the heap.
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

/// Pieces longer than this are not cached (they are rare and would bloat the cache).
pub const MAX_CACHED_PIECE: usize = 64;
/// The cache is cleared when it holds this many pieces, bounding memory per thread.
pub const MAX_ENTRIES: usize = 1 << 20;

pub struct PieceCache {
    owner: u64,
    pub map: HashMap<Box<[u8]>, Ids, FxBuild>,
}

thread_local! {
    static CACHE: RefCell<PieceCache> = RefCell::new(PieceCache {
        owner: 0,
        map: HashMap::default(),
    });
}

/// Runs `f` with this thread's cache for tokenizer `owner` (cleared if it held another's).
#[inline]
pub fn with_cache<R>(owner: u64, f: impl FnOnce(&mut PieceCache) -> R) -> R {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.owner != owner {
            c.owner = owner;
            c.map = HashMap::default();
        }
        if c.map.len() >= MAX_ENTRIES {
            c.map.clear();
        }
        f(&mut c)
    })
}
