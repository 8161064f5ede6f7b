//! PyO3 bindings: thin wrappers over the core. Arguments become owned/borrowed Rust values,
//! heavy work runs with the GIL released, ids leave as numpy uint32 arrays without copies,
//! and core errors become the exception family of `aprx.errors`.

use crate::error::{Error, ErrorKind};
use crate::tokenizer::{Normalizer, Tokenizer};
use crate::{parallel, tiktoken};
use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use std::path::PathBuf;
use std::sync::Arc;

/// Converts a core error into the matching `aprx.errors` exception.
pub(crate) fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let class = match e.kind {
        ErrorKind::Tokenizer => "TokenizerError",
        ErrorKind::Encode => "EncodeError",
        ErrorKind::Corpus => "CorpusError",
        ErrorKind::Io => "AprxIOError",
        ErrorKind::Interrupted => return PyKeyboardInterrupt::new_err(e.message),
        ErrorKind::Internal => "AprxError",
    };
    match py
        .import("aprx.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.call1((e.message.clone(), e.code)))
    {
        Ok(inst) => PyErr::from_value(inst),
        Err(err) => err,
    }
}

/// The error for a string with no UTF-8 form.
fn not_unicode(py: Python<'_>) -> PyErr {
    to_py(
        py,
        Error::new(
            ErrorKind::Encode,
            crate::error::codes::BAD_TEXT,
            "text is not valid Unicode (it holds a lone surrogate, e.g. from \
             surrogateescape decoding); encode it to UTF-8 with errors='replace' first",
        ),
    )
}

/// The UTF-8 of `s` by CPython's own conversion (kept with the string for its life).
fn text_of<'a>(s: &'a Bound<'_, PyString>) -> PyResult<&'a str> {
    s.to_str().map_err(|_| not_unicode(s.py()))
}

/// Where CPython keeps the parts of a compact `str` (PEP 393), by byte offset from the object:
/// the characters of an ASCII string, those of any other, and the UTF-8 CPython may have made
/// of the latter (its pointer, null until made, and its length). The length in code points and
/// the state bits are at `STR_LENGTH` and `STR_STATE` in every version.
#[derive(Clone, Copy)]
struct StrLayout {
    ascii_data: usize,
    data: usize,
    utf8_length: usize,
    utf8: usize,
}

const STR_LENGTH: usize = 16;
const STR_STATE: usize = 32;

/// The layout of this interpreter's `str` objects, when it is one whose layout is known
/// (CPython 3.10 to 3.14 with the GIL, 64-bit little-endian) and probes confirm it: strings of
/// every kind made here read back as what they were made from, and the UTF-8 pointer and
/// length are where CPython puts them once it makes them. `None` anywhere else, and the
/// bindings then take every string's UTF-8 from CPython's conversion.
fn str_layout(py: Python<'_>) -> Option<StrLayout> {
    static LAYOUT: pyo3::sync::PyOnceLock<Option<StrLayout>> = pyo3::sync::PyOnceLock::new();
    *LAYOUT.get_or_init(py, || {
        if !(cfg!(target_pointer_width = "64") && cfg!(target_endian = "little")) {
            return None;
        }
        let v = py.version_info();
        let layout = match (v.major, v.minor) {
            // PyASCIIObject with its `wstr` pointer (48 bytes), PyCompactUnicodeObject 72.
            (3, 10 | 11) => StrLayout {
                ascii_data: 48,
                data: 72,
                utf8_length: 48,
                utf8: 56,
            },
            // No `wstr` from 3.12: 40 and 56.
            (3, 12..=14) => StrLayout {
                ascii_data: 40,
                data: 56,
                utf8_length: 40,
                utf8: 48,
            },
            _ => return None,
        };
        let free_threaded = py
            .import("sysconfig")
            .and_then(|m| m.call_method1("get_config_var", ("Py_GIL_DISABLED",)))
            .and_then(|v| v.is_truthy())
            .unwrap_or(true);
        (!free_threaded && probe_layout(py, &layout)).then_some(layout)
    })
}

/// Whether strings of each kind made here read back through `layout` as they were made.
fn probe_layout(py: Python<'_>, layout: &StrLayout) -> bool {
    let long = "x".repeat(70) + "é" + &"y".repeat(40) + "€😀";
    let probes: [(&str, u32, bool); 6] = [
        (
            "plain ASCII text, long enough for a block or two of it",
            1,
            true,
        ),
        ("café, ÿ", 1, false),
        ("€ 2,50 ✓", 2, false),
        ("emoji 😀 in text", 4, false),
        (&long, 4, false),
        ("", 1, true),
    ];
    let arena = Utf8Arena::default();
    for (text, kind, ascii) in probes {
        let s = PyString::new(py, text);
        let p = s.as_ptr() as *const u8;
        // SAFETY: `s` is a live str object, at least as large as the PyASCIIObject header
        // these offsets lie in, in every CPython 3.x.
        let (len, state) = unsafe {
            (
                (p.add(STR_LENGTH) as *const isize).read(),
                (p.add(STR_STATE) as *const u32).read(),
            )
        };
        if len != text.chars().count() as isize
            || (state >> 2) & 7 != kind
            || (state >> 5) & 1 != 1
            || ((state >> 6) & 1 == 1) != ascii
        {
            return false;
        }
        match read_str(&s, layout, &arena) {
            Some(Ok(got)) if got == text => {}
            _ => return false,
        }
        if !ascii {
            // Once CPython makes the UTF-8, it is found where the layout says.
            let Ok(made) = s.to_str() else { return false };
            // SAFETY: as above; a non-ASCII compact str has the PyCompactUnicodeObject header.
            let (n, at) = unsafe {
                (
                    (p.add(layout.utf8_length) as *const isize).read(),
                    (p.add(layout.utf8) as *const *const u8).read(),
                )
            };
            if n != made.len() as isize || at != made.as_ptr() {
                return false;
            }
        }
    }
    true
}

