//! The digest of every input file and every shard: BLAKE3 (`b3sum` computes the same). It is
//! a cryptographic hash, like the SHA-256 it replaced, and several times faster on one core:
//! its SIMD code hashes up to 16 chunks of 1 KiB side by side (AVX-512), where SHA-256 is a
//! chain of one block after another (SHA-NI: 1.2-1.7 GB/s on this project's Xeon, about 40 ms
//! of a 2-core encode-corpus call's 205 ms of CPU for the stdlib's two digests).

/// A digest taken incrementally.
#[derive(Clone, Default)]
pub struct Hasher(blake3::Hasher);

impl Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `data`. (Prefetching ahead of the hash, which SHA-256 needed to keep up with
    /// memory, slows BLAKE3: 4.3 against 5.1 GB/s over 32 MB out of cache.)
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finalize(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// The digest of `data`.
pub fn digest(data: &[u8]) -> [u8; 32] {
    let mut h = Hasher::new();
    h.update(data);
    h.finalize()
}

/// The digest of the file at `path`, read 1 MiB at a time; None if `cancelled` says so
/// between two reads.
pub fn digest_file(
    path: &std::path::Path,
    cancelled: impl Fn() -> bool,
) -> crate::Result<Option<[u8; 32]>> {
    use std::io::Read;
    let err = |what: &str, e: &std::io::Error| crate::Error::io(path, what, e);
    let mut f = std::fs::File::open(path).map_err(|e| err("open", &e))?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if cancelled() {
            return Ok(None);
        }
        match f.read(&mut buf) {
            Ok(0) => return Ok(Some(h.finalize())),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err("read", &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::hex;

    /// The reference digests of BLAKE3's test vectors (input byte i = i % 251).
    #[test]
    fn digests_match_the_reference_vectors() {
        let input: Vec<u8> = (0..102400usize).map(|i| (i % 251) as u8).collect();
        for (len, want) in [
            (
                0,
                "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            ),
            (
                1,
                "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
            ),
            (
                1024,
                "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
            ),
            (
                102400,
                "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085",
            ),
        ] {
            assert_eq!(hex(&digest(&input[..len])), want, "{len} bytes");
        }
    }

    /// Fed in any two pieces, the digest is the whole input's.
    #[test]
    fn pieces_give_the_whole_inputs_digest() {
        let input: Vec<u8> = (0..200_000usize).map(|i| (i * 7 + i / 613) as u8).collect();
        let want = *blake3::hash(&input).as_bytes();
        for cut in [0, 1, 1023, 1024, 16 << 10, 70_001, 200_000] {
            let mut h = Hasher::new();
            h.update(&input[..cut]);
            h.update(&input[cut..]);
            assert_eq!(h.finalize(), want, "cut at {cut}");
        }
    }

    #[test]
    fn a_files_digest_is_its_bytes_digest_and_a_missing_file_an_io_error() {
        let dir = std::env::temp_dir().join(format!("aprx-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.bin");
        let data: Vec<u8> = (0..(3 << 20) + 5usize)
            .map(|i| (i * 31 + i / 977) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        let whole = digest_file(&p, || false).unwrap();
        assert_eq!(whole, Some(*blake3::hash(&data).as_bytes()));
        assert_eq!(digest_file(&p, || true).unwrap(), None);
        let e = digest_file(&dir.join("missing"), || false).unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::Io);
        assert!(
            e.message.contains("missing") && e.message.contains("cannot open"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
