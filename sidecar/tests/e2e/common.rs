//! Test support: a sidecar started in-process in front of the harness PostgreSQL, with its
//! own credential files and audit spool.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_crds::audit::{AuditEvent, AuditRecord, CompletionRecord, StatementRecord};
use portcullis_crds::SidecarConfig;
use portcullis_sidecar::config::Options;
use portcullis_sidecar::identity::oidc::OidcOptions;
use portcullis_sidecar::Sidecar;
use tokio_postgres::{Client, NoTls};

/// How to start a proxy.
pub struct ProxyBuilder {
    policies_yaml: String,
    policy_names: Vec<String>,
    tls_mode: String,
    ca_file: Option<PathBuf>,
    server_name: Option<String>,
    user: String,
    password: String,
    max_statement_bytes: Option<usize>,
    upstream_port: Option<u16>,
    identity: (String, String, Option<String>),
    spool_dir: Option<PathBuf>,
    audit: Option<(String, PathBuf, PathBuf)>,
    oidc: Option<OidcOptions>,
    hash_key: Option<String>,
    resource_yaml: String,
}

/// A running proxy.
pub struct Proxy {
    sidecar: Option<Sidecar>,
    /// Temporary directory with the credential files and the spool.
    pub dir: tempfile::TempDir,
    /// The proxy's address.
    pub port: u16,
    /// Admin address.
    pub admin: std::net::SocketAddr,
    spool: PathBuf,
}

impl Default for ProxyBuilder {
    fn default() -> Self {
        let h = portcullis_e2e::harness();
        ProxyBuilder {
            policies_yaml: String::new(),
            policy_names: Vec::new(),
            tls_mode: "disable".into(),
            ca_file: None,
            server_name: None,
            user: "app".into(),
            password: h.pg_password().to_owned(),
            max_statement_bytes: None,
            upstream_port: None,
            identity: ("agents".into(), "agent".into(), None),
            spool_dir: None,
            audit: None,
            oidc: None,
            hash_key: None,
            resource_yaml: String::new(),
        }
    }
}

impl ProxyBuilder {
    /// Add a policy (YAML of one PolicyConfig, without the leading dash).
    pub fn policy(mut self, name: &str, body_yaml: &str) -> Self {
        let indented: String = body_yaml.lines().map(|l| format!("  {l}\n")).collect();
        self.policies_yaml
            .push_str(&format!("- name: {name}\n{indented}"));
        self.policy_names.push(name.to_owned());
        self
    }

    /// Upstream TLS.
    pub fn tls(mut self, mode: &str, ca: Option<PathBuf>, server_name: Option<&str>) -> Self {
        self.tls_mode = mode.into();
        self.ca_file = ca;
        self.server_name = server_name.map(str::to_owned);
        self
    }

    /// Upstream credential.
    pub fn credential(mut self, user: &str, password: &str) -> Self {
        self.user = user.into();
        self.password = password.into();
        self
    }

    /// Statement size limit.
    pub fn max_statement_bytes(mut self, n: usize) -> Self {
        self.max_statement_bytes = Some(n);
        self
    }

    /// How OIDC key sets are cached and fetched.
    pub fn oidc(mut self, options: OidcOptions) -> Self {
        self.oidc = Some(options);
        self
    }

    /// Key of the masking `hash` strategy (written to a file the configuration names).
    pub fn hash_key(mut self, key: &str) -> Self {
        self.hash_key = Some(key.to_owned());
        self
    }

    /// Further settings of the resource (YAML lines indented by two spaces).
    pub fn resource_settings(mut self, yaml: &str) -> Self {
        self.resource_yaml.push_str(yaml);
        self
    }

    /// Point the proxy at another port of the harness host.
    pub fn upstream_port(mut self, port: u16) -> Self {
        self.upstream_port = Some(port);
        self
    }

    /// The caller's identity: service account `name` of `namespace`, in `pod`.
    pub fn identity(mut self, namespace: &str, name: &str, pod: Option<&str>) -> Self {
        self.identity = (namespace.into(), name.into(), pod.map(str::to_owned));
        self
    }

    /// Use this spool directory instead of a fresh one (a restarted sidecar).
    pub fn spool_dir(mut self, dir: &Path) -> Self {
        self.spool_dir = Some(dir.to_path_buf());
        self
    }

    /// Ship the spool to the audit service at `url`.
    pub fn audit_service(mut self, url: &str, ca_file: &Path, token_file: &Path) -> Self {
        self.audit = Some((url.into(), ca_file.to_path_buf(), token_file.to_path_buf()));
        self
    }

    /// Start the proxy.
    pub async fn start(self) -> Proxy {
        self.try_start().await.expect("sidecar starts")
    }

