//! Cancel keys: the client sees a key the sidecar made up; a CancelRequest carrying it is
//! forwarded to the upstream backend of that session with the server's real key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::Rng;

use super::upstream::Upstream;

#[derive(Clone)]
struct Entry {
    secret: i32,
    upstream: Arc<Upstream>,
    server_key: (i32, i32),
}

/// All live sessions' cancel keys (one registry per process).
#[derive(Clone, Default)]
pub struct CancelRegistry {
    entries: Arc<Mutex<HashMap<i32, Entry>>>,
}

impl CancelRegistry {
    /// Register a session; returns the client-facing (pid, secret).
    pub fn register(&self, upstream: Arc<Upstream>, server_key: (i32, i32)) -> (i32, i32) {
        let mut rng = rand::rng();
        let secret: i32 = rng.random();
        let Ok(mut entries) = self.entries.lock() else {
            return (0, secret);
        };
        loop {
            let pid = rng.random_range(1..i32::MAX);
            if let std::collections::hash_map::Entry::Vacant(v) = entries.entry(pid) {
                v.insert(Entry {
                    secret,
                    upstream,
                    server_key,
                });
                return (pid, secret);
            }
        }
    }

    /// Forget a session.
    pub fn unregister(&self, pid: i32) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(&pid);
        }
    }

    /// Forward a cancel request; unknown or wrong keys are ignored (as the server does).
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let entry = self
            .entries
            .lock()
            .ok()
            .and_then(|e| e.get(&pid).cloned())
            .filter(|e| e.secret == secret);
        match entry {
            Some(e) => {
                if let Err(err) = e.upstream.cancel(e.server_key.0, e.server_key.1).await {
                    tracing::warn!(error = %err, "forwarding a cancel request failed");
                }
            }
            None => tracing::debug!(pid, "cancel request with an unknown key ignored"),
        }
    }
}