/// UTF-8 made by `read_str` for the strings of one call, kept until the arena is dropped.
#[derive(Default)]
struct Utf8Arena {
    made: std::cell::RefCell<Vec<Vec<u8>>>,
}

impl Utf8Arena {
    fn push(&self, units: crate::utf8::Units<'_>) -> Result<&str, crate::utf8::NotUnicode> {
        let mut b = Vec::new();
        crate::utf8::push_utf8(units, &mut b)?;
        b.shrink_to_fit();
        // SAFETY: `push_utf8` wrote UTF-8. The bytes are in the vector's heap buffer, which
        // does not move when the vector is moved into `made`, and `made` only grows: the
        // buffer lives, unchanged, as long as the arena.
        let s: *const str = unsafe { std::str::from_utf8_unchecked(&b) };
        self.made.borrow_mut().push(b);
        // SAFETY: see above.
        Ok(unsafe { &*s })
    }
}

/// `s`'s UTF-8 read in place through `layout`: an ASCII string's own characters, or the UTF-8
/// CPython has made, or else the characters transcoded into `arena` (`Err` when a code point
/// has no UTF-8). `None` for a string that is not compact (a str subclass's instance).
fn read_str<'a>(
    s: &'a Bound<'_, PyString>,
    layout: &StrLayout,
    arena: &'a Utf8Arena,
) -> Option<Result<&'a str, crate::utf8::NotUnicode>> {
    use crate::utf8::Units;
    let p = s.as_ptr() as *const u8;
    // SAFETY: `s` is a live str and `layout` this interpreter's (probed): the header fields
    // are at these offsets, and a compact string's `len` characters of `kind` bytes each
    // follow its header, aligned for their width (the object is at least 8-aligned and the
    // headers are multiples of 8; checked below). A str never changes once other references
    // to it exist, and `s` is one; the characters live as long as `s`.
    unsafe {
        let state = (p.add(STR_STATE) as *const u32).read();
        if (state >> 5) & 1 == 0 {
            return None;
        }
        let len = (p.add(STR_LENGTH) as *const isize).read() as usize;
        if (state >> 6) & 1 == 1 {
            let b = std::slice::from_raw_parts(p.add(layout.ascii_data), len);
            return Some(Ok(std::str::from_utf8_unchecked(b)));
        }
        let made = (p.add(layout.utf8) as *const *const u8).read();
        if !made.is_null() {
            let n = (p.add(layout.utf8_length) as *const isize).read() as usize;
            return Some(Ok(std::str::from_utf8_unchecked(
                std::slice::from_raw_parts(made, n),
            )));
        }
        let data = p.add(layout.data);
        if !(data as usize).is_multiple_of(4) {
            return None; // never with CPython's allocators; not read unaligned if it were
        }
        let units = match (state >> 2) & 7 {
            1 => Units::Latin1(std::slice::from_raw_parts(data, len)),
            2 => Units::Ucs2(std::slice::from_raw_parts(data as *const u16, len)),
            4 => Units::Ucs4(std::slice::from_raw_parts(data as *const u32, len)),
            _ => return None,
        };
        Some(arena.push(units))
    }
}

/// The UTF-8 of `s`, for as long as `s` and `arena`: read in place where this interpreter's
/// string layout is known (`read_str`), CPython's conversion otherwise. CPython converts a
/// character at a time and keeps the result with the string; `read_str` narrows ASCII runs
/// 32 characters at a time and its copies go when the call ends.
fn utf8_of<'a>(s: &'a Bound<'_, PyString>, arena: &'a Utf8Arena) -> PyResult<&'a str> {
    match str_layout(s.py()).and_then(|l| read_str(s, &l, arena)) {
        Some(r) => r.map_err(|_| not_unicode(s.py())),
        None => text_of(s),
    }
}

