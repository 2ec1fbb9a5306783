//! Outgoing notification of new AccessRequests: a Slack-compatible JSON message (`{"text":
//! ...}`) with the command that approves the request, POSTed to the policy's
//! `approval.notifyUrl`, retried with exponential backoff. A notification that cannot be
//! delivered is logged; it never holds up the request itself.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use kube::ResourceExt;
use portcullis_crds::display::escape;
use portcullis_crds::AccessRequest;

/// Attempts before a notification is given up.
pub const ATTEMPTS: u32 = 5;

/// The message for a new request.
pub fn message(ar: &AccessRequest) -> serde_json::Value {
    let ns = ar.namespace().unwrap_or_default();
    let name = ar.name_any();
    let op = &ar.spec.operation;
    // Everything the requester's side wrote is shown with hidden characters escaped.
    let what = escape(
        &op.statement.clone().unwrap_or_else(|| op.command.join(" ")),
        false,
    )
    .replace('`', "\\`");
    // What the sidecar read (the definitions run, the bound values), apart from the text.
    let mut uses = String::new();
    for definition in &op.runs {
        uses.push_str(&format!(
            "\nRuns (read by the sidecar): `{}`",
            escape(definition, false).replace('`', "\\`")
        ));
    }
    if !op.bound_values.is_empty() {
        uses.push_str(&format!(
            "\nBound values (read by the sidecar): `{}`",
            op.bound_values
                .iter()
                .map(|v| escape(v, false).replace('`', "\\`"))
                .collect::<Vec<_>>()
                .join("`, `")
        ));
    }
    let why = ar
        .spec
        .justification
        .as_deref()
        .map(|j| format!("\nJustification: {}", escape(j, false)))
        .unwrap_or_default();
    let covers = match op.covers {
        portcullis_crds::GrantCovers::Values => "",
        portcullis_crds::GrantCovers::Shape => " (the grant covers ANY values in the placeholders)",
    };
    serde_json::json!({
        "text": format!(
            "Approval needed: {} wants to run `{what}`{covers} on {} (policy {}, rule {}).{uses}{why}\nInspect: kubectl portcullis show {name} -n {ns}\nApprove: kubectl portcullis approve {name} -n {ns} --reason \"...\"\nDeny: kubectl portcullis deny {name} -n {ns} --reason \"...\"",
            escape(&ar.spec.requester.name, false),
            escape(&ar.spec.resource, false),
            escape(&ar.spec.policy, false),
            escape(&ar.spec.rule, false)
        )
    })
}

/// POST `body` to `url`, retrying with backoff from `first_delay`; returns the attempts used.
pub async fn deliver(
    url: &str,
    body: &serde_json::Value,
    first_delay: Duration,
) -> Result<u32, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: HttpClient<_, Full<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build(connector);
    let payload = Bytes::from(serde_json::to_vec(body).map_err(|e| e.to_string())?);
    let mut delay = first_delay;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let request = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(payload.clone()))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
            Ok(Ok(r)) if r.status().is_success() => return Ok(attempt),
            Ok(Ok(r)) => last = format!("HTTP {}", r.status()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer within 10s".into(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
    Err(format!("gave up after {ATTEMPTS} attempts: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A webhook receiver on loopback that fails the first request and accepts the second.
    async fn receiver() -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for status in ["500 Internal Server Error", "200 OK"] {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = vec![0u8; 65536];
                let mut got = 0;
                // Read until the JSON body is complete.
                loop {
                    let n = s.read(&mut buf[got..]).await.expect("read");
                    got += n;
                    let text = String::from_utf8_lossy(&buf[..got]).into_owned();
                    if n == 0 || text.trim_end().ends_with('}') {
                        bodies.push(text);
                        break;
                    }
                }
                let reply =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                s.write_all(reply.as_bytes()).await.expect("write");
            }
            bodies
        });
        (url, task)
    }

    #[tokio::test]
    async fn delivers_with_retry_a_message_that_says_how_to_approve() {
        let ar: AccessRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": "r1", "namespace": "agents"},
            "spec": {
                "requester": {"name": "support-agent", "serviceAccount": "system:serviceaccount:agents:support-agent"},
                "resource": "customers-db", "policy": "gdpr", "rule": "customer-writes",
                "operation": {"kind": "sql", "statement": "DELETE FROM customers WHERE id = $1", "fingerprint": "f"},
                "justification": "ticket 4711"
            }
        }))
        .expect("request");
        let (url, task) = receiver().await;
        let attempts = deliver(&url, &message(&ar), Duration::from_millis(50))
            .await
            .expect("delivered");
        assert_eq!(attempts, 2);
        let bodies = task.await.expect("receiver");
        assert_eq!(bodies.len(), 2);
        assert!(bodies[1].contains("POST /hook"), "{}", bodies[1]);
        assert!(
            bodies[1].contains("kubectl portcullis approve r1 -n agents"),
            "{}",
            bodies[1]
        );
        assert!(bodies[1].contains("DELETE FROM customers WHERE id = $1"));
        assert!(bodies[1].contains("Justification: ticket 4711"));
    }

    #[tokio::test]
    async fn gives_up_after_the_last_attempt() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let err = deliver(
            &format!("http://127.0.0.1:{closed}/"),
            &serde_json::json!({"text": "x"}),
            Duration::from_millis(10),
        )
        .await
        .expect_err("nothing listens");
        assert!(err.starts_with("gave up after 5 attempts"), "{err}");
    }
}
