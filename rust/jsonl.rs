//! The fast path of encode-corpus's JSONL field extraction. A code corpus's text field is
//! dense with escapes (every line break is `\n`), and serde_json, which stops at each one,
//! took about 12% of encode-corpus's CPU. `field_text` scans 16 bytes at a time for the bytes
//! that end a run of plain text (`"`, `\`, control chars) and copies the runs between escapes
//! whole. It accepts only what serde_json accepts and gives the same text; anything it is not
//! sure of (an escaped key, a `\u` escape of a surrogate, deep nesting, any error) it leaves
//! to serde_json, which gives the text or the precise error.

use crate::simd;

/// Appends the text of the first `field` member of the JSON object `line` (valid UTF-8) to
/// `out` and returns true when `line` is an object serde_json accepts (whitespace around it
/// allowed) and that member is a string. Returns false, with `out` in any state, otherwise,
/// and in the cases listed in the module's doc.
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
    fn string(&mut self, mut out: Option<&mut Vec<u8>>) -> Option<()> {
        self.eat(b'"')?;
        if let Some(o) = out.as_deref_mut() {
            // The text is never longer than the rest of the line: room for all of it, and
            // for `copy_run`'s 16-byte stores past its end.
            o.reserve(self.s.len() - self.i + 16);
        }
        loop {
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
