//! `kubectl-portcullis`: the kubectl plugin (`kubectl portcullis ...`).
//!
//!   kubectl portcullis show NAME [-n NAMESPACE]
//!   kubectl portcullis approve NAME --reason "..." [-n NAMESPACE]
//!   kubectl portcullis deny NAME --reason "..." [-n NAMESPACE]
//!   kubectl portcullis evidence --audit-url URL --ca FILE --token-file FILE -o DIR
//!       [--from RFC3339] [--to RFC3339] [--subject NAME [--issuer URL]] [--resource NAME] [-n NAMESPACE | -A]
//!   kubectl portcullis verify DIR --public-key FILE
//!       [--expect-head FILE | --from-cluster [-n NAMESPACE]] [--audit-url URL --ca FILE] [--allow-older]
//!   kubectl portcullis replay SESSION [--bundle DIR | --audit-url URL --ca FILE --token-file FILE]
//!       [--speed 1.0] [--max-wait 2.0] [--instant] [--show-input | --hide-input] [--raw]
//!
//! `show` prints a request with every control character, escape sequence, bidi override and
//! zero-width character written as a visible escape: what it prints is what the grant covers.
//! `approve`/`deny` set `spec.decision`; the API server's admission stamps who decided. The
//! evidence bundle, with the recordings of the exec sessions it names and a manifest the audit
//! service signs after recomputing the selection, verifies offline with the audit log's public
//! key; `--expect-head` or `--from-cluster` also pin it to a trusted head. A recording the
//! audit service no longer holds does not fail the export: the signed manifest lists it as
//! missing, and `verify` names it and exits non-zero. `replay` plays a recorded exec session in the terminal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use portcullis_audit::asciicast::{play, Cast, PlayOptions, Render};
use portcullis_audit::bundle::{
    add_recording, find_recording, referenced_recordings, verify_bundle_trusting,
    write_bundle_from, Trust,
};
use portcullis_audit::client::{AuditClient, ShipError};
use portcullis_audit::manifest::Selection;
use portcullis_audit::recordings::{is_sha256, sha256_hex};
use portcullis_audit::verify::read_public_key;
use portcullis_crds::{display, AccessRequest, AuditRetention, GatewayPolicy, SignedTreeHead};

