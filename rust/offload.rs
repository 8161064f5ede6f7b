//! Hashing (`digest`, BLAKE3) and writing on a thread of its own. encode-corpus's reader hashes every input byte
//! and its writer every shard byte; on one thread each, those two passes cap the whole
//! pipeline (about 140M tokens/s on 16 cores, the workers half idle). Here the bytes are copied
//! into 512 KiB chunks that a background thread hashes, and writes to a sink, in order (or
//! hands to a second thread that writes them, when hashing and writing together would still
//! cap the pipeline); the caller only copies. The chunks are a fixed pool, handed back once
//! written: fresh memory costs a page fault per 4 KiB (~1 us here), and a pool that grew
//! whenever the caller ran ahead took eight 1 MiB chunks for the stdlib's 31 MB shard.

use crate::digest::Hasher;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Bytes handed to the background thread at a time.
const CHUNK: usize = 512 << 10;
/// Chunks queued for the background thread(s) at most.
const CHUNKS: usize = 4;
/// Chunks there are at most: those queued, one being hashed (or written) and the one being
/// filled; the caller waits for one to come back rather than take more memory.
const POOL: usize = CHUNKS + 2;

/// Hashes (and writes to `W`) everything passed to `write`, on a thread of its own (or two:
/// `with_writer_thread`). `finish` returns the sink and the digest, or the first write error.
pub struct Offload<W: Write + Send + 'static> {
    buf: Vec<u8>,
    /// Chunks made so far (at most `POOL`).
    chunks: usize,
    tx: Option<SyncSender<Vec<u8>>>,
    /// Chunks the thread is done with, to be filled again.
    back: Receiver<Vec<u8>>,
    failed: Arc<AtomicBool>,
    error: Arc<Mutex<Option<io::Error>>>,
    thread: Option<JoinHandle<(W, [u8; 32])>>,
}

impl<W: Write + Send + 'static> Offload<W> {
    /// Starts the thread (named `name`), which hashes each chunk and then writes it.
    pub fn new(name: &str, sink: W) -> io::Result<Self> {
        Self::start(name, None, sink)
    }

    /// `new`, with the writes on a second thread (named `writer`): the hashing thread hands
    /// each chunk on once hashed, so hashing and writing (the copy into the page cache) each
    /// take a core, where one thread doing both would cap a many-core pipeline.
    pub fn with_writer_thread(name: &str, writer: &str, sink: W) -> io::Result<Self> {
        Self::start(name, Some(writer), sink)
    }

    fn start(name: &str, writer: Option<&str>, mut sink: W) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Vec<u8>>(CHUNKS);
        // Room for every chunk, so handing one back never waits.
        let (back_tx, back) = sync_channel::<Vec<u8>>(POOL);
        let failed = Arc::new(AtomicBool::new(false));
        let error = Arc::new(Mutex::new(None));
        let (f, e) = (failed.clone(), error.clone());
        // Writes a hashed chunk (none after the first error) and hands it back for reuse.
        let write = move |sink: &mut W, chunk: Vec<u8>| {
            if !f.load(Ordering::Relaxed) {
                if let Err(err) = sink.write_all(&chunk) {
                    *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                    f.store(true, Ordering::Release);
                }
            }
            let _ = back_tx.send(chunk);
        };
        let hashing = std::thread::Builder::new().name(name.into());
        let thread = match writer {
            None => hashing.spawn(move || {
                let mut hasher = Hasher::new();
                for chunk in rx {
                    hasher.update(&chunk);
                    write(&mut sink, chunk);
                }
                (sink, hasher.finalize())
            })?,
            Some(writer) => {
                let (wtx, wrx) = sync_channel::<Vec<u8>>(CHUNKS);
                let writing = std::thread::Builder::new()
                    .name(writer.into())
                    .spawn(move || {
                        for chunk in wrx {
                            write(&mut sink, chunk);
                        }
                        sink
                    })?;
                hashing.spawn(move || {
                    let mut hasher = Hasher::new();
                    for chunk in rx {
                        hasher.update(&chunk);
                        if wtx.send(chunk).is_err() {
                            break; // the writing thread is gone (it panicked): join says so
                        }
                    }
                    drop(wtx); // the writing thread's loop ends after the last chunk
                    match writing.join() {
                        Ok(sink) => (sink, hasher.finalize()),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                })?
            }
        };
        Ok(Offload {
            buf: Vec::with_capacity(CHUNK),
            chunks: 1,
            tx: Some(tx),
            back,
            failed,
            error,
            thread: Some(thread),
        })
    }

    /// Appends `data` (hashed and written later, in order); fails with the sink's first
    /// error once there is one.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.check()?;
        while !data.is_empty() {
            let n = data.len().min(CHUNK - self.buf.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == CHUNK {
                self.send()?;
                self.refill()?;
            }
        }
        Ok(())
    }

    /// Hands the filled part of the chunk to the thread.
    fn send(&mut self) -> io::Result<()> {
        let full = std::mem::take(&mut self.buf);
        let tx = self.tx.as_ref().expect("open until finish");
        if tx.send(full).is_err() {
            return Err(io::Error::other("the hashing thread stopped"));
        }
        Ok(())
    }

    /// A chunk to fill next: one handed back, a new one while there are fewer than `POOL`,
    /// or else the next one handed back (every chunk is queued or being hashed or written).
    fn refill(&mut self) -> io::Result<()> {
        self.buf = match self.back.try_recv() {
            Ok(chunk) => chunk,
            Err(_) if self.chunks < POOL => {
                self.chunks += 1;
                Vec::with_capacity(CHUNK)
            }
            // No chunk comes back once the thread holding them is gone (a panic).
            Err(_) => self
                .back
                .recv()
                .map_err(|_| io::Error::other("the hashing thread stopped"))?,
        };
        self.buf.clear();
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
            return Err(e
                .take()
                .unwrap_or_else(|| io::Error::other("an earlier write failed")));
        }
        Ok(())
    }

    /// Waits for everything to be hashed and written; the sink and the digest of all bytes.
    pub fn finish(mut self) -> io::Result<(W, [u8; 32])> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        self.tx = None; // the thread's loop ends after the last chunk
        let joined = self.thread.take().expect("joined once").join();
        let (sink, digest) = joined.map_err(|_| io::Error::other("the hashing thread panicked"))?;
        self.check()?;
        Ok((sink, digest))
    }
}

