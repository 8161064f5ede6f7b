//! Bit-parallel piece boundaries for the Qwen2 pattern (`Scanner::Cl100k(1)`) over ASCII text.
//!
//! A window of up to 63 bytes starting at a known piece start is classified into one bitmap
//! per byte class, and every piece start in it is derived with whole-word bit operations
//! instead of one branchy step per piece. For ASCII the scanner's rules reduce to run
//! structure (bit `i` is byte `pos + i`):
//! - every run of letters, of "other" chars and of whitespace starts a piece, and every digit
//!   is a piece;
//! - except a letter run right after a whitespace char or after an "other" char that starts a
//!   piece (the `[^\r\n\p{L}\p{N}]?\p{L}+` prefix, and contractions `'s`, `'re`, ...), and an
//!   "other" run right after a space (` ?[^\s\p{L}\p{N}]+`), which join the previous char;
//! - an "other" run takes the CR/LF run after it (`[\r\n]*`), whose whitespace run then
//!   starts after those line breaks;
//! - a whitespace run splits after its last CR/LF (`\s*[\r\n]+`), and the rest, when it is
//!   two chars or more and a char follows, gives its last char to the next piece
//!   (`\s+(?!\S)`).
//!
//! An "other" char starts a piece exactly when it starts its run and does not follow a space.
//! Whatever depends on bytes past the window (a contraction near its end, a whitespace run
//! reaching it, non-ASCII bytes) is left to the next window, which starts at the last start
//! known for sure; when no start past the first is known (a piece over ~60 bytes, a
//! non-ASCII char), the caller takes one piece from the scalar scanner. Tests check the result
//! against the scalar scanner on fixed and random text; the conformance tests check the
//! encoder built on it against HF on the whole standard library.

/// Bytes per window: bit 63 is left free so the end of a full window is a representable bit.
const WIDTH: usize = 63;

/// Per-class bitmaps of a window.
struct Classes {
    letter: u64,
    digit: u64,
    newline: u64,
    /// Whitespace other than CR/LF (`\t`, `\v`, `\f`, space).
    space: u64,
    /// The space char (0x20) only.
    sp: u64,
    other: u64,
    apostrophe: u64,
    /// Bits of the bytes classified (ASCII, inside the text and the window).
    valid: u64,
}

/// Classifies `s[pos..pos + len]` (`1 <= len <= 63`); bytes from the first non-ASCII one on
/// are left out of `valid` and of every class.
#[inline(always)]
fn classify(s: &[u8], pos: usize, len: usize) -> Classes {
    let mut buf = [0u8; 64];
    let bytes: &[u8; 64] = match s.get(pos..pos + 64) {
        Some(b) => b.try_into().unwrap(),
        None => {
            buf[..len].copy_from_slice(&s[pos..pos + len]);
            &buf
        }
    };
    let m = crate::simd::classes64(bytes);
    let in_len = u64::MAX >> (64 - len);
    let non_ascii = m[0] & in_len;
    let valid = if non_ascii == 0 {
        in_len
    } else {
        (1u64 << non_ascii.trailing_zeros()) - 1
    };
    Classes {
        letter: m[1] & valid,
        digit: m[2] & valid,
        newline: m[3] & valid,
        space: m[4] & valid,
        sp: m[5] & valid,
        apostrophe: m[6] & valid,
        other: valid & !(m[1] | m[2] | m[3] | m[4]),
        valid,
    }
}

