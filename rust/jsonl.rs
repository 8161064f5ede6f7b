//! The fast path of encode-corpus's JSONL field extraction. A code corpus's text field is
//! dense with escapes (every line break is `\n`), and serde_json, which stops at each one,
//! took about 12% of encode-corpus's CPU. `field_text` scans 16 bytes at a time for the bytes
//! that end a run of plain text (`"`, `\`, control chars) and copies the runs between escapes
//! whole. It accepts only what serde_json accepts and gives the same text; anything it is not
//! sure of (an escaped key, a `\u` escape of a surrogate, deep nesting, any error) it leaves
//! to serde_json, which gives the text or the precise error. On CPUs with AVX-512 VBMI2 the
//! content string goes 64 bytes at a time (`wide`): the simple escapes of a block decoded and
//! its backslashes squeezed out at once, with no branch per escape.

use crate::simd;

/// Appends the text of the first `field` member of the JSON object `line` (valid UTF-8) to
/// `out`, valid UTF-8 too (the tests check it), and returns true when `line` is an object
/// serde_json accepts (whitespace around it allowed) and that member is a string. Returns
/// false, with `out` in any state, otherwise, and in the cases listed in the module's doc.
pub fn field_text(line: &[u8], field: &[u8], out: &mut Vec<u8>) -> bool {
    let mut p = Parser { s: line, i: 0 };
    p.object_field(field, out).is_some()
}