impl<W: Write + Send + 'static> Drop for Offload<W> {
    fn drop(&mut self) {
        // Not finished (an error elsewhere): stop the thread and wait, so the sink (a file)
        // is closed before the caller removes it.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that fails once it holds `limit` bytes, and sleeps `delay` at each write.
    struct Small {
        data: Vec<u8>,
        limit: usize,
        delay: std::time::Duration,
    }

    impl Small {
        fn new(limit: usize) -> Self {
            Small {
                data: Vec::new(),
                limit,
                delay: std::time::Duration::ZERO,
            }
        }
    }

    impl Write for Small {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            std::thread::sleep(self.delay);
            if self.data.len() + buf.len() > self.limit {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "full"));
            }
            self.data.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// An `Offload` on one thread, or with its writes on a second (`split`).
    fn offload<W: Write + Send + 'static>(split: bool, sink: W) -> Offload<W> {
        match split {
            false => Offload::new("test-offload", sink),
            true => Offload::with_writer_thread("test-hash", "test-write", sink),
        }
        .unwrap()
    }

    #[test]
    fn hashes_and_writes_every_byte_in_order() {
        for split in [false, true] {
            hashes_and_writes_every_byte_in_order_with(split);
        }
    }

    fn hashes_and_writes_every_byte_in_order_with(split: bool) {
        let data: Vec<u8> = (0..(3 * CHUNK + 12345))
            .map(|i| (i * 7 + i / 991) as u8)
            .collect();
        let mut o = offload(split, Small::new(usize::MAX));
        // Uneven pieces, some larger than a chunk.
        let mut at = 0;
        for (k, step) in [1, 100, CHUNK + 3, 7, 2 * CHUNK, 999_999]
            .iter()
            .cycle()
            .enumerate()
        {
            if at == data.len() || k > 1000 {
                break;
            }
            let end = (at + step).min(data.len());
            o.write(&data[at..end]).unwrap();
            at = end;
        }
        assert_eq!(at, data.len());
        let (sink, digest) = o.finish().unwrap();
        assert_eq!(sink.data, data);
        assert_eq!(digest, crate::digest::digest(&data));
    }

    /// A caller far ahead of the sink reuses the pool's chunks (waiting for them), never
    /// takes more, and every byte still arrives in order.
    #[test]
    fn the_chunk_pool_stays_bounded() {
        for split in [false, true] {
            let data: Vec<u8> = (0..(3 * POOL * CHUNK + 999))
                .map(|i| (i * 13 + i / 4093) as u8)
                .collect();
            // A sink slower than its caller, which then runs out of chunks and waits.
            let slow = Small {
                delay: std::time::Duration::from_micros(300),
                ..Small::new(usize::MAX)
            };
            let mut o = offload(split, slow);
            for piece in data.chunks(CHUNK / 3 + 1) {
                o.write(piece).unwrap();
                assert!(o.chunks <= POOL, "{} chunks, split: {split}", o.chunks);
            }
            let (sink, digest) = o.finish().unwrap();
            assert!(sink.data == data, "split: {split}");
            assert_eq!(digest, crate::digest::digest(&data));
        }
    }

    #[test]
    fn the_sinks_error_comes_back() {
        for split in [false, true] {
            let mut o = offload(split, Small::new(CHUNK + 10));
            let mut err = None;
            for _ in 0..64 {
                if let Err(e) = o.write(&[1u8; 100_000]) {
                    err = Some(e);
                    break;
                }
            }
            let e = match err {
                Some(e) => e,
                None => o.finish().map(|_| ()).unwrap_err(),
            };
            assert_eq!(e.kind(), io::ErrorKind::StorageFull, "split: {split}");
        }
    }

    /// A sink that panics on its first write.
    struct Panics;

    impl Write for Panics {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            panic!("a sink that panics");
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The writing thread's panic ends both threads and comes back as an error (no hang with
    /// chunks still queued for it).
    #[test]
    fn a_writing_thread_panic_is_an_error() {
        let mut o = offload(true, Panics);
        let mut failed = false;
        for _ in 0..64 {
            if o.write(&[7u8; 100_000]).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed || o.finish().is_err());
    }

    #[test]
    fn an_empty_stream_has_the_empty_digest() {
        for split in [false, true] {
            let (_, digest) = offload(split, io::sink()).finish().unwrap();
            assert_eq!(digest, crate::digest::digest(b""));
        }
    }
}