#[derive(Parser)]
#[command(
    name = "kubectl-portcullis",
    version,
    about = "Portcullis kubectl plugin"
)]
struct Cli {
    /// Namespace (defaults to the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args)]
struct EvidenceArgs {
    /// Base URL of the audit service (for example through `kubectl port-forward`).
    #[arg(long)]
    audit_url: String,
    /// PEM CA of the audit service (ConfigMap portcullis-audit-ca).
    #[arg(long)]
    ca: PathBuf,
    /// File holding a bearer token of a user allowed `get auditretentions/evidence`.
    #[arg(long)]
    token_file: PathBuf,
    /// Only records at or after this time (RFC 3339).
    #[arg(long)]
    from: Option<Timestamp>,
    /// Only records before this time (RFC 3339).
    #[arg(long)]
    to: Option<Timestamp>,
    /// Only records of this subject, as the audit service authenticated it: a service account
    /// (NAME or NAMESPACE/NAME, or its user name), or, with --issuer, the person its sidecar
    /// named (name or subject id). A person is (issuer, subject): a name people of some
    /// issuer carry is refused without --issuer.
    #[arg(long)]
    subject: Option<String>,
    /// Only records of people of this OIDC issuer (with --subject: that issuer's person).
    #[arg(long)]
    issuer: Option<String>,
    /// Only records of this ProtectedResource.
    #[arg(long)]
    resource: Option<String>,
    /// Export the records of every namespace (needs a cluster-wide binding); otherwise only
    /// those sent from -n NAMESPACE.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Output directory.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// A recording: a `.cast` file, or its SHA-256 (or, with --bundle, a unique prefix).
    session: String,
    /// Look the recording up in this evidence bundle (its `recordings/` folder).
    #[arg(long, conflicts_with = "audit_url")]
    bundle: Option<PathBuf>,
    /// Fetch the recording from the audit service at this base URL.
    #[arg(long, requires_all = ["ca", "token_file"])]
    audit_url: Option<String>,
    /// PEM CA of the audit service.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// File holding a bearer token of a user allowed `get auditretentions/evidence`.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Playback speed (2 plays twice as fast).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Longest pause between two events, in seconds.
    #[arg(long, default_value_t = 2.0)]
    max_wait: f64,
    /// Print the whole session at once.
    #[arg(long)]
    instant: bool,
    /// Print what was typed (input events) to standard error instead of inline; typed input
    /// is shown inline, marked `⟦in: ...⟧`, by default.
    #[arg(long, conflicts_with = "hide_input")]
    show_input: bool,
    /// Do not show typed input.
    #[arg(long)]
    hide_input: bool,
    /// Show the recorded output with its control sequences as text (`^[[2J`, `^M`) instead of
    /// the screen states of a terminal emulator (the default).
    #[arg(long, conflicts_with = "raw")]
    escaped: bool,
    /// Write the recorded output to the terminal as recorded (cursor moves, erases, colours)
    /// instead of the screen states of a terminal emulator; window titles, clipboard writes,
    /// hyperlinks and other OSC and DCS strings are dropped even then.
    #[arg(long)]
    raw: bool,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// Bundle directory.
    dir: PathBuf,
    /// File with the raw 32-byte ed25519 public key, or its hex.
    #[arg(long)]
    public_key: PathBuf,
    /// A signed tree head (JSON) the bundle's head must be, or be proven consistent with.
    #[arg(long, conflicts_with = "from_cluster")]
    expect_head: Option<PathBuf>,
    /// Trust the head the cluster witnesses (the AuditRetention status in -n NAMESPACE).
    #[arg(long)]
    from_cluster: bool,
    /// The witness AuditRetention read by --from-cluster.
    #[arg(long, default_value = "default")]
    witness: String,
    /// Fetch the consistency proof between the bundle's head and the trusted head from the
    /// audit service at this base URL (with --ca).
    #[arg(long, requires = "ca")]
    audit_url: Option<String>,
    /// PEM CA of the audit service.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Accept a bundle older than the trusted head once its head is proven a prefix of it.
    #[arg(long)]
    allow_older: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show an AccessRequest safely (hidden characters escaped visibly).
    Show {
        /// AccessRequest name.
        name: String,
    },
    /// Approve a pending AccessRequest.
    Approve {
        /// AccessRequest name.
        name: String,
        /// Why (kept as evidence).
        #[arg(long)]
        reason: String,
    },
    /// Deny a pending AccessRequest.
    Deny {
        /// AccessRequest name.
        name: String,
        /// Why (shown to the requester and kept as evidence).
        #[arg(long)]
        reason: String,
    },
    /// Export an evidence bundle from the audit service.
    Evidence(EvidenceArgs),
    /// Verify an evidence bundle offline.
    Verify(VerifyArgs),
    /// Replay a recorded exec or attach session.
    Replay(ReplayArgs),
}

async fn decide(
    client: kube::Client,
    ns: &str,
    name: &str,
    verdict: &str,
    reason: &str,
) -> Result<String, String> {
    if reason.trim().is_empty() {
        return Err("a decision needs a reason: pass --reason \"...\"".into());
    }
    let api: Api<AccessRequest> = Api::namespaced(client, ns);
    if verdict == "Approved" {
        // While other approvers' approvals are missing, this approval is added to
        // spec.approvals; the last one is the decision.
        let ar = api.get(name).await.map_err(|e| match e {
            kube::Error::Api(s) => s.message,
            other => other.to_string(),
        })?;
        let given = ar.spec.approvals.len();
        let required = usize::try_from(ar.spec.required_approvals).unwrap_or(usize::MAX);
        if ar.spec.decision.is_none() && given + 1 < required {
            let mut list = serde_json::to_value(&ar.spec.approvals).map_err(|e| e.to_string())?;
            if let Some(items) = list.as_array_mut() {
                items.push(serde_json::json!({"reason": reason}));
            }
            // The resource version makes a concurrent approval a conflict, not a lost one.
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": ar.metadata.resource_version},
                "spec": {"approvals": list}
            });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) => s.message,
                    other => other.to_string(),
                })?;
            return Ok(format!(
                "accessrequest.portcullis.dev/{name} approval {} of {required} recorded: another approver decides",
                given + 1
            ));
        }
    }
    let patch = serde_json::json!({"spec": {"decision": {"verdict": verdict, "reason": reason}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => s.message,
            other => other.to_string(),
        })?;
    Ok(format!(
        "accessrequest.portcullis.dev/{name} {}",
        verdict.to_lowercase()
    ))
}

