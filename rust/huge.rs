//! Large lookup tables on transparent huge pages. The merge table, the vocabulary table and
//! the piece caches are probed at random; with 4 KiB pages nearly every probe of a table of
//! several MiB also misses the TLB. Tables of at least 2 MiB get their own 2 MiB-aligned
//! anonymous mapping, advised `MADV_HUGEPAGE` before first touch; anything smaller, any
//! non-Unix target, or a failed mapping falls back to a `Vec`. Filling the table touches every
//! page at build time, so no page faults are left for the encoding itself.

use std::ops::{Deref, DerefMut};

const HUGE: usize = 2 << 20;

pub struct HugeSlice<T: Copy> {
    ptr: *mut T,
    len: usize,
    /// The mapping (base, length) when mmap-backed; `None` for the `Vec` fallback.
    map: Option<(*mut u8, usize)>,
    /// The `Vec` fallback's storage (`ptr` points into it); empty when mmap-backed.
    _storage: Vec<T>,
}

// SAFETY: a HugeSlice owns its memory exclusively, like a Vec<T>.
unsafe impl<T: Copy + Send> Send for HugeSlice<T> {}
// SAFETY: shared access is read-only through `Deref`.
unsafe impl<T: Copy + Sync> Sync for HugeSlice<T> {}

impl<T: Copy> HugeSlice<T> {
    /// The elements' base pointer, not derived from a reference: for tables whose slots
    /// threads write through raw pointers and atomics (`cache::SharedTable`), never through
    /// `Deref`.
    #[inline(always)]
    pub fn raw(&self) -> *mut T {
        self.ptr
    }

    /// `len` copies of `value`.
    pub fn filled(len: usize, value: T) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        if bytes >= HUGE {
            if let Some(s) = Self::mapped(len, bytes, value) {
                return s;
            }
        }
        Self::from_vec(vec![value; len])
    }

    /// The elements of `vec`, kept in it (no copy, no huge pages).
    pub fn from_vec(mut vec: Vec<T>) -> Self {
        HugeSlice {
            ptr: vec.as_mut_ptr(),
            len: vec.len(),
            map: None,
            _storage: vec,
        }
    }

    #[cfg(unix)]
    fn mapped(len: usize, bytes: usize, value: T) -> Option<Self> {
        let size = bytes.div_ceil(HUGE) * HUGE;
        let map_len = size + HUGE;
        // SAFETY: an anonymous private mapping; checked for failure below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base as *mut u8;
        let aligned = base.wrapping_add(base.align_offset(HUGE));
        #[cfg(any(target_os = "linux", target_os = "android"))]
        // SAFETY: advice on a range inside our own mapping; failure only loses the hint.
        unsafe {
            libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
        }
        let ptr = aligned as *mut T;
        // SAFETY: `aligned..aligned + size` lies in the mapping (HUGE bytes of slack), is
        // suitably aligned for T (2 MiB), and is written before it is ever read.
        unsafe {
            for i in 0..len {
                ptr.add(i).write(value);
            }
        }
        Some(HugeSlice {
            ptr,
            len,
            map: Some((base, map_len)),
            _storage: Vec::new(),
        })
    }

    #[cfg(not(unix))]
    fn mapped(_len: usize, _bytes: usize, _value: T) -> Option<Self> {
        None
    }
}

impl<T: Copy> Deref for HugeSlice<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialized elements owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T: Copy> DerefMut for HugeSlice<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as above, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy> Clone for HugeSlice<T> {
    fn clone(&self) -> Self {
        if self.len == 0 {
            return Self::from_vec(Vec::new());
        }
        let mut c = HugeSlice::filled(self.len, self[0]);
        c.copy_from_slice(self);
        c
    }
}

impl<T: Copy> Drop for HugeSlice<T> {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some((base, map_len)) = self.map {
            // SAFETY: unmapping exactly the mapping made in `mapped`; T is Copy (no drop).
            unsafe {
                libc::munmap(base as *mut libc::c_void, map_len);
            }
        }
    }
}

impl<T: Copy + std::fmt::Debug> std::fmt::Debug for HugeSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HugeSlice(len {})", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_huge_tables_behave_like_vecs() {
        for len in [0usize, 5, 1 << 20] {
            let mut s = HugeSlice::filled(len, 7u64);
            assert_eq!(s.len(), len);
            assert!(s.iter().all(|&x| x == 7));
            if len > 0 {
                s[len - 1] = 9;
                let c = s.clone();
                assert_eq!(c[len - 1], 9);
                assert_eq!(&c[..], &s[..]);
            }
        }
    }
}
