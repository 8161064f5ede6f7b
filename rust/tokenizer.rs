//! A byte-level BPE tokenizer loaded from an HF `tokenizer.json` or an imported aprx tokenizer
//! directory (`vocab.json` + `merges.txt` + `manifest.json`), reproducing HF `tokenizers`
//! exactly: added-token splitting, NFC, the Split pre-tokenizer, ByteLevel, BPE by merge rank.

use crate::bitscan;
use crate::bpe::{Bpe, MergeTable, BATCHED_LONG, NO_ID};
use crate::bytelevel;
use crate::cache::{self, FxBuild, PieceCache, SharedTable, ShortKey, MAX_CACHED_PIECE, SHORT};
use crate::error::{codes, Error, ErrorKind, Result};
use crate::pretok::{self, PreTokenizer, Scanner, GPT2_PATTERN};
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A token HF calls "added": matched in raw text before pre-tokenization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    pub id: u32,
    pub content: String,
    pub special: bool,
    pub normalized: bool,
    /// Takes the white space on its left into the match.
    pub lstrip: bool,
    /// Takes the white space on its right into the match.
    pub rstrip: bool,
    /// Matches only where no word char (`\w`) touches it on either side.
    pub single_word: bool,
}

/// `AddedToken::options` bits.
const LSTRIP: u8 = 1;
const RSTRIP: u8 = 2;
const SINGLE_WORD: u8 = 4;

impl AddedToken {
    /// `lstrip`, `rstrip` and `single_word` as bits (0 when none is set).
    fn options(&self) -> u8 {
        (self.lstrip as u8 * LSTRIP)
            | (self.rstrip as u8 * RSTRIP)
            | (self.single_word as u8 * SINGLE_WORD)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalizer {
    None,
    Nfc,
}

/// Facts about a loaded tokenizer, reported by `Tokenizer::info`.
#[derive(Debug, Clone)]
pub struct Info {
    pub model_type: String,
    pub bpe_vocab_size: usize,
    pub merges_count: usize,
    pub added_tokens: Vec<AddedToken>,
    /// 1 + the largest id: the number of embedding rows a model needs.
    pub vocab_size: usize,
    pub normalizer: Normalizer,
    pub patterns: Vec<String>,
    pub ignore_merges: bool,
    pub fast_pretokenizer: bool,
    /// sha256 of the tokenizer's content (vocab, merges, added tokens, normalizer,
    /// pre-tokenizer): equal for a tokenizer.json and its imported directory.
    pub fingerprint: String,
}

struct AddedMatcher {
    ac: AhoCorasick,
    ids: Vec<u32>,
    /// Each pattern's `AddedToken::options`.
    options: Vec<u8>,
}

impl AddedMatcher {
    /// Splits `text` as HF's added vocabulary does (`find_matches`): appends each token's id
    /// to `out` and encodes the text between tokens with `text_ids`, in order. Matches
    /// are leftmost-longest; a `single_word` match touched by a word char is passed over (the
    /// text stays text), an `lstrip` match takes the white space before it back to the end of
    /// the previous split, an `rstrip` match the white space after it. A match inside white
    /// space a previous one took still counts where it reaches past it (as in HF, whose
    /// splits then overlap).
    fn encode(
        &self,
        text: &str,
        out: &mut Vec<u32>,
        mut text_ids: impl FnMut(&str, &mut Vec<u32>) -> Result<()>,
    ) -> Result<()> {
        let mut last = 0;
        for hit in self.ac.find_iter(text) {
            let k = hit.pattern().as_usize();
            let (mut start, mut stop, options) = (hit.start(), hit.end(), self.options[k]);
            if options & SINGLE_WORD != 0
                && (is_word_at_end(&text[..start]) || is_word_at_start(&text[stop..]))
            {
                continue;
            }
            if options & LSTRIP != 0 {
                start = text[..start]
                    .trim_end_matches(char::is_whitespace)
                    .len()
                    .max(last);
            }
            if options & RSTRIP != 0 {
                let rest = &text[stop..];
                stop += rest.len() - rest.trim_start_matches(char::is_whitespace).len();
            }
            // A match that white space taken by the previous one leaves empty (or reversed,
            // where HF panics) is no token: HF drops empty splits.
            if start >= stop {
                continue;
            }
            if last < start {
                text_ids(&text[last..start], out)?;
            }
            out.push(self.ids[k]);
            last = stop;
        }
        if last < text.len() {
            text_ids(&text[last..], out)?;
        }
        Ok(())
    }
}

/// Whether `s` ends (or starts) with a word char as HF's `single_word` test reads one: Rust
/// regex's `\w`.
fn is_word_at_end(s: &str) -> bool {
    s.chars().next_back().is_some_and(is_regex_word)
}

fn is_word_at_start(s: &str) -> bool {
    s.chars().next().is_some_and(is_regex_word)
}

fn is_regex_word(c: char) -> bool {
    static WORD: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let word = WORD.get_or_init(|| regex::Regex::new(r"^\w$").expect("a valid regex"));
    word.is_match(c.encode_utf8(&mut [0; 4]))
}

/// An immutable tokenizer, safe to share across threads.
pub struct Tokenizer {
    uid: u64,
    bpe: Bpe,
    unk: Option<u32>,
    normalizer: Normalizer,
    pretok: PreTokenizer,
    add_prefix_space: bool,
    /// id -> token string (byte-level alphabet for BPE tokens, content for added tokens).
    id_to_str: Vec<Option<String>>,
    /// id -> bytes produced by decoding.
    id_to_bytes: Vec<Option<Box<[u8]>>>,
    str_to_id: HashMap<String, u32, FxBuild>,
    /// raw bytes -> id of whole pieces that are one token (see `from_value`); those of up to
    /// `SHORT` bytes also in `short_vocab`.
    bytes_to_id: HashMap<Box<[u8]>, u32, FxBuild>,
    /// Short pieces' ids, shared by the threads: the one-token pieces, then merged ones.
    short_vocab: SharedTable,
    raw_added: Option<AddedMatcher>,
    norm_added: Option<AddedMatcher>,
    /// id -> whether it is a special added token (skipped by `skip_special` decoding).
    special: Vec<bool>,
    info: Info,
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

fn field_err(source: &str, what: impl std::fmt::Display) -> Error {
    Error::tokenizer(codes::FIELD, format!("{source}: {what}"))
}

fn unsupported(source: &str, what: impl std::fmt::Display) -> Error {
    Error::tokenizer(codes::UNSUPPORTED, format!("{source}: unsupported {what}"))
}

/// A JSON value for an error message: compact, and cut short if long.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s,
    }
}

/// An object of a tokenizer file, with the path that names it in errors (`model`,
/// `added_tokens[3]`, `pre_tokenizer.pretokenizers[0]`), for reading its optional fields by
/// one rule: a missing key or JSON null is `None` (the caller's default, as HF's `Option` and
/// `#[serde(default)]` fields), and a present value of another type is APRX-T102 naming the
/// field, never silently the default.
struct Fields<'a> {
    v: &'a Value,
    path: Cow<'a, str>,
    source: &'a str,
}

impl<'a> Fields<'a> {
    fn new(v: &'a Value, path: impl Into<Cow<'a, str>>, source: &'a str) -> Self {
        Fields {
            v,
            path: path.into(),
            source,
        }
    }

    fn get<T>(
        &self,
        key: &str,
        expected: &str,
        get: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => get(x).map(Some).ok_or_else(|| {
                field_err(
                    self.source,
                    format!("{}.{key} must be {expected}, not {}", self.path, shown(x)),
                )
            }),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key, "a boolean", Value::as_bool)
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key, "a string", Value::as_str)
    }

    /// The component's `type` (`"<no type>"` when absent).
    fn type_name(&self) -> Result<&'a str> {
        Ok(self.str("type")?.unwrap_or("<no type>"))
    }
}

/// Parses JSON text, reporting line and column on failure.
pub fn parse_json(text: &str, source: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| {
        Error::tokenizer(
            codes::JSON,
            format!(
                "{source}: malformed JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })
}

/// Reads a text file; invalid UTF-8 is a tokenizer-file error with its byte position.
fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read", &e))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::tokenizer(
            codes::JSON,
            format!(
                "{}: invalid UTF-8 at byte {at} (line {line})",
                path.display()
            ),
        )
    })
}

/// Split the pre-tokenizer object into (regex patterns, add_prefix_space).
fn parse_pretokenizer(v: Option<&Value>, source: &str) -> Result<(Vec<String>, bool)> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Err(unsupported(
            source,
            "pre_tokenizer null: a byte-level BPE needs a ByteLevel pre-tokenizer",
        ));
    };
    let sequence = Fields::new(v, "pre_tokenizer", source).type_name()? == "Sequence";
    let steps: Vec<&Value> = if sequence {
        v.get("pretokenizers")
            .and_then(Value::as_array)
            .ok_or_else(|| field_err(source, "pre_tokenizer.pretokenizers must be a list"))?
            .iter()
            .collect()
    } else {
        vec![v]
    };
    let mut patterns = Vec::new();
    let mut saw_bytelevel = false;
    let mut add_prefix_space = false;
    for (i, step) in steps.iter().enumerate() {
        let path = if sequence {
            Cow::Owned(format!("pre_tokenizer.pretokenizers[{i}]"))
        } else {
            Cow::Borrowed("pre_tokenizer")
        };
        let f = Fields::new(step, path, source);
        match f.type_name()? {
            "Split" => {
                if saw_bytelevel {
                    return Err(unsupported(
                        source,
                        "Split after ByteLevel in pre_tokenizer",
                    ));
                }
                let behavior = f.str("behavior")?.unwrap_or("");
                if behavior != "Isolated" {
                    return Err(unsupported(
                        source,
                        format!("Split behavior {behavior:?} (only \"Isolated\")"),
                    ));
                }
                if f.bool("invert")?.unwrap_or(false) {
                    return Err(unsupported(source, "Split with invert: true"));
                }
                let pat = step.get("pattern").ok_or_else(|| {
                    field_err(
                        source,
                        format!("pre_tokenizer step {i}: Split has no pattern"),
                    )
                })?;
                if let Some(r) = pat.get("Regex").and_then(Value::as_str) {
                    patterns.push(r.to_string());
                } else if let Some(s) = pat.get("String").and_then(Value::as_str) {
                    patterns.push(fancy_regex::escape(s).into_owned());
                } else {
                    return Err(field_err(
                        source,
                        "Split pattern must be {\"Regex\": ...} or {\"String\": ...}",
                    ));
                }
            }
            "ByteLevel" => {
                if saw_bytelevel {
                    return Err(unsupported(source, "two ByteLevel pre-tokenizers"));
                }
                saw_bytelevel = true;
                let use_regex = f.bool("use_regex")?.unwrap_or(true);
                let aps = f.bool("add_prefix_space")?.unwrap_or(false);
                if use_regex {
                    if !patterns.is_empty() {
                        return Err(unsupported(source, "Split followed by ByteLevel use_regex"));
                    }
                    patterns.push(GPT2_PATTERN.to_string());
                    add_prefix_space = aps;
                } else if aps {
                    return Err(unsupported(
                        source,
                        "ByteLevel add_prefix_space after a Split (per-piece prefix spaces)",
                    ));
                }
            }
            other => {
                return Err(unsupported(
                    source,
                    format!("pre-tokenizer component {other:?} (supported: Split, ByteLevel)"),
                ))
            }
        }
    }
    if !saw_bytelevel {
        return Err(unsupported(
            source,
            "pre_tokenizer without ByteLevel: aprx encodes byte-level BPE vocabularies only",
        ));
    }
    Ok((patterns, add_prefix_space))
}

