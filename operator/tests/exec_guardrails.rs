//! Exec guardrails against the families of known bypasses, end to end: each attempt first
//! removes a directory when run directly against the real kube-apiserver, then runs through
//! the sidecar under the shipped example policies (examples/ci-exec: the denylist style and
//! the allow-list style) and must be refused with the directory left in place; ordinary
//! read-only commands still run under both.
//!
//! The harness's Node is served by the kubelet's own streaming code, which runs commands as
//! local processes, so every attempt really runs (or is really refused).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use portcullis_crds::sidecar_config::PolicyConfig;
use portcullis_crds::{GatewayPolicy, SidecarConfig};
use portcullis_e2e::harness;
use portcullis_sidecar::config::Options;
use serde::Deserialize;

const PLACEHOLDER: &str = "portcullis-placeholder-token";

/// kubectl exec with a kubeconfig; `input` is sent on standard input (`-i`).
fn exec(kubeconfig: &str, spdy: bool, input: Option<&str>, argv: &[String]) -> Output {
    let h = harness();
    let mut args: Vec<String> = vec!["exec".into()];
    if input.is_some() {
        args.push("-i".into());
    }
    args.extend(["web-0".into(), "-c".into(), "app".into(), "--".into()]);
    args.extend(argv.iter().cloned());
    let mut child = Command::new(h.kubectl_path())
        .env("KUBECONFIG", kubeconfig)
        .env(
            "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
            if spdy { "false" } else { "true" },
        )
        .args(&args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    if let Some(text) = input {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("kubectl output")
}

/// The GatewayPolicy of an example file, compiled as the operator compiles it; its subjects
/// are cleared so that it governs the test's service account.
fn example_policy(file: &str) -> PolicyConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/ci-exec")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("example");
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).expect("yaml");
        if value["kind"] == "GatewayPolicy" {
            let gp: GatewayPolicy = serde_yaml::from_value(value).expect("GatewayPolicy");
            let name = gp.metadata.name.clone().unwrap_or_default();
            let mut p = PolicyConfig::compile(&name, 1, &gp.spec).expect("the example compiles");
            p.subjects.clear();
            return p;
        }
    }
    panic!("no GatewayPolicy in {file}");
}

