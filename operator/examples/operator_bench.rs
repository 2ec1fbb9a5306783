//! Benchmark of the operator against the real kube-apiserver of the e2e harness.
//!
//! 1. Admission latency of the injection webhook: 1,000 pods created with server-side dry-run
//!    in an injected namespace, measured by the client, by the API server's own webhook
//!    histogram, and by the webhook's histogram.
//! 2. Reconcile time and memory: 1,000 ProtectedResources and 1,000 GatewayPolicies across 100
//!    namespaces, timed until every one is Ready / Accepted with its config hash; the
//!    operator's resident memory read from /proc.
//!
//! The operator runs as its real binary (pass it with `--operator-bin`). Run through
//! `e2e/bench/operator.sh`.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use portcullis_crds::conditions::is_true;
use portcullis_crds::{GatewayPolicy, ProtectedResource};
use portcullis_operator::webhook::config::{self, Options, Target};
use serde_json::json;

const SCOPE_LABEL: &str = "portcullis.dev/bench";
const WEBHOOKS: &str = "portcullis-bench";

struct Operator {
    child: Child,
    metrics_port: u16,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = s
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Cumulative histogram buckets (le -> count) of the metric lines matching all `filters`.
fn buckets(text: &str, metric: &str, filters: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if !line.starts_with(&format!("{metric}_bucket{{"))
            || !filters.iter().all(|f| line.contains(f))
        {
            continue;
        }
        let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(le.to_owned()).or_insert(0.0) += value;
    }
    out
}