/// The pool for a call's `num_threads` (None or 0: the default); a negative count is an
/// error of its own (`codes::THREADS`), as is one over `parallel::MAX_THREADS`.
fn threads_pool(py: Python<'_>, num_threads: Option<i64>) -> PyResult<Arc<rayon::ThreadPool>> {
    let threads = match num_threads {
        Some(n) if n < 0 => {
            return Err(to_py(
                py,
                Error::new(
                    ErrorKind::Encode,
                    crate::error::codes::THREADS,
                    format!("num_threads is {n}: give a count of threads, or 0 or None for all"),
                ),
            ))
        }
        n => n.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    parallel::pool(threads).map_err(|e| to_py(py, e))
}

/// `x` as a token id: None for an int that is no id (negative, or past u32: numpy's uint64
/// too), the TypeError of `operator.index` for a value that is not an int.
fn id_of(x: &Bound<'_, PyAny>) -> PyResult<Option<u32>> {
    if let Ok(id) = x.extract::<u32>() {
        return Ok(Some(id));
    }
    x.py().import("operator")?.getattr("index")?.call1((x,))?;
    Ok(None)
}

/// Ids to decode: a numpy uint32 array (no copy when contiguous) or any sequence of ints:
/// of u32 ids (the fast path), else taken one by one (`id_of`) to tell an int that is no id
/// from a value that is not an int.
#[derive(FromPyObject)]
enum IdsArg<'py> {
    Array(PyReadonlyArray1<'py, u32>),
    Ids(Vec<u32>),
    Seq(Vec<Bound<'py, PyAny>>),
}

/// Loads numpy's C API if it is not loaded yet. rust-numpy loads it on first use and panics if
/// that fails: numpy missing or broken, or a signal handler raising (as Ctrl-C's does) in the
/// Python code the load runs (numpy's import, its version check). Here numpy is imported
/// first, so a failure there is the import's own exception, and the load's panic, should a
/// signal come during it, becomes an exception too (the load is tried again on the next call).
fn ensure_numpy(py: Python<'_>) -> PyResult<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static LOADED: AtomicBool = AtomicBool::new(false);
    if LOADED.load(Ordering::Acquire) {
        return Ok(());
    }
    py.import("numpy")?;
    let load = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        PyArray1::<u32>::zeros(py, 0, false);
    }));
    if let Err(panic) = load {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("numpy's C API could not be loaded");
        return Err(if why.contains("KeyboardInterrupt") {
            PyKeyboardInterrupt::new_err(why.to_string())
        } else {
            pyo3::exceptions::PyImportError::new_err(why.to_string())
        });
    }
    LOADED.store(true, Ordering::Release);
    Ok(())
}

/// Texts per GIL-released chunk of a batch: Ctrl-C is checked between chunks.
const CHUNK_BYTES: usize = 32 << 20;

/// Texts longer than this are cut and encoded in parallel by `encode` / `encode_ordinary`.
const PARALLEL_TEXT_BYTES: usize = 4 << 20;

/// Most text per buffer of `encode_batch`'s results (their arrays are views of it, so one
/// array kept keeps at most about this much of the others' ids alive).
const SEGMENT_BYTES: usize = 256 << 10;
/// Least text per buffer, when a small batch is cut so that every thread gets some.
const MIN_SEGMENT_BYTES: usize = 4 << 10;

/// The rule that cuts a sequence of texts into runs: a run closes once its texts reach `limit`
/// bytes, each text counted with 16 more for its own cost (a longer text is a run alone).
struct RunCutter {
    limit: usize,
    bytes: usize,
}

impl RunCutter {
    fn new(limit: usize) -> Self {
        RunCutter { limit, bytes: 0 }
    }

    /// Adds a text of `len` bytes to the open run; true when that closes it.
    fn add(&mut self, len: usize) -> bool {
        self.bytes += len + 16;
        let full = self.bytes >= self.limit;
        if full {
            self.bytes = 0;
        }
        full
    }
}

/// Consecutive ranges of texts of lengths `lens`, cut by `RunCutter` (one empty range for no
/// texts).
fn runs(lens: impl IntoIterator<Item = usize>, limit: usize) -> Vec<std::ops::Range<usize>> {
    let (mut out, mut cutter, mut start, mut n) = (Vec::new(), RunCutter::new(limit), 0, 0);
    for len in lens {
        n += 1;
        if cutter.add(len) {
            out.push(start..n);
            start = n;
        }
    }
    if start < n || n == 0 {
        out.push(start..n);
    }
    out
}