/// The lines of `text` escaped with [`display::escape`], each after `prefix`; a run of blank
/// lines is one line saying how many, so that blank lines cannot push what follows out of
/// sight.
fn quoted(prefix: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut blank = 0usize;
    let flush = |out: &mut Vec<String>, blank: &mut usize| {
        match *blank {
            0 => {}
            1 => out.push(prefix.trim_end().to_owned()),
            n => out.push(format!("{prefix}({n} blank lines)")),
        }
        *blank = 0;
    };
    for l in display::escape(text, true).lines() {
        if l.trim().is_empty() {
            blank += 1;
        } else {
            flush(&mut out, &mut blank);
            out.push(format!("{prefix}{l}"));
        }
    }
    flush(&mut out, &mut blank);
    out
}

/// A request as text for a terminal: every value escaped with [`display::escape`].
fn show(ar: &AccessRequest) -> String {
    let line = |s: &str| display::escape(s, false);
    let spec = &ar.spec;
    let op = &spec.operation;
    let status = ar.status.clone().unwrap_or_default();
    let mut out = Vec::new();
    out.push(format!(
        "Name:          {}/{}",
        line(ar.metadata.namespace.as_deref().unwrap_or("")),
        line(ar.metadata.name.as_deref().unwrap_or(""))
    ));
    out.push(format!("Phase:         {:?}", status.phase));
    let r = &spec.requester;
    out.push(format!("Requester:     {}", line(&r.name)));
    out.push(format!("  account:     {}", line(&r.service_account)));
    for (what, value) in [
        ("  pod:", &r.pod),
        ("  user:", &r.user),
        ("  pipeline:", &r.pipeline),
    ] {
        if let Some(v) = value {
            out.push(format!("{what:<15}{}", line(v)));
        }
    }
    out.push(format!("Resource:      {}", line(&spec.resource)));
    out.push(format!(
        "Guardrail:     {} (policy {})",
        line(&spec.rule),
        line(&spec.policy)
    ));
    let scope = match spec.scope.unwrap_or_default() {
        portcullis_crds::GrantScope::Statement => "this operation".to_owned(),
        portcullis_crds::GrantScope::Session => format!(
            "every operation guardrail {} matches in session {}",
            line(&spec.rule),
            line(spec.session.as_deref().unwrap_or("?"))
        ),
    };
    out.push(format!("Grant covers:  {scope}"));
    match op.covers {
        portcullis_crds::GrantCovers::Values => out.push(
            "Values:        exactly the values shown below".to_owned(),
        ),
        portcullis_crds::GrantCovers::Shape => out.push(
            "Values:        ANY values in the placeholders (?) below: the guardrail grants by shape".to_owned(),
        ),
    }
    if let Some(d) = spec.requested_duration {
        out.push(format!(
            "Duration:      {}s asked (the policy's grantDuration caps it)",
            std::time::Duration::from(d).as_secs()
        ));
    }
    if let Some(j) = &spec.justification {
        out.push(format!("Justification: {}", line(j)));
    }
    if let Some(target) = &op.target {
        out.push(format!("Target:        {}", line(target)));
    }
    if !op.command.is_empty() {
        out.push("Command (one argument a line):".to_owned());
        for (i, word) in op.command.iter().enumerate() {
            out.push(format!("  [{i}] {}", line(word)));
        }
    }
    if let Some(statement) = &op.statement {
        out.push("Statement (the client's text):".to_owned());
        out.extend(quoted("  | ", statement));
    }
    // Written by the sidecar, in their own fields: shown apart from the client's text.
    if !op.runs.is_empty() {
        out.push(
            "Runs (prepared definitions, read by the sidecar when they were prepared):".to_owned(),
        );
        for (i, definition) in op.runs.iter().enumerate() {
            out.extend(quoted(&format!("  [{}] | ", i + 1), definition));
        }
    }
    if !op.bound_values.is_empty() {
        out.push("Bound values (read by the sidecar from the Bind, one a line):".to_owned());
        for value in &op.bound_values {
            out.push(format!("  = {}", line(value)));
        }
    }
    out.push(format!("Fingerprint:   {}", line(&op.fingerprint)));
    out.push(format!(
        "Approvers:     {} distinct approvers required, none of them the requester",
        spec.required_approvals
    ));
    for (i, a) in spec.approvals.iter().enumerate() {
        out.push(format!(
            "  approval {}:  by {} at {}: {}",
            i + 1,
            line(a.approved_by.as_deref().unwrap_or("(unstamped)")),
            a.approved_at
                .as_ref()
                .map(|t| format!("{:.0}", t.0))
                .unwrap_or_default(),
            line(&a.reason)
        ));
    }
    if let Some(d) = &spec.decision {
        out.push(format!(
            "Decision:      {:?} by {} at {}: {}",
            d.verdict,
            line(d.decided_by.as_deref().unwrap_or("(unstamped)")),
            d.decided_at
                .as_ref()
                .map(|t| format!("{:.0}", t.0))
                .unwrap_or_default(),
            line(&d.reason)
        ));
    }
    let mut texts: Vec<&str> = vec![&r.name, &spec.rule, &spec.resource, &op.fingerprint];
    texts.extend(spec.justification.as_deref());
    texts.extend(op.statement.as_deref());
    texts.extend(op.target.as_deref());
    texts.extend(op.command.iter().map(String::as_str));
    texts.extend(op.runs.iter().map(String::as_str));
    texts.extend(op.bound_values.iter().map(String::as_str));
    texts.extend(spec.decision.as_ref().map(|d| d.reason.as_str()));
    texts.extend(spec.approvals.iter().map(|a| a.reason.as_str()));
    let hidden = texts
        .iter()
        .any(|t| t.split('\n').any(|l| !display::is_plain(l)));
    if hidden {
        out.push(
            "Warning:       this request holds hidden characters, shown above as \\e, \\n or \\u{...}"
                .to_owned(),
        );
    }
    out.join("\n")
}

