//! GatewayPolicy specs (JSON) through the policy compiler, and what the compiler accepts
//! through everything the sidecar builds from it: the guardrails of a session and their
//! decisions on statements, Kubernetes requests and exec commands, and the masking rules.
//!
//! Properties: nothing panics; a compiled policy survives the trip through the sidecar's
//! configuration (JSON) unchanged.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use portcullis_crds::audit::Identity;
use portcullis_crds::gateway_policy::GatewayPolicySpec;
use portcullis_crds::sidecar_config::{MaskingConfig, PolicyConfig};
use portcullis_sidecar::kube::decide::{decide_builtin, decide_exec, ExecTarget};
use portcullis_sidecar::kube::request::RequestInfo;
use portcullis_sidecar::masking::engine::Masker;
use portcullis_sidecar::policy::analyze::{analyze, Analysis};
use portcullis_sidecar::policy::guardrails::Guardrails;
use portcullis_sidecar::policy::names::SearchPath;
use portcullis_sidecar::policy::row_sources::RowSources;
use portcullis_sidecar::postgres::upstream::Upstream;

const STATEMENTS: &str = "SELECT email FROM customers; DELETE FROM orders; UPDATE customers SET name = 'x' WHERE true; \
    COPY customers TO PROGRAM 'sh'; SELECT pg_read_file('/etc/passwd'); SET ROLE admin; DROP TABLE orders";

fn identity() -> Identity {
    serde_json::from_str(
        r#"{"kind": "ServiceAccount", "name": "agent", "namespace": "shop",
        "principal": {"kind": "User", "issuer": "https://sso.example.com", "subject": "u-1",
                      "name": "alice", "groups": ["dpo"]}}"#,
    )
    .expect("identity")
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<GatewayPolicySpec>(data) else {
        return;
    };
    let Ok(policy) = PolicyConfig::compile("fuzzed", 1, &spec) else {
        return;
    };
    let json = serde_json::to_vec(&policy).expect("config serializes");
    let back: PolicyConfig = serde_json::from_slice(&json).expect("config reads back");
    assert_eq!(
        back, policy,
        "compiled policy changes through the configuration"
    );

    let identity = identity();
    let guardrails = Guardrails::for_identity(vec![policy.clone()], &identity, "shop");
    let path = SearchPath::unknown();
    if let Analysis::Statements(all) = analyze(STATEMENTS) {
        for facts in &all {
            let _ = guardrails.decide(facts, &path);
            let _ = guardrails.row_limits(facts, &path, &RowSources::default());
        }
    }
    let _ = guardrails.decide_unanalyzable("syntax error");
    let _ = guardrails.spool_limit();
    for (method, path, query) in [
        (http::Method::GET, "/api/v1/namespaces/shop/secrets", None),
        (
            http::Method::DELETE,
            "/apis/apps/v1/namespaces/shop/deployments/web",
            None,
        ),
        (
            http::Method::POST,
            "/api/v1/namespaces/shop/pods/db-0/exec",
            Some("command=sh&command=-c&command=rm+-rf+/data&stdin=true"),
        ),
    ] {
        let info = RequestInfo::resolve(&method, path, query);
        let _ = decide_builtin(&guardrails, &info);
    }
    let target = ExecTarget {
        namespace: "shop".into(),
        pod: "db-0".into(),
        container: "db".into(),
        labels: None,
    };
    for script in [
        "rm -rf /data",
        "psql -c 'DROP TABLE x' | tee /tmp/out",
        "ls -l $HOME",
    ] {
        let analysis = portcullis_sidecar::shell::analyse_script(script, false);
        let _ = decide_exec(&guardrails, &target, &analysis, false);
    }
    let upstream = Arc::new(Upstream {
        config: serde_json::from_str(
            r#"{"host": "localhost", "port": 5432, "tlsMode": "disable"}"#,
        )
        .expect("upstream"),
        tls: None,
        credentials: None,
    });
    let _ = Masker::new(&[policy], &MaskingConfig::default(), "shop", upstream);
});