/// Cuts `texts` into chunks (`runs` of `CHUNK_BYTES`, counted in chars), hands each to `f`
/// with its texts' lengths in chars, and checks for Ctrl-C between chunks.
fn each_chunk<'py>(
    py: Python<'py>,
    texts: &[Bound<'py, PyString>],
    mut f: impl FnMut(&[Bound<'py, PyString>], &[usize]) -> PyResult<()>,
) -> PyResult<()> {
    let chars = texts
        .iter()
        .map(|t| t.len())
        .collect::<PyResult<Vec<usize>>>()?;
    for range in runs(chars.iter().copied(), CHUNK_BYTES) {
        f(&texts[range.clone()], &chars[range])?;
        py.check_signals()?;
    }
    Ok(())
}

/// The UTF-8 of each of `texts` (see `utf8_of`), for as long as `arena`.
fn utf8_all<'a>(texts: &'a [Bound<'_, PyString>], arena: &'a Utf8Arena) -> PyResult<Vec<&'a str>> {
    texts.iter().map(|t| utf8_of(t, arena)).collect()
}

/// Ids of a run of texts, one after another, and where each text's end.
type Run = (Vec<u32>, Vec<usize>);

/// Encodes `texts` one after another into one buffer: a run's ids and each text's end.
fn encode_run(tok: &Tokenizer, texts: &[&str], allow_added: bool) -> crate::Result<Run> {
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    let mut ids = Vec::with_capacity(bytes / 2 + 16);
    let mut ends = Vec::with_capacity(texts.len());
    tok.encode_all(texts, allow_added, &mut ids, |n| ends.push(n))?;
    ids.shrink_to_fit();
    Ok((ids, ends))
}

/// What a job of `pipeline` answers: its run, or the panic it caught.
type JobResult = std::thread::Result<crate::Result<Run>>;

/// The jobs `pipeline` has handed to the pool and their results, by job. Waits for every
/// outstanding job when dropped, so that none outlives the texts it borrows, even when the
/// pipeline stops early (a text that is not valid Unicode, Ctrl-C).
struct Jobs {
    rx: std::sync::mpsc::Receiver<(usize, JobResult)>,
    results: Vec<Option<JobResult>>,
    waiting: usize,
}

impl Jobs {
    /// Waits until job `k` has answered (every job, with `k` = `usize::MAX`).
    fn wait_for(&mut self, k: usize) {
        while self.waiting > 0 && self.results.get(k).is_none_or(|r| r.is_none()) {
            // Every job sends exactly once (it catches its own panic), so this returns.
            let Ok((j, r)) = self.rx.recv() else { break };
            self.results[j] = Some(r);
            self.waiting -= 1;
        }
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        self.wait_for(usize::MAX);
    }
}

/// `encode_batch_flat`'s result: all ids, and offsets into them per text.
type FlatIds<'py> = (Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<u64>>);

/// A byte-level BPE tokenizer, exact against HF `tokenizers`. Immutable and thread-safe.
#[pyclass(frozen, name = "Tokenizer", module = "aprx._aprx")]
pub struct PyTokenizer {
    inner: Arc<Tokenizer>,
}

#[pymethods]
impl PyTokenizer {
    /// Loads a `tokenizer.json` or an imported tokenizer directory.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let t = py
            .detach(|| Tokenizer::from_path(&path))
            .map_err(|e| to_py(py, e))?;
        Ok(PyTokenizer { inner: Arc::new(t) })
    }

    /// Parses the text of a `tokenizer.json`.
    #[staticmethod]
    #[pyo3(signature = (json, source = "<string>"))]
    fn from_str(py: Python<'_>, json: &str, source: &str) -> PyResult<Self> {
        let t = py
            .detach(|| Tokenizer::from_json_str(json, source))
            .map_err(|e| to_py(py, e))?;
        Ok(PyTokenizer { inner: Arc::new(t) })
    }

    /// Token ids of `text`; added tokens in the text are recognised, as HF `encode` does
    /// (without adding BOS/EOS).
    fn encode<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyString>,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        self.encode_impl(py, text, true)
    }

    /// Token ids of `text`, treating added-token strings such as `<|endoftext|>` as text.
    fn encode_ordinary<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyString>,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        self.encode_impl(py, text, false)
    }

    /// Encodes many texts in parallel (GIL released); one uint32 array per text, each a view
    /// of a buffer shared with other texts' arrays (no allocation per text), which stays alive
    /// as long as any of them does: on several threads one buffer for the call, on one thread
    /// one per run of about `SEGMENT_BYTES` of text (a longer text gets a buffer of its own).
    /// Copy an array (`.copy()`) to keep it without the rest.
    #[pyo3(signature = (texts, ordinary = false, num_threads = None))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<Bound<'py, PyString>>,
        ordinary: bool,
        num_threads: Option<i64>,
    ) -> PyResult<Bound<'py, PyList>> {
        ensure_numpy(py)?;
        let pool = threads_pool(py, num_threads)?;
        if pool.current_num_threads() > 1 {
            // As `encode_batch_flat`: each run appended to one buffer as it comes back, while
            // later runs are still encoding, and every text's array a view of that buffer. A
            // run's own buffer for its arrays (as below) is fresh memory for each run, whose
            // first touch on two threads at once cost 6% (118.5 against 111.9 M tokens/s,
            // `benches/compare.py --threads 1,2 --peers none --no-corpus --repeat 5`).
            let (flat, offsets) = self.encode_flat(py, &texts, ordinary, &pool)?;
            let mut arrays = Vec::with_capacity(texts.len());
            let ends = offsets[1..].iter().map(|&e| e as usize);
            push_views(py, flat, ends, &mut arrays)?;
            return PyList::new(py, arrays);
        }
        let mut arrays: Vec<Bound<'py, PyArray1<u32>>> = Vec::with_capacity(texts.len());
        self.encode_texts(py, &texts, ordinary, &pool, |(ids, ends)| {
            if let [_] = ends[..] {
                arrays.push(ids.into_pyarray(py));
                return Ok(());
            }
            push_views(py, ids, ends.into_iter(), &mut arrays)
        })?;
        PyList::new(py, arrays)
    }

    /// Encodes many texts in parallel into one flat uint32 array plus uint64 offsets
    /// (`ids[offsets[i]:offsets[i+1]]` is text i): no per-text Python objects at all.
    #[pyo3(signature = (texts, ordinary = true, num_threads = None))]
    fn encode_batch_flat<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<Bound<'py, PyString>>,
        ordinary: bool,
        num_threads: Option<i64>,
    ) -> PyResult<FlatIds<'py>> {
        ensure_numpy(py)?;
        let pool = threads_pool(py, num_threads)?;
        if pool.current_num_threads() == 1 {
            // One thread: every text's ids appended straight to the one result, on this
            // thread (no per-text vectors, no second copy).
            let chars = texts.iter().map(|t| t.len()).sum::<PyResult<usize>>()?;
            let mut flat: Vec<u32> = Vec::with_capacity(chars / 4 + 16);
            let mut offsets: Vec<u64> = Vec::with_capacity(texts.len() + 1);
            offsets.push(0);
            each_chunk(py, &texts, |chunk, _| {
                let arena = Utf8Arena::default();
                let strs = utf8_all(chunk, &arena)?;
                py.detach(|| {
                    self.inner
                        .encode_all(&strs, !ordinary, &mut flat, |n| offsets.push(n as u64))
                })
                .map_err(|e| to_py(py, e))
            })?;
            return Ok((flat.into_pyarray(py), offsets.into_pyarray(py)));
        }
        let (flat, offsets) = self.encode_flat(py, &texts, ordinary, &pool)?;
        Ok((flat.into_pyarray(py), offsets.into_pyarray(py)))
    }

    /// Text of `ids` (invalid UTF-8 becomes U+FFFD, as in HF's ByteLevel decoder).
    #[pyo3(signature = (ids, skip_special_tokens = false))]
    fn decode(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        skip_special_tokens: bool,
    ) -> PyResult<String> {
        let v = ids_vec(py, ids)?;
        self.inner
            .decode(&v, skip_special_tokens)
            .map_err(|e| to_py(py, e))
    }

    /// Raw bytes of `ids`.
    #[pyo3(signature = (ids, skip_special_tokens = false))]
    fn decode_bytes<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
        skip_special_tokens: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let v = ids_vec(py, ids)?;
        let b = self
            .inner
            .decode_bytes(&v, skip_special_tokens)
            .map_err(|e| to_py(py, e))?;
        Ok(PyBytes::new(py, &b))
    }

    /// The pre-tokenizer's pieces of `text` (after normalization, without added tokens).
    fn pre_tokenize(&self, py: Python<'_>, text: &Bound<'_, PyString>) -> PyResult<Vec<String>> {
        self.inner
            .pre_tokenize(utf8_of(text, &Utf8Arena::default())?)
            .map_err(|e| to_py(py, e))
    }

    /// Number of ids (1 + the largest id, added tokens included): the embedding rows needed.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// sha256 of the tokenizer's content; equal for a tokenizer.json and its imported copy.
    #[getter]
    fn fingerprint(&self) -> String {
        self.inner.info().fingerprint.clone()
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token of `id`; None for an id outside the vocabulary (a negative one included).
    fn id_to_token(&self, id: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        Ok(id_of(id)?
            .and_then(|id| self.inner.id_to_token(id))
            .map(String::from))
    }

    /// Facts about the tokenizer: model type, counts, normalizer, patterns, added tokens.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let i = self.inner.info();
        let d = PyDict::new(py);
        d.set_item("model_type", &i.model_type)?;
        d.set_item("bpe_vocab_size", i.bpe_vocab_size)?;
        d.set_item("merges_count", i.merges_count)?;
        d.set_item("vocab_size", i.vocab_size)?;
        d.set_item(
            "normalizer",
            match i.normalizer {
                Normalizer::Nfc => Some("NFC"),
                Normalizer::None => None,
            },
        )?;
        d.set_item("patterns", &i.patterns)?;
        d.set_item("ignore_merges", i.ignore_merges)?;
        d.set_item("fast_pretokenizer", i.fast_pretokenizer)?;
        d.set_item("fingerprint", &i.fingerprint)?;
        let added = PyList::empty(py);
        for t in &i.added_tokens {
            let a = PyDict::new(py);
            a.set_item("id", t.id)?;
            a.set_item("content", &t.content)?;
            a.set_item("special", t.special)?;
            a.set_item("normalized", t.normalized)?;
            a.set_item("lstrip", t.lstrip)?;
            a.set_item("rstrip", t.rstrip)?;
            a.set_item("single_word", t.single_word)?;
            added.append(a)?;
        }
        d.set_item("added_tokens", added)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let i = self.inner.info();
        format!(
            "Tokenizer(vocab_size={}, merges={}, added_tokens={}, normalizer={:?})",
            i.vocab_size,
            i.merges_count,
            i.added_tokens.len(),
            i.normalizer
        )
    }
}