async fn evidence(client: kube::Client, ns: &str, args: EvidenceArgs) -> Result<String, String> {
    let EvidenceArgs {
        audit_url,
        ca,
        token_file,
        from,
        to,
        subject,
        issuer,
        resource,
        all_namespaces,
        output,
    } = args;
    let (audit_url, ca, token_file, output) = (
        audit_url.as_str(),
        ca.as_path(),
        token_file.as_path(),
        output.as_path(),
    );
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| format!("{}: {e}", token_file.display()))?;
    let token = token.trim();
    let audit =
        AuditClient::new(audit_url, ca, Duration::from_secs(60)).map_err(|e| e.to_string())?;
    let sth = audit.latest_head().await.map_err(|e| e.to_string())?;
    let size = u64::try_from(sth.tree_size).unwrap_or(0);
    // The records of this namespace, or of every namespace (a cluster-wide binding).
    let namespaces = (!all_namespaces).then(|| vec![ns.to_owned()]);
    let entries = audit
        .entries_in(token, 0, size, size, namespaces.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    if let (Some(s), None) = (&subject, &issuer) {
        let values: Vec<serde_json::Value> = entries
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.bytes).ok())
            .collect();
        let issuers = portcullis_audit::manifest::issuers_named(s, values.iter());
        if !issuers.is_empty() {
            return Err(format!(
                "--subject {s} names people of the issuers {}: a person is (issuer, subject); add --issuer ISSUER",
                issuers.join(", ")
            ));
        }
    }
    let selection = Selection {
        from_index: 0,
        to_index: size,
        from_time: from.map(|t| t.to_string()),
        to_time: to.map(|t| t.to_string()),
        subject,
        issuer,
        resource,
        namespaces: namespaces.clone(),
    };
    let n = write_bundle_from(entries, &sth, &selection, output).map_err(|e| e.to_string())?;
    // The recordings the exported records name; verify checks them against those records.
    let recordings = referenced_recordings(output).map_err(|e| e.to_string())?;
    let scope = (!all_namespaces).then_some(ns);
    // A recording the service no longer holds (404) or holds damaged (410) is left out; the signed manifest lists it
    // as missing, and the service signs that only when it indeed holds no such recording.
    let mut missing = 0;
    for sha256 in &recordings {
        match audit.recording_in(token, sha256, scope).await {
            Ok(content) => add_recording(output, sha256, &content).map_err(|e| e.to_string())?,
            Err(
                ShipError::Refused {
                    status: 404 | 410, ..
                }
                | ShipError::Failed {
                    status: 404 | 410, ..
                },
            ) => {
                missing += 1;
            }
            Err(e) => return Err(format!("recording {sha256}: {e}")),
        }
    }
    // The policies in force and the approvals, with their generations, for the auditor.
    let (policies, requests) = if all_namespaces {
        (
            Api::<GatewayPolicy>::all(client.clone()),
            Api::<AccessRequest>::all(client),
        )
    } else {
        (
            Api::<GatewayPolicy>::namespaced(client.clone(), ns),
            Api::<AccessRequest>::namespaced(client, ns),
        )
    };
    let policies = policies
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("list GatewayPolicies: {e}"))?;
    let requests = requests
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("list AccessRequests: {e}"))?;
    for (file, items) in [
        ("policies.yaml", serde_yaml::to_string(&policies.items)),
        (
            "accessrequests.yaml",
            serde_yaml::to_string(&requests.items),
        ),
    ] {
        let text = items.map_err(|e| e.to_string())?;
        let path = output.join(file);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    // The manifest binds every file and names the selection; the service signs it after
    // recomputing the selection over its log.
    let manifest = portcullis_audit::manifest::build(output, &sth, &selection, 0)
        .map_err(|e| e.to_string())?;
    let signed = audit
        .sign_manifest(token, &manifest)
        .await
        .map_err(|e| format!("manifest: {e}"))?;
    portcullis_audit::manifest::write(output, &signed).map_err(|e| e.to_string())?;
    let recordings = match recordings.len() - missing {
        0 => String::new(),
        1 => " and 1 recording".to_owned(),
        r => format!(" and {r} recordings"),
    };
    let missing = match missing {
        0 => String::new(),
        m => format!("; {m} recordings named by the records are missing from the audit service and listed as missing in the signed manifest"),
    };
    Ok(format!(
        "wrote {n} records{recordings}, proofs to the signed tree head of size {size}, {} policies and {} access requests to {}{missing}",
        policies.items.len(),
        requests.items.len(),
        output.display()
    ))
}

