//! Byte-class masks over 16 bytes at a time for the pre-tokenizer scanners: bit `i` of a mask
//! is set when byte `i` is in the class. SSE2 on x86_64 (always present there), a scalar loop
//! elsewhere; both give the same masks.

/// Marks a function as the x86-64-v3 copy of a hot loop: compiled for AVX2, BMI1/2, LZCNT,
/// POPCNT, FMA and MOVBE, on x86_64 only. Call it only where `has_x86_64_v3()` is true; the
/// feature list here and the checks there are the same list, kept side by side.
macro_rules! x86_64_v3_fn {
    ($($item:tt)*) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,popcnt,fma,movbe")]
        $($item)*
    };
}
pub(crate) use x86_64_v3_fn;

/// Whether this CPU has the features `x86_64_v3_fn!` copies are compiled for. The wheel stays
/// baseline x86_64; each check is a load of the standard library's cached CPUID bits.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_x86_64_v3() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("bmi1")
        && std::is_x86_feature_detected!("bmi2")
        && std::is_x86_feature_detected!("lzcnt")
        && std::is_x86_feature_detected!("popcnt")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("movbe")
}

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

/// The bytes that end a run of plain text in a JSON string: `"`, `\\` and control chars
/// (below 0x20).
#[inline(always)]
pub fn json_string_stops(chunk: &[u8; 16]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is baseline on x86_64.
    unsafe {
        use std::arch::x86_64::_mm_or_si128;
        let v = sse2::load(chunk);
        let quote_or_backslash = _mm_or_si128(sse2::eq(v, b'"'), sse2::eq(v, b'\\'));
        sse2::mask(_mm_or_si128(quote_or_backslash, sse2::in_range(v, 0, 0x1f)))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        scalar(chunk, is_json_string_stop)
    }
}

/// `json_string_stops` of one byte.
#[inline(always)]
pub fn is_json_string_stop(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
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

/// `classes` over 64 bytes, as 64-bit masks (bit `i`: byte `i`): AVX2 where the CPU has it
/// (checked at run time; the build targets the x86_64 baseline), else four 16-byte SSE2 (or
/// scalar) steps. Both give the same masks.
#[inline(always)]
pub fn classes64(bytes: &[u8; 64]) -> [u64; 7] {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2::classes64(bytes) };
    }
    classes64_by_16(bytes)
}

/// `classes64` from four `classes` calls.
#[inline(always)]
fn classes64_by_16(bytes: &[u8; 64]) -> [u64; 7] {
    let mut m = [0u64; 7];
    for (q, chunk) in bytes.chunks_exact(16).enumerate() {
        let c = classes(chunk.try_into().unwrap());
        for (k, &x) in c.iter().enumerate() {
            m[k] |= (x as u64) << (16 * q);
        }
    }
    m
}

/// The same class tests as `sse2`, 32 bytes at a time.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn in_range(v: __m256i, lo: u8, n: u8) -> __m256i {
        let t = _mm256_sub_epi8(v, _mm256_set1_epi8(lo as i8));
        _mm256_cmpeq_epi8(_mm256_min_epu8(t, _mm256_set1_epi8(n as i8)), t)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn eq(v: __m256i, b: u8) -> __m256i {
        _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b as i8))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn mask(v: __m256i) -> u64 {
        _mm256_movemask_epi8(v) as u32 as u64
    }

    /// `super::classes64` on a CPU with AVX2.
    #[target_feature(enable = "avx2")]
    pub fn classes64(bytes: &[u8; 64]) -> [u64; 7] {
        let mut m = [0u64; 7];
        for h in 0..2 {
            // SAFETY: 32 bytes at offset 0 or 32 of a 64-byte array; the load is unaligned.
            let v = unsafe { _mm256_loadu_si256(bytes.as_ptr().add(32 * h) as *const __m256i) };
            let sp = eq(v, b' ');
            let newline = _mm256_or_si256(eq(v, b'\n'), eq(v, b'\r'));
            let space = _mm256_or_si256(_mm256_or_si256(sp, eq(v, b'\t')), in_range(v, 11, 1));
            let letters = in_range(_mm256_or_si256(v, _mm256_set1_epi8(0x20)), b'a', 25);
            let c = [
                mask(v),
                mask(letters),
                mask(in_range(v, b'0', 9)),
                mask(newline),
                mask(space),
                mask(sp),
                mask(eq(v, b'\'')),
            ];
            for (k, x) in c.into_iter().enumerate() {
                m[k] |= x << (32 * h);
            }
        }
        m
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

/// The largest of `ids`, or None for none: 32 ids a step in eight lanes each, with no branch
/// on the values (`Iterator::max` keeps the last of equal elements, so it stays a scalar loop
/// of compares: most of encode-corpus's writer thread before). The x86-64-v3 copy uses AVX2's
/// unsigned maximum; the baseline one compiles to SSE2.
pub fn max_u32(ids: &[u32]) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    if has_x86_64_v3() {
        // SAFETY: the CPU has the features `max_u32_v3` is compiled for (checked above).
        return unsafe { max_u32_v3(ids) };
    }
    max_u32_lanes(ids)
}