/// Nesting deeper than this goes to serde_json (whose own limit is 128).
const MAX_DEPTH: u32 = 64;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    /// The whole line: an object, the first `field` member a string.
    fn object_field(&mut self, field: &[u8], out: &mut Vec<u8>) -> Option<()> {
        self.ws();
        (self.peek()? == b'{').then_some(())?;
        if self.open_empty(b'}')? {
            return None; // no field
        }
        let mut found = false;
        loop {
            let key = self.key()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            if !found && key == field {
                (self.peek()? == b'"').then_some(())?;
                self.string(Some(out))?;
                found = true;
            } else {
                self.skip_value(1)?;
            }
            if self.next_or_close(b'}')? {
                break;
            }
        }
        self.ws();
        (found && self.i == self.s.len()).then_some(())
    }

    /// A member name without escapes.
    fn key(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        let end = special(self.s, start);
        (self.s.get(end) == Some(&b'"')).then_some(())?;
        self.i = end + 1;
        let s: &'a [u8] = self.s;
        Some(&s[start..end])
    }

    /// A string at `i` (its opening quote), unescaped into `out` when given.
    fn string(&mut self, out: Option<&mut Vec<u8>>) -> Option<()> {
        self.string_with(out, true)
    }

    /// `string`, with 64-byte blocks (`wide`) when `blocks` is true and the CPU has them.
    fn string_with(&mut self, mut out: Option<&mut Vec<u8>>, blocks: bool) -> Option<()> {
        // Keys and skipped strings (no `out`) take the byte-wise loop, and no feature check.
        let mut blocks = blocks && out.is_some() && wide::available();
        self.eat(b'"')?;
        if let Some(o) = out.as_deref_mut() {
            // The text is never longer than the rest of the line: room for all of it, and
            // for the 16- and 64-byte stores past its end (`copy_run`, `wide::unescape`).
            o.reserve(self.s.len() - self.i + 64);
        }
        loop {
            if let (Some(o), true) = (out.as_deref_mut(), blocks) {
                // SAFETY: `blocks` is only true where `wide::available()`.
                match unsafe { wide::unescape(self.s, self.i, o) } {
                    wide::Stop::Quote(at) => {
                        self.i = at + 1;
                        return Some(());
                    }
                    wide::Stop::Here(at) => {
                        self.i = at;
                        // Under 64 bytes left: the rest is the byte-wise loop's.
                        blocks = at + 64 <= self.s.len();
                    }
                }
            }
            let end = match out.as_deref_mut() {
                Some(o) => copy_run(self.s, self.i, o),
                None => special(self.s, self.i),
            };
            match self.s.get(end)? {
                b'"' => {
                    self.i = end + 1;
                    return Some(());
                }
                b'\\' => {
                    self.i = end + 1;
                    let c = self.escape()?;
                    match out.as_deref_mut() {
                        Some(o) if c.is_ascii() => o.push(c as u8),
                        Some(o) => o.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                        None => {}
                    }
                }
                _ => return None, // a control char: serde_json's error
            }
        }
    }

    /// The char of the escape after a backslash.
    #[inline]
    fn escape(&mut self) -> Option<char> {
        let c = match self.peek()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hex = self.s.get(self.i + 1..self.i + 5)?;
                let mut v = 0u32;
                for &h in hex {
                    v = v * 16 + (h as char).to_digit(16)?;
                }
                self.i += 4;
                char::from_u32(v)? // None for a surrogate: left to serde_json
            }
            _ => return None,
        };
        self.i += 1;
        Some(c)
    }

    fn skip_value(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string(None),
            b'{' => {
                if self.open_empty(b'}')? {
                    return Some(());
                }
                loop {
                    self.string(None)?;
                    self.ws();
                    self.eat(b':')?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    if self.next_or_close(b'}')? {
                        return Some(());
                    }
                }
            }
            b'[' => {
                if self.open_empty(b']')? {
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    if self.next_or_close(b']')? {
                        return Some(());
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// Past an opening bracket at `i` and the whitespace after it; true (past `close` too)
    /// when the container is empty.
    fn open_empty(&mut self, close: u8) -> Option<bool> {
        self.i += 1;
        self.ws();
        let empty = self.peek()? == close;
        if empty {
            self.i += 1;
        }
        Some(empty)
    }

    /// After a member or element: past a comma and the whitespace after it (false), or past
    /// `close` (true); None for anything else.
    fn next_or_close(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let b = self.peek()?;
        self.i += 1;
        if b == b',' {
            self.ws();
            Some(false)
        } else {
            (b == close).then_some(true)
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        (self.s.get(self.i..self.i + word.len())? == word).then(|| self.i += word.len())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, the JSON number grammar.
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits()?,
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits()?;
        }
        Some(())
    }

    /// One or more ASCII digits.
    fn digits(&mut self) -> Option<()> {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        (self.i > start).then_some(())
    }
}

/// Whole 64-byte blocks of a string's text, on CPUs with AVX-512 VBMI2 (`vpcompressb`).
#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    /// Where `unescape` stopped.
    pub enum Stop {
        /// At the string's closing quote.
        Quote(usize),
        /// At what the byte-wise loop handles next: a `\u` or invalid escape, a control char,
        /// or the last 63 bytes of the line.
        Here(usize),
    }

    /// Whether this CPU has what `block` is compiled for, the same list (cached by the
    /// standard library).
    #[inline]
    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vbmi")
            && std::is_x86_feature_detected!("avx512vbmi2")
            && std::is_x86_feature_detected!("bmi1")
            && std::is_x86_feature_detected!("bmi2")
            && std::is_x86_feature_detected!("popcnt")
    }

    /// The byte a simple escape stands for, by the char after the backslash; 0 for the
    /// others (`u`, invalid ones).
    const DECODED: [u8; 128] = {
        let mut t = [0u8; 128];
        t[b'"' as usize] = b'"';
        t[b'\\' as usize] = b'\\';
        t[b'/' as usize] = b'/';
        t[b'b' as usize] = 0x08;
        t[b'f' as usize] = 0x0c;
        t[b'n' as usize] = b'\n';
        t[b'r' as usize] = b'\r';
        t[b't' as usize] = b'\t';
        t
    };

    /// The bits below bit `n` (`n` <= 64).
    #[inline(always)]
    fn below(n: u32) -> u64 {
        if n == 64 {
            u64::MAX
        } else {
            (1u64 << n) - 1
        }
    }

    /// The backslashes of `b` (a block's backslash mask) that start an escape: in each run of
    /// backslashes, those at an even offset from the run's start (the others are escaped).
    /// The block must not start inside an escape.
    #[inline(always)]
    pub(super) fn escape_starts(b: u64) -> u64 {
        const EVEN: u64 = 0x5555_5555_5555_5555;
        let run_starts = b & !(b << 1);
        // Adding a run's start bit clears the run: the runs starting at even / odd offsets.
        let even_runs = b & !b.wrapping_add(run_starts & EVEN);
        let odd_runs = b & !b.wrapping_add(run_starts & !EVEN);
        let escaped = (even_runs & !EVEN) | (odd_runs & EVEN);
        b & !escaped
    }

    /// How far ahead of the block being unescaped the text is prefetched.
    const AHEAD: usize = 512;

    /// Unescapes the string text at `s[i..]` into `out` a 64-byte block at a time, while a
    /// block's escapes are all simple (`\"` `\\` `\/` `\b` `\f` `\n` `\r` `\t`). `out` must have
    /// room for `s.len() - i + 64` more bytes (each block is stored whole, then the length
    /// moved past its text).
    ///
    /// # Safety
    /// Only where `available()`.
    pub unsafe fn unescape(s: &[u8], mut i: usize, out: &mut Vec<u8>) -> Stop {
        assert!(out.capacity() - out.len() >= s.len() - i + 64);
        while i + 64 <= s.len() {
            // SAFETY: the CPU has the features `block` is compiled for (the caller's promise);
            // 64 bytes are read at `i`, within `s`, and 64 written at `out.len()`, within the
            // capacity: `out` grows by at most the bytes consumed, and had room for all of
            // them plus 64.
            let (consumed, stop) = unsafe { block(s.as_ptr().add(i), out) };
            // A whole block taken is the common case: as a predicted branch, not a data
            // dependency, the next blocks' loads start early (and ahead of them, a prefetch).
            if consumed == 64 {
                i += 64;
                crate::cache::prefetch(s.as_ptr().wrapping_add(i + AHEAD));
                continue;
            }
            if let Some(quote) = stop {
                return match quote {
                    true => Stop::Quote(i + consumed),
                    false => Stop::Here(i + consumed),
                };
            }
            i += consumed;
        }
        Stop::Here(i)
    }

    /// One block at `p`: appends its text up to the first unescaped quote or control char
    /// (or the whole block), and returns the bytes consumed and `Some(is a quote)` when it
    /// stopped at such a byte or before an escape it does not take.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vbmi2,bmi1,bmi2,popcnt")]
    unsafe fn block(p: *const u8, out: &mut Vec<u8>) -> (usize, Option<bool>) {
        let v = _mm512_loadu_si512(p as *const __m512i);
        let quotes = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'"' as i8));
        let backslashes = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'\\' as i8));
        let controls = _mm512_cmplt_epu8_mask(v, _mm512_set1_epi8(0x20));
        let starts = escape_starts(backslashes);
        let escaped = starts << 1; // an escape at byte 63 ends in the next block
        let stops = (quotes | controls) & !escaped;
        // The bytes taken: up to the first stop, and never an escape cut by the block's end.
        let mut take = stops.trailing_zeros();
        if take == 64 && starts >> 63 == 1 {
            take = 63;
        }
        let starts = starts & below(take);
        let escaped = starts << 1;
        let table = DECODED.as_ptr() as *const __m512i;
        // Each byte's decoding by its low 7 bits; only escaped bytes' are used.
        let decoded = _mm512_permutex2var_epi8(
            _mm512_loadu_si512(table),
            v,
            _mm512_loadu_si512(table.add(1)),
        );
        let unknown = _mm512_mask_cmpeq_epi8_mask(escaped, decoded, _mm512_setzero_si512())
            | (escaped & _mm512_movepi8_mask(v));
        let (take, starts) = if unknown != 0 {
            // Up to the escape the loop must take (a `\u`, or an invalid one).
            let at = unknown.trailing_zeros() - 1;
            (at, starts & below(at))
        } else {
            (take, starts)
        };
        let keep = below(take) & !starts;
        let text = _mm512_mask_blend_epi8(starts << 1, v, decoded);
        let packed = _mm512_maskz_compress_epi8(keep, text);
        let len = out.len();
        _mm512_storeu_si512(out.as_mut_ptr().add(len) as *mut __m512i, packed);
        out.set_len(len + keep.count_ones() as usize);
        let stop = if unknown != 0 {
            Some(false)
        } else if take < 63 {
            Some(quotes >> take & 1 == 1)
        } else {
            None
        };
        (take as usize, stop)
    }
}

