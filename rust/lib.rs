//! aprx core: exact byte-level BPE encoding and u32 token shards. Pure Rust; the PyO3
//! bindings live in `python.rs` behind the `python` feature.

pub mod bitscan;
pub mod bpe;
pub mod bytelevel;
pub mod cache;
mod casefold;
pub mod corpus;
pub mod digest;
pub mod error;
pub mod huge;
pub mod jsonl;
pub mod offload;
pub mod parallel;
pub mod pretok;
pub mod shards;
pub mod simd;
#[cfg(test)]
mod test_rng;
pub mod tiktoken;
pub mod tokenizer;
pub mod utf8;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, ErrorKind, Result};
pub use tokenizer::Tokenizer;