x86_64_v3_fn! {
    /// `max_u32` compiled for x86-64-v3.
    unsafe fn max_u32_v3(ids: &[u32]) -> Option<u32> {
        max_u32_lanes(ids)
    }
}

/// The body of `max_u32`, inlined into each copy: independent lane maxima the compiler turns
/// into vector maxima, then the few ids after the last whole block.
#[inline(always)]
fn max_u32_lanes(ids: &[u32]) -> Option<u32> {
    let (&first, _) = ids.split_first()?;
    let mut lanes = [first; 32];
    let mut blocks = ids.chunks_exact(32);
    for block in &mut blocks {
        for (m, &x) in lanes.iter_mut().zip(block) {
            *m = (*m).max(x);
        }
    }
    let tail = blocks.remainder().iter().copied();
    Some(lanes.into_iter().chain(tail).fold(first, u32::max))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `max_u32` (the x86-64-v3 copy where the CPU has it, and the baseline body) against
    /// `Iterator::max`, on every length up to 100 and with the maximum at every place.
    #[test]
    fn max_u32_is_the_maximum() {
        let mut rnd = crate::test_rng::draws(0x00ab_cdef_1234_5678u64);
        assert_eq!(max_u32(&[]), None);
        for n in 1..=100usize {
            let mut ids: Vec<u32> = (0..n).map(|_| rnd(1 << 20) as u32).collect();
            for at in 0..n {
                let keep = ids[at];
                ids[at] = u32::MAX - (at as u32 % 2);
                let want = ids.iter().max().copied();
                assert_eq!(max_u32(&ids), want, "n {n}, at {at}");
                assert_eq!(max_u32_lanes(&ids), want, "n {n}, at {at}");
                ids[at] = keep;
            }
            assert_eq!(max_u32(&ids), ids.iter().max().copied(), "n {n}");
        }
    }

    /// Every path to the 64-byte masks (AVX2 when this CPU has it, SSE2) gives the scalar
    /// masks: on four windows that hold every byte value once, then on random windows.
    #[test]
    fn masks_of_64_bytes_match_the_scalar_definition() {
        let mut rnd = crate::test_rng::draws(0x5eed_0f64_b17e_5eedu64);
        for round in 0..2000 {
            let bytes: [u8; 64] = std::array::from_fn(|i| match round {
                0..=3 => (64 * round + i) as u8,
                _ => rnd(256) as u8,
            });
            let mut want = [0u64; 7];
            for (q, chunk) in bytes.chunks_exact(16).enumerate() {
                for (k, x) in classes_scalar(chunk.try_into().unwrap())
                    .into_iter()
                    .enumerate()
                {
                    want[k] |= (x as u64) << (16 * q);
                }
            }
            assert_eq!(classes64(&bytes), want);
            assert_eq!(classes64_by_16(&bytes), want);
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                assert_eq!(unsafe { avx2::classes64(&bytes) }, want);
            }
        }
    }

    #[test]
    fn masks_match_the_scalar_definition() {
        for base in (0..256).step_by(16) {
            for shift in 0..16u8 {
                let chunk: [u8; 16] = std::array::from_fn(|i| (base + i) as u8 ^ shift);
                assert_eq!(classes(&chunk), classes_scalar(&chunk));
                assert_eq!(
                    json_string_stops(&chunk),
                    scalar(&chunk, is_json_string_stop)
                );
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
