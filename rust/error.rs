//! One error type for the whole core. Each error has a stable code (see ARCHITECTURE.md) and a
//! kind that decides which Python exception it becomes in the bindings.

use std::fmt;

/// What kind of failure this is; the bindings map each kind to one aprx exception class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A tokenizer file is malformed, unsupported or inconsistent (`TokenizerError`).
    Tokenizer,
    /// Text that cannot be encoded (`EncodeError`).
    Encode,
    /// A corpus record or a shard directory is invalid (`CorpusError`).
    Corpus,
    /// Reading or writing a file failed (`AprxIOError`, an `OSError`).
    Io,
    /// The run was interrupted (Ctrl-C); becomes `KeyboardInterrupt`.
    Interrupted,
    /// A bug: a thread of aprx's own failed (`AprxError`, code `APRX-X902`). Never a panic
    /// across the FFI boundary.
    Internal,
}

/// An aprx error: a kind, a stable code such as `APRX-T101`, and a message naming the file,
/// line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Error {
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn tokenizer(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Tokenizer, code, message)
    }

    pub fn corpus(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corpus, code, message)
    }

    pub fn io(path: &std::path::Path, what: &str, err: &std::io::Error) -> Self {
        Self::new(
            ErrorKind::Io,
            codes::IO,
            format!("{}: cannot {what}: {err}", path.display()),
        )
    }

    pub fn interrupted() -> Self {
        Self::new(ErrorKind::Interrupted, codes::INTERRUPTED, "interrupted")
    }

    /// The error for a panic caught from `what` (a thread's name, a library's call): an
    /// internal failure, with the panic's message.
    pub fn from_panic(what: &str, payload: Box<dyn std::any::Any + Send>) -> Self {
        Self::new(
            ErrorKind::Internal,
            codes::INTERNAL,
            format!(
                "{what} failed: {}; this is a bug in aprx, please report it",
                panic_message(&payload)
            ),
        )
    }
}

/// The message a panic was raised with.
pub fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

/// Stable error codes. Never renumber: scripts and the README's troubleshooting table use them.
pub mod codes {
    /// Tokenizer file is not valid JSON.
    pub const JSON: &str = "APRX-T101";
    /// A required field is missing or has the wrong type.
    pub const FIELD: &str = "APRX-T102";
    /// The model is not BPE (Unigram, WordPiece, WordLevel).
    pub const MODEL_TYPE: &str = "APRX-T103";
    /// A merge references a token that is not in the vocabulary.
    pub const MERGE_UNKNOWN: &str = "APRX-T104";
    /// Two tokens share one id, or ids are out of range.
    pub const DUPLICATE_ID: &str = "APRX-T105";
    /// A normalizer, pre-tokenizer, decoder or model option that aprx does not support.
    pub const UNSUPPORTED: &str = "APRX-T106";
    /// A pre-tokenizer regex that does not compile.
    pub const REGEX: &str = "APRX-T107";
    /// A tiktoken rank file line is malformed.
    pub const RANK_FILE: &str = "APRX-T108";
    /// A token id given to decode / id_to_token is outside the vocabulary.
    pub const UNKNOWN_ID: &str = "APRX-E101";
    /// Text that cannot be encoded (lone surrogates from Python).
    pub const BAD_TEXT: &str = "APRX-E102";
    /// The general-regex pre-tokenizer gave up (backtracking limit) on this text.
    pub const REGEX_LIMIT: &str = "APRX-E103";
    /// A thread count out of range (`num_threads`, `RAYON_NUM_THREADS`).
    pub const THREADS: &str = "APRX-E104";
    /// A corpus line is not valid JSON.
    pub const CORPUS_JSON: &str = "APRX-C201";
    /// A corpus line or file is not valid UTF-8.
    pub const CORPUS_UTF8: &str = "APRX-C202";
    /// The content field is missing from a JSON record.
    pub const CORPUS_FIELD_MISSING: &str = "APRX-C203";
    /// The content field is not a string.
    pub const CORPUS_FIELD_TYPE: &str = "APRX-C204";
    /// A compressed input is corrupt or truncated.
    pub const CORPUS_COMPRESSION: &str = "APRX-C205";
    /// The output directory holds another run's shards.
    pub const OUTPUT_EXISTS: &str = "APRX-C206";
    /// `--resume` found state that does not belong to this run.
    pub const RESUME_MISMATCH: &str = "APRX-C207";
    /// Shards disagree with their manifest.
    pub const SHARD_MISMATCH: &str = "APRX-C208";
    /// No EOS token can be determined for an EOS policy that needs one.
    pub const NO_EOS: &str = "APRX-C209";
    /// An input path does not exist, or an option value is invalid.
    pub const INPUT: &str = "APRX-C210";
    /// Any file read/write failure.
    pub const IO: &str = "APRX-C290";
    /// Ctrl-C.
    pub const INTERRUPTED: &str = "APRX-X901";
    /// A thread of aprx's own failed (a bug; please report it with the message).
    pub const INTERNAL: &str = "APRX-X902";
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `catch_unwind` for a call whose panic is an expected failure that the caller turns into an
/// error of its own (a library that panics on corrupt input): the panic is not also printed.
/// Other panics print as they would (the hook installed here defers to the one before it).
pub fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                before(info)
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    r
}