/// The smallest bucket bound holding `q` of the observations between two snapshots.
fn quantile_bound(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    q: f64,
) -> (String, f64) {
    let mut rows: Vec<(f64, String, f64)> = after
        .iter()
        .map(|(le, v)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            (
                bound,
                le.clone(),
                v - before.get(le).copied().unwrap_or(0.0),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = rows.last().map(|r| r.2).unwrap_or(0.0);
    for (_, le, count) in &rows {
        if total > 0.0 && *count >= q * total {
            return (le.clone(), total);
        }
    }
    ("+Inf".to_owned(), total)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len() - 1);
    sorted[idx]
}

async fn labelled_namespace(
    client: &Client,
    name: &str,
    labels: serde_json::Value,
) -> anyhow::Result<()> {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    // No controller-manager in the harness creates it.
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), name)
        .create(&PostParams::default(), &sa)
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .iter()
        .position(|a| a == "--operator-bin")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("usage: operator_bench --operator-bin PATH"))?;
    let run_id: String = format!("{:x}", std::process::id());
    let h = portcullis_e2e::harness();
    h.install_crds().await;
    let client = h.client().await;

    // The operator, as its real binary.
    let system = format!("bench-system-{run_id}");
    labelled_namespace(&client, &system, json!({})).await?;
    let (webhook_port, metrics_port) = (free_port(), free_port());
    let opts = Options {
        name: WEBHOOKS.to_owned(),
        target: Target::Url(format!("https://127.0.0.1:{webhook_port}")),
        ca_bundle: None,
        excluded_namespaces: vec!["kube-system".to_owned(), system.clone()],
        namespace_labels: BTreeMap::from([(SCOPE_LABEL.to_owned(), run_id.clone())]),
    };
    let pp = PatchParams::apply("portcullis-bench").force();
    let mut m = serde_json::to_value(config::mutating(&opts))?;
    m["apiVersion"] = json!("admissionregistration.k8s.io/v1");
    m["kind"] = json!("MutatingWebhookConfiguration");
    let mapi: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    mapi.patch(WEBHOOKS, &pp, &Patch::Apply(m)).await?;

    let child = Command::new(&bin)
        .env("KUBECONFIG", h.kubeconfig())
        .env("RUST_LOG", "warn")
        .args([
            "--namespace",
            &system,
            "--identity",
            "bench",
            "--webhook-addr",
            &format!("127.0.0.1:{webhook_port}"),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--webhook-san",
            "127.0.0.1",
            "--mutating-webhooks",
            WEBHOOKS,
            "--validating-webhooks",
            WEBHOOKS,
        ])
        .stdout(Stdio::null())
        .spawn()?;
    let op = Operator {
        child,
        metrics_port,
    };

    let start = Instant::now();
    while !http_get(op.metrics_port, "/readyz")
        .await
        .contains("200 OK")
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "operator not ready in 30s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. Admission latency.
    let ns = format!("bench-inject-{run_id}");
    labelled_namespace(
        &client,
        &ns,
        json!({SCOPE_LABEL: run_id, "portcullis.dev/inject": "enabled"}),
    )
    .await?;
    let pr: ProtectedResource = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "ProtectedResource", "metadata": {"name": "db"},
        "spec": {"type": "postgres", "endpoint": {"host": "db", "port": 5432}, "credentialsSecretRef": {"name": "db"}, "listenPort": 5432},
    }))?;
    Api::<ProtectedResource>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pr)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "agent-"},
        "spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1"}]},
    }))?;
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    // Warm up until the API server calls the webhook (caBundle patched, config cached).
    let start = Instant::now();
    loop {
        let attempt = pods.create(&dry, &pod).await;
        if let Err(e) = &attempt {
            eprintln!("warm-up: {e}");
        }
        if let Ok(p) = attempt {
            if p.spec
                .and_then(|s| s.init_containers)
                .is_some_and(|c| !c.is_empty())
            {
                break;
            }
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "webhook not active in 30s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..50 {
        pods.create(&dry, &pod).await?;
    }
    let api_metrics = || async {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        Ok::<String, anyhow::Error>(client.request_text(req).await?)
    };
    let api_filter = ["name=\"inject.portcullis.dev\"", "type=\"admit\""];
    for concurrency in [1usize, 4] {
        let api_before = buckets(
            &api_metrics().await?,
            "apiserver_admission_webhook_admission_duration_seconds",
            &api_filter,
        );
        let op_before = buckets(
            &http_get(op.metrics_port, "/metrics").await,
            "portcullis_admission_duration_seconds",
            &["webhook=\"inject\""],
        );
        let started = Instant::now();
        let mut latencies: Vec<Duration> = stream::iter(0..1000)
            .map(|_| {
                let pods = pods.clone();
                let pod = pod.clone();
                let dry = dry.clone();
                async move {
                    let t = Instant::now();
                    let created = pods.create(&dry, &pod).await;
                    let injected = created
                        .ok()
                        .and_then(|p| p.spec?.init_containers)
                        .is_some_and(|c| !c.is_empty());
                    (t.elapsed(), injected)
                }
            })
            .buffer_unordered(concurrency)
            .filter_map(|(d, ok)| async move { ok.then_some(d) })
            .collect()
            .await;
        let wall = started.elapsed();
        let api_after = buckets(
            &api_metrics().await?,
            "apiserver_admission_webhook_admission_duration_seconds",
            &api_filter,
        );
        let op_after = buckets(
            &http_get(op.metrics_port, "/metrics").await,
            "portcullis_admission_duration_seconds",
            &["webhook=\"inject\""],
        );
        latencies.sort();
        let (api_p99, api_n) = quantile_bound(&api_before, &api_after, 0.99);
        let (api_p50, _) = quantile_bound(&api_before, &api_after, 0.50);
        let (op_p99, op_n) = quantile_bound(&op_before, &op_after, 0.99);
        let (op_p50, _) = quantile_bound(&op_before, &op_after, 0.50);
        println!(
            "admission: {} pods injected (dry-run, {concurrency} concurrent) in {:.2}s",
            latencies.len(),
            wall.as_secs_f64()
        );
        println!(
            "admission: client-observed create latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
        println!("admission: API server webhook histogram ({api_n} calls): p50 <= {api_p50} s, p99 <= {api_p99} s (target p99 < 0.005 s)");
        println!(
            "admission: webhook's own histogram ({op_n} reviews): p50 <= {op_p50} s, p99 <= {op_p99} s"
        );
    }
    let pid = op.child.id();
    let (rss, hwm) = rss_kib(pid);
    println!(
        "memory: after admission RSS {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    // 2. Reconcile: 1,000 ProtectedResources and 1,000 GatewayPolicies in 100 namespaces.
    let label = format!("bench-{run_id}");
    let namespaces: Vec<String> = (0..100).map(|i| format!("bench-{run_id}-{i:03}")).collect();
    let started = Instant::now();
    let creates = stream::iter(namespaces.iter().cloned())
        .map(|ns| {
            let client = client.clone();
            let label = label.clone();
            async move {
                labelled_namespace(&client, &ns, json!({})).await?;
                let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "db"}, "stringData": {"username": "u", "password": "p"}}))?;
                Api::<Secret>::namespaced(client.clone(), &ns).create(&PostParams::default(), &secret).await?;
                let prs: Api<ProtectedResource> = Api::namespaced(client.clone(), &ns);
                let gps: Api<GatewayPolicy> = Api::namespaced(client.clone(), &ns);
                for i in 0..10 {
                    let pr: ProtectedResource = serde_json::from_value(json!({
                        "apiVersion": "portcullis.dev/v1alpha1", "kind": "ProtectedResource",
                        "metadata": {"name": format!("db-{i}"), "labels": {"bench": label, "tier": if i % 2 == 0 { "data" } else { "ops" }}},
                        "spec": {"type": "postgres", "endpoint": {"host": format!("db-{i}.data"), "port": 5432}, "database": "shop",
                                 "credentialsSecretRef": {"name": "db"}, "listenPort": 15432 + i},
                    }))?;
                    prs.create(&PostParams::default(), &pr).await?;
                    let gp: GatewayPolicy = serde_json::from_value(json!({
                        "apiVersion": "portcullis.dev/v1alpha1", "kind": "GatewayPolicy",
                        "metadata": {"name": format!("policy-{i}"), "labels": {"bench": label}},
                        "spec": {
                            "resourceSelector": {"matchLabels": {"tier": if i % 2 == 0 { "data" } else { "ops" }}},
                            "masking": [{"name": "emails", "detector": "email"}, {"name": "ids", "detector": "regex", "pattern": format!("ID-{i}-[0-9]{{6}}")}],
                            "guardrails": [{"name": "no-bulk-delete", "match": {"statementKinds": ["delete"], "missingWhere": true}, "action": "deny"}],
                            "lawfulBasis": "contract",
                        },
                    }))?;
                    gps.create(&PostParams::default(), &gp).await?;
                }
                Ok::<(), anyhow::Error>(())
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for r in creates {
        r?;
    }
    let created_in = started.elapsed();
    let lp = ListParams::default().labels(&format!("bench={label}"));
    let all_prs: Api<ProtectedResource> = Api::all(client.clone());
    let all_gps: Api<GatewayPolicy> = Api::all(client.clone());
    let mut peak = 0;
    let (ready_prs, ready_gps) = loop {
        let prs = all_prs.list(&lp).await?.items;
        let gps = all_gps.list(&lp).await?.items;
        let ready_prs = prs
            .iter()
            .filter(|p| {
                p.status.as_ref().is_some_and(|s| {
                    is_true(&s.conditions, "Ready")
                        && s.observed_generation == p.metadata.generation
                })
            })
            .count();
        let ready_gps = gps
            .iter()
            .filter(|g| {
                g.status.as_ref().is_some_and(|s| {
                    is_true(&s.conditions, "Accepted")
                        && s.config_hash.is_some()
                        && s.observed_generation == g.metadata.generation
                })
            })
            .count();
        peak = peak.max(rss_kib(pid).0);
        if ready_prs == 1000 && ready_gps == 1000 {
            break (ready_prs, ready_gps);
        }
        if started.elapsed() > Duration::from_secs(180) {
            break (ready_prs, ready_gps);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let all_ready = started.elapsed();
    let (rss, hwm) = rss_kib(pid);
    println!(
        "reconcile: created 100 namespaces, 1000 ProtectedResources, 1000 GatewayPolicies in {:.1}s",
        created_in.as_secs_f64()
    );
    println!(
        "reconcile: {ready_prs}/1000 ProtectedResources Ready and {ready_gps}/1000 GatewayPolicies Accepted with a config hash {:.1}s after the first create ({:.1}s after the last) (target 30 s)",
        all_ready.as_secs_f64(),
        (all_ready - created_in).as_secs_f64()
    );
    println!(
        "memory: operator RSS {:.1} MiB now, {:.1} MiB peak sampled, {:.1} MiB high-water mark (target < 100 MiB)",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    let text = http_get(op.metrics_port, "/metrics").await;
    for line in text.lines().filter(|l| {
        l.starts_with("portcullis_reconcile_total")
            || l.starts_with("portcullis_reconcile_errors_total")
    }) {
        println!("metrics: {line}");
    }
    let _ = mapi.delete(WEBHOOKS, &Default::default()).await;
    drop(op);
    Ok(())
}
