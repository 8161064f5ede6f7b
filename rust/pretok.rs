//! Pre-tokenization: splitting normalized text into pieces before BPE.
//!
//! The patterns real byte-level vocabularies use (GPT-2, cl100k/Llama-3, Qwen2) get a
//! hand-written scanner that reproduces the regex's leftmost-first semantics exactly, including
//! the `\s+(?!\S)` lookahead; any other pattern goes through `fancy-regex`.

use crate::error::{codes, Error, ErrorKind, Result};
use std::sync::OnceLock;

/// The GPT-2 pattern (HF `ByteLevel` with `use_regex: true`).
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// cl100k_base and Llama-3 (`\p{N}{1,3}`).
pub const CL100K_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 (`\p{N}`: one digit per piece).
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Character classes the known patterns distinguish.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Class {
    /// `\p{L}`
    Letter = 0,
    /// `\p{N}`
    Number = 1,
    /// `\r` or `\n`
    Newline = 2,
    /// `\s` other than `\r`, `\n`
    Space = 3,
    /// everything else: `[^\s\p{L}\p{N}]`
    Other = 4,
}

fn classify_slow(c: char) -> Class {
    use unicode_general_category::{get_general_category, GeneralCategory as G};
    if c == '\r' || c == '\n' {
        return Class::Newline;
    }
    if is_white_space(c) {
        return Class::Space;
    }
    match get_general_category(c) {
        G::UppercaseLetter
        | G::LowercaseLetter
        | G::TitlecaseLetter
        | G::ModifierLetter
        | G::OtherLetter => Class::Letter,
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => Class::Number,
        _ => Class::Other,
    }
}

/// Unicode `White_Space`, which is what `\s` means in the regex engines tokenizers use.
fn is_white_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// Class of every BMP code point, built once (64 KiB); astral chars are looked up directly.
fn bmp_classes() -> &'static [u8] {
    static T: OnceLock<Box<[u8]>> = OnceLock::new();
    T.get_or_init(|| {
        (0u32..0x10000)
            .map(|cp| char::from_u32(cp).map_or(Class::Other, classify_slow) as u8)
            .collect()
    })
}

const ASCII_CLASS: [Class; 128] = {
    let mut t = [Class::Other; 128];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        t[i] = if b.is_ascii_alphabetic() {
            Class::Letter
        } else if b.is_ascii_digit() {
            Class::Number
        } else if b == b'\r' || b == b'\n' {
            Class::Newline
        } else if b == b' ' || (b >= 9 && b <= 13) {
            Class::Space
        } else {
            Class::Other
        };
        i += 1;
    }
    t
};

#[inline(always)]
fn from_class(v: u8) -> Class {
    match v {
        0 => Class::Letter,
        1 => Class::Number,
        2 => Class::Newline,
        3 => Class::Space,
        _ => Class::Other,
    }
}

/// The class and UTF-8 length of the char starting at `i` (which must be a char boundary).
#[inline(always)]
fn class_at(s: &[u8], i: usize) -> (Class, usize) {
    let b = s[i];
    if b < 0x80 {
        return (ASCII_CLASS[b as usize], 1);
    }
    let (cp, len) = decode_utf8(s, i);
    if cp < 0x10000 {
        (from_class(bmp_classes()[cp as usize]), len)
    } else {
        (char::from_u32(cp).map_or(Class::Other, classify_slow), len)
    }
}

#[inline(always)]
fn decode_utf8(s: &[u8], i: usize) -> (u32, usize) {
    let b0 = s[i] as u32;
    if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (s[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        (
            ((b0 & 0x0F) << 12) | ((s[i + 1] as u32 & 0x3F) << 6) | (s[i + 2] as u32 & 0x3F),
            3,
        )
    } else {
        (
            ((b0 & 0x07) << 18)
                | ((s[i + 1] as u32 & 0x3F) << 12)
                | ((s[i + 2] as u32 & 0x3F) << 6)
                | (s[i + 3] as u32 & 0x3F),
            4,
        )
    }
}

/// Which hand-written scanner applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scanner {
    Gpt2,
    /// cl100k family; the field is the maximum digits per number piece (1 for Qwen2, 3 for
    /// cl100k / Llama-3).
    Cl100k(usize),
}

