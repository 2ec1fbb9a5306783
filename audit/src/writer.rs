//! Group commit: concurrent batches queue up while the previous fsync runs and are written
//! together with one fsync, so durable acknowledgement costs one disk flush per round, not per
//! request.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::store::{Log, StoreError};

type Reply = oneshot::Sender<Result<Vec<u64>, String>>;

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<(Vec<Vec<u8>>, Reply)>,
}

/// Most entries written in one round.
const MAX_ROUND: usize = 50_000;

impl Appender {
    /// Start the writer on a blocking thread.
    pub fn start(log: Arc<Mutex<Log>>) -> Self {
        let (tx, mut rx) = mpsc::channel::<(Vec<Vec<u8>>, Reply)>(1024);
        tokio::task::spawn_blocking(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut round = vec![first];
                let mut total = round[0].0.len();
                while total < MAX_ROUND {
                    match rx.try_recv() {
                        Ok(next) => {
                            total += next.0.len();
                            round.push(next);
                        }
                        Err(_) => break,
                    }
                }
                let all: Vec<Vec<u8>> = round.iter().flat_map(|(b, _)| b.iter().cloned()).collect();
                let result: Result<Vec<u64>, StoreError> = match log.lock() {
                    Ok(mut log) => log.append(&all),
                    Err(_) => Err(StoreError::Inconsistent("log lock poisoned".into())),
                };
                match result {
                    Ok(indexes) => {
                        let mut at = 0;
                        for (batch, reply) in round {
                            let n = batch.len();
                            let _ = reply.send(Ok(indexes[at..at + n].to_vec()));
                            at += n;
                        }
                    }
                    Err(e) => {
                        // One bad batch must not fail the others: write them one by one.
                        tracing::warn!(error = %e, "group write failed; retrying batches one by one");
                        for (batch, reply) in round {
                            let r = match log.lock() {
                                Ok(mut log) => log.append(&batch).map_err(|e| e.to_string()),
                                Err(_) => Err("log lock poisoned".to_owned()),
                            };
                            let _ = reply.send(r);
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Append a batch durably; resolves once it is fsynced.
    pub async fn append(&self, batch: Vec<Vec<u8>>) -> Result<Vec<u64>, String> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send((batch, reply))
            .await
            .map_err(|_| "audit log writer stopped".to_owned())?;
        wait.await
            .map_err(|_| "audit log writer stopped".to_owned())?
    }
}
