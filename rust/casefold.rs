//! Oniguruma's multi-char case folding, which Rust's regex engines do not have: under `(?i)`
//! HF's Oniguruma matches the literal `ss` against `ß` (and `ẞ`), `st` against `ﬆ`, `ffi`
//! against `ﬃ`, and a literal `ß` (alone or in a class) against `ss`. A custom pattern
//! that could match so is refused (T107) rather than split differently from HF.

use crate::pretok::interval_len;

/// Describes the first place in `pattern` where, under `(?i)`, Oniguruma could match text
/// across a multi-char case fold; None when there is none. What counts, as Oniguruma builds
/// its string nodes (checked against `tokenizers`):
/// - a run of literal chars under `(?i)` (escaped ones such as `\x73` included, spaces and
///   comments skipped under `(?x)`, non-capturing groups not ending it) that holds the
///   folding of a `MULTI_FOLDS` char: `ss`, `ST`, `ſt`, `ffi`. A quantifier takes the last
///   char out of the run (`ss+` is not `ß`); any other atom, a capturing or flag group, an
///   alternation or a flag change ends it;
/// - a `MULTI_FOLDS` char under `(?i)` as a literal, or in a class that is not negated (by
///   any means: `[ß]`, `[\w]`, `[[:upper:]]`, `[[^:]]`), which then also matches the char's
///   folding (`(?i)[\w]t` matches "sst"). `has_multi_fold(class)` says whether a class's
///   text holds a `MULTI_FOLDS` char.
pub fn multi_fold_literal(pattern: &str, has_multi_fold: &dyn Fn(&str) -> bool) -> Option<String> {
    let cs: Vec<char> = pattern.chars().collect();
    let (mut ic, mut x) = (false, false);
    // Per open group: the flags to restore at its end, and whether it ends a run.
    let mut groups: Vec<(bool, bool, bool)> = Vec::new();
    let mut run = String::new();
    // Whether the last thing in `run` is a char a quantifier right after would take.
    let mut last_literal = false;
    let risky = |run: &str| {
        MULTI_FOLDS
            .iter()
            .find(|(_, f)| run.contains(f))
            .map(|(c, f)| {
                format!("under (?i) Oniguruma matches {f:?} in the pattern against {c:?} too")
            })
    };
    let lone = |c: char| {
        MULTI_FOLDS.iter().find(|(m, _)| *m == c).map(|(c, f)| {
            format!("under (?i) Oniguruma matches {c:?} in the pattern against {f:?} too")
        })
    };
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        // The literal char this token is, if it is one, and its length in chars.
        let mut literal: Option<char> = None;
        let mut len = 1;
        let mut ends_run = true;
        match c {
            '\\' => match cs.get(i + 1) {
                Some('x' | 'u') => match escaped_code(&cs[i + 1..]) {
                    Some((ch, n)) => (literal, len) = (Some(ch), 1 + n),
                    None => len = 2,
                },
                Some(&e) if e.is_alphanumeric() => {
                    len = 2;
                    if matches!(e, 'p' | 'P') && cs.get(i + 2) == Some(&'{') {
                        len = cs[i..].iter().position(|&c| c == '}').map_or(2, |e| e + 1);
                    }
                }
                Some(&e) => (literal, len) = (Some(e), 2),
                None => {}
            },
            '[' => {
                len = class_len(&cs[i..]);
                let text: String = cs[i..i + len].iter().collect();
                if ic && cs.get(i + 1) != Some(&'^') && has_multi_fold(&text) {
                    return Some(format!(
                        "under (?i) Oniguruma also matches the class {text} against the case \
                         folding of a char in it that folds to several (such as ß to \"ss\")"
                    ));
                }
            }
            '(' => {
                let flags = (cs.get(i + 1) == Some(&'?'))
                    .then(|| {
                        let k = cs[i + 2..]
                            .iter()
                            .position(|c| !(c.is_ascii_alphabetic() || *c == '-'))?;
                        Some((i + 2 + k, &cs[i + 2..i + 2 + k]))
                    })
                    .flatten();
                match flags {
                    // `(?#...)`, a comment: nothing of it is matched.
                    _ if cs.get(i + 1) == Some(&'?') && cs.get(i + 2) == Some(&'#') => {
                        len = cs[i..]
                            .iter()
                            .position(|&c| c == ')')
                            .map_or(cs.len() - i, |e| e + 1);
                        ends_run = false;
                    }
                    Some((e, f)) if matches!(cs.get(e), Some(')' | ':')) => {
                        let (mut on, mut new_ic, mut new_x) = (true, ic, x);
                        for &f in f {
                            match f {
                                '-' => on = false,
                                'i' => new_ic = on,
                                'x' => new_x = on,
                                _ => {}
                            }
                        }
                        len = e + 1 - i;
                        if cs[e] == ':' {
                            // `(?:` alone goes on with the run (Oniguruma joins `(?:s)s`).
                            ends_run = !f.is_empty();
                            groups.push((ic, x, ends_run));
                        }
                        (ic, x) = (new_ic, new_x);
                    }
                    _ => {
                        // A capturing group, or `(?=`, `(?!`, `(?<=`, `(?<!`, `(?>`, `(?<name>`:
                        // its opening is no literal text.
                        if cs.get(i + 1) == Some(&'?') {
                            len = match cs.get(i + 2) {
                                Some('<') if matches!(cs.get(i + 3), Some('=' | '!')) => 4,
                                Some('<' | '\'') => {
                                    let close = if cs[i + 2] == '<' { '>' } else { '\'' };
                                    cs[i + 3..]
                                        .iter()
                                        .position(|&c| c == close)
                                        .map_or(3, |e| e + 4)
                                }
                                _ => 3,
                            };
                        }
                        groups.push((ic, x, true));
                    }
                }
            }
            ')' => {
                let (old_ic, old_x, ends) = groups.pop().unwrap_or((ic, x, true));
                (ic, x, ends_run) = (old_ic, old_x, ends);
            }
            '*' | '+' | '?' | '{' => {
                // An interval is ASCII: its length in bytes is its length in chars.
                let quantifier = match c {
                    '{' => interval_len(cs[i..].iter().collect::<String>().as_bytes()),
                    _ => Some(1),
                };
                match quantifier {
                    Some(n) => {
                        if last_literal {
                            run.pop();
                        }
                        len = n;
                    }
                    None => literal = Some('{'),
                }
            }
            c if x && c.is_whitespace() => ends_run = false,
            '#' if x => {
                len = cs[i..]
                    .iter()
                    .position(|&c| c == '\n')
                    .unwrap_or(cs.len() - i);
                ends_run = false;
            }
            '|' | '.' | '^' | '$' => {}
            c => literal = Some(c),
        }
        match literal {
            Some(l) if ic => {
                if let Some(m) = lone(l) {
                    return Some(m);
                }
                run.push(simple_fold(l));
                last_literal = true;
            }
            _ if ends_run => {
                if let Some(m) = risky(&run) {
                    return Some(m);
                }
                run.clear();
                last_literal = false;
            }
            _ => last_literal = false,
        }
        i += len;
    }
    risky(&run)
}