struct Attempt {
    family: &'static str,
    argv: Vec<String>,
    input: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bypass_family_is_refused_under_both_example_policies() {
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("exec-guard").await;
    h.service_account(&ns, "agent").await;
    common::create::<Role>(&client, &ns, serde_json::json!({
        "metadata": {"name": "agent"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["pods/exec", "pods/attach"], "verbs": ["create", "get"]}
        ]
    }))
    .await;
    common::create::<RoleBinding>(
        &client,
        &ns,
        serde_json::json!({
            "metadata": {"name": "agent"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent"},
            "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}]
        }),
    )
    .await;
    let target: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-0", "labels": {"tier": "web"}},
        "spec": {"nodeName": h.exec_node(), "containers": [{"name": "app", "image": "app:1"}]}
    }))
    .expect("pod");
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &target)
        .await
        .expect("create the target pod");

    let dir = tempfile::tempdir().expect("temp dir");
    let certs = portcullis_operator::certs::generate(
        &["127.0.0.1".to_owned(), "localhost".to_owned()],
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
    .expect("certificates");
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    std::fs::write(tls.join("tls.crt"), &certs.cert_pem).expect("cert");
    std::fs::write(tls.join("tls.key"), &certs.key_pem).expect("key");
    let ca = dir.path().join("sidecar-ca.crt");
    std::fs::write(&ca, &certs.ca_pem).expect("ca");
    let token = h.token(&ns, "agent", None, None).await;
    let token_file = dir.path().join("sidecar-token");
    std::fs::write(&token_file, &token).expect("token");
    let api_url: http::Uri = h.apiserver_url().parse().expect("api url");

    // One sidecar resource per example policy.
    let denylist = example_policy("kubernetes-api.yaml");
    let allowlist = example_policy("allowlist.yaml");
    let resource = |name: &str, policy: &str| {
        format!(
            "- name: {name}
  type: kubernetes
  listenPort: {listen}
  upstream: {{host: {host}, port: {port}, tlsMode: verify-full, caFile: {ca}}}
  serverTls: {{certFile: {tls}/tls.crt, keyFile: {tls}/tls.key}}
  tokenFile: {token_file}
  policies: [{policy}]
",
            host = api_url.host().expect("host"),
            port = api_url.port_u16().unwrap_or(443),
            ca = h.ca_file(),
            tls = tls.display(),
            token_file = token_file.display(),
            listen = common::free_port(),
        )
    };
    let config_text = format!(
        "apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: {ns}
adminListen: 127.0.0.1:0
audit:
  spoolDir: {spool}
resources:
{deny}{allow}policies: {policies}
",
        spool = dir.path().join("spool").display(),
        deny = resource("denylist-api", &denylist.name),
        allow = resource("allowlist-api", &allowlist.name),
        policies = serde_json::to_string(&[&denylist, &allowlist]).expect("policies"),
    );
    let config = SidecarConfig::from_yaml(&config_text).expect("sidecar config");
    let sidecar = portcullis_sidecar::start(config, Options::service_account(&ns, "agent"))
        .await
        .expect("sidecar starts");
    let kubeconfig = |name: &str, server: &str, ca: &str, token: &str| {
        common::token_kubeconfig(&dir.path().join(name), server, ca, token, &ns)
    };
    let direct = kubeconfig("direct", h.apiserver_url(), h.ca_file(), &token);
    let ca_text = ca.to_string_lossy().into_owned();
    let through = |resource: &str| {
        let port = sidecar.addr(resource).expect("listening").port();
        kubeconfig(
            resource,
            &format!("https://127.0.0.1:{port}"),
            &ca_text,
            PLACEHOLDER,
        )
    };
    let policies = [
        ("denylist", through("denylist-api")),
        ("allowlist", through("allowlist-api")),
    ];

    // The victim a successful attempt removes, and files some attempts need.
    let victim = dir.path().join("victim");
    let v = victim.display().to_string();
    let bash_env = dir.path().join("bash-env");
    std::fs::write(&bash_env, format!("rm -rf {v}\n")).expect("bash env");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::write(home.join(".bash_profile"), format!("rm -rf {v}\n")).expect("profile");
    let link = dir.path().join("ls-link");
    let script = dir.path().join("p.sh");
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("rm -rf {v}\n"))
    };
    let a = |family: &'static str, argv: &[&str], input: Option<&str>| Attempt {
        family,
        argv: argv
            .iter()
            .map(|w| {
                w.replace("VICTIM", &v)
                    .replace("BASHENV", &bash_env.display().to_string())
                    .replace("HOMEDIR", &home.display().to_string())
                    .replace("LINK", &link.display().to_string())
                    .replace("SCRIPT", &script.display().to_string())
                    .replace("B64", &b64)
            })
            .collect(),
        input: input.map(|i| i.replace("VICTIM", &v)),
    };
    let attempts = vec![
        a(
            "shell words: ANSI-C quoting",
            &["bash", "-c", "$'\\x72m' -rf VICTIM"],
            None,
        ),
        a(
            "shell words: brace expansion",
            &["bash", "-c", "{rm,-rf,VICTIM}"],
            None,
        ),
        a(
            "shell words: glob as program",
            &["sh", "-c", "/bin/r? -rf VICTIM"],
            None,
        ),
        a(
            "shell words: bracket glob",
            &["sh", "-c", "/bin/[r]m -rf VICTIM"],
            None,
        ),
        a(
            "shell words: alias",
            &[
                "bash",
                "-c",
                "shopt -s expand_aliases\nalias x=rm\nx -rf VICTIM",
            ],
            None,
        ),
        a(
            "wrappers: xargs -P",
            &["xargs", "-P", "2", "rm", "-rf"],
            Some("VICTIM\n"),
        ),
        a(
            "wrappers: nice --adjustment",
            &["nice", "--adjustment", "5", "rm", "-rf", "VICTIM"],
            None,
        ),
        a(
            "wrappers: taskset -c",
            &["taskset", "-c", "0", "rm", "-rf", "VICTIM"],
            None,
        ),
        a(
            "wrappers: chrt -o",
            &["chrt", "-o", "0", "rm", "-rf", "VICTIM"],
            None,
        ),
        a(
            "wrappers: exec -a",
            &["bash", "-c", "exec -a ls rm -rf VICTIM"],
            None,
        ),
        a(
            "wrappers: time -f",
            &["time", "-f", "%e", "rm", "-rf", "VICTIM"],
            None,
        ),
        a(
            "runners: find -exec",
            &[
                "find",
                "VICTIM",
                "-maxdepth",
                "0",
                "-exec",
                "rm",
                "-rf",
                "{}",
                "+",
            ],
            None,
        ),
        a(
            "runners: sed e",
            &["sed", "-n", "1e rm -rf VICTIM", "/etc/hostname"],
            None,
        ),
        a(
            "runners: tar --checkpoint-action",
            &[
                "tar",
                "-cf",
                "/dev/null",
                "--checkpoint=1",
                "--checkpoint-action=exec=rm -rf VICTIM",
                "/etc/hostname",
            ],
            None,
        ),
        a("runners: rbash", &["rbash", "-c", "rm -rf VICTIM"], None),
        a(
            "runners: mawk",
            &["mawk", "BEGIN{system(\"rm -rf VICTIM\")}"],
            None,
        ),
        a(
            "runners: nawk",
            &["nawk", "BEGIN{system(\"rm -rf VICTIM\")}"],
            None,
        ),
        a(
            "runners: symlink under another name",
            &["sh", "-c", "ln -sf /bin/rm LINK; LINK -rf VICTIM"],
            None,
        ),
        a(
            "interpreters: python3 -Ic",
            &["python3", "-Ic", "import shutil; shutil.rmtree('VICTIM')"],
            None,
        ),
        a(
            "interpreters: perl -le",
            &["perl", "-le", "system('rm -rf VICTIM')"],
            None,
        ),
        a(
            "interpreters: base64 --dec into sh",
            &["sh", "-c", "echo B64 | base64 --dec | sh"],
            None,
        ),
        a(
            "interpreters: python3 -",
            &["python3", "-"],
            Some("import shutil; shutil.rmtree('VICTIM')\n"),
        ),
        a(
            "interpreters: perl from stdin",
            &["perl"],
            Some("system('rm -rf VICTIM');\n"),
        ),
        a(
            "files: BASH_ENV",
            &["env", "BASH_ENV=BASHENV", "bash", "-c", "true"],
            None,
        ),
        a(
            "files: login profile under another HOME",
            &["env", "HOME=HOMEDIR", "bash", "-lc", "true"],
            None,
        ),
        a(
            "files: written, then run",
            &["sh", "-c", "echo 'rm -rf VICTIM' > SCRIPT; sh SCRIPT"],
            None,
        ),
        a(
            "request: shell reading stdin",
            &["sh"],
            Some("rm -rf VICTIM\n"),
        ),
    ];
    let fresh = || {
        std::fs::create_dir_all(&victim).expect("victim");
        std::fs::write(victim.join("data"), "x").expect("victim data");
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_file(&script);
    };
    let mut failures = Vec::new();
    for (n, attempt) in attempts.iter().enumerate() {
        // Directly against kube-apiserver the attempt removes the victim.
        fresh();
        let out = tokio::task::block_in_place(|| {
            exec(&direct, false, attempt.input.as_deref(), &attempt.argv)
        });
        if victim.exists() {
            failures.push(format!(
                "{}: did not remove the victim when run directly: {}",
                attempt.family,
                common::text(&out)
            ));
            continue;
        }
        for (style, kubeconfig) in &policies {
            fresh();
            // Every other attempt goes over SPDY, the rest over WebSocket.
            let out = tokio::task::block_in_place(|| {
                exec(
                    kubeconfig,
                    n % 2 == 1,
                    attempt.input.as_deref(),
                    &attempt.argv,
                )
            });
            let message = common::text(&out);
            if !victim.exists() || out.status.success() || !message.contains("Forbidden") {
                failures.push(format!(
                    "{} ran through the sidecar under the {style} policy: {message}",
                    attempt.family
                ));
            }
            if *style == "allowlist" && !message.contains("exec-allow-list") {
                failures.push(format!(
                    "{}: the allow-list refusal does not name its rule: {message}",
                    attempt.family
                ));
            }
        }
    }

    // Ordinary read-only commands still run, unchanged, under both policies.
    let ordinary: &[&[&str]] = &[
        &["ls", "-l", "/etc/hostname"],
        &["cat", "/etc/os-release"],
        &["id"],
        &["date"],
        &["uname", "-a"],
        &["hostname"],
        &["df", "-h"],
        &["ps", "aux"],
        &["sh", "-c", "ls / && cat /etc/hostname"],
        &["echo", "hello"],
        &["whoami"],
        &["free", "-m"],
    ];
    for argv in ordinary {
        let argv: Vec<String> = argv.iter().map(|w| (*w).to_owned()).collect();
        let direct_out = tokio::task::block_in_place(|| exec(&direct, false, None, &argv));
        for (style, kubeconfig) in &policies {
            let out = tokio::task::block_in_place(|| exec(kubeconfig, false, None, &argv));
            if !out.status.success() {
                failures.push(format!(
                    "{argv:?} was refused under the {style} policy: {}",
                    common::text(&out)
                ));
            } else if argv[0] != "date"
                && argv[0] != "ps"
                && argv[0] != "df"
                && argv[0] != "free"
                && out.stdout != direct_out.stdout
            {
                failures.push(format!(
                    "{argv:?} printed something else under the {style} policy"
                ));
            }
        }
    }

    // The request is read as kube-apiserver reads it: `stdin=t` and `stdin=f` attach
    // standard input (only 0 and false do not), and a percent-encoded path is the exec
    // subresource too.
    for (style, resource) in [("denylist", "denylist-api"), ("allowlist", "allowlist-api")] {
        let port = sidecar.addr(resource).expect("listening").port();
        for path in [
            format!("/api/v1/namespaces/{ns}/pods/web-0/exec?command=sh&stdin=t&stdout=1"),
            format!("/api/v1/namespaces/{ns}/pods/web-0/exec?command=sh&stdin=f&stdout=1"),
            format!("/api/v1/namespaces/{ns}/pods/web-0/ex%65c?command=rm&command=-rf&command={v}&stdout=1"),
        ] {
            let out = tokio::task::block_in_place(|| {
                Command::new("curl")
                    .args(["-sS", "-X", "POST", "--cacert", &ca_text])
                    .arg(format!("https://127.0.0.1:{port}{path}"))
                    .output()
                    .expect("curl")
            });
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            if !body.contains("\"code\":403") {
                failures.push(format!("{path} under the {style} policy: {body}"));
            }
        }
    }

    sidecar.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
