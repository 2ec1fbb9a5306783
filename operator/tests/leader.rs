//! Two operator replicas against the real kube-apiserver: one leads (holds the Lease and
//! runs the controllers), both serve webhooks; when the leader stops without releasing the
//! Lease, the other takes over once it expires and reconciles.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use portcullis_crds::GatewayPolicy;
use portcullis_e2e::harness;
use serde_json::json;

async fn holder(api: &Api<Lease>) -> Option<(String, i32)> {
    let spec = api.get_opt("portcullis-operator").await.ok()??.spec?;
    Some((spec.holder_identity?, spec.lease_transitions.unwrap_or(0)))
}

async fn leader_gauge(port: u16) -> Option<bool> {
    let (code, body) = http_get(port, "/metrics").await;
    (code == 200).then(|| body.lines().any(|l| l == "portcullis_leader 1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_the_other_takes_over_when_it_stops() {
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("portcullis-ha").await;
    let settings_a = operator_settings(&ns, "replica-a", "portcullis-test-ha");
    let settings_b = operator_settings(&ns, "replica-b", "portcullis-test-ha");
    let port =
        |s: &portcullis_operator::Settings| s.metrics_addr.map(|a| a.port()).unwrap_or_default();
    let (port_a, port_b) = (port(&settings_a), port(&settings_b));
    let a = tokio::spawn(portcullis_operator::run(
        client.clone(),
        settings_a,
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = tokio::spawn(portcullis_operator::run(
        client.clone(),
        settings_b,
        std::future::pending(),
    ));

    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let (first, transitions) =
        eventually(Duration::from_secs(15), "a leader", || holder(&leases)).await;
    // Exactly one replica runs the controllers.
    let (gauge_a, gauge_b) = eventually(Duration::from_secs(10), "leader gauges", || async {
        let g = (leader_gauge(port_a).await?, leader_gauge(port_b).await?);
        (g.0 != g.1).then_some(g)
    })
    .await;
    let (leader, follower, follower_id) = if first == "replica-a" {
        (a, b, "replica-b")
    } else {
        (b, a, "replica-a")
    };
    assert_eq!(gauge_a, first == "replica-a");
    assert_eq!(gauge_b, first == "replica-b");
    // It stays leader while it renews.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(holder(&leases).await.map(|h| h.0), Some(first.clone()));

    // The leader stops abruptly (no release): the follower takes over after the Lease expires.
    leader.abort();
    let _ = leader.await;
    let started = std::time::Instant::now();
    let (new, new_transitions) = eventually(Duration::from_secs(15), "failover", || async {
        holder(&leases).await.filter(|(h, _)| h == follower_id)
    })
    .await;
    assert_eq!(new, follower_id);
    assert!(new_transitions > transitions);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "failover took {:?}",
        started.elapsed()
    );

    // ...and reconciles.
    let work = h.namespace("ha-work").await;
    postgres_resource(&client, &work, "db", 5432, "db-credentials").await;
    let gp: GatewayPolicy = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "GatewayPolicy",
        "metadata": {"name": "p"}, "spec": {"masking": [{"name": "emails", "detector": "email"}]},
    }))
    .expect("policy");
    let gps: Api<GatewayPolicy> = Api::namespaced(client.clone(), &work);
    gps.create(&PostParams::default(), &gp)
        .await
        .expect("policy");
    eventually(Duration::from_secs(60), "new leader compiles", || async {
        gps.get("p").await.ok()?.status?.config_hash
    })
    .await;
    follower.abort();
    let _ = follower.await;
}
