//! The result path on server messages out of the usual order: COPY data that no
//! CopyOutResponse announced has no format to mask by, so where masking applies it is
//! withheld; without masking it passes as the server sent it.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use portcullis_crds::audit::Identity;
use portcullis_crds::sidecar_config::{MaskingConfig, PolicyConfig};
use portcullis_sidecar::masking::engine::{Masker, SessionMasking, StatementPlan};
use portcullis_sidecar::masking::lineage::{Shape, Taint};
use portcullis_sidecar::postgres::codec::Message;
use portcullis_sidecar::postgres::results::{Inflight, InflightMasking, ResultPath, Tracker};
use portcullis_sidecar::postgres::upstream::Upstream;

const SECRET: &[u8] = b"SECRET-666666";

async fn detector_session() -> Arc<SessionMasking> {
    let policy: PolicyConfig = serde_yaml::from_str(
        "name: p
masking:
- {name: secret, detector: regex, pattern: 'SECRET-[0-9]{6}', strategy: redact}
",
    )
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
        serde_yaml::from_str("{kind: ServiceAccount, name: agent, namespace: ns}").expect("id");
    masker
        .session(&identity, "db", "u")
        .await
        .expect("rules apply")
}

/// What the client receives for `messages`, with or without masking.
fn relay(masking: Option<Arc<SessionMasking>>, messages: &[(u8, &[u8])]) -> Vec<u8> {
    let mut tracker = Tracker {
        masking: masking.clone(),
        ..Tracker::default()
    };
    tracker.batches_sent = 1;
    tracker.inflight.push_back(Inflight {
        statement_id: 1,
        batch: 1,
        started: Instant::now(),
        row_limits: Vec::new(),
        portal_rows: None,
        masking: masking.map(|session| InflightMasking {
            session,
            plan: Arc::new(StatementPlan {
                shape: Some(Shape::Opaque(Taint::default())),
                clean: false,
                copy: None,
                ddl: false,
                marks: Vec::new(),
                control: None,
            }),
            prepared: None,
        }),
    });
    let mut path = ResultPath::default();
    let mut out = BytesMut::new();
    for (tag, body) in messages {
        let m = Message {
            tag: *tag,
            body: Bytes::copy_from_slice(body),
        };
        let _ = path.on_message(&m, &mut tracker, &mut out);
    }
    out.to_vec()
}

fn holds(out: &[u8]) -> bool {
    out.windows(SECRET.len()).any(|w| w == SECRET)
}

#[tokio::test]
async fn copy_data_no_copy_out_response_announced_is_withheld_under_masking() {
    let session = detector_session().await;
    let data = [b"row \t".as_slice(), SECRET, b"\xff\xff\n"].concat();
    // The fuzz input: an error, then COPY data with no CopyOutResponse before it; and the
    // same after a CopyBothResponse, whose stream is no COPY format the sidecar masks.
    let streams: [Vec<(u8, &[u8])>; 3] = [
        vec![(b'E', b"SERROR\0C22P02\0Mx\0\0"), (b'd', &data)],
        vec![(b'd', &data)],
        vec![(b'W', b"\0\0\0"), (b'd', &data)],
    ];
    for stream in &streams {
        assert!(
            holds(&relay(None, stream)),
            "without masking the data passes as sent"
        );
        let out = relay(Some(session.clone()), stream);
        assert!(!holds(&out), "COPY data went out unmasked: {out:?}");
    }
}