/// A pattern as HF's regex engine (Oniguruma, Ruby syntax) reads it, written for
/// `fancy-regex`. Where the two syntaxes read the same text differently:
/// - Oniguruma's `^` and `$` always match at line starts and ends (Rust's only under `(?m)`),
///   and its `m` flag is Rust's `s` (`.` matches a newline). So the pattern runs under `(?m)`
///   and every inline `m` flag (`(?m)`, `(?-m)`, `(?im:...)`) becomes `s`.
/// - POSIX brackets (`[[:alpha:]]`, `[[:^punct:]]`) are Unicode sets in Oniguruma, ASCII in
///   Rust: each becomes the Unicode set Oniguruma matches (`posix_set`).
/// - `\w` (and `\W`, `\b`, `\B`, which are defined by it): Oniguruma's has neither U+200C nor
///   U+200D (Rust's has both), and outside a class it also has six Latin-1 number signs
///   (`²³¹¼½¾`). `\h`/`\H` (hex digits) are Oniguruma's alone. Each is spelled out.
/// - `\Z` matches at the end or before one newline that ends the text (Rust's before any
///   number of them); `^` not at the end after a final newline (Rust's `(?m)^` does).
/// - Flags set mid-group (`x(?i)a|b`) take the rest of the group, its later alternatives
///   included: `x(?i:a|b)`.
/// - A quantifier after a quantifier repeats the repetition (`a{2}+` is `(?:a{2})+`, `a**`
///   is `(?:a*)*`, `a{2}?` is `(?:a{2})?`), where fancy-regex reads a possessive or lazy
///   one, or fails.
/// - Under `(?i)`, a property outside a class (`\p{Lu}`) folds no case (in a class it does,
///   in both); and a property needs braces (`\pL` is the text "pL").
///
/// These sets were checked against `tokenizers` over every code point
/// (`test_regex_path_reads_classes_as_oniguruma_does`). Other escapes pass as they are.
fn onig_to_rust(pattern: &str) -> std::result::Result<String, String> {
    // Whether a class (Oniguruma text) holds a char whose case folding is several chars.
    let has_multi_fold = |class: &str| {
        onig_to_rust(class)
            .ok()
            .and_then(|rx| regex::Regex::new(&rx).ok())
            .is_some_and(|re| {
                crate::casefold::multi_fold_chars().any(|c| re.is_match(c.encode_utf8(&mut [0; 4])))
            })
    };
    if let Some(why) = crate::casefold::multi_fold_literal(pattern, &has_multi_fold) {
        return Err(format!(
            "{why}, a multi-char case folding aprx's regex engine lacks"
        ));
    }
    let b = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len() + 4);
    out.push_str("(?m)");
    let (mut i, mut class_depth) = (0, 0usize);
    // Where in `out` the last atom outside a class (what a quantifier repeats) starts; where
    // each open group does, with the scoped flag groups to close at its end (see below), and
    // those to close at the pattern's end.
    let (mut atom, mut groups, mut closers) = (out.len(), Vec::<(usize, usize)>::new(), 0);
    // Whether the last thing outside a class was a whole quantifier (on `atom`).
    let mut quantified = false;
    while i < b.len() {
        let c = b[i];
        let (start, outside) = (out.len(), class_depth == 0);
        if c == b'\\' {
            // An escape and the char it escapes (which may be multi-byte).
            let mut len = 1 + pattern[i + 1..].chars().next().map_or(0, char::len_utf8);
            match (b.get(i + 1), outside) {
                (Some(b'w'), _) => push_set(&mut out, word_set(!outside), false),
                (Some(b'W'), _) => push_set(&mut out, word_set(!outside), true),
                (Some(b'h'), _) => push_set(&mut out, HEX_DIGITS, false),
                (Some(b'H'), _) => push_set(&mut out, HEX_DIGITS, true),
                (Some(b'b'), true) => out.push_str(&word_boundary(true)),
                (Some(b'B'), true) => out.push_str(&word_boundary(false)),
                (Some(b'b'), false) => out.push_str(r"\x08"), // backspace, in a class
                // The end, or just before a newline that ends the text (Rust's `\Z` also
                // before several).
                (Some(b'Z'), true) => out.push_str(r"(?=\n?\z)"),
                // `\pL` is "pL" to Oniguruma: a property needs braces.
                (Some(&p @ (b'p' | b'P')), _) if b.get(i + 2) != Some(&b'{') => out.push(p as char),
                // Oniguruma folds no case in a property outside a class.
                (Some(b'p' | b'P'), true) => {
                    len = pattern[i..].find('}').map_or(2, |e| e + 1);
                    out.push_str("(?-i:");
                    out.push_str(&pattern[i..i + len]);
                    out.push(')');
                }
                _ => out.push_str(&pattern[i..i + len]),
            }
            i += len;
            if outside {
                (atom, quantified) = (start, false);
            }
            continue;
        }
        if c == b'[' && !outside {
            if let Some((len, set, negated)) = posix_bracket(&pattern[i..])? {
                push_set(&mut out, set, negated);
                i += len;
                continue;
            }
        }
        // A quantifier: `*`, `+`, `?` (each with an optional lazy `?` or possessive `+`) or
        // an interval (with an optional lazy `?`, but not after an exact `{n}`). To
        // Oniguruma one after another repeats the repetition: `a{2}+` is `(?:a{2})+`, `a**`
        // is `(?:a*)*`, `a{2}?` is `(?:a{2})?`; to fancy-regex some are possessive or lazy,
        // others an error. So the repeated one is put in a group first.
        let interval = if c == b'{' && outside {
            interval_len(&b[i..])
        } else {
            None
        };
        if outside && (interval.is_some() || matches!(c, b'*' | b'+' | b'?')) {
            if quantified {
                out.insert_str(atom, "(?:");
                out.push(')');
            }
            let len = interval.unwrap_or(1);
            out.push_str(&pattern[i..i + len]);
            i += len;
            let lazy_only = interval.is_some();
            let exact = lazy_only && !pattern[i - len..i].contains(',');
            match b.get(i) {
                Some(b'?') if !exact => {}
                Some(b'+') if !lazy_only => {}
                _ => {
                    quantified = true;
                    continue;
                }
            }
            out.push(b[i] as char);
            i += 1;
            quantified = true;
            continue;
        }
        quantified = false;
        match c {
            b'[' => {
                if outside {
                    atom = start;
                }
                class_depth += 1;
            }
            b']' if !outside => class_depth -= 1,
            b'(' if outside => {
                // An inline flag group: `(?` flags [`-` flags] then `)` or `:`.
                let flags_end = (b.get(i + 1) == Some(&b'?'))
                    .then(|| {
                        b[i + 2..]
                            .iter()
                            .position(|x| !(x.is_ascii_alphabetic() || *x == b'-'))
                            .map(|k| i + 2 + k)
                    })
                    .flatten();
                if let Some(e) = flags_end.filter(|&e| e > i + 2 && matches!(b[e], b')' | b':')) {
                    // Oniguruma's Ruby syntax has `i`, `m` and `x` (and ASCII-range options
                    // aprx does not read); Rust's `s`, `u` would be an error there.
                    if let Some(&f) = b[i + 2..e].iter().find(|f| !b"imx-".contains(f)) {
                        let f = f as char;
                        return Err(format!("group option {f:?} (Oniguruma's are i, m and x)"));
                    }
                    out.push_str("(?");
                    out.extend(
                        b[i + 2..e]
                            .iter()
                            .map(|&f| if f == b'm' { 's' } else { f as char }),
                    );
                    out.push(':');
                    if b[e] == b':' {
                        groups.push((start, 0));
                    } else {
                        // `x(?i)a|b` is `x(?i:a|b)` to Oniguruma: the flags take the rest of
                        // the enclosing group, its later alternatives included; Rust's keep
                        // the alternation as it was (`(?:x(?i:a))|(?i:b)`). So the flags
                        // open a group that closes where the enclosing one does.
                        *groups.last_mut().map_or(&mut closers, |g| &mut g.1) += 1;
                    }
                    i = e + 1;
                    continue;
                }
                groups.push((start, 0));
            }
            b')' if outside => {
                let (g, n) = groups.pop().unwrap_or((start, 0));
                out.extend(std::iter::repeat_n(')', n));
                atom = g;
            }
            b'^' if outside => {
                // A line start, but not at the end after a final newline (Rust's `(?m)^`
                // is one there too).
                out.push_str(r"(?:^(?!\z))");
                i += 1;
                continue;
            }
            b'|' if outside => {}
            _ if outside => atom = start,
            _ => {}
        }
        let n = pattern[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&pattern[i..i + n]);
        i += n;
    }
    out.extend(std::iter::repeat_n(')', closers));
    Ok(out)
}

