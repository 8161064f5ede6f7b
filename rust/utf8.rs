//! UTF-8 from code-point arrays: the three forms CPython keeps a `str`'s characters in (PEP
//! 393: one unit per character, of 1, 2 or 4 bytes, the smallest that holds the string's
//! largest code point). The bindings use it for a non-ASCII string whose UTF-8 CPython has not
//! made: CPython's own conversion runs a character at a time (about 1 GB/s here, 5% of a cold
//! encode of the standard library) and keeps its result attached to the caller's string for
//! the string's life. Here runs of ASCII are narrowed 32 characters at a time.

/// A string's characters, one code point per unit.
#[derive(Clone, Copy, Debug)]
pub enum Units<'a> {
    /// U+0000..=U+00FF.
    Latin1(&'a [u8]),
    /// U+0000..=U+FFFF.
    Ucs2(&'a [u16]),
    /// U+0000..=U+10FFFF.
    Ucs4(&'a [u32]),
}

impl Units<'_> {
    /// Number of code points.
    pub fn len(&self) -> usize {
        match self {
            Units::Latin1(u) => u.len(),
            Units::Ucs2(u) => u.len(),
            Units::Ucs4(u) => u.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The unit index of the first code point with no UTF-8 form: a surrogate (U+D800..=U+DFFF,
/// which a `str` may hold, e.g. from `surrogateescape` decoding) or one past U+10FFFF.
#[derive(Debug, PartialEq, Eq)]
pub struct NotUnicode(pub usize);

/// Appends the UTF-8 of `units` to `out`. On `Err`, `out` is as it was.
pub fn push_utf8(units: Units<'_>, out: &mut Vec<u8>) -> Result<(), NotUnicode> {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_x86_64_v3() {
        // SAFETY: the CPU has the features `push_utf8_v3` is compiled for (checked above).
        return unsafe { push_utf8_v3(units, out) };
    }
    push_units(units, out)
}

crate::simd::x86_64_v3_fn! {
    /// `push_utf8` compiled for x86-64-v3: the ASCII test and the narrowing of 32 units are a
    /// few AVX2 instructions. Same bytes.
    unsafe fn push_utf8_v3(units: Units<'_>, out: &mut Vec<u8>) -> Result<(), NotUnicode> {
        push_units(units, out)
    }
}

#[inline(always)]
fn push_units(units: Units<'_>, out: &mut Vec<u8>) -> Result<(), NotUnicode> {
    match units {
        Units::Latin1(u) => encode(u, 2, out),
        Units::Ucs2(u) => encode(u, 3, out),
        Units::Ucs4(u) => encode(u, 4, out),
    }
}

/// Units narrowed at once when all are ASCII.
const BLOCK: usize = 32;

#[inline(always)]
fn encode<T: Copy + Into<u32>>(
    src: &[T],
    max_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), NotUnicode> {
    let start = out.len();
    out.reserve(src.len() * max_bytes);
    let dst = &mut out.spare_capacity_mut()[..src.len() * max_bytes];
    let mut o = 0;
    let mut i = 0;
    while i < src.len() {
        if let Some(block) = src.get(i..i + BLOCK) {
            // Eight blocks ahead (`cargo bench --bench encode -- pipeline/utf8`, the 127
            // non-ASCII stdlib files: 1.64 -> 1.41 ms).
            crate::cache::prefetch(src.as_ptr().wrapping_add(i + 8 * BLOCK));
            let block: &[T; BLOCK] = block.try_into().expect("a block");
            if block.iter().fold(0u32, |a, &c| a | c.into()) < 0x80 {
                let to: &mut [_; BLOCK] = (&mut dst[o..o + BLOCK]).try_into().expect("room");
                for (d, &c) in to.iter_mut().zip(block) {
                    d.write(c.into() as u8);
                }
                i += BLOCK;
                o += BLOCK;
                continue;
            }
        }
        let c: u32 = src[i].into();
        match c {
            0..=0x7F => {
                dst[o].write(c as u8);
                o += 1;
            }
            0x80..=0x7FF => {
                dst[o].write(0xC0 | (c >> 6) as u8);
                dst[o + 1].write(0x80 | (c & 0x3F) as u8);
                o += 2;
            }
            0xD800..=0xDFFF => return Err(NotUnicode(i)),
            0x800..=0xFFFF => {
                dst[o].write(0xE0 | (c >> 12) as u8);
                dst[o + 1].write(0x80 | ((c >> 6) & 0x3F) as u8);
                dst[o + 2].write(0x80 | (c & 0x3F) as u8);
                o += 3;
            }
            0x10000..=0x10FFFF => {
                dst[o].write(0xF0 | (c >> 18) as u8);
                dst[o + 1].write(0x80 | ((c >> 12) & 0x3F) as u8);
                dst[o + 2].write(0x80 | ((c >> 6) & 0x3F) as u8);
                dst[o + 3].write(0x80 | (c & 0x3F) as u8);
                o += 4;
            }
            _ => return Err(NotUnicode(i)),
        }
        i += 1;
    }
    // SAFETY: `dst[..o]`, the `o` bytes after `start`, were all written above (within the
    // capacity reserved).
    unsafe { out.set_len(start + o) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::draws;

    type Push = fn(Units<'_>, &mut Vec<u8>) -> Result<(), NotUnicode>;

    /// Both copies (baseline, and x86-64-v3 where this CPU has it) of `push_utf8`.
    fn copies() -> Vec<(&'static str, Push)> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut v: Vec<(&str, Push)> = vec![("baseline", push_units)];
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_x86_64_v3() {
            // SAFETY: only called where the CPU has the features (checked just above).
            v.push(("x86-64-v3", |u, o| unsafe { push_utf8_v3(u, o) }));
        }
        v
    }

    /// Random strings, mostly ASCII with runs of every width (so blocks are taken whole, cut
    /// short by a non-ASCII unit, and end the input), in each form that holds them, against
    /// `String`'s own encoding; a surrogate or an out-of-range unit is an error at its index,
    /// with `out` left as it was.
    #[test]
    fn matches_std_in_every_form() {
        let mut rnd = draws(0x5eed_1234_abcd);
        let pools: [&[u32]; 4] = [
            &[0x41, 0x7F, 0x0A],
            &[0x80, 0xE9, 0xFF],
            &[0x100, 0x7FF, 0x800, 0x20AC, 0xFFFF, 0xD7FF, 0xE000],
            &[0x10000, 0x1F600, 0x10FFFF],
        ];
        for case in 0..3000 {
            let widest = rnd(4);
            let n = rnd(if case % 10 == 0 { 300 } else { 70 });
            let cps: Vec<u32> = (0..n)
                .map(|_| {
                    if rnd(8) != 0 {
                        0x20 + rnd(0x5F) as u32
                    } else {
                        let p = pools[rnd(widest + 1)];
                        p[rnd(p.len())]
                    }
                })
                .collect();
            let want: String = cps.iter().map(|&c| char::from_u32(c).unwrap()).collect();
            let (l1, u2): (Vec<u8>, Vec<u16>) = (
                cps.iter().map(|&c| c as u8).collect(),
                cps.iter().map(|&c| c as u16).collect(),
            );
            let mut forms = vec![Units::Ucs4(&cps)];
            if widest <= 2 {
                forms.push(Units::Ucs2(&u2));
            }
            if widest <= 1 {
                forms.push(Units::Latin1(&l1));
            }
            for (copy, f) in copies() {
                for &form in &forms {
                    let mut out = b"prefix".to_vec();
                    f(form, &mut out).unwrap();
                    assert_eq!(&out[6..], want.as_bytes(), "{copy} case {case} {form:?}");
                }
                if n > 0 && widest >= 2 {
                    let at = rnd(n);
                    for bad in [0xD800u32, 0xDBFF, 0xDC00, 0xDFFF, 0x110000] {
                        let mut c4 = cps.clone();
                        c4[at] = bad;
                        let mut out = b"prefix".to_vec();
                        assert_eq!(f(Units::Ucs4(&c4), &mut out), Err(NotUnicode(at)));
                        assert_eq!(out, b"prefix", "{copy}: left as it was");
                        if bad <= 0xFFFF && widest == 2 {
                            let mut c2 = u2.clone();
                            c2[at] = bad as u16;
                            assert_eq!(f(Units::Ucs2(&c2), &mut out), Err(NotUnicode(at)));
                            assert_eq!(out, b"prefix");
                        }
                    }
                }
            }
        }
    }
}