    /// Start the proxy, returning the start-up error.
    pub async fn try_start(self) -> Result<Proxy, portcullis_sidecar::StartError> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let h = portcullis_e2e::harness();
        let dir = tempfile::tempdir().expect("temp dir");
        let creds = dir.path().join("creds");
        std::fs::create_dir_all(&creds).expect("creds dir");
        std::fs::write(creds.join("username"), format!("{}\n", self.user)).expect("user file");
        std::fs::write(creds.join("password"), format!("{}\n", self.password))
            .expect("password file");
        let mut upstream = format!(
            "    host: {}\n    port: {}\n    tlsMode: {}\n",
            h.pg_host(),
            self.upstream_port.unwrap_or(h.pg_port()),
            self.tls_mode
        );
        if let Some(ca) = &self.ca_file {
            upstream.push_str(&format!("    caFile: {}\n", ca.display()));
        }
        if let Some(sn) = &self.server_name {
            upstream.push_str(&format!("    serverName: {sn}\n"));
        }
        let spool = self
            .spool_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("spool"));
        let shipping = match &self.audit {
            Some((url, ca, token)) => format!(
                "  serviceUrl: {url}\n  caFile: {}\n  tokenFile: {}\n",
                ca.display(),
                token.display()
            ),
            None => String::new(),
        };
        let masking = match &self.hash_key {
            Some(key) => {
                let path = dir.path().join("hash-key");
                std::fs::write(&path, key).expect("hash key file");
                format!("masking:\n  hashKeyFile: {}\n", path.display())
            }
            None => String::new(),
        };
        let yaml = format!(
            "apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: {namespace}
adminListen: 127.0.0.1:0
{masking}audit:
  spoolDir: {spool}
{shipping}resources:
- name: shop-db
  type: postgres
  listenPort: 0
  upstream:
{upstream}  credentials:
    usernameFile: {creds}/username
    passwordFile: {creds}/password
  policies: [{names}]
{resource_yaml}policies:{policies}",
            resource_yaml = self.resource_yaml,
            namespace = self.identity.0,
            spool = spool.display(),
            creds = creds.display(),
            names = self.policy_names.join(", "),
            policies = if self.policies_yaml.is_empty() {
                " []\n".to_owned()
            } else {
                format!("\n{}", self.policies_yaml)
            },
        );
        let config = SidecarConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        // Written out too, so the sidecar watches it for new versions as it does in a pod.
        let config_file = dir.path().join("sidecar.yaml");
        std::fs::write(&config_file, &yaml).expect("config file");
        let mut options = Options::service_account(&self.identity.0, &self.identity.1);
        options.config_path = Some(config_file);
        options.identity.pod = self.identity.2.clone();
        if let Some(n) = self.max_statement_bytes {
            options.limits.max_statement_bytes = n;
        }
        if let Some(o) = self.oidc {
            options.oidc = o;
        }
        let sidecar = portcullis_sidecar::start(config, options).await?;
        let port = sidecar.addr("shop-db").expect("listening").port();
        let admin = sidecar.admin_addr();
        Ok(Proxy {
            sidecar: Some(sidecar),
            dir,
            port,
            admin,
            spool,
        })
    }
}

impl Proxy {
    /// A proxy without policies (built-in rules only).
    pub async fn plain() -> Proxy {
        ProxyBuilder::default().start().await
    }

    /// libpq URL of the proxy (no password: the agent does not know it).
    pub fn url(&self) -> String {
        format!(
            "postgresql://agent@127.0.0.1:{}/shop?sslmode=disable",
            self.port
        )
    }

    /// tokio-postgres configuration string.
    pub fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=agent dbname=shop sslmode=disable",
            self.port
        )
    }

    /// A connected tokio-postgres client.
    pub async fn client(&self) -> Client {
        connect(&self.conn_str()).await
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool.clone()
    }

    /// The running sidecar.
    pub fn sidecar(&self) -> &Sidecar {
        self.sidecar.as_ref().expect("running")
    }

    /// The sidecar's Prometheus metrics.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("admin endpoint");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.expect("response");
        out
    }

    /// Every record in the spool, in order (completion records the sidecar keeps for its next
    /// write are written first).
    pub fn records(&self) -> Vec<AuditRecord> {
        if let Some(sidecar) = &self.sidecar {
            sidecar.spool().write_later().expect("spool");
        }
        read_spool(&self.spool_dir())
    }

    /// Statement records whose normalised text contains `needle` (case-insensitive), or all
    /// statement records when `needle` is empty.
    pub fn statements(&self) -> Vec<StatementRecord> {
        self.records()
            .into_iter()
            .filter_map(|r| match r.event {
                AuditEvent::Statement(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// Wait until a completion record for `statement_id` is in the spool.
    pub async fn completion(&self, statement_id: u64) -> CompletionRecord {
        for _ in 0..100 {
            for r in self.records() {
                if let AuditEvent::Completion(c) = r.event {
                    if c.statement_id == statement_id {
                        return c;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no completion record for statement {statement_id}");
    }

    /// The configuration file the proxy watches.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("sidecar.yaml")
    }

    /// The value of one sample of the proxy's `/metrics` (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("admin endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("metrics request");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("metrics response");
        out.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Stop the proxy.
    pub async fn stop(mut self) {
        if let Some(s) = self.sidecar.take() {
            s.shutdown().await;
        }
    }
}

/// Read every record of a spool directory.
pub fn read_spool(dir: &Path) -> Vec<AuditRecord> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(portcullis_sidecar::audit::spool::segment_index)
                        .is_some()
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            // The writer only ever appends whole lines.
            out.push(
                serde_json::from_str(line).unwrap_or_else(|e| panic!("bad record {line}: {e}")),
            );
        }
    }
    out
}

/// Connect tokio-postgres and drive the connection in the background.
pub async fn connect(conn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conn}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A client connected directly to PostgreSQL as `app`.
pub async fn direct() -> Client {
    connect(&direct_conn_str()).await
}

/// tokio-postgres configuration string of the direct connection.
pub fn direct_conn_str() -> String {
    let h = portcullis_e2e::harness();
    format!(
        "host={} port={} user=app password={} dbname=shop sslmode=disable",
        h.pg_host(),
        h.pg_port(),
        h.pg_password()
    )
}

/// An admin client (superuser `postgres`).
pub async fn admin() -> Client {
    let h = portcullis_e2e::harness();
    connect(h.pg_admin_url()).await
}

/// Run a command, returning (success, stdout, stderr).
pub fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A protocol 3.0 StartupMessage for user `agent` and database `shop`.
pub fn startup_packet() -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for s in ["user", "agent", "database", "shop"] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend(body);
    out
}