fn parse_normalizer(v: Option<&Value>, path: &str, source: &str) -> Result<Normalizer> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Normalizer::None);
    };
    match Fields::new(v, path, source).type_name()? {
        "NFC" => Ok(Normalizer::Nfc),
        "Sequence" => {
            let list = v
                .get("normalizers")
                .and_then(Value::as_array)
                .ok_or_else(|| field_err(source, "normalizer.normalizers must be a list"))?;
            let mut out = Normalizer::None;
            for (i, n) in list.iter().enumerate() {
                let at = format!("{path}.normalizers[{i}]");
                match parse_normalizer(Some(n), &at, source)? {
                    Normalizer::Nfc => out = Normalizer::Nfc,
                    Normalizer::None => {}
                }
            }
            Ok(out)
        }
        other => Err(unsupported(
            source,
            format!("normalizer {other:?} (supported: NFC or none)"),
        )),
    }
}

fn check_decoder(v: Option<&Value>, source: &str) -> Result<()> {
    match v.filter(|v| !v.is_null()) {
        None => Ok(()),
        Some(d) => match Fields::new(d, "decoder", source).type_name()? {
            "ByteLevel" => Ok(()),
            other => Err(unsupported(
                source,
                format!("decoder {other:?} (supported: ByteLevel)"),
            )),
        },
    }
}

fn parse_added(v: Option<&Value>, source: &str) -> Result<Vec<AddedToken>> {
    let Some(list) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| field_err(source, "added_tokens must be a list"))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        if !t.is_object() {
            return Err(field_err(
                source,
                format!("added_tokens[{i}] must be an object, not {}", shown(t)),
            ));
        }
        let f = Fields::new(t, format!("added_tokens[{i}]"), source);
        let content = f
            .str("content")?
            .ok_or_else(|| field_err(source, format!("added_tokens[{i}].content missing")))?;
        if content.is_empty() {
            return Err(field_err(
                source,
                format!("added_tokens[{i}].content must not be empty"),
            ));
        }
        let id = f
            .get("id", "a non-negative integer", Value::as_u64)?
            .ok_or_else(|| field_err(source, format!("added_tokens[{i}].id missing")))?;
        // The cap vocab ids have: ids index tables sized by the largest one, and the merge
        // table packs them in 21 bits.
        if id > crate::bpe::MAX_ID as u64 {
            return Err(Error::tokenizer(
                codes::DUPLICATE_ID,
                format!(
                    "{source}: added token {content:?} has id {id}, above the largest id aprx \
                     supports ({})",
                    crate::bpe::MAX_ID
                ),
            ));
        }
        out.push(AddedToken {
            id: id as u32,
            content: content.to_string(),
            special: f.bool("special")?.unwrap_or(false),
            normalized: f.bool("normalized")?.unwrap_or(false),
            lstrip: f.bool("lstrip")?.unwrap_or(false),
            rstrip: f.bool("rstrip")?.unwrap_or(false),
            single_word: f.bool("single_word")?.unwrap_or(false),
        });
    }
    Ok(out)
}

/// The automaton for `tokens`, whose contents are first normalized by `normalizer`: HF
/// matches `normalized` added tokens in normalized text by their normalized content.
fn matcher(tokens: &[&AddedToken], normalizer: Normalizer) -> Option<AddedMatcher> {
    if tokens.is_empty() {
        return None;
    }
    let ac = AhoCorasickBuilder::new()
        .match_kind(MatchKind::LeftmostLongest)
        .build(
            tokens
                .iter()
                .map(|t| normalize_with(normalizer, &t.content).into_owned()),
        )
        .expect("added-token automaton");
    Some(AddedMatcher {
        ac,
        ids: tokens.iter().map(|t| t.id).collect(),
        options: tokens.iter().map(|t| t.options()).collect(),
    })
}