/// Appends to `arrays` one array per text whose ids end at each of `ends` in `ids` (the first
/// starting at 0): views of `ids`, moved into one numpy array that is their base object.
fn push_views<'py>(
    py: Python<'py>,
    ids: Vec<u32>,
    ends: impl Iterator<Item = usize>,
    arrays: &mut Vec<Bound<'py, PyArray1<u32>>>,
) -> PyResult<()> {
    let base = ids.into_pyarray(py);
    // SAFETY: `base` was just made here; nothing else borrows it.
    let data = unsafe { base.as_slice() }?;
    let mut start = 0;
    for end in ends {
        let view = numpy::ndarray::ArrayView1::from(&data[start..end]);
        // SAFETY: the view's memory is `base`'s buffer, which `base` owns and never
        // reallocates; `base` is made the view's base object, so it outlives the view.
        arrays.push(unsafe { PyArray1::borrow_from_array(&view, base.clone().into_any()) });
        start = end;
    }
    Ok(())
}

impl PyTokenizer {
    /// The texts' ids on several threads, one after another in one buffer, and where each
    /// text's starts and ends (`offsets[i]..offsets[i + 1]`). Each run is appended as it comes
    /// back, while later runs are still encoding (a large buffer grows by remapping, not
    /// copying), and the workers' own buffers are freed and reused.
    fn encode_flat<'py>(
        &self,
        py: Python<'py>,
        texts: &[Bound<'py, PyString>],
        ordinary: bool,
        pool: &rayon::ThreadPool,
    ) -> PyResult<(Vec<u32>, Vec<u64>)> {
        let chars = texts.iter().map(|t| t.len()).sum::<PyResult<usize>>()?;
        let mut flat: Vec<u32> = Vec::with_capacity(chars / 4 + 16);
        let mut offsets: Vec<u64> = Vec::with_capacity(texts.len() + 1);
        offsets.push(0);
        self.encode_texts(py, texts, ordinary, pool, |(ids, ends)| {
            let base = flat.len();
            offsets.extend(ends.iter().map(|&e| (base + e) as u64));
            flat.extend_from_slice(&ids);
            Ok(())
        })?;
        Ok((flat, offsets))
    }