/// The trusted head for `verify`: from a file, or the witness in the cluster; with a
/// consistency proof from the audit service when the sizes differ and it is reachable.
async fn trust(
    args: &VerifyArgs,
    namespace: Option<String>,
    bundle: &Path,
) -> Result<Trust, String> {
    let expect_head: Option<SignedTreeHead> = if let Some(file) = &args.expect_head {
        let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        Some(serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", file.display()))?)
    } else if args.from_cluster {
        let (client, ns) = kube_client(namespace).await?;
        let witness = Api::<AuditRetention>::namespaced(client, &ns)
            .get(&args.witness)
            .await
            .map_err(|e| format!("AuditRetention {ns}/{}: {e}", args.witness))?;
        let head = witness
            .status
            .and_then(|s| s.latest_signed_tree_head)
            .ok_or_else(|| {
                format!(
                    "AuditRetention {ns}/{} has no signed tree head",
                    args.witness
                )
            })?;
        Some(head)
    } else {
        None
    };
    let mut trust = Trust {
        expect_head,
        consistency: Vec::new(),
        allow_older: args.allow_older,
    };
    let (Some(expected), Some(url), Some(ca)) = (&trust.expect_head, &args.audit_url, &args.ca)
    else {
        return Ok(trust);
    };
    let sth_path = bundle.join("sth.json");
    let bundled: SignedTreeHead = std::fs::read(&sth_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("{}: unreadable", sth_path.display()))?;
    let (a, b) = (
        u64::try_from(bundled.tree_size).unwrap_or(0),
        u64::try_from(expected.tree_size).unwrap_or(0),
    );
    if a != b && a.min(b) > 0 {
        let audit =
            AuditClient::new(url, ca, Duration::from_secs(60)).map_err(|e| e.to_string())?;
        trust.consistency = audit
            .consistency(a.min(b), a.max(b))
            .await
            .map_err(|e| format!("consistency proof: {e}"))?;
    }
    Ok(trust)
}

/// The recording SESSION names: a file, a recording in a bundle, or one on the audit service.
async fn load_recording(args: &ReplayArgs, namespace: Option<&str>) -> Result<Vec<u8>, String> {
    let session = args.session.as_str();
    let as_path = Path::new(session);
    if as_path.is_file() {
        return std::fs::read(as_path).map_err(|e| format!("{session}: {e}"));
    }
    if let Some(bundle) = &args.bundle {
        let path = find_recording(bundle, session).map_err(|e| e.to_string())?;
        let content = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let named = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if sha256_hex(&content) != named {
            return Err(format!(
                "{}: content does not match its name; run kubectl portcullis verify on the bundle",
                path.display()
            ));
        }
        return Ok(content);
    }
    if let (Some(url), Some(ca), Some(token_file)) = (&args.audit_url, &args.ca, &args.token_file) {
        let sha256 = session.to_ascii_lowercase();
        if !is_sha256(&sha256) {
            return Err(format!(
                "{session}: the audit service needs the whole SHA-256 (64 hex digits)"
            ));
        }
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| format!("{}: {e}", token_file.display()))?;
        let audit =
            AuditClient::new(url, ca, Duration::from_secs(60)).map_err(|e| e.to_string())?;
        return audit
            .recording_in(token.trim(), &sha256, namespace)
            .await
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string());
    }
    Err(format!(
        "{session}: no such file; to name a recording by its SHA-256, pass --bundle DIR or --audit-url URL --ca FILE --token-file FILE"
    ))
}

