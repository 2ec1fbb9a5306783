//! A new version of the configuration file (the operator's ConfigMap, updated in place by the
//! kubelet) applies to the sessions that start after it; a broken version is refused and the
//! last good configuration stays in force.

use std::time::{Duration, Instant};

use crate::common::{Proxy, ProxyBuilder};

const APPLIED: &str = "portcullis_sidecar_config_reloads_total{result=\"applied\"}";
const REFUSED: &str = "portcullis_sidecar_config_reloads_total{result=\"refused\"}";

async fn wait_for_metric(proxy: &Proxy, sample: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.metric(sample).await != value {
        assert!(Instant::now() < deadline, "{sample} never reached {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn refused(c: &tokio_postgres::Client, sql: &str) -> Option<String> {
    match c.simple_query(sql).await {
        Ok(_) => None,
        Err(e) => {
            let db = e.as_db_error().expect("a server error");
            assert_eq!(db.code().code(), "42501", "{db:?}");
            Some(db.message().to_owned())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_applies_to_new_sessions_and_a_broken_one_is_refused() {
    let proxy = ProxyBuilder::default()
        .policy(
            "tables",
            "guardrails:\n- {name: off-limits, tables: [orders], action: deny}",
        )
        .start()
        .await;
    let before = proxy.client().await;
    let message = refused(&before, "SELECT count(*) FROM orders").await;
    assert!(message.is_some_and(|m| m.contains("off-limits")));
    assert!(refused(&before, "SELECT count(*) FROM customers")
        .await
        .is_none());

    // The policy now guards customers instead of orders.
    let file = proxy.config_file();
    let text = std::fs::read_to_string(&file).expect("config");
    assert!(text.contains("tables: [orders]"));
    std::fs::write(
        &file,
        text.replace("tables: [orders]", "tables: [customers]"),
    )
    .expect("rewrite");
    wait_for_metric(&proxy, APPLIED, 1.0).await;
    let after = proxy.client().await;
    assert!(refused(&after, "SELECT count(*) FROM orders")
        .await
        .is_none());
    let message = refused(&after, "SELECT count(*) FROM customers").await;
    assert!(message.is_some_and(|m| m.contains("off-limits")));
    // A session keeps the configuration it started with.
    assert!(refused(&before, "SELECT count(*) FROM orders")
        .await
        .is_some());

    // A version that does not parse is refused; the last good one stays.
    let good = std::fs::read_to_string(&file).expect("config");
    std::fs::write(&file, "resources: [this is not a sidecar configuration").expect("break");
    wait_for_metric(&proxy, REFUSED, 1.0).await;
    let later = proxy.client().await;
    assert!(refused(&later, "SELECT count(*) FROM customers")
        .await
        .is_some());
    assert!(refused(&later, "SELECT count(*) FROM orders")
        .await
        .is_none());
    assert_eq!(proxy.metric(APPLIED).await, 1.0);

    // Restoring a good version applies again.
    std::fs::write(
        &file,
        good.replace("tables: [customers]", "tables: [orders]"),
    )
    .expect("restore");
    wait_for_metric(&proxy, APPLIED, 2.0).await;
    let last = proxy.client().await;
    assert!(refused(&last, "SELECT count(*) FROM orders")
        .await
        .is_some());
    proxy.stop().await;
}