/// Piece starts in the window at `pos` (a piece start) and where the next window starts.
/// Returns `(starts, next)`: bit `i` of `starts` is set for every piece start `pos + i` with
/// `0 < i < next`, and bit `next` is set too (the end of the last piece taken). `next` is 0
/// when this window cannot tell where the first piece ends.
#[inline(always)]
pub fn window(s: &[u8], pos: usize) -> (u64, usize) {
    let rest = s.len() - pos;
    let len = rest.min(WIDTH);
    let c = classify(s, pos, len);
    // Whether the text ends inside the classified bytes (nothing unknown after them).
    let ends_here = rest <= WIDTH && c.valid == u64::MAX >> (64 - len);
    let prev = |x: u64| x << 1;
    let next = |x: u64| x >> 1;
    let white = c.space | c.newline;

    let letter_start = c.letter & !prev(c.letter);
    let other_start = c.other & !prev(c.other);
    let white_start = white & !prev(white);
    // An "other" char that starts a piece: it starts its run and does not follow a space.
    let other_piece = other_start & !prev(c.sp);
    // Contractions: `'` starting a piece, then `s t m d`, or `re ve ll` (any case); the piece
    // ends one or two letters later, inside the letter run.
    let mut contraction_ends = 0u64;
    let mut apo = c.apostrophe & other_piece;
    while apo != 0 {
        let a = apo.trailing_zeros() as usize;
        let k = crate::pretok::contraction_ci(s, pos + a + 1);
        if k > 0 && a + 1 + k < 64 {
            contraction_ends |= 1u64 << (a + 1 + k);
        }
        apo &= apo - 1;
    }
    // CR/LF runs right after an "other" run belong to its piece; the whitespace run goes on
    // from the first char after them.
    let absorbed_from = prev(c.other) & c.newline;
    let after_absorbed = c.newline.wrapping_add(absorbed_from) & !c.newline;
    // Whitespace runs: split right after the last CR/LF. A space-class char right after a
    // CR/LF starts a piece unless its run of spaces is followed by another CR/LF.
    let mut tail_nl = c.space & next(c.newline);
    let mut run = c.space;
    for k in [1, 2, 4, 8, 16, 32] {
        tail_nl |= (tail_nl >> k) & run;
        run &= run >> k;
    }
    let after_last_nl = c.space & prev(c.newline) & !tail_nl;
    // A run of two or more spaces before a known non-whitespace char gives it its last one.
    let known_non_white = c.valid & !white;
    let give_back = c.space & prev(c.space) & next(known_non_white);

    let candidates = letter_start
        | c.digit
        | other_start
        | white_start
        | (after_absorbed & c.space)
        | after_last_nl
        | give_back
        | contraction_ends;
    let joined = (letter_start & prev(c.space | other_piece))
        | (other_start & prev(c.sp))
        | (white_start & c.newline & prev(c.other));
    let starts = (candidates & !joined & c.valid) | 1;

    if ends_here {
        // Everything is known: every start, and the text end ends the last piece.
        return ((starts & !1) | 1u64 << len, len);
    }
    // Where bytes past the window can still change starts: the whitespace run that reaches
    // the end of the known bytes, and contractions in the last three bytes.
    let known = c.valid.count_ones() as usize;
    let mut limit = known.saturating_sub(3);
    if known > 0 && white >> (known - 1) & 1 == 1 {
        let last_white_start = 63 - (white_start & (u64::MAX >> (64 - known))).leading_zeros();
        limit = limit.min(last_white_start as usize);
    }
    let usable = starts & !1 & (u64::MAX >> (63 - limit.min(63)));
    if usable == 0 {
        return (0, 0);
    }
    let last = 63 - usable.leading_zeros() as usize;
    (usable, last)
}

/// Piece ends one at a time from successive windows, with the scalar scanner where a window
/// cannot tell: `next_end(s, pos)` for the piece starting at `pos`, each call at the end the
/// previous one returned.
#[derive(Default)]
pub struct Pieces {
    /// Ends not yet returned, as bits over `base`.
    pending: u64,
    base: usize,
}

impl Pieces {
    #[inline(always)]
    pub fn next_end(&mut self, s: &[u8], pos: usize) -> usize {
        if self.pending == 0 {
            let (starts, next) = window(s, pos);
            if next == 0 {
                return crate::pretok::next_cl100k(s, pos, 1);
            }
            self.pending = starts;
            self.base = pos;
        }
        let end = self.base + self.pending.trailing_zeros() as usize;
        self.pending &= self.pending - 1;
        end
    }
}

/// Every piece end of `s`.
pub fn piece_ends(s: &[u8]) -> Vec<usize> {
    let mut pieces = Pieces::default();
    let mut ends = Vec::new();
    let mut pos = 0;
    while pos < s.len() {
        pos = pieces.next_end(s, pos);
        ends.push(pos);
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar_ends(s: &[u8]) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut pos = 0;
        while pos < s.len() {
            pos = crate::pretok::next_cl100k(s, pos, 1);
            ends.push(pos);
        }
        ends
    }

    fn check(text: &str) {
        let s = text.as_bytes();
        assert_eq!(piece_ends(s), scalar_ends(s), "{text:?}");
    }

    #[test]
    fn agrees_with_the_scalar_scanner_on_fixed_text() {
        for t in [
            "",
            "x",
            "hello world",
            "  leading and trailing  ",
            "x = 1234567 + 89\n\n\tdef f(a, b):\n        return a'S + b'll\r\n",
            "it's 'Re 'ſ 've'VE don't ''s ('s x 's",
            "):\n    x\n\n  \n y ) \n z\t(a (b  (c \t\td",
            "a\u{301}e\u{301} नमस्ते \u{5D0}\u{5D1} x\u{a0}y",
            "((foo)) ...bar\n\n\n",
            "   ",
            "\n",
            "'",
            "'t",
            "x'",
        ] {
            check(t);
        }
        let long = "abc ".repeat(40) + &" ".repeat(100) + "x" + &"(".repeat(90) + "\n";
        check(&long);
    }

    #[test]
    fn agrees_with_the_scalar_scanner_on_random_text() {
        let alphabet = [
            "a", "Z", "s", "t", "S", "r", "e", "v", "l", "L", "d", "m", "1", "0", " ", " ", "\t",
            "\n", "\r", "(", ".", "'", "'", "\u{b}", "\u{c}", "é", "—", "\u{a0}", "ſ", "#",
        ];
        let mut rnd = crate::test_rng::draws(0x1234_5678_9abc_def0u64);
        for round in 0..20000 {
            let len = rnd(if round % 10 == 0 { 400 } else { 90 });
            // Skewed draws: some runs of one char, to reach window edges in every state.
            let mut t = String::new();
            while t.len() < len {
                let piece = alphabet[rnd(alphabet.len())];
                let reps = if rnd(8) == 0 { 1 + rnd(70) } else { 1 };
                for _ in 0..reps {
                    t.push_str(piece);
                }
            }
            check(&t);
        }
    }
}