async fn replay(args: ReplayArgs, namespace: Option<String>) -> Result<String, String> {
    let max_wait = Duration::try_from_secs_f64(args.max_wait).map_err(|_| {
        format!(
            "--max-wait {}: expected a number of seconds, 0 or more",
            args.max_wait
        )
    })?;
    let options = PlayOptions {
        speed: args.speed,
        max_wait: Some(max_wait),
        instant: args.instant,
        render: if args.raw {
            Render::Raw
        } else if args.escaped {
            Render::Visible
        } else {
            Render::Screen
        },
        show_input: !args.hide_input,
    };
    let content = load_recording(&args, namespace.as_deref()).await?;
    let cast = Cast::parse(&content).map_err(|e| format!("{}: {e}", args.session))?;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    let input: Option<&mut dyn Write> = if args.show_input {
        Some(&mut err)
    } else {
        None
    };
    play(&cast, &mut out, input, &options, &mut std::thread::sleep).map_err(|e| e.to_string())?;
    Ok(String::new())
}

async fn kube_client(namespace: Option<String>) -> Result<(kube::Client, String), String> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("kubeconfig: {e}"))?;
    let ns = namespace.unwrap_or_else(|| config.default_namespace.clone());
    Ok((
        kube::Client::try_from(config).map_err(|e| e.to_string())?,
        ns,
    ))
}

async fn run(cli: Cli) -> Result<String, String> {
    match cli.command {
        Cmd::Verify(args) => {
            let key = read_public_key(&args.public_key)?;
            let trust = trust(&args, cli.namespace, &args.dir).await?;
            let report = verify_bundle_trusting(&args.dir, &key, &trust)
                .map_err(|e| format!("verification failed: {e}"))?;
            let recordings = match report.recordings {
                0 => String::new(),
                1 => " and 1 recording".to_owned(),
                r => format!(" and {r} recordings"),
            };
            let verified = format!(
                "verified {} records{recordings} against the signed tree head of size {}",
                report.records, report.tree_size
            );
            if report.missing_recordings.is_empty() {
                return Ok(verified);
            }
            let missing: Vec<String> = report
                .missing_recordings
                .iter()
                .map(|m| {
                    format!(
                        "  recordings/{}.cast (SHA-256 {}, named by log index {}): missing from the log's storage at export",
                        m.sha256, m.sha256, m.index
                    )
                })
                .collect();
            Err(format!(
                "incomplete evidence: {verified}, but {} recordings they name are missing:\n{}",
                missing.len(),
                missing.join("\n")
            ))
        }
        Cmd::Show { name } => {
            let (client, ns) = kube_client(cli.namespace).await?;
            let ar = Api::<AccessRequest>::namespaced(client, &ns)
                .get(&name)
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) => s.message,
                    other => other.to_string(),
                })?;
            Ok(show(&ar))
        }
        Cmd::Approve { name, reason } => {
            let (client, ns) = kube_client(cli.namespace).await?;
            decide(client, &ns, &name, "Approved", &reason).await
        }
        Cmd::Deny { name, reason } => {
            let (client, ns) = kube_client(cli.namespace).await?;
            decide(client, &ns, &name, "Denied", &reason).await
        }
        Cmd::Evidence(args) => {
            let (client, ns) = kube_client(cli.namespace).await?;
            evidence(client, &ns, args).await
        }
        Cmd::Replay(args) => replay(args, cli.namespace).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(message) => {
            if !message.is_empty() {
                println!("{message}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
