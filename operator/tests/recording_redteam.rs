//! Red team (issue 36): personal data drawn on the screen by terminal features the exec
//! recorder's screen model does not follow.
//!
//! Each row is first shown to put the value on the screen without the protection: the raw
//! bytes run through a maintained terminal emulator (the audit service's replay emulator, on
//! `avt`), or through tmux, show the value in clear. Then the same bytes go through the sidecar's
//! [`Scanner`] (what the exec relay uses for the recording and for `maskLiveOutput`), frame
//! by frame, and the masked bytes, rendered by the same emulator, must not show it.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use portcullis_audit::emulator::Emulator;
use portcullis_crds::SidecarConfig;
use portcullis_e2e::harness;
use portcullis_sidecar::config::Options;
use portcullis_sidecar::kube::recording::OutputMasker;
use portcullis_sidecar::kube::screen::{Direction, Scanner};

/// What an 80-column terminal of `rows` rows shows for `data` (every screen state the replay
/// prints).
fn screen(rows: u64, data: &[u8]) -> String {
    let mut e = Emulator::new(80, rows);
    let mut out = e.output(0.0, data);
    out.push_str(&e.finish());
    out
}

/// `frames` through the sidecar's scanner (built-in detectors), as the relay does.
fn masked(frames: &[&[u8]]) -> Vec<u8> {
    let m = OutputMasker::new(&[]).expect("detectors");
    let mut s = Scanner::new(Direction::Output);
    let mut out = Vec::new();
    for f in frames {
        out.extend(s.push(&m, f));
    }
    out.extend(s.flush(&m));
    out
}

/// The row: unprotected the screen shows `secret`; through the scanner, neither the masked
/// bytes nor the screen they draw hold it.
fn row(family: &str, data: &[u8], secret: &str) {
    row_on(24, family, data, secret);
}