/// Whether a repetition of `rx` (Rust syntax) has a body that can match empty by a way it
/// prefers to one that goes on: an alternative that can be empty before one that consumes
/// (`(?:a*|b)+`, `(?:s||x)+`, `(?:|s)+`) or a lazy optional (`(?:a*?)+`). There Oniguruma ends
/// the repetition at the empty iteration, while the Rust engines drop that path and take the
/// next one (on "ab", `(?:a*|b)+` matches "a" in HF and "ab" here); or a body that can be
/// empty and holds a capture group (see `empty_with_capture`). False for a pattern that
/// does not parse (its error comes from compiling it).
fn prefers_empty_in_loop(rx: &str) -> bool {
    use fancy_regex::Expr;
    fn nullable(e: &Expr) -> bool {
        match e {
            Expr::Any { .. } | Expr::GeneralNewline { .. } | Expr::Delegate { .. } => false,
            Expr::Literal { val, .. } => val.is_empty(),
            Expr::LiteralBytes { bytes } => bytes.is_empty(),
            Expr::Concat(v) => v.iter().all(nullable),
            Expr::Alt(v) => v.iter().any(nullable),
            Expr::Repeat { child, lo, .. } => *lo == 0 || nullable(child),
            Expr::Group(c) => nullable(c),
            Expr::AtomicGroup(c) => nullable(c),
            Expr::AstNode(fancy_regex::AstNode::AstGroup { inner, .. }, _) => nullable(inner),
            _ => true, // assertions, look-arounds, back-references: possibly empty
        }
    }
    fn consumes(e: &Expr) -> bool {
        match e {
            Expr::Any { .. } | Expr::GeneralNewline { .. } | Expr::Delegate { .. } => true,
            Expr::Literal { val, .. } => !val.is_empty(),
            Expr::LiteralBytes { bytes } => !bytes.is_empty(),
            Expr::Concat(v) | Expr::Alt(v) => v.iter().any(consumes),
            Expr::Repeat { child, hi, .. } => *hi > 0 && consumes(child),
            Expr::Group(c) => consumes(c),
            Expr::AtomicGroup(c) => consumes(c),
            Expr::AstNode(fancy_regex::AstNode::AstGroup { inner, .. }, _) => consumes(inner),
            Expr::LookAround(..) | Expr::Assertion(_) | Expr::Empty => false,
            _ => true,
        }
    }
    /// Whether `e` can match empty by a way it prefers to one that consumes.
    fn empty_first(e: &Expr) -> bool {
        match e {
            Expr::Alt(v) => {
                v.iter().any(empty_first)
                    || v.iter()
                        .enumerate()
                        .any(|(i, a)| nullable(a) && v[i + 1..].iter().any(consumes))
            }
            Expr::Concat(v) => v.iter().any(empty_first),
            Expr::Repeat {
                child, lo, greedy, ..
            } => empty_first(child) || (!*greedy && *lo == 0 && consumes(child)),
            Expr::Group(c) => empty_first(c),
            Expr::AtomicGroup(c) => empty_first(c),
            Expr::AstNode(fancy_regex::AstNode::AstGroup { inner, .. }, _) => empty_first(inner),
            _ => false,
        }
    }
    fn has_group(e: &Expr) -> bool {
        matches!(
            e,
            Expr::Group(_) | Expr::AstNode(fancy_regex::AstNode::AstGroup { .. }, _)
        ) || e.children_iter().any(has_group)
    }
    /// A body that may match empty, with a capture in it: Oniguruma's check for an empty
    /// iteration then looks at the captures too (`([\w]|\B){2}+` finds "aa" of "aab", the
    /// Rust engines "aab").
    fn empty_with_capture(e: &Expr) -> bool {
        nullable(e) && consumes(e) && has_group(e)
    }
    fn any_loop(e: &Expr) -> bool {
        let here = matches!(e, Expr::Repeat { child, hi, .. }
            if *hi > 1 && (empty_first(child) || empty_with_capture(child)));
        here || e.children_iter().any(any_loop)
    }
    fancy_regex::Expr::parse_tree(rx).is_ok_and(|t| any_loop(&t.expr))
}

