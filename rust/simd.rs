//! Byte-class masks over 16 bytes at a time for the pre-tokenizer scanners: bit `i` of a mask
//! is set when byte `i` is in the class. SSE2 on x86_64 (always present there), a scalar loop
//! elsewhere; both give the same masks.

/// SSE2 lane tests shared by the masks below (SSE2 is part of the x86_64 baseline).
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// The 16 bytes of `chunk` (an unaligned load).
    #[inline(always)]
    pub fn load(chunk: &[u8; 16]) -> __m128i {
        // SAFETY: SSE2 is baseline on x86_64; the load is unaligned and reads 16 bytes.
        unsafe { _mm_loadu_si128(chunk.as_ptr() as *const __m128i) }
    }

    /// Lanes of `v` in `lo..=lo + n`, compared unsigned.
    #[inline(always)]
    pub fn in_range(v: __m128i, lo: u8, n: u8) -> __m128i {
        // SAFETY: SSE2 is baseline on x86_64.
        unsafe {
            let t = _mm_sub_epi8(v, _mm_set1_epi8(lo as i8));
            _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(n as i8)), t)
        }
    }

    /// Lanes of `v` that are ASCII letters.
    #[inline(always)]
    pub fn letters(v: __m128i) -> __m128i {
        // SAFETY: SSE2 is baseline on x86_64.
        in_range(unsafe { _mm_or_si128(v, _mm_set1_epi8(0x20)) }, b'a', 25)
    }

    /// Lanes of `v` equal to `b`.
    #[inline(always)]
    pub fn eq(v: __m128i, b: u8) -> __m128i {
        // SAFETY: SSE2 is baseline on x86_64.
        unsafe { _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8)) }
    }

    /// The high bit of each lane, as a 16-bit mask.
    #[inline(always)]
    pub fn mask(v: __m128i) -> u32 {
        // SAFETY: SSE2 is baseline on x86_64.
        unsafe { _mm_movemask_epi8(v) as u32 }
    }
}

/// `[A-Za-z]`
#[inline(always)]
pub fn ascii_letters(chunk: &[u8; 16]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::mask(sse2::letters(sse2::load(chunk)))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        scalar(chunk, |b| b.is_ascii_alphabetic())
    }
}

/// ASCII bytes that are neither letters, digits nor whitespace (`\t`..`\r`, space): the
/// scanners' "other" class restricted to ASCII.
#[inline(always)]
pub fn ascii_others(chunk: &[u8; 16]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is baseline on x86_64.
    unsafe {
        use std::arch::x86_64::*;
        let v = sse2::load(chunk);
        let digit = sse2::in_range(v, b'0', 9);
        let ctl_space = sse2::in_range(v, 9, 4);
        let not_other = _mm_or_si128(
            _mm_or_si128(sse2::letters(v), digit),
            _mm_or_si128(ctl_space, sse2::eq(v, b' ')),
        );
        // High bit set: non-ASCII, not in this class either.
        (!sse2::mask(_mm_or_si128(not_other, v))) & 0xFFFF
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        scalar(chunk, |b| {
            b < 0x80 && !b.is_ascii_alphanumeric() && !(b == b' ' || (9..=13).contains(&b))
        })
    }
}

/// The classes the bit-parallel scanner needs, one mask each: non-ASCII, `[A-Za-z]`, `[0-9]`,
/// CR/LF, other whitespace (`\t \v \f` and space), space alone, apostrophe.
#[inline(always)]
pub fn classes(chunk: &[u8; 16]) -> [u32; 7] {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is baseline on x86_64.
    unsafe {
        use sse2::{eq, in_range, mask};
        use std::arch::x86_64::_mm_or_si128;
        let v = sse2::load(chunk);
        let sp = eq(v, b' ');
        let newline = _mm_or_si128(eq(v, b'\n'), eq(v, b'\r'));
        let space = _mm_or_si128(_mm_or_si128(sp, eq(v, b'\t')), in_range(v, 11, 1));
        [
            mask(v),
            mask(sse2::letters(v)),
            mask(in_range(v, b'0', 9)),
            mask(newline),
            mask(space),
            mask(sp),
            mask(eq(v, b'\'')),
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        classes_scalar(chunk)
    }
}

#[cfg(any(test, not(target_arch = "x86_64")))]
fn classes_scalar(chunk: &[u8; 16]) -> [u32; 7] {
    [
        scalar(chunk, |b| b >= 0x80),
        scalar(chunk, |b| b.is_ascii_alphabetic()),
        scalar(chunk, |b| b.is_ascii_digit()),
        scalar(chunk, |b| b == b'\n' || b == b'\r'),
        scalar(chunk, |b| matches!(b, b'\t' | 11 | 12 | b' ')),
        scalar(chunk, |b| b == b' '),
        scalar(chunk, |b| b == b'\''),
    ]
}

#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn scalar(chunk: &[u8; 16], f: impl Fn(u8) -> bool) -> u32 {
    let mut m = 0;
    for (i, &b) in chunk.iter().enumerate() {
        m |= (f(b) as u32) << i;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_match_the_scalar_definition() {
        for base in (0..256).step_by(16) {
            for shift in 0..16u8 {
                let chunk: [u8; 16] = std::array::from_fn(|i| (base + i) as u8 ^ shift);
                assert_eq!(classes(&chunk), classes_scalar(&chunk));
                assert_eq!(
                    ascii_letters(&chunk),
                    scalar(&chunk, |b| b.is_ascii_alphabetic())
                );
                assert_eq!(
                    ascii_others(&chunk),
                    scalar(&chunk, |b| {
                        b < 0x80
                            && !b.is_ascii_alphanumeric()
                            && !(b == b' ' || (9..=13).contains(&b))
                    })
                );
            }
        }
    }
}
