//! Shared pieces of the fuzz targets: a single-threaded runtime for the async decoders, and
//! the masking of a session whose rules detect a seeded sensitive value.

use std::sync::{Arc, OnceLock};

use portcullis_crds::audit::Identity;
use portcullis_crds::sidecar_config::{MaskingConfig, PolicyConfig};
use portcullis_sidecar::masking::engine::{Masker, SessionMasking};
use portcullis_sidecar::postgres::upstream::Upstream;

/// Run a future to completion on a runtime kept for the whole fuzzing process.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
    }
    RT.with(|rt| rt.block_on(f))
}

/// The pattern of the seeded sensitive value: `SECRET-` and six digits.
pub const SECRET_PATTERN: &str = "SECRET-[0-9]{6}";

/// Whether `bytes` hold a seeded sensitive value.
pub fn holds_secret(bytes: &[u8]) -> bool {
    static RE: OnceLock<regex::bytes::Regex> = OnceLock::new();
    RE.get_or_init(|| regex::bytes::Regex::new(SECRET_PATTERN).expect("pattern"))
        .is_match(bytes)
}

/// A session masked by detectors only (no catalog is read): the seeded value is redacted,
/// e-mail addresses partly kept, card numbers nulled.
pub fn detector_session() -> Arc<SessionMasking> {
    static SESSION: OnceLock<Arc<SessionMasking>> = OnceLock::new();
    SESSION
        .get_or_init(|| {
            let policy: PolicyConfig = serde_yaml::from_str(&format!(
                "name: p
masking:
- {{name: secret, detector: regex, pattern: '{SECRET_PATTERN}', strategy: redact}}
- {{name: mails, detector: email, strategy: partial}}
- {{name: cards, detector: paymentCard, strategy: 'null'}}
"
            ))
            .expect("policy");
            let upstream = Arc::new(Upstream {
                config: serde_yaml::from_str("{host: localhost, port: 5432, tlsMode: disable}")
                    .expect("upstream"),
                tls: None,
                credentials: None,
            });
            let masker = Arc::new(
                Masker::new(&[policy], &MaskingConfig::default(), "ns", upstream).expect("masker"),
            );
            let identity: Identity =
                serde_yaml::from_str("{kind: ServiceAccount, name: agent, namespace: ns}")
                    .expect("identity");
            block_on(masker.session(&identity, "db", "u")).expect("rules apply")
        })
        .clone()
}

/// Whether a column's values are text to the detectors (text format, or a text type).
pub fn text_column(type_oid: u32, binary: bool) -> bool {
    !binary || type_oid == 0 || portcullis_sidecar::masking::strategy::is_text_like(type_oid)
}

/// Run `f` on a thread with the stack of the sidecar's session workers (where statements are
/// analysed), and wait for it. A panic in `f` aborts the process, as libFuzzer expects.
pub fn on_session_stack(f: impl FnOnce() + Send + 'static) {
    type Job = Box<dyn FnOnce() + Send>;
    static WORKER: OnceLock<
        std::sync::Mutex<(std::sync::mpsc::Sender<Job>, std::sync::mpsc::Receiver<()>)>,
    > = OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (jobs, next) = std::sync::mpsc::channel::<Job>();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("session".into())
            .stack_size(portcullis_sidecar::workers::SESSION_STACK_BYTES)
            .spawn(move || {
                for job in next {
                    job();
                    let _ = done.send(());
                }
            })
            .expect("session thread");
        std::sync::Mutex::new((jobs, finished))
    });
    let guard = worker.lock().unwrap_or_else(|p| p.into_inner());
    guard.0.send(Box::new(f)).expect("session thread runs");
    guard.1.recv().expect("session thread finishes");
}