/// The length of the interval quantifier (`{n}`, `{n,}`, `{,m}`, `{n,m}`) that `b` starts
/// with, if it starts with one (else `{` is a literal to Oniguruma).
pub(crate) fn interval_len(b: &[u8]) -> Option<usize> {
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let n = digits(1);
    let mut end = 1 + n;
    let mut m = 0;
    if b.get(end) == Some(&b',') {
        m = digits(end + 1);
        end += 1 + m;
    }
    (n + m > 0 && b.get(end) == Some(&b'}')).then_some(end + 1)
}

/// Oniguruma's hex digits (`\h`, `[[:xdigit:]]`), as the inside of a Rust class.
const HEX_DIGITS: &str = "0-9A-Fa-f";
/// Oniguruma's graphic chars (`[[:graph:]]`: not white space, a control char or unassigned),
/// as the inside of a Rust class (a nested class).
const GRAPH: &str = r"[^\p{White_Space}\p{Cc}\p{Unassigned}]";

/// Oniguruma's word chars (`\w`) as the inside of a Rust class: in a class, `[[:word:]]`;
/// outside one, those and the Latin-1 number signs `²³¹¼½¾`.
fn word_set(in_class: bool) -> &'static str {
    if in_class {
        r"\p{Alphabetic}\p{M}\p{Nd}\p{Pc}"
    } else {
        r"\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{B2}\x{B3}\x{B9}\x{BC}-\x{BE}"
    }
}

/// `\b` (or `\B`, `at == false`) over Oniguruma's word chars, as lookarounds.
fn word_boundary(at: bool) -> String {
    let w = format!("[{}]", word_set(false));
    if at {
        format!("(?:(?<={w})(?!{w})|(?<!{w})(?={w}))")
    } else {
        format!("(?:(?<={w})(?={w})|(?<!{w})(?!{w}))")
    }
}

/// A Rust class of `set` (the inside of a class), negated or not; also valid nested in a
/// class, where Rust takes the union.
fn push_set(out: &mut String, set: &str, negated: bool) {
    out.push('[');
    if negated {
        out.push('^');
    }
    out.push_str(set);
    out.push(']');
}

/// Bracket sets: (length, the inside of a Rust class, negated).
type Bracket = Option<(usize, &'static str, bool)>;

/// A POSIX bracket at the start of `s` (inside a class): its length, Oniguruma's Unicode set
/// for it (the inside of a Rust class) and whether it is negated (`[:^name:]`). None for
/// anything else (`[:alpha]` is a class of its chars in both syntaxes); an error for an
/// unknown name, as Oniguruma's.
fn posix_bracket(s: &str) -> std::result::Result<Bracket, String> {
    let Some(rest) = s.strip_prefix("[:") else {
        return Ok(None);
    };
    let (negated, rest) = match rest.strip_prefix('^') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
    if name_len == 0 || !rest[name_len..].starts_with(":]") {
        return Ok(None);
    }
    let name = &rest[..name_len];
    match posix_set(name) {
        Some(set) => Ok(Some((s.len() - rest.len() + name_len + 2, set, negated))),
        None => Err(format!("invalid POSIX bracket type [:{name}:]")),
    }
}

/// What Oniguruma's POSIX bracket `name` matches in a Unicode pattern.
fn posix_set(name: &str) -> Option<&'static str> {
    Some(match name {
        "alnum" => r"\p{Alphabetic}\p{Nd}",
        "alpha" => r"\p{Alphabetic}",
        "ascii" => r"\x00-\x7F",
        "blank" => r"\p{Zs}\t",
        "cntrl" => r"\p{Cc}",
        "digit" => r"\p{Nd}",
        "graph" => GRAPH,
        "lower" => r"\p{Lowercase}",
        "print" => r"\p{Zs}[^\p{White_Space}\p{Cc}\p{Unassigned}]",
        "punct" => r"\p{P}\p{S}",
        "space" => r"\p{White_Space}",
        "upper" => r"\p{Uppercase}",
        "xdigit" => HEX_DIGITS,
        "word" => word_set(true),
        _ => return None,
    })
}

