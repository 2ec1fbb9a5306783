//! A batch body (JSON lines) through the steps of the audit service's ingest: UTF-8, the
//! per-record size limit, the record schema, the binding of the workload identity to the
//! authenticated sender, and the log entry it is stored as; the stored entry through the
//! evidence exports (OCSF, resource name).
//!
//! Properties: nothing panics; an accepted record carries the sender's namespace, service
//! account, pod and pod UID; a stored entry reads back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis_audit::attribution::{bind_workload, recording_of};
use portcullis_audit::auth::Source;
use portcullis_audit::bundle::{resource_of, to_ocsf};
use portcullis_audit::service::LogEntry;
use portcullis_crds::audit::{AuditRecord, MAX_RECORD_BYTES};

fuzz_target!(|body: &[u8]| {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let source = Source {
        user: "system:serviceaccount:shop:agent".into(),
        namespace: "shop".into(),
        service_account: "agent".into(),
        pod: Some("agent-0".into()),
        pod_uid: Some("0b6c-uid".into()),
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.len() > MAX_RECORD_BYTES {
            return;
        }
        let Ok(mut record) = serde_json::from_str::<AuditRecord>(line) else {
            return;
        };
        if bind_workload(&mut record, &source).is_err() {
            return;
        }
        let id = &record.identity;
        assert_eq!(id.kind, "ServiceAccount");
        assert_eq!(id.name, source.service_account);
        assert_eq!(id.namespace, Some(source.namespace.clone()));
        assert_eq!(id.pod, source.pod);
        assert_eq!(id.pod_uid, source.pod_uid);
        let _ = recording_of(&record);
        let entry = LogEntry {
            id: format!("0b6c-uid:{}:{}", record.session_id, record.seq),
            received_at: "2026-12-01T00:00:00.000000Z".into(),
            source: source.clone(),
            record,
        };
        let bytes = serde_json::to_vec(&entry).expect("entry serializes");
        let again: LogEntry = serde_json::from_slice(&bytes).expect("stored entry reads back");
        assert_eq!(
            serde_json::to_vec(&again).expect("entry serializes"),
            bytes,
            "stored entry changes when read back"
        );
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        let _ = to_ocsf(&value);
        let _ = resource_of(&value);
    }
});