/// The same interface where there is no `wide` code: never available.
#[cfg(not(target_arch = "x86_64"))]
mod wide {
    #[allow(dead_code)] // `Quote` is never made here
    pub enum Stop {
        Quote(usize),
        Here(usize),
    }
    pub fn available() -> bool {
        false
    }
    /// Takes nothing.
    ///
    /// # Safety
    /// None needed; `unsafe` to match the x86-64 copy.
    pub unsafe fn unescape(_: &[u8], i: usize, _: &mut Vec<u8>) -> Stop {
        Stop::Here(i)
    }
}

/// The index of the first byte at or after `i` that ends a run of plain string text
/// (`simd::is_json_string_stop`), or `s.len()`.
#[inline]
fn special(s: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = s.get(i..i + 16) {
        let bits = simd::json_string_stops(chunk.try_into().expect("16 bytes"));
        if bits != 0 {
            return i + bits.trailing_zeros() as usize;
        }
        i += 16;
    }
    while i < s.len() && !simd::is_json_string_stop(s[i]) {
        i += 1;
    }
    i
}

/// Appends `s[i..end]` to `out`, `end` being `special(s, i)`, and returns `end`. `out` must
/// have room for `s.len() - i + 16` more bytes: each 16-byte block is copied whole (a fixed
/// size, no length-dependent copy) and the length then moved past its plain bytes, so
/// scanning and copying are one pass.
#[inline]
fn copy_run(s: &[u8], mut i: usize, out: &mut Vec<u8>) -> usize {
    assert!(out.capacity() - out.len() >= s.len() - i + 16);
    while let Some(chunk) = s.get(i..i + 16) {
        let chunk: &[u8; 16] = chunk.try_into().expect("16 bytes");
        let bits = simd::json_string_stops(chunk);
        let plain = if bits == 0 {
            16
        } else {
            bits.trailing_zeros() as usize
        };
        let len = out.len();
        // SAFETY: 16 bytes written at `out.len()`, within the capacity: `out` grows by at most
        // the bytes consumed and had room for all of them plus 16 (asserted above); the length
        // then covers only the `plain` bytes just copied from `s`.
        unsafe {
            std::ptr::copy_nonoverlapping(chunk.as_ptr(), out.as_mut_ptr().add(len), 16);
            out.set_len(len + plain);
        }
        if bits != 0 {
            return i + plain;
        }
        i += 16;
    }
    let end = special(s, i);
    out.extend_from_slice(&s[i..end]);
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::draws;

    /// What serde_json makes of the line: the first `field` member's text when it is a string
    /// of an object (the reference `field_text` must agree with whenever it answers).
    fn serde(line: &str, field: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let obj = v.as_object()?;
        // serde_json's map keeps the last duplicate; encode-corpus takes the first, so
        // lines with duplicate keys are compared through `corpus::with_record` instead.
        obj.get(field)?.as_str().map(str::to_owned)
    }

    fn fast(line: &str, field: &str) -> Option<String> {
        let mut out = Vec::new();
        field_text(line.as_bytes(), field.as_bytes(), &mut out)
            .then(|| String::from_utf8(out).expect("valid UTF-8"))
    }

    #[test]
    fn extracts_like_serde_json() {
        let cases = [
            r#"{"content": "def f():\n\treturn \"x\\y\" \/ \u00e9\u4e2d\u0000 \b\f\r"}"#,
            r#"  {"a": [1, -2.5e+3, {"b": [true, false, null, "s\"]"]}], "content": "x"}  "#,
            r#"{"content":""}"#,
            r#"{"content": "😀 raw non-ASCII é"}"#,
            r#"{"x": {}, "y": [], "z": 0, "content": "a", "w": -0.0E-0}"#,
        ];
        for line in cases {
            assert_eq!(fast(line, "content"), serde(line, "content"), "{line}");
            assert!(fast(line, "content").is_some(), "{line}");
        }
    }

    #[test]
    fn leaves_to_serde_json_what_it_is_not_sure_of() {
        let cases = [
            r#"{"content": "\ud83d\ude00"}"#, // a surrogate pair
            r#"{"content": "\ud83d"}"#,       // a lone surrogate (serde_json's error)
            r#"{"cont\u0065nt": "x"}"#,       // an escaped key
            r#"{"content": 5}"#,              // not a string
            r#"{"other": "x"}"#,              // no field
            r#"{"content": "x",}"#,           // trailing comma
            r#"{"content": "x"} x"#,          // trailing garbage
            r#"{"content": "a	b"}"#,          // a raw tab (a control char)
            r#"{"content": "x\q"}"#,          // an unknown escape
            r#"{"content": "x\u12g4"}"#,      // a bad hex digit
            r#"{"a": 01, "content": "x"}"#,   // a leading zero
            r#"{"a": 1., "content": "x"}"#,   // no fraction digits
            r#"{"a": tru, "content": "x"}"#,  // a bad literal
            r#"["content", "x"]"#,            // not an object
            r#"{"content": "x""#,             // unterminated
            r#"{"content": "x"#,              // unterminated string
        ];
        for line in cases {
            assert_eq!(fast(line, "content"), None, "{line}");
        }
        let deep = format!(
            "{{\"a\": {}1{}, \"content\": \"x\"}}",
            "[".repeat(70),
            "]".repeat(70)
        );
        assert_eq!(fast(&deep, "content"), None);
        assert_eq!(serde(&deep, "content").as_deref(), Some("x"));
    }

    /// `escape_starts` against a byte-by-byte walk, on masks dense in runs of backslashes.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn escape_starts_are_the_unescaped_backslashes() {
        let mut draw = draws(11);
        for _ in 0..20000 {
            // Masks dense in runs of backslashes.
            let mut b = 0u64;
            for k in 0..64 {
                if draw(3) > 0 {
                    b |= 1 << k;
                }
            }
            let (mut want, mut k) = (0u64, 0);
            while k < 64 {
                if b >> k & 1 == 1 {
                    want |= 1 << k;
                    k += 2; // the next byte is escaped, whatever it is
                } else {
                    k += 1;
                }
            }
            assert_eq!(wide::escape_starts(b), want, "{b:064b}");
        }
    }

    /// Lines whose content strings run over several 64-byte blocks, dense in escapes of every
    /// kind (runs of backslashes, `\u` escapes and surrogate pairs, invalid escapes, raw
    /// control chars and quotes at every offset): the block path and the byte-wise one give
    /// the same answer, and both agree with serde_json whenever they answer.
    #[test]
    fn block_unescaping_matches_the_bytewise_loop_and_serde_json() {
        if !wide::available() {
            eprintln!("skipped: no AVX-512 VBMI2 here");
            return;
        }
        let mut draw = draws(13);
        // Valid text and escapes; `\\u` ones now and then, as serde_json leaves surrogates.
        const VALID: &[&str] = &[
            "a",
            "b",
            "z",
            " ",
            "  ",
            "é",
            "中",
            "😀",
            "\\n",
            "\\t",
            "\\\"",
            "\\\\",
            "\\/",
            "\\b",
            "\\f",
            "\\r",
            "\\\\\\\\",
            "\\u00e9",
            "\\u4e2d",
            "\\ud83d\\ude00",
        ];
        // What ends or breaks a string: a lone surrogate, short or unknown escapes, a
        // backslash before the closing quote, a raw quote, raw control chars
        // (`\\—`: a backslash before a non-ASCII char whose first byte, 0xE2, has the low 7
        // bits of `b`.)
        const BREAKING: &[&str] = &[
            "\\ud800", "\\u12", "\\x", "\\", "\"", "\u{1}", "\u{1f}", "\\—",
        ];
        let (mut answered, mut wide_answered) = (0, 0);
        for n in 0..20000 {
            let mut text = String::new();
            let len = 40 + draw(300);
            let breaks = if draw(4) == 0 { 1 + draw(2) } else { 0 };
            while text.len() < len {
                let k = draw(4 * VALID.len());
                // Mostly plain text and the simple escapes of code.
                text.push_str(VALID[if k < VALID.len() { k } else { k % 16 }]);
            }
            for _ in 0..breaks {
                let mut at = draw(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.insert_str(at, BREAKING[draw(BREAKING.len())]);
            }
            let line = format!("{{\"k\": 1, \"content\": \"{text}\", \"z\": [1]}}");
            let b = line.as_bytes();
            let (mut o1, mut o2) = (Vec::new(), Vec::new());
            let at = line.find("\"content\": ").unwrap() + 11;
            let mut p1 = Parser { s: b, i: at };
            let mut p2 = Parser { s: b, i: at };
            assert_eq!(&b[p1.i..p1.i + 1], b"\"", "{line}");
            let r1 = p1.string_with(Some(&mut o1), true);
            let r2 = p2.string_with(Some(&mut o2), false);
            assert_eq!(r1.is_some(), r2.is_some(), "{n}: {line}");
            if r1.is_some() {
                assert_eq!((p1.i, &o1), (p2.i, &o2), "{n}: {line}");
                wide_answered += 1;
            }
            let got = fast(&line, "content");
            if got.is_some() {
                let reference = crate::corpus::serde_field(&line, "content", str::to_owned);
                assert_eq!(got, reference.ok(), "{n}: {line}");
                answered += 1;
            }
        }
        assert!(
            answered > 5000 && wide_answered > 5000,
            "{answered} {wide_answered}"
        );
    }

    /// Random objects (random keys, nested values, strings with every kind of char and
    /// escape) agree with serde_json; every byte-level mutation of them either is left to
    /// serde_json or agrees with it, so the fast path never accepts what serde_json rejects.
    #[test]
    fn random_lines_and_their_mutations_agree_with_serde_json() {
        type Rnd<'r> = &'r mut dyn FnMut(usize) -> usize;
        let mut draw = draws(7);
        let alphabet: Vec<char> = "ab \"\\/\n\t\r\u{0}\u{1f}\u{7f}é中😀{}[],:0-"
            .chars()
            .collect();
        let rand_string = |rnd: Rnd| -> String {
            (0..rnd(40))
                .map(|_| alphabet[rnd(alphabet.len())])
                .collect()
        };
        fn value(rnd: Rnd, depth: u32, s: &dyn Fn(Rnd) -> String) -> serde_json::Value {
            use serde_json::Value as V;
            match rnd(if depth > 3 { 5 } else { 7 }) {
                0 => V::Null,
                1 => V::Bool(rnd(2) == 1),
                2 => V::from(rnd(1000) as i64 - 500),
                3 => V::from((rnd(1 << 20) as f64 - 5e5) / 7.0),
                4 => V::String(s(rnd)),
                5 => V::Array((0..rnd(4)).map(|_| value(rnd, depth + 1, s)).collect()),
                _ => V::Object(
                    (0..rnd(4))
                        .map(|_| (s(rnd), value(rnd, depth + 1, s)))
                        .collect(),
                ),
            }
        }
        let (mut agreed, mut mutated_answers) = (0, 0);
        for _ in 0..3000 {
            let mut obj = serde_json::Map::new();
            for _ in 0..draw(4) {
                let v = value(&mut draw, 0, &rand_string);
                obj.insert(format!("k{}", draw(100)), v);
            }
            obj.insert(
                "content".into(),
                serde_json::Value::String(rand_string(&mut draw)),
            );
            for _ in 0..draw(3) {
                let v = value(&mut draw, 0, &rand_string);
                obj.insert(format!("z{}", draw(100)), v);
            }
            let line = serde_json::to_string(&serde_json::Value::Object(obj)).unwrap();
            let want = serde(&line, "content");
            assert!(want.is_some());
            let got = fast(&line, "content");
            if got.is_some() {
                assert_eq!(got, want, "{line}");
                agreed += 1;
            }
            // Mutations: a byte replaced, removed or inserted, kept when still UTF-8.
            for _ in 0..8 {
                let mut b = line.clone().into_bytes();
                let at = draw(b.len());
                const BYTES: &[u8] = b"\"\\{}[],: 0e-.9atnu\n";
                let c = BYTES[draw(BYTES.len())];
                match draw(3) {
                    0 => b[at] = c,
                    1 => {
                        b.remove(at);
                    }
                    _ => b.insert(at, c),
                }
                let Ok(m) = String::from_utf8(b) else {
                    continue;
                };
                let got = fast(&m, "content");
                if got.is_some() {
                    // encode-corpus's serde_json extraction: the first of duplicate keys,
                    // other values only checked for syntax (`IgnoredAny`).
                    let reference = crate::corpus::serde_field(&m, "content", str::to_owned);
                    assert_eq!(
                        got,
                        reference.ok(),
                        "accepted differently from serde_json: {m}"
                    );
                    mutated_answers += 1;
                }
            }
        }
        assert!(
            agreed > 2000,
            "the fast path answered only {agreed} of 3000 lines"
        );
        assert!(mutated_answers > 1000, "{mutated_answers}");
    }
}