/// One Split step: a known pattern (scanner) or a general regex.
#[derive(Debug)]
enum Splitter {
    Scan(Scanner),
    Regex(Box<fancy_regex::Regex>),
}

/// A pre-tokenizer: a sequence of `Isolated` splits by regex.
#[derive(Debug)]
pub struct PreTokenizer {
    splitters: Vec<Splitter>,
    patterns: Vec<String>,
}

impl PreTokenizer {
    /// Builds from the regex patterns, in order. Known patterns get the fast scanner unless
    /// `force_regex` is set (used by tests to cross-check the scanner).
    pub fn new(patterns: &[String], force_regex: bool) -> Result<Self> {
        let mut splitters = Vec::with_capacity(patterns.len());
        for p in patterns {
            let known = match p.as_str() {
                GPT2_PATTERN => Some(Scanner::Gpt2),
                CL100K_PATTERN => Some(Scanner::Cl100k(3)),
                QWEN2_PATTERN => Some(Scanner::Cl100k(1)),
                _ => None,
            };
            splitters.push(match known {
                Some(s) if !force_regex => Splitter::Scan(s),
                _ => Splitter::Regex(Box::new(
                    onig_to_rust(p)
                        .and_then(|rx| {
                            if prefers_empty_in_loop(&rx) {
                                return Err("a repeated group that can match empty before \
                                    another way to go on (as in `(?:a*|b)+`): Oniguruma ends \
                                    the repetition there, aprx's engine takes the other way"
                                    .into());
                            }
                            fancy_regex::Regex::new(&rx).map_err(|e| e.to_string())
                        })
                        .map_err(|e| {
                            Error::tokenizer(
                                codes::REGEX,
                                format!("pre-tokenizer regex {p:?} does not compile: {e}"),
                            )
                        })?,
                )),
            });
        }
        Ok(PreTokenizer {
            splitters,
            patterns: patterns.to_vec(),
        })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// The scanner, when the pre-tokenizer is exactly one known pattern (the encoder's fast
    /// path drives it directly).
    pub fn single_scanner(&self) -> Option<Scanner> {
        match self.splitters.as_slice() {
            [Splitter::Scan(s)] => Some(*s),
            _ => None,
        }
    }

    /// Whether every split ends a whitespace run's piece at its last CR/LF (`\s*[\r\n]+`, the
    /// cl100k family): then what follows a line break cannot change the piece that ends with
    /// it. GPT-2's `\s+(?!\S)` gives a run's last char to what follows it, so there a text cut
    /// after `"\n\n"` would end in one piece where the whole text has two.
    pub fn ends_pieces_at_line_breaks(&self) -> bool {
        self.splitters
            .iter()
            .all(|s| matches!(s, Splitter::Scan(Scanner::Cl100k(_))))
    }

    /// Whether every split uses a hand-written scanner.
    pub fn is_fast(&self) -> bool {
        self.splitters
            .iter()
            .all(|s| matches!(s, Splitter::Scan(_)))
    }

    /// Calls `f` on every piece of `text`, in order. Pieces are never empty and cover the text.
    /// Fails only on the general-regex path, when the regex engine gives up (its backtracking
    /// limit); the hand-written scanners never fail.
    #[inline]
    pub fn for_each_piece<'t, F: FnMut(&'t str)>(&self, text: &'t str, mut f: F) -> Result<()> {
        match self.splitters.as_slice() {
            [] => {
                if !text.is_empty() {
                    f(text)
                }
            }
            [only] => split_one(only, text, &mut f)?,
            [first, rest @ ..] => {
                let mut cur = Vec::new();
                split_one(first, text, &mut |p| cur.push(p))?;
                for s in rest {
                    let mut next = Vec::with_capacity(cur.len());
                    for p in cur {
                        split_one(s, p, &mut |q| next.push(q))?;
                    }
                    cur = next;
                }
                cur.into_iter().for_each(f);
            }
        }
        Ok(())
    }

    /// The pieces as a vector (for tests and the Python `pre_tokenize`).
    pub fn pieces<'t>(&self, text: &'t str) -> Result<Vec<&'t str>> {
        let mut v = Vec::new();
        self.for_each_piece(text, |p| v.push(p))?;
        Ok(v)
    }
}

#[inline]
fn split_one<'t, F: FnMut(&'t str)>(s: &Splitter, text: &'t str, f: &mut F) -> Result<()> {
    match s {
        Splitter::Scan(sc) => {
            let bytes = text.as_bytes();
            let mut pos = 0;
            while pos < bytes.len() {
                let end = match sc {
                    Scanner::Gpt2 => next_gpt2(bytes, pos),
                    Scanner::Cl100k(d) => next_cl100k(bytes, pos, *d),
                };
                debug_assert!(end > pos && text.is_char_boundary(end));
                // SAFETY: the scanners only stop on char boundaries of valid UTF-8.
                f(unsafe { text.get_unchecked(pos..end) });
                pos = end;
            }
        }
        Splitter::Regex(re) => {
            let mut last = 0;
            let mut start = 0;
            while start <= text.len() {
                let m = match re.find_from_pos(text, start) {
                    Ok(Some(m)) => m,
                    // No further match: the rest is a gap.
                    Ok(None) => break,
                    Err(e) => {
                        return Err(Error::new(
                            ErrorKind::Encode,
                            codes::REGEX_LIMIT,
                            format!(
                                "the pre-tokenizer regex {:?} gave up at byte {start} of a \
                                 {}-byte text ({e}); only the general regex path has this \
                                 limit (e.g. a whitespace run of about a million chars)",
                                re.as_str(),
                                text.len()
                            ),
                        ))
                    }
                };
                if m.start() > last {
                    f(&text[last..m.start()]);
                }
                if m.end() > m.start() {
                    f(&text[m.start()..m.end()]);
                    last = m.end();
                    start = m.end();
                } else {
                    // An empty match: step over one char.
                    last = m.start();
                    start = m.end() + text[m.end()..].chars().next().map_or(1, |c| c.len_utf8());
                }
            }
            if last < text.len() {
                f(&text[last..]);
            }
        }
    }
    Ok(())
}

