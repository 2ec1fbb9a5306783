//! Kubernetes API requests (method, path, query) through the request classifier, the exec
//! parameter reader and the built-in request rules.
//!
//! Properties: nothing panics; the classifier is deterministic; a request it reads as
//! `pods/exec` has its command read from the same query the API server reads.
#![no_main]
use arbitrary::Arbitrary;
use http::Method;
use libfuzzer_sys::fuzz_target;
use portcullis_sidecar::kube::decide::decide_builtin;
use portcullis_sidecar::kube::request::{query_bool, query_pairs, ExecParams, RequestInfo};
use portcullis_sidecar::policy::guardrails::Guardrails;

#[derive(Arbitrary, Debug)]
struct Request {
    method: u8,
    path: String,
    query: Option<String>,
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT",
];

fn guardrails() -> &'static Guardrails {
    static G: std::sync::OnceLock<Guardrails> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        let policy = serde_yaml::from_str("name: ops").expect("policy");
        let identity = serde_yaml::from_str("{kind: ServiceAccount, name: agent, namespace: shop}")
            .expect("identity");
        Guardrails::for_identity(vec![policy], &identity, "shop")
    })
}

fuzz_target!(|r: Request| {
    let method = Method::from_bytes(METHODS[usize::from(r.method) % METHODS.len()].as_bytes())
        .expect("method");
    let info = RequestInfo::resolve(&method, &r.path, r.query.as_deref());
    assert_eq!(
        info,
        RequestInfo::resolve(&method, &r.path, r.query.as_deref())
    );
    let _ = info.full_resource();
    let pairs = query_pairs(r.query.as_deref());
    let _ = query_bool(&pairs, "stdin");
    let params = ExecParams::from_query(r.query.as_deref());
    let commands: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        params.command, commands,
        "exec command differs from the query's"
    );
    let _ = decide_builtin(guardrails(), &info);
});
