//! The thread pool behind batch encoding and encode-corpus. `RAYON_NUM_THREADS` is honoured;
//! after a `fork()` (torch's DataLoader forks) the parent's pool threads do not exist in the
//! child, so a child process builds a pool of its own instead of deadlocking on the inherited one.

use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, Mutex};

struct Held {
    pid: u32,
    threads: usize,
    pool: Arc<ThreadPool>,
}

static POOL: Mutex<Option<Held>> = Mutex::new(None);

/// Threads to use when the caller does not say: `RAYON_NUM_THREADS`, else the CPU count.
pub fn default_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// The most threads a pool may have: more is a typo, not a machine, and starting them all
/// would bring the machine to a halt before failing.
pub const MAX_THREADS: usize = 1024;

/// A pool with `threads` threads (default: `default_threads()`), built for this process;
/// an error (`codes::THREADS`) for more than `MAX_THREADS`.
pub fn pool(threads: Option<usize>) -> crate::Result<Arc<ThreadPool>> {
    let asked = threads.filter(|&n| n > 0);
    let want = asked.unwrap_or_else(default_threads);
    if want > MAX_THREADS {
        let from = match asked {
            Some(_) => "num_threads",
            None => "RAYON_NUM_THREADS",
        };
        return Err(crate::Error::new(
            crate::ErrorKind::Encode,
            crate::error::codes::THREADS,
            format!("{from} is {want}: at most {MAX_THREADS} threads"),
        ));
    }
    let pid = std::process::id();
    let mut held = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = held.as_ref() {
        if h.pid == pid && h.threads == want {
            return Ok(h.pool.clone());
        }
    }
    if let Some(old) = held.take() {
        if old.pid != pid {
            // Inherited across fork: its worker threads are not in this process. Dropping it
            // would signal threads that do not exist; leak it instead.
            std::mem::forget(old);
        }
    }
    let pool = Arc::new(
        ThreadPoolBuilder::new()
            .num_threads(want)
            .thread_name(|i| format!("aprx-{i}"))
            .build()
            .map_err(|e| {
                crate::Error::new(
                    crate::ErrorKind::Io,
                    crate::error::codes::IO,
                    format!("cannot start {want} worker threads: {e}"),
                )
            })?,
    );
    *held = Some(Held {
        pid,
        threads: want,
        pool: pool.clone(),
    });
    Ok(pool)
}