/// Length of a case-insensitive contraction suffix at `i` (after the apostrophe): `s`, `t`,
/// `re`, `ve`, `m`, `ll`, `d`, where `s` also matches U+017F (long s), as Unicode case
/// folding says.
#[inline]
pub(crate) fn contraction_ci(s: &[u8], i: usize) -> usize {
    let n = s.len();
    if i >= n {
        return 0;
    }
    let lower = |b: u8| b | 0x20;
    let c = s[i];
    match lower(c) {
        b's' | b't' | b'm' | b'd' if c.is_ascii_alphabetic() => 1,
        b'r' | b'v' if i + 1 < n && lower(s[i + 1]) == b'e' && s[i + 1].is_ascii_alphabetic() => 2,
        b'l' if i + 1 < n && lower(s[i + 1]) == b'l' && s[i + 1].is_ascii_alphabetic() => 2,
        _ if c == 0xC5 && i + 1 < n && s[i + 1] == 0xBF => 2,
        _ => 0,
    }
}

/// Case-sensitive contractions (GPT-2).
#[inline]
fn contraction_cs(s: &[u8], i: usize) -> usize {
    let n = s.len();
    if i >= n {
        return 0;
    }
    match s[i] {
        b's' | b't' | b'm' | b'd' => 1,
        b'r' | b'v' if i + 1 < n && s[i + 1] == b'e' => 2,
        b'l' if i + 1 < n && s[i + 1] == b'l' => 2,
        _ => 0,
    }
}

/// End of the run of chars of class `want` starting at `i`.
#[inline(always)]
fn run_end(s: &[u8], mut i: usize, want: Class) -> usize {
    let n = s.len();
    while i < n {
        let b = s[i];
        if b < 0x80 {
            if ASCII_CLASS[b as usize] != want {
                break;
            }
            i += 1;
        } else {
            let (c, l) = class_at(s, i);
            if c != want {
                break;
            }
            i += l;
        }
    }
    i
}

/// End of the run of `class` chars starting at `i`, 16 ASCII bytes at a time (`mask` marks the
/// class's ASCII bytes), then the general loop from the first non-ASCII byte on.
#[inline(always)]
fn simd_run_end(s: &[u8], mut i: usize, class: Class, mask: fn(&[u8; 16]) -> u32) -> usize {
    while let Some(chunk) = s.get(i..i + 16) {
        let run = (!mask(chunk.try_into().unwrap())).trailing_zeros() as usize;
        i += run;
        if run < 16 {
            return if s[i] < 0x80 { i } else { run_end(s, i, class) };
        }
    }
    run_end(s, i, class)
}

/// End of the run of letters starting at `i`.
#[inline(always)]
fn letters_end(s: &[u8], i: usize) -> usize {
    simd_run_end(s, i, Class::Letter, crate::simd::ascii_letters)
}

/// End of the run of "other" chars (`[^\s\p{L}\p{N}]`) starting at `i`.
#[inline(always)]
fn others_end(s: &[u8], i: usize) -> usize {
    simd_run_end(s, i, Class::Other, crate::simd::ascii_others)
}

#[inline(always)]
fn newlines_end(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && (s[i] == b'\r' || s[i] == b'\n') {
        i += 1;
    }
    i
}