/// `c`'s simple case folding where that is a char of a `MULTI_FOLDS` folding, else `c` in
/// lower case (or `c`).
fn simple_fold(c: char) -> char {
    match SIMPLE_FOLDS.binary_search_by_key(&c, |&(k, _)| k) {
        Ok(k) => SIMPLE_FOLDS[k].1,
        Err(_) => {
            let mut l = c.to_lowercase();
            match (l.next(), l.next()) {
                (Some(one), None) => one,
                _ => c,
            }
        }
    }
}

/// The char of the escape `x..` / `u..` at the start of `cs` (after the backslash): `xHH`,
/// `x{H..}` or `uHHHH`, and how many chars it takes.
fn escaped_code(cs: &[char]) -> Option<(char, usize)> {
    let hex = |s: &[char]| {
        let t: String = s.iter().collect();
        u32::from_str_radix(&t, 16).ok().and_then(char::from_u32)
    };
    match cs {
        ['x', '{', rest @ ..] => {
            let e = rest.iter().position(|&c| c == '}')?;
            Some((hex(&rest[..e])?, e + 3))
        }
        ['x', a, b, ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => {
            Some((hex(&cs[1..3])?, 3))
        }
        ['u', rest @ ..] if rest.len() >= 4 && rest[..4].iter().all(char::is_ascii_hexdigit) => {
            Some((hex(&rest[..4])?, 5))
        }
        _ => None,
    }
}

/// The length in chars of the class `cs` starts with (`[` ... `]`, nested classes and
/// escapes included; a `]` first in a class is a literal to Oniguruma).
fn class_len(cs: &[char]) -> usize {
    let mut depth = 0usize;
    let mut i = 0;
    while i < cs.len() {
        match cs[i] {
            '\\' => i += 1,
            '[' => depth += 1,
            ']' if i > 1 && !(cs[i - 1] == '[' || (cs[i - 1] == '^' && cs[i - 2] == '[')) => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    cs.len()
}

/// The chars whose full case folding is several chars.
pub fn multi_fold_chars() -> impl Iterator<Item = char> {
    MULTI_FOLDS.iter().map(|&(c, _)| c)
}

/// Chars whose full case folding is two or three chars (Unicode 14 `CaseFolding.txt`,
/// status F), with that folding.
const MULTI_FOLDS: &[(char, &str)] = &[
    ('\u{df}', "\u{73}\u{73}"),
    ('\u{130}', "\u{69}\u{307}"),
    ('\u{149}', "\u{2bc}\u{6e}"),
    ('\u{1f0}', "\u{6a}\u{30c}"),
    ('\u{390}', "\u{3b9}\u{308}\u{301}"),
    ('\u{3b0}', "\u{3c5}\u{308}\u{301}"),
    ('\u{587}', "\u{565}\u{582}"),
    ('\u{1e96}', "\u{68}\u{331}"),
    ('\u{1e97}', "\u{74}\u{308}"),
    ('\u{1e98}', "\u{77}\u{30a}"),
    ('\u{1e99}', "\u{79}\u{30a}"),
    ('\u{1e9a}', "\u{61}\u{2be}"),
    ('\u{1e9e}', "\u{73}\u{73}"),
    ('\u{1f50}', "\u{3c5}\u{313}"),
    ('\u{1f52}', "\u{3c5}\u{313}\u{300}"),
    ('\u{1f54}', "\u{3c5}\u{313}\u{301}"),
    ('\u{1f56}', "\u{3c5}\u{313}\u{342}"),
    ('\u{1f80}', "\u{1f00}\u{3b9}"),
    ('\u{1f81}', "\u{1f01}\u{3b9}"),
    ('\u{1f82}', "\u{1f02}\u{3b9}"),
    ('\u{1f83}', "\u{1f03}\u{3b9}"),
    ('\u{1f84}', "\u{1f04}\u{3b9}"),
    ('\u{1f85}', "\u{1f05}\u{3b9}"),
    ('\u{1f86}', "\u{1f06}\u{3b9}"),
    ('\u{1f87}', "\u{1f07}\u{3b9}"),
    ('\u{1f88}', "\u{1f00}\u{3b9}"),
    ('\u{1f89}', "\u{1f01}\u{3b9}"),
    ('\u{1f8a}', "\u{1f02}\u{3b9}"),
    ('\u{1f8b}', "\u{1f03}\u{3b9}"),
    ('\u{1f8c}', "\u{1f04}\u{3b9}"),
    ('\u{1f8d}', "\u{1f05}\u{3b9}"),
    ('\u{1f8e}', "\u{1f06}\u{3b9}"),
    ('\u{1f8f}', "\u{1f07}\u{3b9}"),
    ('\u{1f90}', "\u{1f20}\u{3b9}"),
    ('\u{1f91}', "\u{1f21}\u{3b9}"),
    ('\u{1f92}', "\u{1f22}\u{3b9}"),
    ('\u{1f93}', "\u{1f23}\u{3b9}"),
    ('\u{1f94}', "\u{1f24}\u{3b9}"),
    ('\u{1f95}', "\u{1f25}\u{3b9}"),
    ('\u{1f96}', "\u{1f26}\u{3b9}"),
    ('\u{1f97}', "\u{1f27}\u{3b9}"),
    ('\u{1f98}', "\u{1f20}\u{3b9}"),
    ('\u{1f99}', "\u{1f21}\u{3b9}"),
    ('\u{1f9a}', "\u{1f22}\u{3b9}"),
    ('\u{1f9b}', "\u{1f23}\u{3b9}"),
    ('\u{1f9c}', "\u{1f24}\u{3b9}"),
    ('\u{1f9d}', "\u{1f25}\u{3b9}"),
    ('\u{1f9e}', "\u{1f26}\u{3b9}"),
    ('\u{1f9f}', "\u{1f27}\u{3b9}"),
    ('\u{1fa0}', "\u{1f60}\u{3b9}"),
    ('\u{1fa1}', "\u{1f61}\u{3b9}"),
    ('\u{1fa2}', "\u{1f62}\u{3b9}"),
    ('\u{1fa3}', "\u{1f63}\u{3b9}"),
    ('\u{1fa4}', "\u{1f64}\u{3b9}"),
    ('\u{1fa5}', "\u{1f65}\u{3b9}"),
    ('\u{1fa6}', "\u{1f66}\u{3b9}"),
    ('\u{1fa7}', "\u{1f67}\u{3b9}"),
    ('\u{1fa8}', "\u{1f60}\u{3b9}"),
    ('\u{1fa9}', "\u{1f61}\u{3b9}"),
    ('\u{1faa}', "\u{1f62}\u{3b9}"),
    ('\u{1fab}', "\u{1f63}\u{3b9}"),
    ('\u{1fac}', "\u{1f64}\u{3b9}"),
    ('\u{1fad}', "\u{1f65}\u{3b9}"),
    ('\u{1fae}', "\u{1f66}\u{3b9}"),
    ('\u{1faf}', "\u{1f67}\u{3b9}"),
    ('\u{1fb2}', "\u{1f70}\u{3b9}"),
    ('\u{1fb3}', "\u{3b1}\u{3b9}"),
    ('\u{1fb4}', "\u{3ac}\u{3b9}"),
    ('\u{1fb6}', "\u{3b1}\u{342}"),
    ('\u{1fb7}', "\u{3b1}\u{342}\u{3b9}"),
    ('\u{1fbc}', "\u{3b1}\u{3b9}"),
    ('\u{1fc2}', "\u{1f74}\u{3b9}"),
    ('\u{1fc3}', "\u{3b7}\u{3b9}"),
    ('\u{1fc4}', "\u{3ae}\u{3b9}"),
    ('\u{1fc6}', "\u{3b7}\u{342}"),
    ('\u{1fc7}', "\u{3b7}\u{342}\u{3b9}"),
    ('\u{1fcc}', "\u{3b7}\u{3b9}"),
    ('\u{1fd2}', "\u{3b9}\u{308}\u{300}"),
    ('\u{1fd3}', "\u{3b9}\u{308}\u{301}"),
    ('\u{1fd6}', "\u{3b9}\u{342}"),
    ('\u{1fd7}', "\u{3b9}\u{308}\u{342}"),
    ('\u{1fe2}', "\u{3c5}\u{308}\u{300}"),
    ('\u{1fe3}', "\u{3c5}\u{308}\u{301}"),
    ('\u{1fe4}', "\u{3c1}\u{313}"),
    ('\u{1fe6}', "\u{3c5}\u{342}"),
    ('\u{1fe7}', "\u{3c5}\u{308}\u{342}"),
    ('\u{1ff2}', "\u{1f7c}\u{3b9}"),
    ('\u{1ff3}', "\u{3c9}\u{3b9}"),
    ('\u{1ff4}', "\u{3ce}\u{3b9}"),
    ('\u{1ff6}', "\u{3c9}\u{342}"),
    ('\u{1ff7}', "\u{3c9}\u{342}\u{3b9}"),
    ('\u{1ffc}', "\u{3c9}\u{3b9}"),
    ('\u{fb00}', "\u{66}\u{66}"),
    ('\u{fb01}', "\u{66}\u{69}"),
    ('\u{fb02}', "\u{66}\u{6c}"),
    ('\u{fb03}', "\u{66}\u{66}\u{69}"),
    ('\u{fb04}', "\u{66}\u{66}\u{6c}"),
    ('\u{fb05}', "\u{73}\u{74}"),
    ('\u{fb06}', "\u{73}\u{74}"),
    ('\u{fb13}', "\u{574}\u{576}"),
    ('\u{fb14}', "\u{574}\u{565}"),
    ('\u{fb15}', "\u{574}\u{56b}"),
    ('\u{fb16}', "\u{57e}\u{576}"),
    ('\u{fb17}', "\u{574}\u{56d}"),
];

/// Chars whose simple case folding is one of the chars of a `MULTI_FOLDS` folding, and
/// that folding.
const SIMPLE_FOLDS: &[(char, char)] = &[
    ('\u{41}', '\u{61}'),
    ('\u{46}', '\u{66}'),
    ('\u{48}', '\u{68}'),
    ('\u{49}', '\u{69}'),
    ('\u{4a}', '\u{6a}'),
    ('\u{4c}', '\u{6c}'),
    ('\u{4e}', '\u{6e}'),
    ('\u{53}', '\u{73}'),
    ('\u{54}', '\u{74}'),
    ('\u{57}', '\u{77}'),
    ('\u{59}', '\u{79}'),
    ('\u{17f}', '\u{73}'),
    ('\u{345}', '\u{3b9}'),
    ('\u{386}', '\u{3ac}'),
    ('\u{389}', '\u{3ae}'),
    ('\u{38f}', '\u{3ce}'),
    ('\u{391}', '\u{3b1}'),
    ('\u{397}', '\u{3b7}'),
    ('\u{399}', '\u{3b9}'),
    ('\u{3a1}', '\u{3c1}'),
    ('\u{3a5}', '\u{3c5}'),
    ('\u{3a9}', '\u{3c9}'),
    ('\u{3f1}', '\u{3c1}'),
    ('\u{535}', '\u{565}'),
    ('\u{53b}', '\u{56b}'),
    ('\u{53d}', '\u{56d}'),
    ('\u{544}', '\u{574}'),
    ('\u{546}', '\u{576}'),
    ('\u{54e}', '\u{57e}'),
    ('\u{552}', '\u{582}'),
    ('\u{1f08}', '\u{1f00}'),
    ('\u{1f09}', '\u{1f01}'),
    ('\u{1f0a}', '\u{1f02}'),
    ('\u{1f0b}', '\u{1f03}'),
    ('\u{1f0c}', '\u{1f04}'),
    ('\u{1f0d}', '\u{1f05}'),
    ('\u{1f0e}', '\u{1f06}'),
    ('\u{1f0f}', '\u{1f07}'),
    ('\u{1f28}', '\u{1f20}'),
    ('\u{1f29}', '\u{1f21}'),
    ('\u{1f2a}', '\u{1f22}'),
    ('\u{1f2b}', '\u{1f23}'),
    ('\u{1f2c}', '\u{1f24}'),
    ('\u{1f2d}', '\u{1f25}'),
    ('\u{1f2e}', '\u{1f26}'),
    ('\u{1f2f}', '\u{1f27}'),
    ('\u{1f68}', '\u{1f60}'),
    ('\u{1f69}', '\u{1f61}'),
    ('\u{1f6a}', '\u{1f62}'),
    ('\u{1f6b}', '\u{1f63}'),
    ('\u{1f6c}', '\u{1f64}'),
    ('\u{1f6d}', '\u{1f65}'),
    ('\u{1f6e}', '\u{1f66}'),
    ('\u{1f6f}', '\u{1f67}'),
    ('\u{1fba}', '\u{1f70}'),
    ('\u{1fbe}', '\u{3b9}'),
    ('\u{1fca}', '\u{1f74}'),
    ('\u{1ffa}', '\u{1f7c}'),
    ('\u{2126}', '\u{3c9}'),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_fold_to_several_chars() {
        assert!(SIMPLE_FOLDS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(MULTI_FOLDS.iter().all(|(_, f)| f.chars().count() >= 2));
        assert_eq!(simple_fold('ſ'), 's');
        assert_eq!(simple_fold('S'), 's');
        assert_eq!(simple_fold('x'), 'x');
    }

    /// A class holds a multi-fold char when one is written in it (enough for these tests;
    /// `pretok` asks the regex engine).
    fn literal_member(class: &str) -> bool {
        class.chars().any(|c| multi_fold_chars().any(|m| m == c))
    }

    #[test]
    fn finds_literals_oniguruma_folds_across() {
        for p in [
            "(?i)ss",
            "(?i)xSTy",
            "(?i)[aß]",
            "(?i)\\x{df}",
            "(?i)\\u00df",
            "(?i)(?:s)s",
            "(?i)s(?#c)s",
            "(?x)(?i)s  # c\n s",
            "a|(?i)ffi",
            "(?i:a|fi)",
        ] {
            assert!(multi_fold_literal(p, &literal_member).is_some(), "{p}");
        }
        for p in [
            "ss",
            "(?i)s+s",
            "(?i)ss*",
            "(?i)s{2}",
            "(?i)s{1,2}s+",
            "(?i)(s)s",
            "(?i)s[s]",
            "(?i:s)s",
            "(?i)s(?-i)s",
            "(?i)[^ß]",
            "(?i)[à-ÿ]",
            "(?i)\\ss",
            "(?i)(?=s)s",
            "(?i)(?<ss_>x)",
            "(?i:'s|'t|'re|'ve|'m|'ll|'d)",
            "(?i)s|s",
            "[ß]",
            "(?i)s\\x{7b}s",
        ] {
            assert_eq!(multi_fold_literal(p, &literal_member), None, "{p}");
        }
    }

    #[test]
    fn reads_escapes() {
        assert_eq!(escaped_code(&['x', '7', '3']), Some(('s', 3)));
        assert_eq!(escaped_code(&['x', '{', 'd', 'f', '}']), Some(('ß', 5)));
        assert_eq!(escaped_code(&['u', '0', '0', 'd', 'f']), Some(('ß', 5)));
        assert_eq!(escaped_code(&['x', 'g']), None);
    }
}
