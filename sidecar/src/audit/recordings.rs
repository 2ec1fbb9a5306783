//! Uploads finished exec recordings to the audit service.
//!
//! A recording is written to `<spool>/recordings/<sha256>.cast` and made durable before its
//! audit record (which carries the hash) is appended, so the record never names a file that
//! could be lost. This task uploads each file (the service checks the hash against the name)
//! and deletes it once the service has stored it; until then it stays in the spool. A file
//! the service refuses is set aside in the spool, and a `recordingUnavailable` record says
//! which recording the service will not have, and why.

use std::path::PathBuf;
use std::time::Duration;

use portcullis_audit::client::{AuditClient, Bytes};
use portcullis_audit::recordings::is_sha256;
use tokio::sync::watch;

use portcullis_crds::audit::{AuditEvent, Identity, RecordingUnavailable};

use super::ship::ShipperOptions;
use super::spool::{RecordContext, Spool};
use crate::kube::recording::RECORDINGS_DIR;
use crate::metrics::Metrics;

/// How often the directory is looked at.
const POLL: Duration = Duration::from_secs(2);

fn pending(dir: &std::path::Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let sha = name.strip_suffix(".cast")?;
            is_sha256(sha).then(|| (sha.to_owned(), e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Upload recordings until `stop`.
pub async fn run(
    spool_dir: PathBuf,
    spool: Spool,
    identity: Identity,
    options: ShipperOptions,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let dir = spool_dir.join(RECORDINGS_DIR);
    let mut client: Option<AuditClient> = None;
    loop {
        let files = pending(&dir);
        metrics
            .recordings_pending
            .set(i64::try_from(files.len()).unwrap_or(i64::MAX));
        for (sha, path) in files {
            let c = match &client {
                Some(c) => c.clone(),
                None => {
                    match AuditClient::new(&options.url, &options.ca_file, options.request_timeout)
                    {
                        Ok(c) => {
                            client = Some(c.clone());
                            c
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot build the audit client for recordings");
                            break;
                        }
                    }
                }
            };
            let token = match tokio::fs::read_to_string(&options.token_file).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(file = %options.token_file.display(), error = %e, "cannot read the audit token");
                    break;
                }
            };
            let body = match tokio::fs::read(&path).await {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read a recording");
                    continue;
                }
            };
            match c.upload_recording(token.trim(), &sha, body).await {
                Ok(()) => {
                    if let Err(e) = tokio::fs::remove_file(&path).await {
                        tracing::warn!(file = %path.display(), error = %e, "cannot remove an uploaded recording");
                    }
                    tracing::info!(%sha, "recording stored by the audit service");
                }
                Err(e) if e.retryable() => {
                    tracing::warn!(%sha, error = %e, "recording upload failed; retrying later");
                    break;
                }
                Err(e) => {
                    // The service refused the content (its hash is not its name): the file
                    // was damaged in the spool. Kept aside for inspection, not sent again.
                    let aside = path.with_extension("cast.refused");
                    tracing::error!(%sha, error = %e, file = %aside.display(), "the audit service refused a recording; kept aside");
                    let ctx =
                        RecordContext::new("recordings".into(), identity.clone(), String::new());
                    let event = AuditEvent::RecordingUnavailable(RecordingUnavailable {
                        sha256: sha.clone(),
                        reason: format!("the audit service refused the recording ({e}); it is kept aside in the sidecar's spool as {}", aside.display()),
                    });
                    if let Err(e) = spool.append(&ctx, event) {
                        tracing::error!(error = %e, "cannot record a refused recording");
                    }
                    if let Err(e) = tokio::fs::rename(&path, &aside).await {
                        tracing::warn!(file = %path.display(), error = %e, "cannot set a refused recording aside");
                    }
                }
            }
        }
        let left = pending(&dir).len();
        metrics
            .recordings_pending
            .set(i64::try_from(left).unwrap_or(i64::MAX));
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => if *stop.borrow() { return },
        }
    }
}