    /// Encodes `texts` in runs (see `runs`; up to `SEGMENT_BYTES` of text, about a quarter
    /// of a thread's share), chunk by chunk (`CHUNK_BYTES`, counted in chars; Ctrl-C is checked
    /// between chunks), and hands each run to `done`, in order: its ids in one buffer, with
    /// the end of each text's ids in it.
    ///
    /// On several threads this thread takes the texts' UTF-8 (`utf8_of`; a non-ASCII string is
    /// transcoded, with the GIL held) while the pool already encodes the runs converted, so
    /// the conversion is not a serial phase ahead of the encoding; and a text
    /// longer than two runs is cut at safe line breaks (`Tokenizer::cut_points`, the same ids)
    /// into parts of about a run, encoded in parallel like runs and joined into one buffer of
    /// its own, so one long document does not keep the other threads waiting.
    fn encode_texts<'py>(
        &self,
        py: Python<'py>,
        texts: &[Bound<'py, PyString>],
        ordinary: bool,
        pool: &rayon::ThreadPool,
        mut done: impl FnMut(Run) -> PyResult<()>,
    ) -> PyResult<()> {
        let threads = pool.current_num_threads();
        each_chunk(py, texts, |chunk, chars| {
            let total: usize = chars.iter().map(|c| c + 16).sum();
            let limit = (total / (4 * threads)).clamp(MIN_SEGMENT_BYTES, SEGMENT_BYTES);
            if threads > 1 {
                return self.pipeline(py, chunk, limit, ordinary, pool, &mut done);
            }
            let arena = Utf8Arena::default();
            let strs = utf8_all(chunk, &arena)?;
            let tok = &self.inner;
            let runs = py
                .detach(|| {
                    runs(strs.iter().map(|t| t.len()), limit)
                        .into_iter()
                        .map(|r| encode_run(tok, &strs[r], !ordinary))
                        .collect::<crate::Result<Vec<Run>>>()
                })
                .map_err(|e| to_py(py, e))?;
            runs.into_iter().try_for_each(&mut done)
        })
    }