impl Tokenizer {
    /// Loads a `tokenizer.json` file or an imported tokenizer directory.
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Self::from_dir(path);
        }
        let text = read_text(path)?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses the text of a `tokenizer.json`.
    pub fn from_json_str(text: &str, source: &str) -> Result<Self> {
        let v = parse_json(text, source)?;
        Self::from_value(&v, source)
    }

    /// Loads an imported directory: `vocab.json`, `merges.txt` and `manifest.json` (which
    /// carries the normalizer, pre-tokenizer, decoder and added tokens).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let manifest_path = dir.join("manifest.json");
        let vocab = parse_json(&read_text(&vocab_path)?, &vocab_path.display().to_string())?;
        let msrc = manifest_path.display().to_string();
        let manifest = parse_json(&read_text(&manifest_path)?, &msrc)?;
        let merges_text = read_text(&merges_path)?;
        let merges: Vec<Value> = merges_text
            .lines()
            .enumerate()
            .filter(|(i, l)| !(l.is_empty() || *i == 0 && l.starts_with("#version")))
            .map(|(_, l)| l)
            .map(|l| Value::String(l.to_string()))
            .collect();
        let hf = manifest
            .get("hf")
            .and_then(Value::as_object)
            .ok_or_else(|| field_err(&msrc, "missing \"hf\" section"))?;
        let include = Fields::new(&manifest, "manifest", &msrc)
            .bool("include_added_tokens")?
            .unwrap_or(false);
        let mut model = Map::new();
        model.insert("type".into(), "BPE".into());
        model.insert("vocab".into(), vocab);
        model.insert("merges".into(), Value::Array(merges));
        for k in [
            "ignore_merges",
            "unk_token",
            "fuse_unk",
            "byte_fallback",
            "dropout",
        ] {
            if let Some(x) = hf.get(k) {
                model.insert(k.into(), x.clone());
            }
        }
        let mut root = Map::new();
        for k in ["normalizer", "pre_tokenizer", "decoder"] {
            root.insert(k.into(), hf.get(k).cloned().unwrap_or(Value::Null));
        }
        let added = if include {
            manifest.get("added_tokens").cloned().unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        root.insert("added_tokens".into(), added);
        root.insert("model".into(), Value::Object(model));
        Self::from_value(&Value::Object(root), &dir.display().to_string())
    }

    /// Builds from a parsed `tokenizer.json` value.
    pub fn from_value(v: &Value, source: &str) -> Result<Self> {
        let root = v
            .as_object()
            .ok_or_else(|| field_err(source, "top level must be a JSON object"))?;
        let model_v = root
            .get("model")
            .filter(|m| m.is_object())
            .ok_or_else(|| field_err(source, "missing \"model\" object"))?;
        let model = model_v.as_object().expect("an object");
        let mf = Fields::new(model_v, "model", source);
        let mtype = match mf.str("type")? {
            Some(t) => t.to_string(),
            None if model.contains_key("merges") => "BPE".to_string(),
            None => "<no type>".to_string(),
        };
        if mtype != "BPE" {
            return Err(Error::tokenizer(
                codes::MODEL_TYPE,
                format!("{source}: model type is {mtype}; aprx needs a byte-level BPE model"),
            ));
        }
        if mf.get("dropout", "a number", Value::as_f64)?.is_some() {
            return Err(unsupported(source, "BPE dropout (training-time only)"));
        }
        for k in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if mf.str(k)?.is_some_and(|s| !s.is_empty()) {
                return Err(unsupported(source, format!("BPE {k}")));
            }
        }
        if mf.bool("byte_fallback")?.unwrap_or(false) {
            return Err(unsupported(source, "BPE byte_fallback"));
        }
        let ignore_merges = mf.bool("ignore_merges")?.unwrap_or(false);
        let unk_token = mf.str("unk_token")?;
        let fuse_unk = mf.bool("fuse_unk")?.unwrap_or(false);
        let normalizer = parse_normalizer(root.get("normalizer"), "normalizer", source)?;
        let (patterns, add_prefix_space) = parse_pretokenizer(root.get("pre_tokenizer"), source)?;
        check_decoder(root.get("decoder"), source)?;
        let added = parse_added(root.get("added_tokens"), source)?;

        // Vocabulary.
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| field_err(source, "model.vocab must be an object of token -> id"))?;
        // id -> token (checking the ids) and token -> id, built side by side on the pool.
        let pool = crate::parallel::pool(None)?;
        let by_id = || -> Result<Vec<Option<String>>> {
            let mut id_to_str: Vec<Option<String>> = Vec::new();
            for (tok, id) in vocab {
                let id = id.as_u64().ok_or_else(|| {
                    field_err(source, format!("vocab[{tok:?}] is not a valid id"))
                })?;
                if id > crate::bpe::MAX_ID as u64 {
                    return Err(Error::tokenizer(
                        codes::DUPLICATE_ID,
                        format!(
                            "{source}: vocab[{tok:?}] has id {id}, above the largest id aprx \
                             supports ({})",
                            crate::bpe::MAX_ID
                        ),
                    ));
                }
                let id = id as usize;
                if id >= id_to_str.len() {
                    id_to_str.resize(id + 1, None);
                }
                if let Some(prev) = &id_to_str[id] {
                    return Err(Error::tokenizer(
                        codes::DUPLICATE_ID,
                        format!("{source}: id {id} is used by both {prev:?} and {tok:?}"),
                    ));
                }
                id_to_str[id] = Some(tok.clone());
            }
            Ok(id_to_str)
        };
        let by_token = || {
            let mut str_to_id: HashMap<String, u32, FxBuild> =
                HashMap::with_capacity_and_hasher(vocab.len(), FxBuild::default());
            for (tok, id) in vocab {
                // Ids are checked by `by_id`; nothing built here is used if one is bad.
                str_to_id.insert(tok.clone(), id.as_u64().unwrap_or(0) as u32);
            }
            str_to_id
        };
        let (id_to_str, mut str_to_id) = pool.install(|| rayon::join(by_id, by_token));
        let mut id_to_str = id_to_str?;
        // The ids of the vocabulary proper (not those only added tokens have, below).
        let vocab_ids: Vec<bool> = id_to_str.iter().map(Option::is_some).collect();
        let bpe_vocab_size = vocab.len();
        let unk = match unk_token {
            Some(u) => Some(*str_to_id.get(u).ok_or_else(|| {
                field_err(source, format!("unk_token {u:?} is not in the vocab"))
            })?),
            None => None,
        };
        if unk.is_some() && fuse_unk {
            return Err(unsupported(source, "fuse_unk with an unk_token"));
        }

        // Merges, in rank order: each resolved to its ids on the pool (read-only lookups,
        // half of a load's time when done one by one); the first bad one, by index, is the
        // error, as in a sequential pass.
        let merges_v = model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or_else(|| field_err(source, "model.merges must be a list"))?;
        let resolve = |i: usize, m: &Value, joined: &mut String| -> Result<(u32, u32, u32)> {
            let (a, b): (&str, &str) = match m {
                Value::String(s) => {
                    let mut it = s.split(' ');
                    match (it.next(), it.next(), it.next()) {
                        (Some(a), Some(b), None) => (a, b),
                        _ => {
                            return Err(field_err(
                                source,
                                format!("merges[{i}] {s:?} is not two tokens separated by a space"),
                            ))
                        }
                    }
                }
                Value::Array(p) if p.len() == 2 && p.iter().all(Value::is_string) => {
                    (p[0].as_str().unwrap(), p[1].as_str().unwrap())
                }
                _ => {
                    return Err(field_err(
                        source,
                        format!("merges[{i}] must be \"a b\" or [\"a\", \"b\"]"),
                    ))
                }
            };
            let look = |t: &str| {
                str_to_id.get(t).copied().ok_or_else(|| {
                    Error::tokenizer(
                        codes::MERGE_UNKNOWN,
                        format!("{source}: merges[{i}] ({a:?}, {b:?}) uses {t:?}, which is not in the vocab"),
                    )
                })
            };
            let (ia, ib) = (look(a)?, look(b)?);
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            Ok((ia, ib, look(joined)?))
        };
        let merges: Vec<(u32, u32, u32)> = {
            use rayon::prelude::*;
            let parts: Vec<Result<Vec<(u32, u32, u32)>>> = pool.install(|| {
                merges_v
                    .par_chunks(LOAD_CHUNK)
                    .enumerate()
                    .map(|(c, chunk)| {
                        let mut joined = String::new();
                        chunk
                            .iter()
                            .enumerate()
                            .map(|(k, m)| resolve(c * LOAD_CHUNK + k, m, &mut joined))
                            .collect()
                    })
                    .collect()
            });
            let mut merges = Vec::with_capacity(merges_v.len());
            for part in parts {
                merges.extend(part?);
            }
            merges
        };

        // Added tokens: an id may coincide with a vocab entry only if the content is the same.
        // HF numbers the added tokens that are not in the vocab itself, in the file's order
        // from the vocab's size, whatever ids the file gives them: a file whose ids say
        // otherwise would encode to other ids than HF's, so it is refused. `str_to_id` holds
        // the vocab and the added tokens met so far, so a token not in it is one HF numbers.
        let mut next_added = bpe_vocab_size as u64;
        for t in &added {
            if !str_to_id.contains_key(&t.content) {
                if u64::from(t.id) != next_added {
                    return Err(Error::tokenizer(
                        codes::DUPLICATE_ID,
                        format!(
                            "{source}: added token {:?} has id {}, but HF tokenizers gives it \
                             {next_added} (it numbers the added tokens that are not in the \
                             vocab in order, from the vocab's size, {bpe_vocab_size}); correct \
                             the id",
                            t.content, t.id
                        ),
                    ));
                }
                next_added += 1;
            }
            let id = t.id as usize;
            if id >= id_to_str.len() {
                id_to_str.resize(id + 1, None);
            }
            match &id_to_str[id] {
                Some(prev) if *prev != t.content => {
                    return Err(Error::tokenizer(
                        codes::DUPLICATE_ID,
                        format!(
                            "{source}: added token {:?} has id {id}, already used by {prev:?}",
                            t.content
                        ),
                    ))
                }
                _ => id_to_str[id] = Some(t.content.clone()),
            }
            if let Some(&other) = str_to_id.get(&t.content) {
                if other != t.id {
                    return Err(Error::tokenizer(
                        codes::DUPLICATE_ID,
                        format!(
                            "{source}: added token {:?} has id {}, but the vocab gives it {other}",
                            t.content, t.id
                        ),
                    ));
                }
            }
            str_to_id.insert(t.content.clone(), t.id);
        }

        // Byte tables.
        let mut byte_ids = [NO_ID; 256];
        for b in 0..=255u8 {
            let s = bytelevel::byte_to_char(b).to_string();
            if let Some(&id) = str_to_id.get(&s) {
                if (id as usize) < id_to_str.len() && vocab.contains_key(&s) {
                    byte_ids[b as usize] = id;
                }
            }
        }
        // Each token's bytes, and whether it is a byte-level string (every char one byte's
        // stand-in): only those can be whole pieces of text.
        let decoded: Vec<Option<(Box<[u8]>, bool)>> = {
            use rayon::prelude::*;
            pool.install(|| {
                id_to_str
                    .par_iter()
                    .with_min_len(LOAD_CHUNK)
                    .map(|s| {
                        s.as_ref().map(|s| match bytelevel::decode_str(s) {
                            Some(b) => (b.into_boxed_slice(), true),
                            None => (s.as_bytes().into(), false),
                        })
                    })
                    .collect()
            })
        };
        if merges.len() > crate::bpe::MAX_MERGES {
            return Err(Error::tokenizer(
                codes::DUPLICATE_ID,
                format!(
                    "{source}: {} merges, more than the {} aprx supports",
                    merges.len(),
                    crate::bpe::MAX_MERGES
                ),
            ));
        }
        let bpe = Bpe::new(byte_ids, MergeTable::new(&merges));
        // Whole-piece lookup: with `ignore_merges` it is the defined behaviour for every
        // entry; otherwise it is used only for tokens that BPE over their own bytes yields as
        // one token (checked here, once), so the shortcut never changes a result.
        // The vocabulary's byte-level entries of two bytes or more, in id order (an added
        // token sharing a vocab entry's id has its content, so the same bytes).
        let in_vocab = |id: usize, b: &[u8]| b.len() > 1 && vocab_ids.get(id) == Some(&true);
        let candidates: Vec<(u32, &[u8])> = decoded
            .iter()
            .enumerate()
            .filter_map(|(id, d)| match d {
                Some((b, true)) if in_vocab(id, b) => Some((id as u32, &b[..])),
                _ => None,
            })
            .collect();
        let direct: Vec<u32> = if ignore_merges {
            candidates.iter().map(|&(id, _)| id).collect()
        } else {
            // Merged in batches (`Bpe::merge_batch`, as the encoder merges its cold pieces):
            // this check was a fifth of a load's time one token at a time.
            use rayon::prelude::*;
            let kept: Vec<Vec<u32>> = pool.install(|| {
                candidates
                    .par_chunks(16)
                    .with_min_len(LOAD_CHUNK / 16)
                    .map(|batch| {
                        let (mut ids, mut ends) = (Vec::new(), Vec::new());
                        bpe.merge_batch(batch.len(), |k| batch[k].1, unk, &mut ids, &mut ends);
                        let mut start = 0;
                        let mut kept = Vec::with_capacity(batch.len());
                        for (&(id, _), end) in batch.iter().zip(ends) {
                            if ids[start..end] == [id] {
                                kept.push(id);
                            }
                            start = end;
                        }
                        kept
                    })
                    .collect()
            });
            kept.concat()
        };
        let bytes_of = |id: u32| &decoded[id as usize].as_ref().expect("a token").0[..];
        let whole_tokens = || {
            let mut bytes_to_id: HashMap<Box<[u8]>, u32, FxBuild> =
                HashMap::with_capacity_and_hasher(direct.len(), FxBuild::default());
            for &id in &direct {
                bytes_to_id.insert(bytes_of(id).into(), id);
            }
            bytes_to_id
        };
        // In id order: a BPE vocabulary's ids follow its merges, the most frequent first (and
        // single bytes before them), so the pieces met most often take the first slot they
        // probe, and the later, rarer ones are the ones pushed along.
        let mut one_token: Vec<(&[u8], u32)> = direct
            .iter()
            .map(|&id| (bytes_of(id), id))
            .chain((0..256).filter_map(|b| {
                let id = bpe.byte_ids[b];
                (id != NO_ID).then(|| (&ALL_BYTES[b..b + 1], id))
            }))
            .collect();
        one_token.sort_unstable_by_key(|&(_, id)| id);
        // The two tables are independent: built side by side.
        let (bytes_to_id, short_vocab) = pool
            .install(|| rayon::join(whole_tokens, || SharedTable::new(one_token.iter().copied())));
        let id_to_bytes: Vec<Option<Box<[u8]>>> =
            decoded.into_iter().map(|d| d.map(|(b, _)| b)).collect();

        let mut special = vec![false; id_to_str.len()];
        for t in added.iter().filter(|t| t.special) {
            special[t.id as usize] = true;
        }
        let pretok = PreTokenizer::new(&patterns, false)?;
        let raw: Vec<&AddedToken> = added.iter().filter(|t| !t.normalized).collect();
        let norm: Vec<&AddedToken> = added.iter().filter(|t| t.normalized).collect();
        let info = Info {
            model_type: mtype,
            bpe_vocab_size,
            merges_count: merges.len(),
            vocab_size: id_to_str.len(),
            normalizer,
            fast_pretokenizer: pretok.is_fast(),
            patterns,
            ignore_merges,
            fingerprint: fingerprint(
                &id_to_str,
                &merges,
                &added,
                normalizer,
                pretok.patterns(),
                ignore_merges,
                add_prefix_space,
            ),
            added_tokens: added.clone(),
        };
        Ok(Tokenizer {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            bpe,
            unk,
            normalizer,
            pretok,
            add_prefix_space,
            id_to_str,
            id_to_bytes,
            str_to_id,
            bytes_to_id,
            short_vocab,
            special,
            raw_added: matcher(&raw, Normalizer::None),
            norm_added: matcher(&norm, normalizer),
            info,
        })
    }

    pub fn info(&self) -> &Info {
        &self.info
    }

    pub fn vocab_size(&self) -> usize {
        self.id_to_str.len()
    }

    /// The bytes valid UTF-8 text can hold that this tokenizer has no token for, when it has
    /// no `unk_token` either: encoding drops them, as HF does (empty for every real
    /// vocabulary, which has all 256).
    pub fn bytes_dropped(&self) -> Vec<u8> {
        if self.unk.is_some() {
            return Vec::new();
        }
        (0..=255u8)
            .filter(|&b| !matches!(b, 0xC0 | 0xC1 | 0xF5..=0xFF))
            .filter(|&b| self.bpe.byte_ids[b as usize] == NO_ID)
            .collect()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.str_to_id.get(token).copied()
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.id_to_str.get(id as usize)?.as_deref()
    }

    /// Encodes `text`, appending ids to `out`. With `allow_added`, added tokens in the text
    /// become their ids (as HF `encode`); without, they are plain text. Fails only when a
    /// general-regex pre-tokenizer gives up (never with the built-in scanners).
    pub fn encode_into(&self, text: &str, allow_added: bool, out: &mut Vec<u32>) -> Result<()> {
        match (&self.raw_added, allow_added) {
            (Some(m), true) => m.encode(text, out, |t, out| self.encode_segment(t, true, out)),
            _ => self.encode_segment(text, allow_added, out),
        }
    }

    /// Encodes `text` into a new vector of exactly its length (see `encode_scratch`), so a
    /// batch of results costs one exact-size allocation each and no regrowth.
    pub fn encode(&self, text: &str, allow_added: bool) -> Result<Vec<u32>> {
        self.encode_scratch(text, allow_added, <[u32]>::to_vec)
    }

    /// Encodes `text` into a per-thread buffer reused across calls and returns `f` of its ids
    /// (for a caller that copies them where they go, with no vector of their own).
    pub fn encode_scratch<R>(
        &self,
        text: &str,
        allow_added: bool,
        f: impl FnOnce(&[u32]) -> R,
    ) -> Result<R> {
        thread_local! {
            static SCRATCH: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            let r = self.encode_into(text, allow_added, &mut s).map(|()| f(&s));
            if s.capacity() > 1 << 24 {
                // Do not keep a huge buffer alive after one huge text.
                *s = Vec::new();
            }
            r
        })
    }

    /// Appends the ids of each of `texts` to `out`, calling `end` with `out`'s length after
    /// each; the next text's first bytes are prefetched while one is encoded (short texts are
    /// allocations of their own, which the hardware prefetcher cannot guess).
    pub fn encode_all(
        &self,
        texts: &[&str],
        allow_added: bool,
        out: &mut Vec<u32>,
        mut end: impl FnMut(usize),
    ) -> Result<()> {
        for (k, t) in texts.iter().enumerate() {
            if let Some(next) = texts.get(k + 1) {
                cache::prefetch_text(next);
            }
            self.encode_into(t, allow_added, out)?;
            end(out.len());
        }
        Ok(())
    }

    /// Where one long text may be cut so that its parts encode independently to the same ids:
    /// right after a CR or LF whose next byte is ASCII and not whitespace. Every built-in
    /// scanner ends a piece there, NFC never composes across it (an ASCII char starts a new
    /// composition), and no added token can span it when none contains CR/LF. The part before
    /// the cut must also end in the same piece as in the whole text: the cl100k family ends a
    /// whitespace run at its last line break wherever the text goes on, but GPT-2's pattern
    /// gives a run's last char to what follows (`"\n\nx"`: `"\n"`, `"\n"`, `"x"`) and takes a
    /// run at the end of a text whole (`"\n\n"`), so there the line break must also follow an
    /// ASCII char that is not whitespace (a run of one). `None` when the tokenizer does not
    /// qualify (a general-regex pre-tokenizer, `add_prefix_space`, or added tokens with line
    /// breaks when they are matched). Cuts are about `part` bytes apart.
    pub fn cut_points(&self, text: &str, allow_added: bool, part: usize) -> Option<Vec<usize>> {
        // A token with a line break could span a cut; one that takes white space (a line
        // break among it) would take less of it at a cut.
        let added_cross_cuts = self
            .info
            .added_tokens
            .iter()
            .any(|t| t.content.contains(['\r', '\n']) || t.lstrip || t.rstrip);
        if !self.pretok.is_fast() || self.add_prefix_space || (allow_added && added_cross_cuts) {
            return None;
        }
        let b = text.as_bytes();
        let run_of_one = !self.pretok.ends_pieces_at_line_breaks();
        // A cut before `b[i]` (1 <= i < len), where `b[i - 1]` is CR or LF.
        let safe = |i: usize| {
            b.get(i).is_some_and(u8::is_ascii_graphic)
                && (!run_of_one || (i >= 2 && b[i - 2].is_ascii_graphic()))
        };
        let mut cuts = Vec::new();
        let mut from = part.max(1);
        while from < b.len() {
            match memchr::memchr2_iter(b'\n', b'\r', &b[from - 1..])
                .map(|k| from + k)
                .find(|&i| safe(i))
            {
                Some(cut) => {
                    cuts.push(cut);
                    from = cut + part;
                }
                None => break,
            }
        }
        Some(cuts)
    }

    /// `encode`, with one long text cut (see `cut_points`) and its parts encoded in parallel
    /// on `pool`; the same ids as `encode`.
    pub fn encode_parallel(
        &self,
        text: &str,
        allow_added: bool,
        pool: &rayon::ThreadPool,
    ) -> Result<Vec<u32>> {
        use rayon::prelude::*;
        const PART: usize = 1 << 20;
        let threads = pool.current_num_threads();
        let cuts = match self.cut_points(text, allow_added, PART.max(text.len() / (threads * 4))) {
            Some(c) if threads > 1 && !c.is_empty() => c,
            _ => return self.encode(text, allow_added),
        };
        let bounds: Vec<(usize, usize)> = std::iter::once(0)
            .chain(cuts.iter().copied())
            .zip(cuts.iter().copied().chain(std::iter::once(text.len())))
            .collect();
        let parts = pool.install(|| {
            bounds
                .par_iter()
                .map(|&(a, z)| self.encode(&text[a..z], allow_added))
                .collect::<Result<Vec<Vec<u32>>>>()
        })?;
        Ok(parts.concat())
    }

    fn encode_segment(&self, seg: &str, allow_added: bool, out: &mut Vec<u32>) -> Result<()> {
        if seg.is_empty() {
            return Ok(());
        }
        let norm = self.normalize(seg);
        match (&self.norm_added, allow_added) {
            (Some(m), true) => m.encode(&norm, out, |t, out| self.encode_plain(t, out)),
            _ => self.encode_plain(&norm, out),
        }
    }

    /// Applies the normalizer (NFC skipped for ASCII and quick-check-clean text).
    pub fn normalize<'a>(&self, s: &'a str) -> Cow<'a, str> {
        normalize_with(self.normalizer, s)
    }

    /// The normalizer from the tokenizer file.
    pub fn normalizer(&self) -> Normalizer {
        self.normalizer
    }

    /// Ordinary encoding (added tokens are text) with a given normalizer instead of the
    /// tokenizer's own: encode-corpus's `--normalization`.
    pub fn encode_ordinary_with(
        &self,
        text: &str,
        normalizer: Normalizer,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        self.encode_plain(&normalize_with(normalizer, text), out)
    }

    /// Pre-tokenizes and applies BPE to normalized text without added tokens.
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let prefixed;
        let text = if self.add_prefix_space && !text.starts_with(' ') {
            prefixed = format!(" {text}");
            prefixed.as_str()
        } else {
            text
        };
        cache::with_cache(self.uid, |c| {
            WORK.with_borrow_mut(|w| {
                let b = text.as_bytes();
                match self.pretok.single_scanner() {
                    Some(Scanner::Gpt2) => self.scan(b, c, w, out, pretok::next_gpt2),
                    Some(Scanner::Cl100k(1)) => self.scan_bitscan(b, c, w, out),
                    Some(Scanner::Cl100k(_)) => {
                        self.scan(b, c, w, out, |s, p| pretok::next_cl100k(s, p, 3))
                    }
                    None => {
                        let scratch = &mut w.scratch;
                        let r = self.pretok.for_each_piece(text, |piece| {
                            let p = piece.as_bytes();
                            let key = if (1..=SHORT).contains(&p.len()) {
                                ShortKey::new(p, 0, p.len())
                            } else {
                                ShortKey::EMPTY
                            };
                            if !self.piece(p, 0, p.len(), &key, c, scratch, out) {
                                self.bpe_cold(p, &key, c, scratch, out);
                            }
                        });
                        if scratch.capacity() > 1 << 16 {
                            *scratch = Vec::new(); // not kept after one huge piece
                        }
                        return r;
                    }
                }
                Ok(())
            })
        })
    }

    /// `scan` with the bit-parallel scanner (`bitscan`), the hot loop of a Qwen2 encode: run
    /// from a copy compiled for x86-64-v3 where the CPU has it.
    fn scan_bitscan(&self, text: &[u8], c: &mut PieceCache, w: &mut Work, out: &mut Vec<u32>) {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_x86_64_v3() {
            // SAFETY: the CPU has the features `scan_bitscan_v3` is compiled for (checked above).
            return unsafe { self.scan_bitscan_v3(text, c, w, out) };
        }
        let mut pieces = bitscan::Pieces::default();
        self.scan(text, c, w, out, |s, p| pieces.next_end(s, p))
    }

    crate::simd::x86_64_v3_fn! {
        /// `scan_bitscan` compiled for x86-64-v3 (BMI bit scans, AVX2 moves). Same ids. The
        /// scanner's closure is written here, not shared with the baseline copy, so that it is
        /// compiled with these features too and inlined.
        unsafe fn scan_bitscan_v3(
            &self,
            text: &[u8],
            c: &mut PieceCache,
            w: &mut Work,
            out: &mut Vec<u32>,
        ) {
            let mut pieces = bitscan::Pieces::default();
            self.scan(text, c, w, out, |s, p| pieces.next_end(s, p))
        }
    }

    /// Drives a hand-written scanner over `text`, encoding each piece. Two phases per chunk
    /// of pieces: the scanner finds the pieces and packs their keys, prefetching the slots
    /// they will probe; then the pieces are looked up in order, by which time their slots are
    /// in cache. Scanning and probing each run in a tight loop, and cache misses overlap.
    /// Pieces left to merge (see `piece`) wait in `ColdPieces` and are merged together (see
    /// `Bpe::merge_batch`), their ids then put in place.
    #[inline(always)]
    fn scan(
        &self,
        text: &[u8],
        c: &mut PieceCache,
        w: &mut Work,
        out: &mut Vec<u32>,
        mut next: impl FnMut(&[u8], usize) -> usize,
    ) {
        const CHUNK: usize = 64;
        let n = text.len();
        let mut ends = [0usize; CHUNK];
        let mut keys = [ShortKey::EMPTY; CHUNK];
        let Work { cold, scratch } = w;
        cold.clear(); // empty after every scan; cleared again in case one was cut short
        let mut pos = 0;
        while pos < n {
            let first = pos;
            out.reserve(2 * CHUNK);
            let mut k = 0;
            while k < CHUNK && pos < n {
                let end = next(text, pos);
                let len = end - pos;
                if len <= SHORT {
                    let key = ShortKey::new(text, pos, len);
                    self.short_vocab.prefetch(&key);
                    keys[k] = key;
                }
                ends[k] = end;
                pos = end;
                k += 1;
            }
            let mut start = first;
            for i in 0..k {
                let end = ends[i];
                if !self.piece(text, start, end, &keys[i], c, scratch, out) {
                    cold.defer(start, end, &keys[i], out.len());
                }
                start = end;
            }
            if cold.due(out.len()) {
                self.merge_cold(text, cold, c, scratch, out);
            }
        }
        if !cold.places.is_empty() {
            self.merge_cold(text, cold, c, scratch, out);
        }
    }

    /// Merges the waiting cold pieces, caches their ids and inserts them into `out` where
    /// the pieces were met.
    #[inline(never)]
    fn merge_cold(
        &self,
        text: &[u8],
        cold: &mut ColdPieces,
        c: &mut PieceCache,
        ids: &mut Vec<u32>,
        out: &mut Vec<u32>,
    ) {
        ids.clear();
        cold.ends.clear();
        let pieces = &cold.pieces;
        self.bpe.merge_batch(
            pieces.len(),
            |k| &text[pieces[k].0..pieces[k].1],
            self.unk,
            ids,
            &mut cold.ends,
        );
        let span = |k: usize| if k == 0 { 0 } else { cold.ends[k - 1] }..cold.ends[k];
        for (k, p) in pieces.iter().enumerate() {
            self.cache_merged(c, &text[p.0..p.1], &p.2, &ids[span(k)]);
        }
        // Open the gaps from the back, so every id moves once.
        let extra: usize = cold.places.iter().map(|&(_, k)| span(k).len()).sum();
        let mut src_end = out.len();
        out.resize(src_end + extra, 0);
        let mut dst_end = out.len();
        for &(at, k) in cold.places.iter().rev() {
            let kept = src_end - at;
            out.copy_within(at..src_end, dst_end - kept);
            dst_end -= kept;
            let piece_ids = &ids[span(k)];
            dst_end -= piece_ids.len();
            out[dst_end..dst_end + piece_ids.len()].copy_from_slice(piece_ids);
            src_end = at;
        }
        cold.clear();
    }

    /// Appends the ids of `text[start..end]` when the shared table or this thread's caches
    /// have them, or the piece is longer than `BATCHED_LONG`; false, with nothing appended,
    /// for a piece left to merge: a short one no thread has merged yet, or one of
    /// `SHORT + 1..=BATCHED_LONG` bytes this thread has not met and the vocabulary lacks.
    /// `key` is the piece's short key when it has 1..=SHORT bytes (anything otherwise).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn piece(
        &self,
        text: &[u8],
        start: usize,
        end: usize,
        key: &ShortKey,
        c: &mut PieceCache,
        scratch: &mut Vec<u32>,
        out: &mut Vec<u32>,
    ) -> bool {
        let n = end - start;
        if n <= SHORT {
            return self.short_vocab.get(key, out) || c.get(key, out);
        }
        let bytes = &text[start..end];
        if n <= MAX_CACHED_PIECE {
            if c.get_long(bytes, out) {
                return true;
            }
            if n <= BATCHED_LONG && !self.bytes_to_id.contains_key(bytes) {
                return false; // merged later, with the other waiting pieces
            }
            scratch.clear();
            self.encode_piece(bytes, scratch);
            out.extend_from_slice(scratch);
            c.insert_long(bytes, scratch);
        } else {
            self.encode_piece(bytes, out);
        }
        true
    }

    /// BPE of a piece left to merge (see `piece`), cached.
    #[inline(never)]
    fn bpe_cold(
        &self,
        bytes: &[u8],
        key: &ShortKey,
        c: &mut PieceCache,
        scratch: &mut Vec<u32>,
        out: &mut Vec<u32>,
    ) {
        scratch.clear();
        self.bpe.encode_piece(bytes, self.unk, scratch);
        out.extend_from_slice(scratch);
        self.cache_merged(c, bytes, key, scratch);
    }

    /// Caches a merged piece: a short one in the shared table while it has room, else in
    /// this thread's cache; a longer one in this thread's long-piece map.
    #[inline]
    fn cache_merged(&self, c: &mut PieceCache, bytes: &[u8], key: &ShortKey, ids: &[u32]) {
        if bytes.len() > SHORT {
            c.insert_long(bytes, ids);
        } else if !self.short_vocab.insert(key, ids) {
            c.insert_short(key, ids);
        }
    }

    #[inline]
    fn encode_piece(&self, bytes: &[u8], out: &mut Vec<u32>) {
        if let Some(&id) = self.bytes_to_id.get(bytes) {
            out.push(id);
            return;
        }
        self.bpe.encode_piece(bytes, self.unk, out);
    }

    /// The BPE model (byte ids, merge ranks and the merge loop), for benches and tools.
    pub fn bpe(&self) -> &Bpe {
        &self.bpe
    }

    /// The pre-tokenizer's pieces of `text` after normalization (no added-token handling).
    pub fn pre_tokenize(&self, text: &str) -> Result<Vec<String>> {
        let norm = self.normalize(text);
        Ok(self
            .pretok
            .pieces(&norm)?
            .into_iter()
            .map(String::from)
            .collect())
    }

    /// Decodes ids to bytes (invalid UTF-8 is the caller's to handle).
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.id_to_bytes.get(id as usize).and_then(|b| b.as_deref()) {
                Some(b) => {
                    if skip_special && self.is_special(id) {
                        continue;
                    }
                    out.extend_from_slice(b)
                }
                None => {
                    return Err(Error::new(
                        ErrorKind::Encode,
                        codes::UNKNOWN_ID,
                        format!(
                            "token id {id} is not in the vocabulary (size {})",
                            self.vocab_size()
                        ),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Decodes ids to text; invalid UTF-8 becomes U+FFFD, as HF's ByteLevel decoder does.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let b = self.decode_bytes(ids, skip_special)?;
        Ok(match String::from_utf8(b) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }
}

/// Every byte value, for one-byte slices of each.
const ALL_BYTES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

/// Short pieces met for the first time, waiting to be merged together: each distinct piece
/// once (`pieces`: start, end, key), and where each occurrence's ids go (`places`: position in
/// the output, index in `pieces`), in output order.
struct ColdPieces {
    pieces: Vec<(usize, usize, ShortKey)>,
    places: Vec<(usize, usize)>,
    /// `pieces` index + 1 by `ShortKey::slot` (0: none), so a piece repeated while it
    /// waits is merged once; a collision only costs merging a piece twice.
    by_slot: [u8; 64],
    ends: Vec<usize>,
}

/// A thread's buffers for `scan`: the waiting cold pieces and the merged ids. Kept from one
/// text to the next (in `WORK`), so their memory is taken once per thread, not grown again
/// for every text.
struct Work {
    cold: ColdPieces,
    scratch: Vec<u32>,
}

impl Work {
    const EMPTY: Work = Work {
        cold: ColdPieces::EMPTY,
        scratch: Vec::new(),
    };
}

thread_local! {
    static WORK: RefCell<Work> = const { RefCell::new(Work::EMPTY) };
}

impl ColdPieces {
    const EMPTY: ColdPieces = ColdPieces {
        pieces: Vec::new(),
        places: Vec::new(),
        by_slot: [0; 64],
        ends: Vec::new(),
    };

    /// Distinct pieces that make a batch worth merging.
    const BATCH: usize = 16;
    /// Ids after the first waiting place that make it worth merging now (every merge moves
    /// the ids after the first place once).
    const SPAN: usize = 4096;

    /// Defers the piece `start..end` met when `out` held `at` ids; `key` is its short key
    /// when it is short (a long piece, `SHORT + 1..=BATCHED_LONG` bytes, is not looked up
    /// among the waiting ones: it repeats rarely, and merging it twice gives the same ids).
    #[inline]
    fn defer(&mut self, start: usize, end: usize, key: &ShortKey, at: usize) {
        let k = if end - start > SHORT {
            self.pieces.push((start, end, ShortKey::EMPTY));
            self.pieces.len() - 1
        } else {
            let slot = key.slot(63);
            let known = self.by_slot[slot] as usize;
            if known != 0 && self.pieces[known - 1].2.same(key) {
                known - 1
            } else {
                self.pieces.push((start, end, *key));
                self.by_slot[slot] = self.pieces.len() as u8;
                self.pieces.len() - 1
            }
        };
        self.places.push((at, k));
    }

    /// Whether to merge now: at the end of a chunk, at most `BATCH + 63` distinct pieces
    /// wait, so `by_slot` indices fit a byte.
    #[inline]
    fn due(&self, out_len: usize) -> bool {
        self.pieces.len() >= Self::BATCH
            || self
                .places
                .first()
                .is_some_and(|p| out_len - p.0 >= Self::SPAN)
    }

    fn clear(&mut self) {
        self.pieces.clear();
        self.places.clear();
        self.by_slot = [0; 64];
    }
}

/// Applies `normalizer` (NFC only where the text may change, see `nfc_where_needed`).
pub fn normalize_with(normalizer: Normalizer, s: &str) -> Cow<'_, str> {
    match normalizer {
        Normalizer::None => Cow::Borrowed(s),
        Normalizer::Nfc => nfc_where_needed(s),
    }
}

/// Entries per task when a load's per-token work is spread over the pool.
const LOAD_CHUNK: usize = 4096;

/// Code points that HF `tokenizers`' NFC leaves inert but `unicode-normalization` does not.
///
/// HF normalizes with `unicode-normalization-alignments`, whose tables are Unicode 9.0: a
/// code point assigned later is, to it, a starter (combining class 0) that neither decomposes
/// nor composes. These are the code points to which our tables give a nonzero combining class,
/// a canonical decomposition or a part in a canonical composition while HF's give none, e.g.
/// U+1DFA (class 218, Unicode 14) or U+11935 U+11930 -> U+11938 (Unicode 13). Derived by
/// probing HF's NFC with every such code point of our tables; `tests/test_encoder.py` checks it.
#[rustfmt::skip]
const NFC_INERT_IN_HF: &[(u32, u32)] = &[
    (0x5C8, 0x5C9), (0x7FD, 0x7FD), (0x897, 0x89F), (0x8CA, 0x8D3), (0x9FE, 0x9FE), (0xC3C, 0xC3C),
    (0xD3B, 0xD3C), (0xEBA, 0xEBA), (0x1715, 0x1715), (0x1ABF, 0x1AF0), (0x1DF6, 0x1DFA),
    (0xA82C, 0xA82C), (0x105C9, 0x105C9), (0x105D2, 0x105D2), (0x105DA, 0x105DA),
    (0x105E4, 0x105E4), (0x10D24, 0x10D27), (0x10D69, 0x10D6D), (0x10EAB, 0x10EAC),
    (0x10ECB, 0x10ECF), (0x10EF0, 0x10EFB), (0x10EFD, 0x10EFF), (0x10F46, 0x10F50),
    (0x10F82, 0x10F85), (0x11070, 0x11070), (0x1133B, 0x1133B), (0x11382, 0x11385),
    (0x1138B, 0x1138B), (0x1138E, 0x1138E), (0x11390, 0x11391), (0x113B8, 0x113B8),
    (0x113BB, 0x113BB), (0x113C2, 0x113C2), (0x113C5, 0x113C5), (0x113C7, 0x113C9),
    (0x113CE, 0x113D0), (0x1145E, 0x1145E), (0x11839, 0x1183A), (0x11930, 0x11930),
    (0x11935, 0x11935), (0x11938, 0x11938), (0x1193D, 0x1193E), (0x11943, 0x11943),
    (0x119E0, 0x119E0), (0x11A34, 0x11A34), (0x11A47, 0x11A47), (0x11A99, 0x11A99),
    (0x11D42, 0x11D42), (0x11D44, 0x11D45), (0x11D97, 0x11D97), (0x11F41, 0x11F42),
    (0x1611E, 0x16129), (0x1612F, 0x1612F), (0x16D63, 0x16D63), (0x16D67, 0x16D6A),
    (0x16FF0, 0x16FF1), (0x1D127, 0x1D128), (0x1D250, 0x1D252), (0x1D25B, 0x1D25C),
    (0x1D25F, 0x1D25F), (0x1D280, 0x1D281), (0x1E08F, 0x1E08F), (0x1E130, 0x1E136),
    (0x1E2AE, 0x1E2AE), (0x1E2EC, 0x1E2EF), (0x1E4EC, 0x1E4EF), (0x1E5EE, 0x1E5EF),
    (0x1E6E3, 0x1E6E3), (0x1E6E6, 0x1E6E6), (0x1E6EE, 0x1E6EF), (0x1E6F5, 0x1E6F5),
];

fn is_nfc_inert_in_hf(c: char) -> bool {
    let c = c as u32;
    c >= NFC_INERT_IN_HF[0].0
        && NFC_INERT_IN_HF
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
}

/// Index of the first non-ASCII byte of `b` at or after `i` (`b.len()` if none), 32 bytes
/// at a time, then 8.
fn next_non_ascii(b: &[u8], mut i: usize) -> usize {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let w = |k: usize| u64::from_le_bytes(b[k..k + 8].try_into().unwrap());
    while i + 32 <= b.len() && (w(i) | w(i + 8) | w(i + 16) | w(i + 24)) & HIGH == 0 {
        i += 32;
    }
    while i + 8 <= b.len() {
        let high = w(i) & HIGH;
        if high != 0 {
            return i + high.trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&x| x >= 0x80)
        .map_or(b.len(), |k| i + k)
}

/// `nfc_as_hf(s)`, in one pass that normalizes only where the text may change: each run of
/// non-ASCII chars that fails the quick check, with the ASCII char before it. Between two
/// ASCII chars NFC cannot change anything or carry anything across (both are starters, no
/// composition joins ASCII chars, and no char composes with a following ASCII one), so the
/// parts normalize on their own; a run passing the quick check holds nothing that composes
/// with the char before it. The text comes back borrowed when every run passes, which is when
/// the whole text passes the quick check (an ASCII char resets its state); quick-check "Yes"
/// under our newer tables implies HF's older NFC leaves the text alone too (its combining
/// classes and compositions are a subset of ours). A source file with one combining accent
/// costs a few chars of NFC, not the whole file.
fn nfc_where_needed(s: &str) -> Cow<'_, str> {
    use unicode_normalization::{is_nfc_quick, IsNormalized};
    let b = s.as_bytes();
    let mut out: Option<String> = None;
    let (mut done, mut i) = (0, 0);
    loop {
        let run = next_non_ascii(b, i);
        if run == b.len() {
            break;
        }
        let end = b[run..]
            .iter()
            .position(|&x| x < 0x80)
            .map_or(b.len(), |k| run + k);
        if is_nfc_quick(s[run..end].chars()) != IsNormalized::Yes {
            let o = out.get_or_insert_with(|| String::with_capacity(s.len() + 8));
            let from = run.saturating_sub(1).max(done);
            o.push_str(&s[done..from]);
            o.push_str(&nfc_as_hf(&s[from..end]));
            done = end;
        }
        i = end;
    }
    match out {
        None => Cow::Borrowed(s),
        Some(mut o) => {
            o.push_str(&s[done..]);
            Cow::Owned(o)
        }
    }
}

/// NFC exactly as HF computes it: the code points HF treats as inert starters split the text,
/// and each part between them is normalized on its own (which is what a starter that never
/// reorders, decomposes or composes amounts to).
fn nfc_as_hf(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let mut out = String::with_capacity(s.len() + 8);
    let mut last = 0;
    for (i, c) in s.char_indices() {
        if is_nfc_inert_in_hf(c) {
            out.extend(s[last..i].nfc());
            out.push(c);
            last = i + c.len_utf8();
        }
    }
    out.extend(s[last..].nfc());
    out
}

/// sha256 over the canonical content of a tokenizer.
fn fingerprint(
    id_to_str: &[Option<String>],
    merges: &[(u32, u32, u32)],
    added: &[AddedToken],
    normalizer: Normalizer,
    patterns: &[String],
    ignore_merges: bool,
    add_prefix_space: bool,
) -> String {
    let mut h = Sha256::new();
    h.update(b"aprx-tokenizer-v1\0");
    h.update(format!("{normalizer:?}\0{ignore_merges}\0{add_prefix_space}\0").as_bytes());
    for p in patterns {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    for (id, s) in id_to_str.iter().enumerate() {
        if let Some(s) = s {
            h.update((id as u64).to_le_bytes());
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
    }
    for &(a, b, m) in merges {
        h.update(a.to_le_bytes());
        h.update(b.to_le_bytes());
        h.update(m.to_le_bytes());
    }
    for t in added {
        h.update(t.id.to_le_bytes());
        // (the options in the high bits: a token without them hashes as before they existed)
        h.update([t.special as u8, t.normalized as u8 | t.options() << 1]);
        h.update((t.content.len() as u64).to_le_bytes());
        h.update(t.content.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretok::QWEN2_PATTERN;
    use serde_json::json;

    /// A small byte-level tokenizer.json: all 256 bytes, a few merges, one added token.
    pub fn small_json() -> Value {
        let mut vocab = Map::new();
        for b in 0..=255u8 {
            vocab.insert(bytelevel::byte_to_char(b).to_string(), json!(b as u32));
        }
        let merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "Ġ")];
        let mut next = 256;
        for (a, b) in merges {
            vocab.insert(format!("{a}{b}"), json!(next));
            next += 1;
        }
        json!({
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
            ]},
            "decoder": {"type": "ByteLevel"},
            "added_tokens": [{"id": next, "content": "<|endoftext|>", "special": true, "normalized": false}],
            "model": {"type": "BPE", "vocab": vocab,
                      "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()}
        })
    }

    #[test]
    fn encodes_merges_and_added_tokens() {
        let t = Tokenizer::from_value(&small_json(), "small").unwrap();
        assert_eq!(t.vocab_size(), 262);
        let the = t.token_to_id("Ġthe").unwrap();
        let ids = t.encode(" the<|endoftext|>in", true).unwrap();
        assert_eq!(ids, [the, 261, t.token_to_id("in").unwrap()]);
        let ordinary = t.encode(" the<|endoftext|>", false).unwrap();
        assert_eq!(ordinary[0], the);
        assert!(!ordinary.contains(&261));
        assert_eq!(t.decode(&ordinary, false).unwrap(), " the<|endoftext|>");
        assert_eq!(t.decode(&ids, true).unwrap(), " thein");
        // NFC: e + combining acute == é
        assert_eq!(
            t.encode("e\u{301}", false).unwrap(),
            t.encode("\u{e9}", false).unwrap()
        );
    }

    #[test]
    fn rejects_bad_files_with_codes() {
        let mut v = small_json();
        v["model"]["type"] = json!("WordPiece");
        let e = Tokenizer::from_value(&v, "x.json").err().unwrap();
        assert_eq!(e.code, codes::MODEL_TYPE);
        assert!(e.message.contains("WordPiece"));

        let mut v = small_json();
        v["model"]["merges"] = json!([["Ġ", "zz"]]);
        assert_eq!(
            Tokenizer::from_value(&v, "x").err().unwrap().code,
            codes::MERGE_UNKNOWN
        );

        let mut v = small_json();
        v["model"]["vocab"]["dup"] = json!(5);
        assert_eq!(
            Tokenizer::from_value(&v, "x").err().unwrap().code,
            codes::DUPLICATE_ID
        );

        let mut v = small_json();
        v["model"]["vocab"]["far"] = json!(3_000_000);
        let e = Tokenizer::from_value(&v, "x").err().unwrap();
        assert_eq!(e.code, codes::DUPLICATE_ID);
        assert!(e.message.contains("3000000"), "{}", e.message);

        let mut v = small_json();
        v["normalizer"] = json!({"type": "Lowercase"});
        let e = Tokenizer::from_value(&v, "x").err().unwrap();
        assert_eq!(e.code, codes::UNSUPPORTED);
        assert!(e.message.contains("Lowercase"));

        let e = Tokenizer::from_json_str("{\"model\": ", "bad.json")
            .err()
            .unwrap();
        assert_eq!(e.code, codes::JSON);
        assert!(e.message.contains("line 1"));
    }

    /// An added token's id has the vocabulary's cap (`MAX_ID`): one far above it is
    /// APRX-T105 naming the token and the id, not a table of that many entries.
    #[test]
    fn added_token_ids_are_capped_like_vocab_ids() {
        let max = crate::bpe::MAX_ID as u64;
        for id in [
            max + 1,
            100_000_000,
            u32::MAX as u64 - 1,
            u32::MAX as u64,
            1 << 40,
        ] {
            let mut v = small_json();
            v["added_tokens"][0]["id"] = json!(id);
            let e = Tokenizer::from_value(&v, "x.json").err().unwrap();
            assert_eq!(e.code, codes::DUPLICATE_ID, "{id}: {}", e.message);
            assert!(
                e.message.contains("\"<|endoftext|>\"")
                    && e.message.contains(&format!("id {id}"))
                    && e.message.contains(&max.to_string()),
                "{}",
                e.message
            );
        }
        // The cap itself passes the cap, but HF would number the token 261 (after the
        // vocab's 261 entries): refused for that, since its ids would not be HF's.
        let mut v = small_json();
        v["added_tokens"][0]["id"] = json!(max);
        let Err(e) = Tokenizer::from_value(&v, "x.json") else {
            panic!("an added id HF would renumber loaded")
        };
        assert_eq!(e.code, codes::DUPLICATE_ID);
        assert!(
            e.message.contains("HF tokenizers gives it 261"),
            "{}",
            e.message
        );
        // Not a non-negative integer: a field error.
        for bad in [json!(-1), json!(1.5), json!("261"), json!(1e8)] {
            let mut v = small_json();
            v["added_tokens"][0]["id"] = bad.clone();
            let e = Tokenizer::from_value(&v, "x.json").err().unwrap();
            assert_eq!(e.code, codes::FIELD, "{bad}: {}", e.message);
            assert!(
                e.message
                    .contains("added_tokens[0].id must be a non-negative integer"),
                "{}",
                e.message
            );
        }
    }

    /// A present field of the wrong type is APRX-T102 naming its path and value, never its
    /// default; a missing one, or JSON null, is the default.
    #[test]
    fn wrongly_typed_fields_are_errors_not_defaults() {
        let split = "pre_tokenizer.pretokenizers[0]";
        let bytelevel = "pre_tokenizer.pretokenizers[1]";
        let cases: Vec<(String, Value, &str)> = vec![
            (
                "added_tokens[0].special".into(),
                json!("true"),
                "a boolean, not \"true\"",
            ),
            (
                "added_tokens[0].normalized".into(),
                json!(0),
                "a boolean, not 0",
            ),
            ("added_tokens[0].lstrip".into(), json!("true"), "a boolean"),
            ("added_tokens[0].rstrip".into(), json!(1), "a boolean"),
            (
                "added_tokens[0].single_word".into(),
                json!([]),
                "a boolean, not []",
            ),
            (
                "added_tokens[0].content".into(),
                json!(5),
                "a string, not 5",
            ),
            ("model.unk_token".into(), json!(5), "a string, not 5"),
            ("model.byte_fallback".into(), json!("true"), "a boolean"),
            ("model.ignore_merges".into(), json!("true"), "a boolean"),
            ("model.fuse_unk".into(), json!("false"), "a boolean"),
            ("model.type".into(), json!(5), "a string, not 5"),
            ("model.dropout".into(), json!("0.1"), "a number"),
            (
                "model.continuing_subword_prefix".into(),
                json!(5),
                "a string",
            ),
            ("model.end_of_word_suffix".into(), json!(false), "a string"),
            (format!("{split}.invert"), json!("true"), "a boolean"),
            (format!("{split}.behavior"), json!(5), "a string"),
            (format!("{split}.type"), json!(5), "a string"),
            (
                format!("{bytelevel}.use_regex"),
                json!("false"),
                "a boolean",
            ),
            (
                format!("{bytelevel}.add_prefix_space"),
                json!(0),
                "a boolean",
            ),
            ("normalizer.type".into(), json!(5), "a string"),
            ("decoder.type".into(), json!(true), "a string, not true"),
        ];
        for (path, bad, want) in cases {
            let mut v = small_json();
            set_path(&mut v, &path, bad.clone());
            let e = Tokenizer::from_value(&v, "x.json")
                .err()
                .unwrap_or_else(|| panic!("{path} = {bad} loaded"));
            assert_eq!(e.code, codes::FIELD, "{path}: {}", e.message);
            assert!(
                e.message.contains(&format!("{path} must be {want}")),
                "{path}: {}",
                e.message
            );
        }
        // Absent or null: the default, and the file loads as before.
        let base = Tokenizer::from_value(&small_json(), "x.json").unwrap();
        for path in [
            "added_tokens[0].normalized",
            "added_tokens[0].lstrip",
            "model.unk_token",
            "model.byte_fallback",
            "model.ignore_merges",
            "model.fuse_unk",
            "model.dropout",
            "model.continuing_subword_prefix",
            "pre_tokenizer.pretokenizers[0].invert",
            "pre_tokenizer.pretokenizers[1].add_prefix_space",
        ] {
            for absent in [false, true] {
                let mut v = small_json();
                if absent {
                    remove_path(&mut v, path);
                } else {
                    set_path(&mut v, path, Value::Null);
                }
                let t = Tokenizer::from_value(&v, "x.json")
                    .unwrap_or_else(|e| panic!("{path} absent={absent}: {}", e.message));
                assert_eq!(t.info().fingerprint, base.info().fingerprint, "{path}");
            }
        }
        // `special` absent or null is false: the token is kept by skip-special decoding.
        for special in [None, Some(Value::Null)] {
            let mut v = small_json();
            match special {
                None => remove_path(&mut v, "added_tokens[0].special"),
                Some(x) => set_path(&mut v, "added_tokens[0].special", x),
            }
            let t = Tokenizer::from_value(&v, "x.json").unwrap();
            assert!(!t.info().added_tokens[0].special);
            assert_eq!(t.decode(&[261], true).unwrap(), "<|endoftext|>");
        }
        // The right types still mean what they say.
        let mut v = small_json();
        v["model"]["byte_fallback"] = json!(true);
        let e = Tokenizer::from_value(&v, "x.json").err().unwrap();
        assert_eq!(e.code, codes::UNSUPPORTED);
        let mut v = small_json();
        v["model"]["ignore_merges"] = json!(true);
        assert!(
            Tokenizer::from_value(&v, "x.json")
                .unwrap()
                .info()
                .ignore_merges
        );
        // A long wrong value is shown cut short.
        let mut v = small_json();
        v["model"]["unk_token"] = json!(vec![7; 10_000]);
        let e = Tokenizer::from_value(&v, "x.json").err().unwrap();
        assert_eq!(e.code, codes::FIELD);
        assert!(e.message.len() < 200, "{}", e.message);
    }

    /// The value at a dotted path such as `added_tokens[0].special` or
    /// `pre_tokenizer.pretokenizers[1].use_regex`: its parent and last key.
    fn parent_at<'v>(v: &'v mut Value, path: &str) -> (&'v mut Value, String) {
        let mut keys: Vec<&str> = path.split('.').collect();
        let last = keys.pop().unwrap().to_string();
        let mut at = v;
        for k in keys {
            at = match k.split_once('[') {
                Some((name, idx)) => {
                    let i: usize = idx.trim_end_matches(']').parse().unwrap();
                    &mut at[name][i]
                }
                None => &mut at[k],
            };
        }
        (at, last)
    }

    fn set_path(v: &mut Value, path: &str, x: Value) {
        let (parent, key) = parent_at(v, path);
        parent[key.as_str()] = x;
    }

    fn remove_path(v: &mut Value, path: &str) {
        let (parent, key) = parent_at(v, path);
        parent.as_object_mut().unwrap().remove(&key);
    }

    /// `small_json` with `n` random merges over the tokens of `alphabet` (ids from 256 on, the
    /// added token after them).
    fn random_merges_json(
        rnd: &mut impl FnMut(usize) -> usize,
        alphabet: &[u8],
        n: usize,
    ) -> Value {
        let mut vocab = Map::new();
        for b in 0..=255u8 {
            vocab.insert(bytelevel::byte_to_char(b).to_string(), json!(b as u32));
        }
        let mut tokens: Vec<String> = alphabet
            .iter()
            .map(|&b| bytelevel::byte_to_char(b).to_string())
            .collect();
        let mut merges = Vec::new();
        while merges.len() < n {
            let a = tokens[rnd(tokens.len())].clone();
            let b = tokens[rnd(tokens.len())].clone();
            let ab = format!("{a}{b}");
            if vocab.contains_key(&ab) || ab.chars().skip(1).any(|c| c == 'Ġ') {
                continue; // Qwen2 pieces have spaces only in front
            }
            vocab.insert(ab.clone(), json!(256 + merges.len()));
            merges.push(json!([a, b]));
            tokens.push(ab);
        }
        let mut j = small_json();
        j["model"]["vocab"] = Value::Object(vocab);
        j["model"]["merges"] = Value::Array(merges);
        j["added_tokens"][0]["id"] = json!(256 + n);
        j
    }

    /// Both copies of the bit-parallel scan loop (baseline, and x86-64-v3 where this CPU
    /// has it) give the ids of the piece-by-piece encode, on random code-like text and a
    /// vocabulary of 400 random merges (so pieces go through the cold batch, with both lane
    /// sizes, and through the caches). Each copy runs on a fresh tokenizer.
    #[test]
    fn both_copies_of_the_scan_loop_encode_alike() {
        let mut rnd = crate::test_rng::draws(0x0dd_c0ffee_u64);
        let alphabet = b"ab ";
        let j = random_merges_json(&mut rnd, alphabet, 400);
        let text: String = (0..20_000)
            .map(|_| match rnd(40) {
                0 => '\n',
                1 => '(',
                2 => '7',
                3 => '\'',
                4 => 'é',
                5 | 6 => ' ',
                _ => alphabet[rnd(2)] as char, // letter runs of all lengths, some over 32
            })
            .collect();
        let want: Vec<u32> = {
            let t = Tokenizer::from_value(&j, "merges").unwrap();
            let mut ids = Vec::new();
            for p in t.pre_tokenize(&text).unwrap() {
                t.bpe().encode_piece(p.as_bytes(), None, &mut ids);
            }
            ids
        };
        let run = |v3: bool| {
            let t = Tokenizer::from_value(&j, "merges").unwrap();
            let b = text.as_bytes();
            cache::with_cache(t.uid, |c| {
                let (mut w, mut out) = (Work::EMPTY, Vec::new());
                if v3 {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: only asked for where the CPU has the features.
                    unsafe {
                        t.scan_bitscan_v3(b, c, &mut w, &mut out)
                    }
                } else {
                    let mut pieces = bitscan::Pieces::default();
                    t.scan(b, c, &mut w, &mut out, |s, p| pieces.next_end(s, p));
                }
                out
            })
        };
        let check = |got: Vec<u32>, copy: &str| {
            let at = got.iter().zip(&want).position(|(a, b)| a != b);
            assert!(
                got.len() == want.len() && at.is_none(),
                "{copy}: {} ids for {}, first difference at {at:?}",
                got.len(),
                want.len()
            );
        };
        check(run(false), "baseline");
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_x86_64_v3() {
            check(run(true), "x86-64-v3");
        }
    }

    /// The whole-piece shortcut holds exactly the vocabulary's byte-level entries of two bytes
    /// or more that BPE over their own bytes gives as that one token (checked at load in
    /// batches on the pool; here one by one), and the shared table has every one of them and
    /// every byte.
    #[test]
    fn whole_token_pieces_are_those_bpe_gives_as_one_token() {
        let mut rnd = crate::test_rng::draws(0x5eed_10ad_u64);
        let j = random_merges_json(&mut rnd, b"abc ", 6000);
        let t = Tokenizer::from_value(&j, "merges").unwrap();
        let mut want = HashMap::new();
        for (tok, id) in j["model"]["vocab"].as_object().unwrap() {
            let b = bytelevel::decode_str(tok).unwrap();
            let mut ids = Vec::new();
            t.bpe().encode_piece(&b, None, &mut ids);
            let id = id.as_u64().unwrap() as u32;
            if b.len() > 1 && ids == [id] {
                want.insert(b.clone(), id);
            }
            if ids == [id] && b.len() <= SHORT {
                let mut got = Vec::new();
                assert!(t.short_vocab.get(&ShortKey::new(&b, 0, b.len()), &mut got));
                assert_eq!(got, [id]);
            }
        }
        assert!(
            want.len() > 20 && want.len() < 6000,
            "{} whole tokens",
            want.len()
        );
        let got: HashMap<Vec<u8>, u32> = t
            .bytes_to_id
            .iter()
            .map(|(b, &id)| (b.to_vec(), id))
            .collect();
        assert!(
            got == want,
            "{} whole tokens, {} expected",
            got.len(),
            want.len()
        );
    }

    /// Merges are resolved in parallel chunks; the error is still the first bad merge's.
    #[test]
    fn the_first_bad_merge_is_the_one_reported() {
        let mut v = small_json();
        let mut merges = vec![json!(["Ġ", "t"]); 3 * LOAD_CHUNK];
        merges[LOAD_CHUNK + 7] = json!("Ġ t x");
        merges[2 * LOAD_CHUNK + 1] = json!(["Ġ", "zz"]);
        v["model"]["merges"] = json!(merges.clone());
        let e = Tokenizer::from_value(&v, "x").err().unwrap();
        assert!(
            e.message.contains(&format!("merges[{}]", LOAD_CHUNK + 7)),
            "{}",
            e.message
        );
        merges[LOAD_CHUNK + 7] = json!(["Ġ", "t"]);
        v["model"]["merges"] = json!(merges);
        let e = Tokenizer::from_value(&v, "x").err().unwrap();
        assert_eq!(e.code, codes::MERGE_UNKNOWN);
        assert!(
            e.message
                .contains(&format!("merges[{}]", 2 * LOAD_CHUNK + 1)),
            "{}",
            e.message
        );
    }

    #[test]
    fn fingerprint_is_content_based() {
        let a = Tokenizer::from_value(&small_json(), "a").unwrap();
        let b = Tokenizer::from_value(&small_json(), "b").unwrap();
        assert_eq!(a.info().fingerprint, b.info().fingerprint);
        let mut v = small_json();
        v["model"]["merges"] = json!([["Ġ", "t"]]);
        let c = Tokenizer::from_value(&v, "c").unwrap();
        assert_ne!(a.info().fingerprint, c.info().fingerprint);
    }

    #[test]
    fn normalized_added_tokens_match_by_normalized_content() {
        let mut v = small_json();
        v["added_tokens"] = json!([
            {"id": 261, "content": "e\u{301}x", "special": false, "normalized": true},
            {"id": 262, "content": "o\u{308}z", "special": false, "normalized": false},
        ]);
        let t = Tokenizer::from_value(&v, "small").unwrap();
        // As HF: the normalized token's content is NFC'd, then matched in NFC'd text.
        assert_eq!(t.encode("e\u{301}x", true).unwrap(), [261]);
        assert_eq!(
            t.encode("a\u{e9}x", true).unwrap(),
            [t.token_to_id("a").unwrap(), 261]
        );
        // A raw token matches the raw text only.
        assert_eq!(t.encode("o\u{308}z", true).unwrap(), [262]);
        assert_ne!(t.encode("\u{f6}z", true).unwrap(), [262]);
        assert_eq!(t.decode(&[261], false).unwrap(), "e\u{301}x");
    }

    #[test]
    fn cut_points_split_only_where_parts_encode_alike() {
        use crate::pretok::{CL100K_PATTERN, GPT2_PATTERN};
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for pattern in [QWEN2_PATTERN, CL100K_PATTERN, GPT2_PATTERN] {
            // Merges of line-break runs, so that a run taken as one piece where the whole
            // text has several shows in the ids (GPT-2's pattern at the end of a part).
            let mut j = small_json();
            j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = json!(pattern);
            let vocab = j["model"]["vocab"].as_object_mut().unwrap();
            for (k, piece) in ["ĊĊ", "čĊ", "ĠĊ"].into_iter().enumerate() {
                vocab.insert(piece.to_string(), json!(261 + k));
            }
            j["added_tokens"][0]["id"] = json!(264);
            let merges = j["model"]["merges"].as_array_mut().unwrap();
            merges.extend([json!(["Ċ", "Ċ"]), json!(["č", "Ċ"]), json!(["Ġ", "Ċ"])]);
            let tok = Tokenizer::from_value(&j, "x").unwrap();
            let mut text = String::new();
            for i in 0..3000 {
                text.push_str(&format!(
                    "def f{i}(x):\n    return x  \r\n\n  \n{i}e\u{301} <|endoftext|>\n\n{i}\r\nx\n\u{3000}\ny\n"
                ));
            }
            let cuts = tok.cut_points(&text, false, 1000).unwrap();
            assert!(cuts.len() > 10, "{pattern}");
            for &c in &cuts {
                let b = text.as_bytes();
                assert!(matches!(b[c - 1], b'\n' | b'\r') && b[c].is_ascii_graphic());
            }
            for allow in [false, true] {
                let whole = tok.encode(&text, allow).unwrap();
                assert!(
                    tok.encode_parallel(&text, allow, &pool).unwrap() == whole,
                    "{pattern}"
                );
                let mut cat = Vec::new();
                let mut last = 0;
                for &c in cuts.iter().chain(std::iter::once(&text.len())) {
                    cat.extend(tok.encode(&text[last..c], allow).unwrap());
                    last = c;
                }
                assert!(cat == whole, "{pattern}");
            }
            // Cut anywhere after a line break, the GPT-2 pattern's parts would differ: the
            // test's text can tell a wrong cut.
            if pattern == GPT2_PATTERN {
                let at = text.find(">\n\n").unwrap() + 3;
                let mut cat = tok.encode(&text[..at], false).unwrap();
                cat.extend(tok.encode(&text[at..], false).unwrap());
                assert!(cat != tok.encode(&text, false).unwrap());
            }
        }
    }

    #[test]
    fn segmented_nfc_quick_check_equals_the_whole_text_check() {
        use unicode_normalization::{is_nfc_quick, IsNormalized};
        let samples = [
            "plain ascii text, long enough to take the eight-byte path",
            "caf\u{e9} \u{a9} na\u{ef}ve",
            "e\u{301} after ascii",
            "\u{e9}\u{301} after a precomposed char",
            "\u{5d0}\u{5b8}\u{5b7} hebrew points \u{316}\u{301}\u{316}",
            "\u{1100}\u{1161} hangul jamo, \u{ac00} syllable",
            "\u{4e2d}\u{6587} cjk \u{1f642} emoji \u{212b} angstrom sign",
            "x = '\u{e9}' # \u{301}\u{302}",
            "\u{300}",
        ];
        for s in samples {
            for cut in 0..s.len() {
                if !s.is_char_boundary(cut) {
                    continue;
                }
                let t = &s[cut..];
                assert_eq!(
                    matches!(nfc_where_needed(t), Cow::Borrowed(_)),
                    is_nfc_quick(t.chars()) == IsNormalized::Yes,
                    "{t:?}"
                );
            }
        }
    }

    #[test]
    fn nfc_of_the_changing_runs_equals_nfc_of_the_whole_text() {
        // Random text over ASCII, precomposed and combining chars, Hangul jamo and chars HF
        // treats as inert: normalizing only the runs that may change gives the same text.
        let alphabet = [
            "a",
            "e",
            "x",
            " ",
            "\n",
            "'",
            "\u{e9}",
            "\u{301}",
            "\u{316}",
            "\u{302}",
            "\u{1100}",
            "\u{1161}",
            "\u{11a8}",
            "\u{ac00}",
            "\u{212b}",
            "\u{1DFA}",
            "\u{11935}",
            "\u{11930}",
            "\u{113C2}",
            "\u{30A}",
            "\u{4e2d}",
            "\u{5d0}",
            "\u{5b8}",
            "\u{5b7}",
            "\u{f900}",
        ];
        let mut rnd = crate::test_rng::draws(0x9e37_79b9_7f4a_7c15u64);
        for _ in 0..20000 {
            let n = rnd(24);
            let t: String = (0..n).map(|_| alphabet[rnd(alphabet.len())]).collect();
            assert_eq!(nfc_where_needed(&t), nfc_as_hf(&t), "{t:?}");
            assert_eq!(normalize_with(Normalizer::Nfc, &t), nfc_as_hf(&t), "{t:?}");
        }
    }

    #[test]
    fn nfc_matches_hf_unicode_9_tables() {
        let nfc = |s: &str| normalize_with(Normalizer::Nfc, s).into_owned();
        // Unchanged behaviour for code points HF knows.
        assert_eq!(nfc("e\u{301}"), "\u{e9}");
        assert_eq!(nfc("x\u{301}\u{316}"), "x\u{316}\u{301}");
        assert_eq!(nfc("\u{1100}\u{1161}"), "\u{ac00}");
        assert_eq!(nfc("\u{1109A}"), "\u{1109A}");
        assert_eq!(nfc("\u{11099}\u{110BA}"), "\u{1109A}");
        // U+1DFA (class 218, Unicode 14) and U+1DF9 (class 220, Unicode 10) are starters to
        // HF: no reordering, and a following mark cannot reach an earlier base.
        assert_eq!(nfc("x\u{301}\u{1DFA}"), "x\u{301}\u{1DFA}");
        assert_eq!(nfc("x\u{301}\u{1DF9}\u{316}"), "x\u{301}\u{1DF9}\u{316}");
        assert_eq!(nfc("e\u{1DFA}\u{301}"), "e\u{1DFA}\u{301}");
        assert_eq!(nfc("e\u{301}\u{1DFA}e\u{301}"), "\u{e9}\u{1DFA}\u{e9}");
        // Compositions added after Unicode 9 do not happen in HF.
        assert_eq!(nfc("\u{11935}\u{11930}"), "\u{11935}\u{11930}");
        assert_eq!(nfc("\u{113C2}\u{113C2}"), "\u{113C2}\u{113C2}");
        assert_eq!(nfc("\u{105D2}\u{307}"), "\u{105D2}\u{307}");
        assert_eq!(nfc("\u{113C2}a\u{30A}"), "\u{113C2}\u{E5}");
        assert!(is_nfc_inert_in_hf('\u{5C8}') && is_nfc_inert_in_hf('\u{1E6F5}'));
        assert!(!is_nfc_inert_in_hf('\u{5C7}') && !is_nfc_inert_in_hf('\u{301}'));
        assert!(NFC_INERT_IN_HF.windows(2).all(|w| w[0].1 < w[1].0));
    }
}