fn row_on(rows: u64, family: &str, data: &[u8], secret: &str) {
    let direct = screen(rows, data);
    assert!(
        direct.contains(secret),
        "{family}: the raw bytes do not draw {secret:?}: {direct}"
    );
    let out = masked(&[data]);
    assert_eq!(out.len(), data.len(), "{family}: length kept");
    let shown = screen(rows, &out);
    assert!(
        !shown.contains(secret) && !String::from_utf8_lossy(&out).contains(secret),
        "{family}: {secret:?} in clear through the scanner: {:?}\n{shown}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn colour_codes_inside_a_value_are_masked() {
    row(
        "colour codes inside a value",
        b"mail \x1b[1malice\x1b[0m.meyer@example.com done\n",
        "meyer@example.com",
    );
}

#[test]
fn a_value_drawn_with_cursor_up_is_masked() {
    row(
        "cursor up then the rest of the value",
        b"x\n\x1b[1A      example.com\x1b[17Dalice@\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_drawn_after_restoring_the_cursor_is_masked() {
    row(
        "save and restore cursor (DECSC/DECRC)",
        b"\x1b7     @example.com\x1b8alice\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_overwriting_wide_characters_is_masked() {
    row(
        "carriage return over wide characters",
        "中中中@example.com\ralice1\n".as_bytes(),
        "alice1@example.com",
    );
}

#[test]
fn a_value_drawn_at_a_column_after_wide_characters_is_masked() {
    row(
        "absolute column after wide characters",
        "中中中中中@example.com\x1b[6Galice\n".as_bytes(),
        "alice@example.com",
    );
}

#[test]
fn a_value_drawn_after_reverse_index_is_masked() {
    row(
        "reverse index (RI)",
        b"alice\n\x1bM\x1b[5C@example.com\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_drawn_after_index_is_masked() {
    row(
        "index (IND)",
        b"\x1b[5C@example.com\x1b[H\x1bD\x1b[1Aalice\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_drawn_in_origin_mode_is_masked() {
    row(
        "origin mode inside a scroll region",
        b"\x1b[5;6H@example.com\x1b[5;10r\x1b[?6h\x1b[1;1Halice\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_brought_together_by_scrolling_up_is_masked() {
    row(
        "scroll up (SU)",
        b"x\ny\n     @example.com\x1b[H\x1b[2Salice\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_brought_together_by_scrolling_down_is_masked() {
    row(
        "scroll down (SD)",
        b"     @example.com\x1b[H\x1b[1Tx\x1b[2;1Halice\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_brought_together_by_deleting_a_line_is_masked() {
    row(
        "delete line (DL)",
        b"x\n     @example.com\x1b[H\x1b[Malice\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_brought_together_by_inserting_a_line_is_masked() {
    row(
        "insert line (IL)",
        b"     @example.com\x1b[H\x1b[Lx\x1b[2;1Halice\n",
        "alice@example.com",
    );
}

#[test]
fn a_card_in_fullwidth_digits_is_masked() {
    row(
        "card number in fullwidth digits",
        "４１１１１１１１１１１１１１１１\n".as_bytes(),
        "４１１１１１１１１１１１１１１１",
    );
}

#[test]
fn a_value_drawn_on_a_taller_terminal_is_masked() {
    row_on(
        50,
        "absolute and relative rows on a 50-row terminal",
        b"\x1b[30;6H@example.com\x1b[H\x1b[29Balice\n",
        "alice@example.com",
    );
}

/// `typed` into an interactive bash (readline) on a pseudo-terminal, one key a time; returns
/// what the terminal received back.
fn bash_pty(typed: &[u8]) -> String {
    use std::io::Write;
    const PTY: &str = r#"
import os, pty, sys, time, select
data = sys.stdin.buffer.read()
pid, fd = pty.fork()
if pid == 0:
    os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"],
               {"PS1": "$ ", "TERM": "xterm", "PATH": os.environ["PATH"]})
time.sleep(0.3)
for b in data:
    os.write(fd, bytes([b])); time.sleep(0.005)
os.write(fd, b"exit\r")
out = b""
end = time.time() + 3
while time.time() < end:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
sys.stdout.buffer.write(out)
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", PTY])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(typed)
        .expect("write");
    let out = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Typed input through the scanner's input rules, key by key, as the relay sees stdin frames.
fn masked_input(typed: &[u8]) -> Vec<u8> {
    let m = OutputMasker::new(&[]).expect("detectors");
    let mut s = Scanner::new(Direction::Input);
    let mut out = Vec::new();
    for key in typed.chunks(1) {
        out.extend(s.push(&m, key));
    }
    out.extend(s.flush(&m));
    out
}

/// The input row: readline assembles `secret` from `typed` and the command prints it; the
/// recorded (masked) input, typed again, must no longer give it.
fn input_row(typed: &[u8], secret: &str) {
    // Without the protection: readline assembles the value and the command prints it.
    let direct = bash_pty(typed);
    assert!(direct.contains(secret), "bash did not run it: {direct:?}");
    // Through the scanner: the recorded input, typed again, must no longer give the value.
    let recorded = masked_input(typed);
    assert_eq!(recorded.len(), typed.len());
    let replayed = bash_pty(&recorded);
    assert!(
        !replayed.contains(secret),
        "the recorded input still types {secret:?}: {:?}",
        String::from_utf8_lossy(&recorded)
    );
}

#[test]
fn a_value_typed_with_arrow_key_edits_is_masked_in_the_input() {
    input_row(
        b"echo @example.com\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[Dalice\r",
        "alice@example.com",
    );
}

#[test]
fn a_value_typed_with_emacs_motion_keys_is_masked_in_the_input() {
    // Ctrl-A to the start, Ctrl-F five times past "echo ".
    input_row(
        b"echo @example.com\x01\x06\x06\x06\x06\x06alice\r",
        "alice@example.com",
    );
}

#[test]
fn a_card_fixed_with_transpose_is_masked_in_the_input() {
    // The typed digits fail the Luhn check; Ctrl-T swaps the last two into a valid card.
    input_row(b"echo 4012888888881818\x14\r", "4012888888881881");
}

#[test]
fn a_value_moved_with_kill_and_yank_is_masked_in_the_input() {
    // "@example.com" typed, killed with Ctrl-U, then "echo alice" and Ctrl-Y yanks it back.
    input_row(b"@example.com\x15echo alice\x19\r", "alice@example.com");
}

#[test]
fn a_value_typed_with_word_motion_keys_is_masked_in_the_input() {
    // Alt-b back over "com" and "example", Ctrl-B before "@", DEL the "x", then the local part.
    input_row(
        b"echo x@example.com\x1bb\x1bb\x02\x7falice\r",
        "alice@example.com",
    );
}

#[test]
fn the_line_editor_redraw_of_an_arrow_key_edit_is_masked_in_the_output() {
    let typed = b"echo @example.com\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[Dalice\r";
    let secret = "alice@example.com";
    let direct = bash_pty(typed);
    assert!(direct.contains(secret), "bash did not run it: {direct:?}");
    let out = masked(&[direct.as_bytes()]);
    let shown = screen(24, &out);
    assert!(
        !shown.contains(secret) && !String::from_utf8_lossy(&out).contains(secret),
        "{shown}"
    );
}

#[test]
fn a_value_completed_after_leaving_the_alternate_screen_is_masked() {
    row(
        "clear on the alternate screen, then back to the main one",
        b"     @example.com\x1b[?1049h\x1b[2J\x1b[?1049l\ralice\n",
        "alice@example.com",
    );
}

#[test]
fn a_card_separated_by_no_break_spaces_is_masked() {
    row(
        "card grouped with no-break spaces",
        "card 4111\u{a0}1111\u{a0}1111\u{a0}1111\n".as_bytes(),
        "1111\u{a0}1111\u{a0}1111",
    );
}

#[test]
fn a_card_grouped_with_dots_is_masked() {
    row(
        "card grouped with dots",
        b"card 4111.1111.1111.1111 ok\n",
        "4111.1111.1111.1111",
    );
}

#[test]
fn a_lower_case_iban_is_masked() {
    row(
        "lower-case IBAN",
        b"iban: de89370400440532013000\n",
        "de89370400440532013000",
    );
}

#[test]
fn an_email_with_an_internationalised_domain_is_masked() {
    row(
        "internationalised domain",
        "alice@exämple.de\n".as_bytes(),
        "alice@exämple.de",
    );
}

#[test]
fn an_email_with_a_fullwidth_at_sign_is_masked() {
    row(
        "fullwidth at sign",
        "alice＠example.com\n".as_bytes(),
        "alice＠example.com",
    );
}

#[test]
fn an_email_with_an_address_literal_is_masked() {
    row(
        "address literal",
        b"alice@[192.168.1.1]\n",
        "alice@[192.168.1.1]",
    );
}

#[test]
fn an_email_with_plus_and_subdomains_is_masked() {
    row(
        "mixed case, plus, subdomains",
        b"to: Alice.Meyer+x@Mail.Example.CO.UK;\n",
        "Alice.Meyer+x@Mail.Example.CO.UK",
    );
}

#[test]
fn a_spaced_iban_is_masked() {
    row(
        "IBAN in groups of four",
        b"IBAN: DE89 3704 0044 0532 0130 00\n",
        "DE89 3704 0044 0532 0130 00",
    );
}

#[test]
fn a_dashed_card_is_masked() {
    row(
        "card grouped with dashes",
        b"card 4111-1111-1111-1111 ok\n",
        "4111-1111-1111-1111",
    );
}

#[test]
fn a_value_completed_by_autowrap_is_masked() {
    let mut data = b"\n     @example.com\x1b[H".to_vec();
    data.extend(std::iter::repeat_n(b'x', 80));
    data.extend_from_slice(b"alice\n");
    row("autowrap at 80 columns", &data, "alice@example.com");
}

#[test]
fn a_value_split_by_a_long_quiet_gap_is_masked_live() {
    // Live output goes quiet in the middle of a value; what could still grow into it stays
    // held, and the rest is masked when it arrives.
    let m = OutputMasker::new(&[]).expect("detectors");
    let mut s = Scanner::new(Direction::Output);
    let mut out = s.push(&m, b"mail: alice.meyer@exa");
    out.extend(s.release_quiet(&m, false));
    out.extend(s.release_quiet(&m, false));
    out.extend(s.push(&m, b"mple.com\n"));
    out.extend(s.flush(&m));
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("meyer@exa") && !text.contains("alice"),
        "{text:?}"
    );
}

/// `output` written through a real [`Recorder`] (as the exec relay does), the finished
/// recording read back, and its output events replayed through the replay's emulator.
fn recorded_and_replayed(output: &[&[u8]]) -> (String, String) {
    use portcullis_sidecar::kube::recording::{Header, Recorder};
    let dir = tempfile::tempdir().expect("temp dir");
    let masker = std::sync::Arc::new(OutputMasker::new(&[]).expect("detectors"));
    let header = Header {
        command: "sh",
        title: "ns/pod/app",
        size: (80, 24),
        session: "s-1",
        request_id: 1,
        resource: "cluster-api",
        protocol: "v5.channel.k8s.io",
    };
    let mut recorder =
        Recorder::create(dir.path(), "redteam", &header, masker, Box::new(|_| {})).expect("rec");
    for frame in output {
        recorder.output(frame);
    }
    let finished = recorder.finish().expect("finish");
    let text = std::fs::read_to_string(&finished.path).expect("recording");
    let mut emulator = Emulator::new(80, 24);
    let mut shown = String::new();
    for line in text.lines().skip(1) {
        let event: serde_json::Value = serde_json::from_str(line).expect("event");
        if event[1] == "o" {
            let data = event[2].as_str().unwrap_or_default();
            shown.push_str(&emulator.output(0.0, data.as_bytes()));
        }
    }
    shown.push_str(&emulator.finish());
    (text, shown)
}

#[test]
fn the_recording_and_its_replay_hold_no_value_drawn_around_a_cursor_restore() {
    let data: &[u8] = b"\x1b7     @example.com\x1b8alice\n";
    assert!(screen(24, data).contains("alice@example.com"));
    let (text, shown) = recorded_and_replayed(&[&data[..9], &data[9..]]);
    assert!(
        !shown.contains("alice@example.com"),
        "the reviewer sees the value: {shown}\n{text}"
    );
}

#[test]
fn the_recording_and_its_replay_hold_no_value_drawn_with_colour_codes() {
    let data: &[u8] = b"mail \x1b[1malice\x1b[0m.meyer@example.com done\n";
    assert!(screen(24, data).contains("alice.meyer@example.com"));
    let (text, shown) = recorded_and_replayed(&[&data[..12], &data[12..]]);
    assert!(!shown.contains("meyer@example.com"), "{shown}\n{text}");
    assert!(!text.contains("meyer@example.com"), "{text}");
}

const PLACEHOLDER: &str = "portcullis-placeholder-token";

fn ns_of(config_text: &str) -> String {
    config_text
        .lines()
        .find_map(|l| l.strip_prefix("namespace: "))
        .unwrap_or_default()
        .to_owned()
}

/// `kubectl exec -i web-0 -- cat` with `stdin`, over WebSocket or SPDY.
fn kubectl_cat(kubeconfig: &str, spdy: bool, ns: &str, stdin: &[u8]) -> Output {
    use std::io::Write;
    let h = harness();
    let mut child = Command::new(h.kubectl_path())
        .env("KUBECONFIG", kubeconfig)
        .env(
            "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
            if spdy { "false" } else { "true" },
        )
        .args(["exec", "-i", "-n", ns, "web-0", "-c", "app", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin).expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("kubectl output")
}

/// End to end: a program in the container prints the save/restore-cursor drawing (here `cat`
/// echoes it); kubectl through the sidecar (live masking on) must not get the value on its
/// screen, and the recording, replayed, must not show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_output_drawn_around_a_cursor_restore_is_masked() {
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("recording-redteam").await;
    let dir = tempfile::tempdir().expect("temp dir");
    h.service_account(&ns, "agent").await;
    common::create::<Role>(
        &client,
        &ns,
        serde_json::json!({
            "metadata": {"name": "agent"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]}
            ]
        }),
    )
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
        "metadata": {"name": "web-0"},
        "spec": {"nodeName": h.exec_node(), "containers": [{"name": "app", "image": "app:1"}]}
    }))
    .expect("pod");
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &target)
        .await
        .expect("create the target pod");
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
    let agent_sa = dir.path().join("agent-sa");
    std::fs::create_dir_all(&agent_sa).expect("agent sa dir");
    std::fs::write(agent_sa.join("ca.crt"), &certs.ca_pem).expect("agent ca");
    std::fs::write(agent_sa.join("token"), PLACEHOLDER).expect("placeholder");
    let token = h.token(&ns, "agent", None, None).await;
    let token_file = dir.path().join("sidecar-token");
    std::fs::write(&token_file, &token).expect("token");
    let api_url: http::Uri = h.apiserver_url().parse().expect("api url");
    let spool = dir.path().join("spool");
    let config_text = format!(
        "apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: {ns}
adminListen: 127.0.0.1:0
audit:
  spoolDir: {spool}
resources:
- name: cluster-api
  type: kubernetes
  listenPort: 0
  upstream:
    host: {host}
    port: {port}
    tlsMode: verify-full
    caFile: {ca}
  serverTls:
    certFile: {tls}/tls.crt
    keyFile: {tls}/tls.key
  tokenFile: {token_file}
  policies: [gdpr-exec]
policies:
- name: gdpr-exec
  masking:
  - name: ssn
    detector: regex
    pattern: '\\b\\d{{3}}-\\d{{2}}-\\d{{4}}\\b'
    strategy: redact
  guardrails:
  - name: destructive
    execCommands: [\"rm *\"]
    action: deny
  kubernetes:
    maskLiveOutput: true
",
        spool = spool.display(),
        host = api_url.host().expect("host"),
        port = api_url.port_u16().unwrap_or(443),
        ca = h.ca_file(),
        tls = tls.display(),
        token_file = token_file.display(),
    );
    let start = |config_text: String| async move {
        let config = SidecarConfig::from_yaml(&config_text).expect("sidecar config");
        let options = Options::service_account(&ns_of(&config_text), "agent");
        portcullis_sidecar::start(config, options)
            .await
            .expect("sidecar starts")
    };
    let sidecar = start(config_text.clone()).await;
    let port = sidecar.addr("cluster-api").expect("listening").port();
    let agent = common::token_kubeconfig(
        &dir.path().join("agent.kubeconfig"),
        &format!("https://127.0.0.1:{port}"),
        &agent_sa.join("ca.crt").to_string_lossy(),
        PLACEHOLDER,
        &ns,
    );
    let data: &[u8] = b"rt-restore \x1b7     @example.com\x1b8alice\n";
    let secret = "alice@example.com";
    let mut leaks = Vec::new();
    for spdy in [false, true] {
        let direct = tokio::task::block_in_place(|| kubectl_cat(h.kubeconfig(), spdy, &ns, data));
        assert!(direct.status.success(), "{}", common::text(&direct));
        assert!(screen(24, &direct.stdout).contains(secret));
        let through = tokio::task::block_in_place(|| kubectl_cat(&agent, spdy, &ns, data));
        assert!(through.status.success(), "{}", common::text(&through));
        let live = screen(24, &through.stdout);
        let mut replayed = String::new();
        for entry in std::fs::read_dir(spool.join("recordings"))
            .expect("recordings")
            .flatten()
        {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let mut emulator = Emulator::new(80, 24);
            for line in text.lines().skip(1) {
                let event: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                if event[1] == "o" {
                    let data = event[2].as_str().unwrap_or_default();
                    replayed.push_str(&emulator.output(0.0, data.as_bytes()));
                }
            }
            replayed.push_str(&emulator.finish());
        }
        if live.contains(secret) || replayed.contains(secret) {
            leaks.push(format!("spdy={spdy}: live {live}\nreplayed {replayed}"));
        }
    }
    drop(sidecar);
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

/// What tmux (a real terminal emulator, 80x24) shows for `data` written to its pane.
fn tmux_screen(data: &[u8]) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("data");
    std::fs::write(&file, data).expect("write");
    let socket = format!(
        "rt36-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-L")
            .arg(&socket)
            .args(args)
            .output()
            .expect("tmux")
    };
    let shell = format!("cat {}; sleep 5", file.display());
    tmux(&["new-session", "-d", "-x", "80", "-y", "24", &shell]);
    std::thread::sleep(Duration::from_millis(700));
    let out = tmux(&["capture-pane", "-p"]);
    tmux(&["kill-server"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A row shown on tmux: unprotected tmux draws `secret`; the scanner's output must not.
fn tmux_row(family: &str, data: &[u8], secret: &str) {
    let direct = tmux_screen(data);
    assert!(direct.contains(secret), "{family}: tmux shows {direct}");
    let out = masked(&[data]);
    let shown = tmux_screen(&out);
    assert!(
        !shown.contains(secret),
        "{family}: {secret:?} in clear through the scanner: {:?}\n{shown}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn a_value_completed_in_insert_mode_is_masked() {
    tmux_row(
        "insert mode (IRM)",
        b"@example.com\r\x1b[4halice\x1b[4l\n",
        "alice@example.com",
    );
}

#[test]
fn a_card_drawn_with_repeat_is_masked() {
    tmux_row("repeat (REP)", b"41\x1b[14b\n", "4111111111111111");
}

#[test]
fn a_value_completed_after_a_back_tab_is_masked() {
    tmux_row(
        "back tab (CBT)",
        b"     @example.com\x1b[3Zalice\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_drawn_around_csi_save_and_restore_is_masked() {
    tmux_row(
        "CSI s / CSI u",
        b"\x1b[s     @example.com\x1b[ualice\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_completed_at_a_program_set_tab_stop_is_masked() {
    tmux_row(
        "program-set tab stops",
        b"\x1b[3g\x1b[6G\x1bH\r\t@example.com\ralice\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_drawn_with_autowrap_off_is_masked() {
    tmux_row(
        "autowrap off, overwrite at the last column",
        b"\x1b[?7l\x1b[65Galice@example.c!h\n\x1b[?7h",
        "alice@example.ch",
    );
}

#[test]
fn a_recording_over_the_limit_rolls_over_into_ordered_parts_losing_nothing() {
    use portcullis_sidecar::kube::recording::{Finished, Header, Recorder};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().expect("temp dir");
    let masker = Arc::new(OutputMasker::new(&[]).expect("detectors"));
    let header = Header {
        command: "sh",
        title: "ns/pod/app",
        size: (80, 24),
        session: "s-1",
        request_id: 1,
        resource: "cluster-api",
        protocol: "v5.channel.k8s.io",
    };
    let parts: Arc<Mutex<Vec<Finished>>> = Arc::default();
    let sink = parts.clone();
    let mut recorder = Recorder::with_limit(
        dir.path(),
        "rollover",
        &header,
        masker,
        Box::new(move |f| sink.lock().expect("parts").push(f)),
        4096,
    )
    .expect("recorder");
    // Lines with an e-mail split across the writes, and escape sequences that straddle them.
    let mut sent = String::new();
    for i in 0..400 {
        let line = format!("line {i:04} \x1b[1mok\x1b[0m alice{i}@example.com end\n");
        sent.push_str(&line);
        let (a, b) = line.split_at(line.len() / 2);
        recorder.output(a.as_bytes());
        recorder.output(b.as_bytes());
    }
    let last = recorder.finish().expect("finish");
    let mut all = parts.lock().expect("parts").clone();
    all.push(last);
    assert!(all.len() > 2, "{} parts", all.len());
    let mut got = String::new();
    for (n, part) in all.iter().enumerate() {
        assert_eq!(
            part.part,
            u32::try_from(n + 1).expect("n"),
            "parts in order"
        );
        assert_eq!(part.continued, n + 1 < all.len());
        let text = std::fs::read_to_string(&part.path).expect("part");
        assert!(!text.contains("@example.com"), "a value in part {}", n + 1);
        for line in text.lines().skip(1) {
            let event: serde_json::Value = serde_json::from_str(line).expect("event");
            if event[1] == "o" {
                got.push_str(event[2].as_str().unwrap_or_default());
            }
        }
    }
    // Nothing lost: the same length, each line's start kept in order.
    assert_eq!(got.len(), sent.len());
    for i in 0..400 {
        assert!(got.contains(&format!("line {i:04} ")), "line {i} lost");
    }
}

#[test]
fn a_value_completed_after_cursor_up_past_the_top_is_masked() {
    row(
        "cursor up past the top row",
        b"     @example.com\x1b[5A\ralice\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_completed_after_cursor_forward_past_the_margin_is_masked() {
    row(
        "cursor forward past the right margin",
        b"alice\x1b[100C\x1b[74D@example.com\n",
        "alice@example.com",
    );
}

#[test]
fn a_value_completed_after_cursor_down_past_the_bottom_is_masked() {
    row(
        "cursor down past the bottom row",
        b"\x1b[24;6H@example.com\x1b[5B\ralice\n",
        "alice@example.com",
    );
}

#[test]
fn the_replay_shows_what_a_real_terminal_showed() {
    for data in [
        &b"-rf /srv/data\r\x1b[4hrm \x1b[4l\n"[..],
        b"echo 1\x1b[5b\n",
    ] {
        let user = tmux_screen(data);
        let user_line = user
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end()
            .to_owned();
        assert!(!user_line.is_empty());
        let reviewer = screen(24, data);
        assert!(
            reviewer.contains(&user_line),
            "the user saw {user_line:?}, the reviewer sees {reviewer}"
        );
    }
}

#[test]
fn more_screen_features_drawing_a_value_are_masked() {
    for (family, data) in [
        (
            "next line (NEL) then cursor up",
            &b"\x1b[5C@example.com\r\x1bE\x1b[Aalice\n"[..],
        ),
        ("insert characters (ICH)", b"@example.com\r\x1b[5@alice\n"),
        (
            "cursor back over wide characters",
            "x\u{4e2d}\u{4e2d}@example.com\x1b[17Dalice\n".as_bytes(),
        ),
        (
            "reverse index inside a scroll region",
            b"\x1b[2;5r\x1b[2;6H@example.com\x1b[2;1H\x1bM\x1b[3;1Halice\n",
        ),
        (
            "erase characters then redraw",
            b"alice#example.com\x1b[6G\x1b[X@\n",
        ),
    ] {
        row(family, data, "alice@example.com");
    }
}

#[test]
fn more_separators_cases_and_forms_are_masked() {
    for (family, data, secret) in [
        (
            "card grouped with narrow no-break spaces",
            "card 4111\u{202f}1111\u{202f}1111\u{202f}1111\n",
            "4111\u{202f}1111\u{202f}1111\u{202f}1111",
        ),
        (
            "card grouped with ideographic spaces",
            "card 4111\u{3000}1111\u{3000}1111\u{3000}1111\n",
            "1111\u{3000}1111\u{3000}1111",
        ),
        (
            "lower-case IBAN in groups",
            "iban de89 3704 0044 0532 0130 00 ok\n",
            "de89 3704 0044 0532 0130 00",
        ),
        (
            "IBAN in fullwidth forms",
            "iban \u{ff24}\u{ff25}\u{ff18}\u{ff19}370400440532013000\n",
            "\u{ff24}\u{ff25}\u{ff18}\u{ff19}370400440532013000",
        ),
        (
            "internationalised local part",
            "to j\u{fc}rgen.m\u{fc}ller@example.com\n",
            "j\u{fc}rgen.m\u{fc}ller@example.com",
        ),
    ] {
        row(family, data.as_bytes(), secret);
    }
}

#[test]
fn a_value_moved_with_kill_to_end_and_yank_is_masked_in_the_input() {
    // "@example.com" typed, Ctrl-A, Ctrl-K kills it, "echo alice", Ctrl-Y yanks it back.
    input_row(b"@example.com\x01\x0becho alice\x19\r", "alice@example.com");
}

#[test]
fn a_value_completed_from_history_is_masked_in_the_input() {
    // The first line is no value; Up recalls it and "om" completes one. The model does not
    // follow history, so the recalled line is masked whole.
    input_row(b"echo alice@example.c\r\x1b[Aom\r", "alice@example.com");
}