    /// One chunk of `encode_texts` on several threads. The runs are handed to `done` as they
    /// come back in order, while the later ones are still being encoded (with `encode_batch`,
    /// making their arrays, on this thread, overlaps the encoding too).
    fn pipeline<'py>(
        &self,
        py: Python<'py>,
        chunk: &[Bound<'py, PyString>],
        limit: usize,
        ordinary: bool,
        pool: &rayon::ThreadPool,
        done: &mut impl FnMut(Run) -> PyResult<()>,
    ) -> PyResult<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        // The UTF-8 made for the texts: declared before `jobs`, so dropped after it.
        let arena = Utf8Arena::default();
        // Declared before the texts are borrowed: whatever happens, every job has finished
        // before this function returns (see `Jobs`).
        let mut jobs = Jobs {
            rx,
            results: Vec::new(),
            waiting: 0,
        };
        // Whether each run continues the text of the run before (a cut text's later part).
        let mut continues: Vec<bool> = Vec::new();
        let mut spawn = |units: Vec<&'static str>, cont: bool| {
            let (tok, tx, k) = (Arc::clone(&self.inner), tx.clone(), jobs.results.len());
            jobs.results.push(None);
            jobs.waiting += 1;
            continues.push(cont);
            pool.spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    encode_run(&tok, &units, !ordinary)
                }));
                let _ = tx.send((k, r));
            });
        };
        let (mut pending, mut cutter) = (Vec::new(), RunCutter::new(limit));
        for (i, t) in chunk.iter().enumerate() {
            if i % 256 == 255 {
                py.check_signals()?;
            }
            // SAFETY: the text is the UTF-8 of a string that `chunk` (the caller's) keeps alive
            // until after this function returns, read in place or kept by CPython as long as
            // the string, or made in `arena`, which is dropped after `jobs`; no job outlives
            // `jobs` (it waits for every one).
            let s: &'static str =
                unsafe { std::mem::transmute::<&str, &'static str>(utf8_of(t, &arena)?) };
            let cuts = match s.len() > 2 * limit {
                true => self
                    .inner
                    .cut_points(s, !ordinary, limit)
                    .unwrap_or_default(),
                false => Vec::new(),
            };
            if cuts.is_empty() {
                pending.push(s);
                if cutter.add(s.len()) {
                    spawn(std::mem::take(&mut pending), false);
                }
                continue;
            }
            if !pending.is_empty() {
                spawn(std::mem::take(&mut pending), false);
                cutter = RunCutter::new(limit);
            }
            let mut last = 0;
            for c in cuts.into_iter().chain(std::iter::once(s.len())) {
                spawn(vec![&s[last..c]], last > 0);
                last = c;
            }
        }
        if !pending.is_empty() || chunk.is_empty() {
            spawn(pending, false);
        }
        // Join each cut text's parts (its later parts' ids go after its first part's), and hand
        // on each run once the next one shows it complete.
        let mut held: Option<Run> = None;
        for (k, cont) in continues.into_iter().enumerate() {
            if jobs.results[k].is_none() {
                py.detach(|| jobs.wait_for(k));
            }
            let (ids, ends) = match jobs.results[k].take().expect("job k answered") {
                Ok(r) => r.map_err(|e| to_py(py, e))?,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            match held.as_mut() {
                Some((acc, acc_ends)) if cont => {
                    acc.extend_from_slice(&ids);
                    acc_ends[0] = acc.len();
                }
                _ => {
                    if let Some(run) = held.replace((ids, ends)) {
                        done(run)?;
                    }
                }
            }
        }
        held.map_or(Ok(()), done)
    }

    fn encode_impl<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyString>,
        allow_added: bool,
    ) -> PyResult<Bound<'py, PyArray1<u32>>> {
        ensure_numpy(py)?;
        let arena = Utf8Arena::default();
        let s = utf8_of(text, &arena)?;
        let ids = if s.len() > PARALLEL_TEXT_BYTES {
            // One long text: cut at safe line breaks and encode the parts in parallel.
            let pool = parallel::pool(None).map_err(|e| to_py(py, e))?;
            py.detach(|| self.inner.encode_parallel(s, allow_added, &pool))
        } else if s.len() > 4096 {
            py.detach(|| self.inner.encode(s, allow_added))
        } else {
            // A short text: its ids are copied from the thread's buffer into an array numpy
            // owns (one object, no vector of their own to hand over).
            return self
                .inner
                .encode_scratch(s, allow_added, |ids| PyArray1::from_slice(py, ids))
                .map_err(|e| to_py(py, e));
        };
        Ok(ids.map_err(|e| to_py(py, e))?.into_pyarray(py))
    }
}

/// The ids of a uint32 array or a sequence of ints (numpy's API loaded first, see
/// `ensure_numpy`, as telling an array apart needs it).
fn ids_vec(py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    ensure_numpy(py)?;
    match ids.extract::<IdsArg>()? {
        IdsArg::Array(a) => match a.as_slice() {
            Ok(ids) => Ok(ids.to_vec()),
            Err(_) => Ok(a.as_array().iter().copied().collect()), // strided: a view
        },
        IdsArg::Ids(v) => Ok(v),
        IdsArg::Seq(v) => v
            .into_iter()
            .map(|x| {
                id_of(&x)?.ok_or_else(|| {
                    to_py(
                        py,
                        Error::new(
                            ErrorKind::Encode,
                            crate::error::codes::UNKNOWN_ID,
                            format!("token id {x} is out of range"),
                        ),
                    )
                })
            })
            .collect(),
    }
}

/// Recovers the merge list of a tiktoken rank file: `tokens[rank]` are the token bytes.
/// Returns `([(left_rank, right_rank, rank), ...], [unreachable ranks])`.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn recover_merges(py: Python<'_>, tokens: Vec<Vec<u8>>) -> (Vec<(u32, u32, u32)>, Vec<u32>) {
    py.detach(|| tiktoken::recover_merges(&tokens))
}

/// Runs encode-corpus (see `aprx.corpus.encode_corpus`); returns the manifest as JSON text.
/// The pipeline runs on its own threads; this thread waits with the GIL released and checks
/// for Ctrl-C, which stops the run cleanly (completed shards stay for `resume`).
#[pyfunction]
#[pyo3(signature = (tokenizer, inputs, output, *, tokenizer_path, shard_tokens, content_field,
    eos_policy, eos_id, normalization, num_workers, resume, overwrite, on_error, progress,
    text_extensions, num_tasks = 1, task_index = 0))]
