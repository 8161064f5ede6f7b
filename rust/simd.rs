//! Byte-class masks over 16 bytes at a time for the pre-tokenizer scanners: bit `i` of a mask
//! is set when byte `i` is in the class. SSE2 on x86_64 (always present there), a scalar loop
//! elsewhere; both give the same masks.

/// `[A-Za-z]`
#[inline(always)]
pub fn ascii_letters(chunk: &[u8; 16]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86_64 baseline; the load is unaligned and reads 16 bytes.
    unsafe {
        use std::arch::x86_64::*;
        let v = _mm_loadu_si128(chunk.as_ptr() as *const __m128i);
        let t = _mm_sub_epi8(
            _mm_or_si128(v, _mm_set1_epi8(0x20)),
            _mm_set1_epi8(b'a' as i8),
        );
        let is = _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(25)), t);
        _mm_movemask_epi8(is) as u32
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
    // SAFETY: as above.
    unsafe {
        use std::arch::x86_64::*;
        let v = _mm_loadu_si128(chunk.as_ptr() as *const __m128i);
        let in_range = |lo: u8, n: u8| {
            let t = _mm_sub_epi8(v, _mm_set1_epi8(lo as i8));
            _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(n as i8)), t)
        };
        let letter = {
            let t = _mm_sub_epi8(
                _mm_or_si128(v, _mm_set1_epi8(0x20)),
                _mm_set1_epi8(b'a' as i8),
            );
            _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(25)), t)
        };
        let digit = in_range(b'0', 9);
        let ctl_space = in_range(9, 4);
        let space = _mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8));
        let not_other = _mm_or_si128(_mm_or_si128(letter, digit), _mm_or_si128(ctl_space, space));
        // High bit set: non-ASCII, not in this class either.
        let bad = _mm_or_si128(not_other, v);
        (!(_mm_movemask_epi8(bad) as u32)) & 0xFFFF
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
    // SAFETY: as above.
    unsafe {
        use std::arch::x86_64::*;
        let v = _mm_loadu_si128(chunk.as_ptr() as *const __m128i);
        let eq = |b: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8));
        let in_range = |lo: u8, n: u8| {
            let t = _mm_sub_epi8(v, _mm_set1_epi8(lo as i8));
            _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(n as i8)), t)
        };
        let letter = {
            let t = _mm_sub_epi8(
                _mm_or_si128(v, _mm_set1_epi8(0x20)),
                _mm_set1_epi8(b'a' as i8),
            );
            _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(25)), t)
        };
        let sp = eq(b' ');
        let newline = _mm_or_si128(eq(b'\n'), eq(b'\r'));
        let space = _mm_or_si128(_mm_or_si128(sp, eq(b'\t')), in_range(11, 1));
        let m = |x| _mm_movemask_epi8(x) as u32;
        [
            m(v),
            m(letter),
            m(in_range(b'0', 9)),
            m(newline),
            m(space),
            m(sp),
            m(eq(b'\'')),
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
