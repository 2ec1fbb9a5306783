//! Session workers: threads that each run a single-threaded Tokio runtime. A client
//! connection is handed to one of them (in turn) and served there from start to end, so the
//! wake-ups of its reads and writes never move between threads, as they do under a
//! work-stealing scheduler; with one worker per core the sessions still use every core.
//! Everything else (listeners, the admin endpoint, the shipper, the Kubernetes API proxy)
//! runs on the runtime that started the sidecar.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use tokio::runtime::Handle;
use tokio::sync::watch;

/// Stack of a session worker thread. Statement analysis walks parse trees recursively; a
/// statement may be as deep as `policy::limits::MAX_CHAIN` links, and this stack holds such a
/// walk with room to spare (the memory is reserved, and only the pages a walk touches are
/// used).
pub const SESSION_STACK_BYTES: usize = 256 << 20;

/// The worker threads; they end when this is dropped (their sessions with them).
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    _stop: watch::Sender<()>,
}

impl Workers {
    /// Start `count` workers (at least one).
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let (stop, stopped) = watch::channel(());
        let mut handles = Vec::new();
        for n in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            thread::Builder::new()
                .name(format!("session-worker-{n}"))
                .stack_size(SESSION_STACK_BYTES)
                .spawn(move || {
                    // Serves the sessions spawned onto it until the workers are dropped.
                    runtime.block_on(async move { while stopped.changed().await.is_ok() {} });
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The worker the next connection goes to.
    pub fn next(&self) -> &Handle {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[n]
    }
}

/// The default number of workers: one per core the process may use.
pub fn default_count() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_spread_over_the_workers_and_run_on_their_threads() {
        let workers = Workers::start(2).expect("workers");
        assert_eq!(workers.len(), 2);
        let mut names = Vec::new();
        for _ in 0..4 {
            let name = workers
                .next()
                .spawn(async { thread::current().name().map(str::to_owned) })
                .await
                .expect("task");
            names.push(name.unwrap_or_default());
        }
        assert_eq!(
            names,
            [
                "session-worker-0",
                "session-worker-1",
                "session-worker-0",
                "session-worker-1"
            ]
        );
    }

    #[tokio::test]
    async fn dropping_the_workers_ends_their_sessions() {
        let workers = Workers::start(1).expect("workers");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let session = workers.next().spawn(async move {
            // Never completes on its own; holds the sender until the task is dropped.
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(workers);
        assert!(rx.await.is_err(), "the session was dropped with its worker");
        assert!(session.await.is_err());
    }
}