#[allow(clippy::too_many_arguments)]
fn encode_corpus(
    py: Python<'_>,
    tokenizer: &PyTokenizer,
    inputs: Vec<PathBuf>,
    output: PathBuf,
    tokenizer_path: String,
    shard_tokens: u64,
    content_field: String,
    eos_policy: &str,
    eos_id: Option<u32>,
    normalization: Option<&str>,
    num_workers: Option<usize>,
    resume: bool,
    overwrite: bool,
    on_error: &str,
    progress: bool,
    text_extensions: Vec<String>,
    num_tasks: u32,
    task_index: u32,
) -> PyResult<String> {
    use crate::shards::{EosPolicy, OnError, Options};
    let bad = |what: String| to_py(py, Error::corpus(crate::error::codes::INPUT, what));
    let opts = Options {
        inputs,
        output,
        tokenizer_path,
        shard_tokens,
        content_field,
        eos_policy: match eos_policy {
            "between" => EosPolicy::Between,
            "after" => EosPolicy::After,
            "none" => EosPolicy::None,
            o => {
                return Err(bad(format!(
                    "eos_policy must be between, after or none, not {o:?}"
                )))
            }
        },
        eos_id,
        normalization: match normalization {
            None => None,
            Some("nfc") => Some(Normalizer::Nfc),
            Some("none") => Some(Normalizer::None),
            Some(o) => return Err(bad(format!("normalization must be nfc or none, not {o:?}"))),
        },
        num_workers,
        resume,
        overwrite,
        on_error: match on_error {
            "fail" => OnError::Fail,
            "skip" => OnError::Skip,
            o => return Err(bad(format!("on_error must be fail or skip, not {o:?}"))),
        },
        progress,
        text_extensions,
        num_tasks,
        task_index,
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let tok = tokenizer.inner.clone();
    let result = std::thread::scope(|s| -> PyResult<_> {
        // The run says when it ends (or its thread drops the sender when it panics), so this
        // thread wakes at once then, and every 10 ms before that to look for Ctrl-C (a run of
        // the stdlib takes about 100 ms on 2 cores: Ctrl-C should not wait as long).
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let done_rx = std::sync::Mutex::new(done_rx); // shared with `detach`'s closure
        let (tok, opts, cancel) = (&tok, &opts, &cancel);
        let handle = std::thread::Builder::new()
            .name("aprx-corpus".into())
            .spawn_scoped(s, move || {
                let r = crate::shards::encode_corpus(tok, opts, cancel);
                let _ = done_tx.send(());
                r
            })
            .map_err(|e| {
                to_py(
                    py,
                    crate::Error::io(&opts.output, "start its encode-corpus thread", &e),
                )
            })?;
        loop {
            let done = py.detach(|| {
                !matches!(
                    done_rx
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .recv_timeout(std::time::Duration::from_millis(10)),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                )
            });
            if done {
                break;
            }
            if let Err(e) = py.check_signals() {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = py.detach(|| handle.join());
                return Err(e);
            }
        }
        Ok(handle
            .join()
            .unwrap_or_else(|p| Err(Error::from_panic("encode-corpus", p))))
    })?;
    result.map_err(|e| to_py(py, e))
}

/// The digest encode-corpus takes of shards and inputs (BLAKE3, `digest::Hasher`), taken
/// incrementally.
#[pyclass(name = "Blake3", module = "aprx._aprx")]
struct PyBlake3(crate::digest::Hasher);

#[pymethods]
impl PyBlake3 {
    #[new]
    fn new() -> Self {
        PyBlake3(crate::digest::Hasher::new())
    }

    /// Adds `data`; the GIL is released for a large one.
    fn update(&mut self, py: Python<'_>, data: &[u8]) {
        if data.len() >= 1 << 16 {
            py.detach(|| self.0.update(data));
        } else {
            self.0.update(data);
        }
    }

    /// The digest of everything added so far, as lower-case hex.
    fn hexdigest(&self) -> String {
        crate::corpus::hex(&self.0.finalize())
    }
}

/// The BLAKE3 digest of the file at `path`, as lower-case hex (what `b3sum` prints).
#[pyfunction]
fn blake3_file(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    py.detach(|| crate::digest::digest_file(&path, || false))
        .and_then(|d| d.ok_or_else(Error::interrupted)) // not cancelled: always Some
        .map(|d| crate::corpus::hex(&d))
        .map_err(|e| to_py(py, e))
}

/// Raw bytes -> the byte-level (GPT-2 alphabet) token string.
#[pyfunction]
fn byte_level_str(data: &[u8]) -> String {
    crate::bytelevel::encode_str(data)
}

/// Threads a parallel call uses by default (`RAYON_NUM_THREADS`, else the CPU count).
#[pyfunction]
fn default_num_threads() -> usize {
    parallel::default_threads()
}

#[pymodule]
fn _aprx(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let patterns = PyDict::new(m.py());
    patterns.set_item("gpt2", crate::pretok::GPT2_PATTERN)?;
    patterns.set_item("cl100k", crate::pretok::CL100K_PATTERN)?;
    patterns.set_item("llama3", crate::pretok::CL100K_PATTERN)?;
    patterns.set_item("qwen2", crate::pretok::QWEN2_PATTERN)?;
    m.add("PATTERNS", patterns)?;
    m.add("MAX_ID", crate::bpe::MAX_ID)?;
    m.add("MAX_THREADS", parallel::MAX_THREADS)?;
    m.add_class::<PyTokenizer>()?;
    m.add_function(wrap_pyfunction!(recover_merges, m)?)?;
    m.add_function(wrap_pyfunction!(default_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(byte_level_str, m)?)?;
    m.add_function(wrap_pyfunction!(encode_corpus, m)?)?;
    m.add_class::<PyBlake3>()?;
    m.add_function(wrap_pyfunction!(blake3_file, m)?)?;
    m.add(
        "DEFAULT_TEXT_EXTENSIONS",
        crate::corpus::DEFAULT_TEXT_EXTENSIONS.to_vec(),
    )?;
    Ok(())
}