/// Whitespace pieces, shared by both scanners. `newline_rule` enables `\s*[\r\n]+`.
/// Returns the end of the piece starting at `pos`, a whitespace char of length `l`.
#[inline(always)]
fn whitespace_piece(s: &[u8], pos: usize, l: usize, newline_rule: bool) -> usize {
    let n = s.len();
    let mut i = pos + l;
    let mut last_start = pos;
    let mut after_newline = if s[pos] == b'\r' || s[pos] == b'\n' {
        pos + 1
    } else {
        0
    };
    while i < n {
        let b = s[i];
        let (c, cl) = if b < 0x80 {
            (ASCII_CLASS[b as usize], 1)
        } else {
            class_at(s, i)
        };
        match c {
            Class::Newline => after_newline = i + 1,
            Class::Space => {}
            _ => break,
        }
        last_start = i;
        i += cl;
    }
    if newline_rule && after_newline > 0 {
        // `\s*[\r\n]+`: up to and including the last CR/LF of the run.
        return after_newline;
    }
    if i == n || last_start == pos {
        // Ends the input (`\s+(?!\S)` takes it all), or one char before a non-space (`\s+`).
        i
    } else {
        // `\s+(?!\S)`: leave the last whitespace char to the next piece.
        last_start
    }
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
#[inline(always)]
pub fn next_cl100k(s: &[u8], pos: usize, max_digits: usize) -> usize {
    let b = s[pos];
    if b == b'\'' {
        let k = contraction_ci(s, pos + 1);
        if k > 0 {
            return pos + 1 + k;
        }
    }
    let (c, l) = class_at(s, pos);
    match c {
        Class::Letter => letters_end(s, pos + l),
        Class::Number => {
            let mut i = pos + l;
            let mut k = 1;
            while k < max_digits && i < s.len() {
                let (c2, l2) = class_at(s, i);
                if c2 != Class::Number {
                    break;
                }
                i += l2;
                k += 1;
            }
            i
        }
        _ => {
            let next = pos + l;
            if c != Class::Newline && next < s.len() {
                let (c2, l2) = class_at(s, next);
                if c2 == Class::Letter {
                    return letters_end(s, next + l2);
                }
                if b == b' ' && c2 == Class::Other {
                    return newlines_end(s, others_end(s, next + l2));
                }
            }
            if c == Class::Other {
                return newlines_end(s, others_end(s, next));
            }
            whitespace_piece(s, pos, l, true)
        }
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
#[inline(always)]
pub fn next_gpt2(s: &[u8], pos: usize) -> usize {
    let b = s[pos];
    if b == b'\'' {
        let k = contraction_cs(s, pos + 1);
        if k > 0 {
            return pos + 1 + k;
        }
    }
    let (c, l) = class_at(s, pos);
    match c {
        Class::Letter => letters_end(s, pos + l),
        Class::Other => others_end(s, pos + l),
        Class::Number => run_end(s, pos + l, c),
        _ => {
            let next = pos + 1;
            if b == b' ' && next < s.len() {
                let (c2, l2) = class_at(s, next);
                match c2 {
                    Class::Letter => return letters_end(s, next + l2),
                    Class::Other => return others_end(s, next + l2),
                    Class::Number => return run_end(s, next + l2, c2),
                    _ => {}
                }
            }
            whitespace_piece(s, pos, l, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust engine goes on past an empty iteration where Oniguruma ends the repetition
    /// (HF: `(?:a*|b)+` finds "a" in "ab"; see the Python tests): such loops are found, the
    /// ones read alike are not.
    #[test]
    fn finds_loops_that_prefer_an_empty_iteration() {
        let m = fancy_regex::Regex::new("(?:a*|b)+")
            .unwrap()
            .find("ab")
            .unwrap();
        assert_eq!(m.unwrap().as_str(), "ab");
        for rx in [
            "(?:a*|b)+",
            "(?:s||x)+",
            "(?:|s)+",
            "(?:b?|a)+",
            "(?:a*?)+",
            "x(?:(?:a|)|b){2,}",
            r"(\w|\B){2}",
            "(s|)+x",
        ] {
            assert!(prefers_empty_in_loop(rx), "{rx}");
        }
        for rx in [
            "(?:s|)+",
            "(?:s|)+x",
            "(?:a*)*",
            "(?:a|b?)+",
            "(?:a|b)*",
            "a*?",
            "(?:a*|b)",
            "(?:a*|b){1}",
        ] {
            assert!(!prefers_empty_in_loop(rx), "{rx}");
        }
    }

    fn both(pattern: &str, text: &str) -> (Vec<String>, Vec<String>) {
        let fast = PreTokenizer::new(&[pattern.to_string()], false).unwrap();
        let slow = PreTokenizer::new(&[pattern.to_string()], true).unwrap();
        assert!(fast.is_fast());
        let a = fast
            .pieces(text)
            .unwrap()
            .into_iter()
            .map(String::from)
            .collect();
        let b = slow
            .pieces(text)
            .unwrap()
            .into_iter()
            .map(String::from)
            .collect();
        (a, b)
    }

    const SAMPLES: &[&str] = &[
        "",
        "hello world",
        "  leading and trailing  ",
        "x = 1234567 + 89\n\n\tdef f(a, b):\n        return a'S + b'll\r\n",
        "it's 'Re 'ſ 've'VE don't",
        "\u{3000}中文\u{3000}テスト ١٢٣ 🙂🙂 \u{200D}",
        "  \n  \n   x\r\n\r\n  ",
        "a\u{301}e\u{301} नमस्ते \u{5D0}\u{5D1} ",
        "((foo)) ...bar\n\n\n",
        "   ",
        "\n",
        " \u{A0}x \u{85}y",
        "Ⅻ ½ x²",
    ];

    #[test]
    fn scanners_agree_with_the_regex() {
        for p in [GPT2_PATTERN, CL100K_PATTERN, QWEN2_PATTERN] {
            for t in SAMPLES {
                let (a, b) = both(p, t);
                assert_eq!(a, b, "pattern {p:?} text {t:?}");
                assert_eq!(a.concat(), *t);
            }
        }
    }

    #[test]
    fn known_splits() {
        let (a, _) = both(QWEN2_PATTERN, "def f(x):\n    return 123");
        assert_eq!(
            a,
            ["def", " f", "(x", "):\n", "   ", " return", " ", "1", "2", "3"]
        );
        let (a, _) = both(CL100K_PATTERN, "x 12345");
        assert_eq!(a, ["x", " ", "123", "45"]);
    }

    #[test]
    fn classes_are_read_as_oniguruma_reads_them() {
        let is = |pattern: &str, text: &str| {
            fancy_regex::Regex::new(&format!("^(?:{})$", onig_to_rust(pattern).unwrap()))
                .unwrap()
                .is_match(text)
                .unwrap()
        };
        // POSIX brackets are Unicode sets, negated with `^`, nested with other members.
        assert!(is("[[:alpha:]]", "é") && is("[[:alpha:]]", "\u{2160}"));
        assert!(!is("[[:alpha:]]", "\u{300}") && is("[[:^alpha:]]", "\u{300}"));
        assert!(is("[[:punct:]]", "+") && is("[[:punct:]]", "\u{2212}"));
        assert!(is("[x[:digit:]]", "x") && is("[x[:digit:]]", "\u{664}"));
        assert!(!is("[[:graph:]]", " ") && is("[[:print:]]", "\u{3000}"));
        assert!(is("[[:^graph:]]", "\n") && !is("[[:^print:]]", "a"));
        // `[:alpha:]` outside a class is a class of its letters, in both syntaxes.
        assert!(is("[:alpha:]", "l") && !is("[:alpha:]", "b"));
        // \w: no joiners; outside a class, the Latin-1 number signs too.
        assert!(!is(r"\w", "\u{200C}") && is(r"\W", "\u{200D}"));
        assert!(is(r"\w", "²") && !is(r"[\w]", "²") && is(r"[^\w]", "²"));
        assert!(is(r"\h+", "09afAF") && !is(r"\h", "g") && is(r"[\H]", "g"));
        // \b over those word chars, and a backspace in a class.
        assert!(is(r"a\b", "a") && !is(r"a\b²", "a²") && is(r"a\B²", "a²"));
        assert!(is(r"a\b\u{200C}", "a\u{200C}") && is(r"[\b]", "\u{8}"));
        assert!(is(r"a\Z\n", "a\n") && !is(r"a\Z\n\n", "a\n\n") && is(r"a\Z", "a"));
        assert!(
            !is(r"(?i)\p{Lu}", "a") && is(r"(?i)[\p{Lu}&&[^ẞİ]]", "a") && is(r"(?i)\P{L}", "1")
        );
        assert!(is(r"\pL\PL[\pL]", "pLPLp") && !is(r"\pL", "a"));
        assert!(is("a{2}+", "aaaa") && is("a{1,2}+b", "aaab") && is("a{,1}+", "aa"));
        assert!(is("a{2,}+", "aaaaa") && is("a{}+", "a{}}") && is("a{x}", "a{x}"));
        assert!(is("x(ab){2}+", "xabababab") && is("[ab]{2}+c", "abbac") && is(r"\d{1}+", "12"));
        assert!(is("(?i:a){2}+b", "aAaab") && is("(?i)a{2}+", "aAAa") && !is("(?:a){2}+", "aaa"));
        assert_eq!(onig_to_rust("a|b{2}+").unwrap(), "(?m)a|(?:b{2})+");
        assert_eq!(onig_to_rust("x(?i)a|b").unwrap(), "(?m)x(?i:a|b)");
        assert_eq!(
            onig_to_rust("a**b+?c*+d{2}?e{1,2}?").unwrap(),
            "(?m)(?:a*)*b+?c*+(?:d{2})?e{1,2}?"
        );
        assert_eq!(
            onig_to_rust("a?+?b{1,2}?+").unwrap(),
            "(?m)(?:a?+)?(?:b{1,2}?)+"
        );
        assert!(is("xa{2}?", "x") && is("a{2}{2}", "aaaa") && is("a*{2}b", "aab"));
        assert!(is(r"a\n^b", "a\nb") && !is(r"a\n^", "a\n") && is(r"^a", "a") && is("[^a]", "b"));
        assert_eq!(
            onig_to_rust("(?:x(?i-m)a|b)c").unwrap(),
            "(?m)(?:x(?i-s:a|b))c"
        );
        assert!(is("x(?i)a|b", "xB") && !is("x(?i)a|b", "b") && is("(?:x(?i)a|b){2}+", "xAxbxaxB"));
        assert!(onig_to_rust("(?s).")
            .unwrap_err()
            .contains("group option 's'"));
        assert!(onig_to_rust("(?i-u:a)")
            .unwrap_err()
            .contains("group option 'u'"));
        // Escapes are not brackets, and unknown names are left for Rust to refuse.
        assert!(is(r"\[[:alpha:]\]", "[a]"));
        assert_eq!(
            onig_to_rust("[[:nothing:]]").unwrap_err(),
            "invalid POSIX bracket type [:nothing:]"
        );
        assert!(is("[[:alpha]]", ":") && is("[[:alpha:]x]", "x"));
    }

    #[test]
    fn general_regex_fallback_keeps_gaps() {
        let p = PreTokenizer::new(&["[0-9]+".to_string()], false).unwrap();
        assert!(!p.is_fast());
        assert_eq!(p.pieces("ab12cd3").unwrap(), ["ab", "12", "cd", "3"]);
        let seq = PreTokenizer::new(&[r"\s+".to_string(), "[0-9]".to_string()], false).unwrap();
        assert_eq!(seq.pieces("a1 b").unwrap(), ["a", "1", " ", "b"]);
    }
}
