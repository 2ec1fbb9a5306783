//! Red-team table (rt-30) against the claim of README "Injection: what a protected namespace
//! guarantees": no pod, pod update or ephemeral container that a namespace user (alice, with
//! the rules of `edit` plus `pods/ephemeralcontainers`) or the agent (through its sidecar's
//! Kubernetes API proxy) can send in a labelled namespace gives a container other than the
//! sidecar the credentials, the masking key, the sidecar's serving key, a real token, or the
//! sidecar's processes.
//!
//! Every attempt is first sent to an unlabelled twin namespace (it must be admitted there, so
//! the attempt is real), then to the labelled one. Attempts with `escapes: true` are ADMITTED
//! in the labelled namespace although they reach what the claim protects (see each `note`);
//! the table asserts today's behaviour, so the suite stays green and an escape that gets
//! fixed shows up as a failing row to flip. Rows with `fixed: true` were escapes and are now
//! refused, by the webhook and by the sidecar's proxy.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use portcullis_e2e::harness;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

enum How {
    /// Create this pod.
    Create(serde_json::Value),
    /// Strategic-merge patch pod `target`.
    Update(&'static str, serde_json::Value),
    /// JSON patch pod `target`.
    JsonPatch(&'static str, serde_json::Value),
    /// Strategic-merge patch the ephemeral containers of pod `target`.
    Ephemeral(&'static str, serde_json::Value),
    /// Merge patch of the ephemeral containers of pod `target`.
    EphemeralMerge(&'static str, serde_json::Value),
}

struct Attempt {
    family: &'static str,
    how: How,
    /// Admitted in the labelled namespace although it reaches a protected thing.
    escapes: bool,
    /// An escape that is now refused (also sent through the sidecar's proxy).
    fixed: bool,
    /// For refused attempts: part of the refusal message.
    refused_with: &'static str,
    /// Why it matters (for escapes: what the container gets).
    note: &'static str,
}

async fn attempt(client: &kube::Client, ns: &str, how: &How) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::default();
    match how {
        How::Create(pod) => {
            let pod: Pod = serde_json::from_value(pod.clone()).expect("pod");
            pods.create(&PostParams::default(), &pod).await.map(drop)
        }
        How::Update(target, patch) => pods
            .patch(target, &pp, &Patch::Strategic(patch))
            .await
            .map(drop),
        How::JsonPatch(target, patch) => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone()).expect("json patch");
            pods.patch(target, &pp, &Patch::<()>::Json(p))
                .await
                .map(drop)
        }
        How::Ephemeral(target, patch) => pods
            .patch_ephemeral_containers(target, &pp, &Patch::Strategic(patch))
            .await
            .map(drop),
        How::EphemeralMerge(target, patch) => pods
            .patch_ephemeral_containers(target, &pp, &Patch::Merge(patch))
            .await
            .map(drop),
    }
}

fn pod(name: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut pod = json!({"metadata": {"name": name}, "spec": {
        "containers": [{"name": "agent", "image": "registry.example/agent:1"}]}});
    merge(&mut pod, json!({"spec": spec}));
    pod
}

fn host_path(name: &str, path: &str) -> serde_json::Value {
    pod(
        name,
        json!({"tolerations": [{"operator": "Exists"}],
        "volumes": [{"name": "h", "hostPath": {"path": path}}],
        "containers": [{"name": "agent", "image": "registry.example/agent:1", "volumeMounts": [{"name": "h", "mountPath": "/host"}]}]}),
    )
}

fn caps(name: &str, add: &[&str]) -> serde_json::Value {
    pod(
        name,
        json!({"containers": [{"name": "agent", "image": "registry.example/agent:1",
        "securityContext": {"runAsUser": 0, "runAsGroup": 0, "capabilities": {"add": add}}}]}),
    )
}

fn table() -> Vec<Attempt> {
    let cred = |name: &str| json!([{"name": "P", "valueFrom": {"secretKeyRef": {"name": name, "key": "password"}}}]);
    let shared = |name: &str, c: serde_json::Value| {
        pod(
            name,
            json!({"shareProcessNamespace": true, "containers": [c]}),
        )
    };
    vec![
        // ---- escapes -------------------------------------------------------------------
        Attempt { family: "shareProcessNamespace + agent runAsUser 0/runAsGroup 0 (root keeps the runtime's default CAP_SETUID/CAP_SETGID)",
            how: How::Create(shared("shared-root", json!({"name": "agent", "image": "registry.example/agent:1", "securityContext": {"runAsUser": 0, "runAsGroup": 0}}))),
            escapes: false, fixed: true, refused_with: "sets shareProcessNamespace: true, which puts every container",
            note: "ids are set and differ from 65532, so the check passes; root calls setgid/setuid(65532) (default capabilities) and then, as the sidecar's uid, reads /proc/<sidecar pid>/environ, /proc/<pid>/root/<credential mount> and /proc/<pid>/mem (the sidecar is dumpable: no prctl)" },
        Attempt { family: "shareProcessNamespace + runAsUser 1000/1000 + capabilities.add [SETUID, SETGID]",
            how: How::Create(shared("shared-setuid", json!({"name": "agent", "image": "registry.example/agent:1", "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "capabilities": {"add": ["SETUID", "SETGID"]}}}))),
            escapes: false, fixed: true, refused_with: "sets shareProcessNamespace: true, which puts every container",
            note: "a binary with file capabilities cap_setuid,cap_setgid+ep in the image switches to 65532 and reaches the sidecar's /proc entries (SETUID/SETGID are even allowed by PodSecurity baseline)" },
        Attempt { family: "shareProcessNamespace + runAsUser 1000/1000, allowPrivilegeEscalation unset (setuid-root binary in the image)",
            how: How::Create(shared("shared-suid", json!({"name": "agent", "image": "registry.example/agent-with-sudo:1", "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}))),
            escapes: false, fixed: true, refused_with: "sets shareProcessNamespace: true, which puts every container",
            note: "no_new_privs is off, so sudo/su (setuid root) in the image gives root with the default CAP_SETUID, then uid 65532 as above" },
        Attempt { family: "ephemeral container runAsUser 0/runAsGroup 0 into a shared-PID pod (kubectl debug)",
            how: How::Ephemeral("victim-shared", json!({"spec": {"ephemeralContainers": [{"name": "root-debug", "image": "busybox", "targetContainerName": "agent", "securityContext": {"runAsUser": 0, "runAsGroup": 0}}]}})),
            escapes: false, fixed: true, refused_with: "sets shareProcessNamespace: true",
            note: "an existing, legitimately shared-PID agent pod gets a root debug container that setuid()s to 65532 and reads the sidecar's /proc/<pid>/root" },
        Attempt { family: "capability spelled cap_sys_ptrace (lower case with prefix)",
            how: How::Create(pod("cap-lower-prefix", json!({"securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                "containers": [{"name": "agent", "image": "registry.example/agent:1", "securityContext": {"capabilities": {"add": ["cap_sys_ptrace"]}}}]}))),
            escapes: false, fixed: true, refused_with: "asks for capability cap_sys_ptrace (CAP_SYS_PTRACE at run time)",
            note: "the check strips \"CAP_\" before upper-casing, so \"cap_sys_ptrace\" becomes CAP_SYS_PTRACE and misses the list; CRI-O (toCAPPrefixed: upper-case, then prefix) grants CAP_SYS_PTRACE (containerd would make CAP_CAP_SYS_PTRACE and fail the container)" },
        Attempt { family: "capability Cap_Sys_Admin (mixed case with prefix)",
            how: How::Create(caps("cap-mixed", &["Cap_Sys_Admin"])),
            escapes: false, fixed: true, refused_with: "asks for capability Cap_Sys_Admin (CAP_",
            note: "same normalisation gap as cap_sys_ptrace, for SYS_ADMIN (on CRI-O)" },
        Attempt { family: "capability SYS_MODULE (not in the list)",
            how: How::Create(caps("cap-module", &["SYS_MODULE"])),
            escapes: false, fixed: true, refused_with: "asks for capability SYS_MODULE (CAP_",
            note: "root with CAP_SYS_MODULE loads a kernel module from its image: the whole node, every pod's tmpfs Secrets and the sidecar's memory" },
        Attempt { family: "capabilities BPF + PERFMON (not in the list)",
            how: How::Create(caps("cap-bpf", &["BPF", "PERFMON"])),
            escapes: false, fixed: true, refused_with: "asks for capability BPF (CAP_",
            note: "a kprobe/uprobe BPF program reads any process's memory with bpf_probe_read_user, the sidecar's credential included" },
        Attempt { family: "capability SYS_RAWIO (not in the list)",
            how: How::Create(caps("cap-rawio", &["SYS_RAWIO", "MKNOD"])),
            escapes: false, fixed: true, refused_with: "asks for capability SYS_RAWIO (CAP_",
            note: "with mknod of /dev/mem-like devices (MKNOD is a default capability) raw memory/disk I/O; weaker than the others on hardened kernels" },
        Attempt { family: "hostPath /var/lib/etcd (control-plane node, tolerations: Exists)",
            how: How::Create(host_path("etcd", "/var/lib/etcd")),
            escapes: false, fixed: true, refused_with: "mounts host path \"/var/lib/etcd\"; hostPath volumes are refused",
            note: "etcd's data directory holds every Secret of the cluster (unencrypted unless encryption at rest is configured), the credential and the masking key included" },
        Attempt { family: "hostPath /run/k3s/containerd/containerd.sock (k3s)",
            how: How::Create(host_path("k3s-sock", "/run/k3s/containerd/containerd.sock")),
            escapes: false, fixed: true, refused_with: "mounts host path \"/run/k3s/containerd/containerd.sock\"; hostPath volumes are refused",
            note: "k3s's containerd socket: `ctr -n k8s.io task exec` into the sidecar container" },
        Attempt { family: "hostPath /var/lib/rancher (k3s / RKE2 data, kine state.db, agent containerd)",
            how: How::Create(host_path("rancher", "/var/lib/rancher")),
            escapes: false, fixed: true, refused_with: "mounts host path \"/var/lib/rancher\"; hostPath volumes are refused",
            note: "server/db/state.db holds every Secret on k3s servers; agent/containerd holds every container" },
        Attempt { family: "hostPath /etc/rancher (k3s admin kubeconfig)",
            how: How::Create(host_path("rancher-etc", "/etc/rancher")),
            escapes: false, fixed: true, refused_with: "mounts host path \"/etc/rancher\"; hostPath volumes are refused",
            note: "/etc/rancher/k3s/k3s.yaml is a cluster-admin kubeconfig on k3s servers" },
        Attempt { family: "hostPath /var/snap/microk8s (MicroK8s kubelet and containerd)",
            how: How::Create(host_path("microk8s", "/var/snap/microk8s")),
            escapes: false, fixed: true, refused_with: "mounts host path \"/var/snap/microk8s\"; hostPath volumes are refused",
            note: "MicroK8s keeps kubelet pods (tmpfs Secrets) under common/var/lib/kubelet and containerd under common/run" },
        Attempt { family: "hostPath /var/lib/k0s (k0s kubelet root and containerd)",
            how: How::Create(host_path("k0s", "/var/lib/k0s")),
            escapes: false, fixed: true, refused_with: "mounts host path \"/var/lib/k0s\"; hostPath volumes are refused",
            note: "k0s's kubelet root dir is /var/lib/k0s/kubelet (every pod's Secret volumes)" },
        Attempt { family: "hostPath /run/cri-dockerd.sock (cri-dockerd)",
            how: How::Create(host_path("cri-dockerd", "/run/cri-dockerd.sock")),
            escapes: false, fixed: true, refused_with: "mounts host path \"/run/cri-dockerd.sock\"; hostPath volumes are refused",
            note: "the CRI socket of Docker-based nodes: ExecSync into the sidecar" },
        Attempt { family: "hostPath /etc/srv/kubernetes (GKE node: kubelet client credentials)",
            how: How::Create(host_path("gke-kubelet", "/etc/srv/kubernetes")),
            escapes: false, fixed: true, refused_with: "mounts host path \"/etc/srv/kubernetes\"; hostPath volumes are refused",
            note: "/etc is refused only as a parent of /etc/kubernetes; the kubelet's credential lets the node authorizer read every Secret a pod on that node references, the sidecar's credential included" },
        Attempt { family: "hostPath /system/secrets (Talos: kubelet and node secrets)",
            how: How::Create(host_path("talos", "/system/secrets")),
            escapes: false, fixed: true, refused_with: "mounts host path \"/system/secrets\"; hostPath volumes are refused",
            note: "Talos keeps the kubelet's credentials outside the listed paths" },
        Attempt { family: "hostPath /opt/cni/bin (writable CNI plugin directory)",
            how: How::Create(host_path("cni-bin", "/opt/cni/bin")),
            escapes: false, fixed: true, refused_with: "mounts host path \"/opt/cni/bin\"; hostPath volumes are refused",
            note: "a replaced CNI plugin runs as root on the node at the next pod sandbox: node root, then /var/lib/kubelet" },
        Attempt { family: "hostPath /etc/ld.so.preload (File)",
            how: How::Create(host_path("preload", "/etc/ld.so.preload")),
            escapes: false, fixed: true, refused_with: "mounts host path \"/etc/ld.so.preload\"; hostPath volumes are refused",
            note: "every dynamically linked process the node starts as root loads the agent's library" },
        Attempt { family: "hostPath /etc/cron.d",
            how: How::Create(host_path("cron", "/etc/cron.d")),
            escapes: false, fixed: true, refused_with: "mounts host path \"/etc/cron.d\"; hostPath volumes are refused",
            note: "a cron entry runs as root on the node" },
        Attempt { family: "capability NET_ADMIN (not in the list)",
            how: How::Create(caps("cap-net-admin", &["NET_ADMIN"])),
            escapes: false, fixed: true, refused_with: "asks for capability NET_ADMIN (CAP_",
            note: "the agent shares the sidecar's network namespace: an iptables DNAT in OUTPUT sends the sidecar's upstream connection (tlsMode require: any certificate) to the agent's listener, which asks for a cleartext password" },
        Attempt { family: "hostAliases pointing the database host name at 127.0.0.2 (the pod's shared loopback)",
            how: How::Create(pod("host-alias", json!({"hostAliases": [{"ip": "127.0.0.2", "hostnames": ["customers-db.data.svc.cluster.local"]}]}))),
            escapes: false, fixed: true, refused_with: "the pod sets hostAliases, which the kubelet writes into the /etc/hosts",
            note: "the kubelet writes one /etc/hosts for every container of the pod, the sidecar's included: the sidecar dials the agent's own listener on 127.0.0.2:5432 (the sidecar holds 127.0.0.1:<listenPort> only; the ip may as well be any host the attacker runs outside the cluster) as its upstream; with the default tlsMode `require` it accepts any certificate and answers AuthenticationCleartextPassword with the credential (closed: see a_redirected_upstream_gets_no_cleartext_credential)" },
        Attempt { family: "dnsPolicy None + dnsConfig.nameservers [127.0.0.1]",
            how: How::Create(pod("dns-config", json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["127.0.0.1"], "searches": ["data.svc.cluster.local"]}}))),
            escapes: false, fixed: true, refused_with: "the pod sets dnsPolicy: None",
            note: "same as hostAliases through the pod-wide resolv.conf: the agent (root binds :53 in the shared network namespace) answers the sidecar's DNS queries for the endpoint host" },
        // ---- admitted, not an escape on its own (gaps against the README's wording) ---------
        Attempt { family: "agent without runAsUser, image USER 65532 (distroless :nonroot)",
            how: How::Create(pod("image-user", json!({"containers": [{"name": "agent", "image": "gcr.io/distroless/static:nonroot"}]}))),
            escapes: false, fixed: false, refused_with: "",
            note: "GAP: runs as the sidecar's uid although the README says such containers are refused; no shared PID namespace, so nothing reached by itself" },
        Attempt { family: "imagePullSecrets naming the credential Secret",
            how: How::Create(pod("pull-secret", json!({"imagePullSecrets": [{"name": "customers-db-credentials"}]}))),
            escapes: false, fixed: false, refused_with: "",
            note: "GAP: the check never looks at imagePullSecrets; the kubelet uses only dockerconfig-shaped Secrets, so an Opaque user/password Secret is not sent anywhere" },
        // ---- refused (variants of the documented families) ---------------------------------
        Attempt { family: "hostPath with trailing slash /var/lib/kubelet/", how: How::Create(host_path("hp-slash", "/var/lib/kubelet/")),
            escapes: false, fixed: false, refused_with: "mounts host path", note: "" },
        Attempt { family: "hostPath //var//lib//kubelet", how: How::Create(host_path("hp-double", "//var//lib//kubelet")),
            escapes: false, fixed: false, refused_with: "mounts host path", note: "" },
        Attempt { family: "hostPath /run", how: How::Create(host_path("hp-run", "/run")),
            escapes: false, fixed: false, refused_with: "mounts host path", note: "" },
        Attempt { family: "hostPath /var/run/containerd/containerd.sock", how: How::Create(host_path("hp-sock", "/var/run/containerd/containerd.sock")),
            escapes: false, fixed: false, refused_with: "mounts host path", note: "" },
        Attempt { family: "projected configMap + masking key", how: How::Create(pod("proj-mask", json!({"volumes": [{"name": "p", "projected": {"sources": [
                {"configMap": {"name": "cm"}}, {"secret": {"name": "portcullis-masking-key"}}]}}],
                "containers": [{"name": "agent", "image": "a", "volumeMounts": [{"name": "p", "mountPath": "/p"}]}]}))),
            escapes: false, fixed: false, refused_with: "reads Secret \"portcullis-masking-key\"", note: "" },
        Attempt { family: "projected downwardAPI + serviceAccountToken with audience", how: How::Create(pod("proj-token", json!({"volumes": [{"name": "p", "projected": {"sources": [
                {"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}}, {"serviceAccountToken": {"path": "t", "audience": "api"}}]}}],
                "containers": [{"name": "agent", "image": "a", "volumeMounts": [{"name": "p", "mountPath": "/p"}]}]}))),
            escapes: false, fixed: false, refused_with: "projects a service-account token", note: "" },
        Attempt { family: "init container envFrom the sidecar TLS Secret", how: How::Create(pod("init-tls", json!({"initContainers": [{"name": "setup", "image": "a", "envFrom": [{"secretRef": {"name": "portcullis-sidecar-tls"}}]}]}))),
            escapes: false, fixed: false, refused_with: "reads Secret \"portcullis-sidecar-tls\"", note: "" },
        Attempt { family: "native sidecar (restartPolicy Always) named portcullis-sidecar2 with secretKeyRef", how: How::Create(pod("init-cred", json!({"initContainers": [{"name": "portcullis-sidecar2", "image": "a", "restartPolicy": "Always", "env": cred("customers-db-credentials")}]}))),
            escapes: false, fixed: false, refused_with: "reads Secret \"customers-db-credentials\"", note: "" },
        Attempt { family: "secret volume with subPath of the credential", how: How::Create(pod("subpath", json!({"volumes": [{"name": "s", "secret": {"secretName": "customers-db-credentials"}}],
                "containers": [{"name": "agent", "image": "a", "volumeMounts": [{"name": "s", "mountPath": "/p", "subPath": "password"}]}]}))),
            escapes: false, fixed: false, refused_with: "reads Secret \"customers-db-credentials\"", note: "" },
        Attempt { family: "capability CAP_SYS_PTRACE (prefixed)", how: How::Create(caps("cap-prefixed", &["CAP_SYS_PTRACE"])),
            escapes: false, fixed: false, refused_with: "asks for capability CAP_SYS_PTRACE", note: "" },
        Attempt { family: "capability sys_admin (lower case)", how: How::Create(caps("cap-lower", &["sys_admin"])),
            escapes: false, fixed: false, refused_with: "asks for capability sys_admin", note: "" },
        Attempt { family: "capability all (lower case)", how: How::Create(caps("cap-all", &["all"])),
            escapes: false, fixed: false, refused_with: "asks for capability all", note: "" },
        Attempt { family: "pod runAsGroup 65532 only (uid 1000)", how: How::Create(pod("gid", json!({"securityContext": {"runAsUser": 1000, "runAsGroup": 65532}}))),
            escapes: false, fixed: false, refused_with: "runs as user or group 65532", note: "" },
        Attempt { family: "shareProcessNamespace, container runAsUser set, pod runAsGroup unset", how: How::Create(shared("shared-nogid", json!({"name": "agent", "image": "a", "securityContext": {"runAsUser": 1000}}))),
            escapes: false, fixed: false, refused_with: "sets shareProcessNamespace: true", note: "" },
        Attempt { family: "opt-out annotation Disabled (odd case) is not an opt-out: injected", how: How::Create(json!({"metadata": {"name": "opt-out-case", "annotations": {"portcullis.dev/inject": "Disabled"}},
                "spec": {"containers": [{"name": "agent", "image": "a", "env": cred("customers-db-credentials")}]}})),
            escapes: false, fixed: false, refused_with: "reads Secret \"customers-db-credentials\"", note: "" },
        Attempt { family: "automountServiceAccountToken + serviceAccountName agent + explicit projected token (named kube-api-access-x)", how: How::Create(pod("sa-token", json!({"serviceAccountName": "agent",
                "volumes": [{"name": "kube-api-access-x", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}],
                "containers": [{"name": "agent", "image": "a", "volumeMounts": [{"name": "kube-api-access-x", "mountPath": "/t"}]}]}))),
            escapes: false, fixed: false, refused_with: "",
            note: "neutralised, not refused: the webhook drops every kube-api-access-* token volume and the agents' mounts of it" },
        Attempt { family: "pod update: strategic merge changes the sidecar image", how: How::Update("victim", json!({"spec": {"initContainers": [{"name": "portcullis-sidecar", "image": "evil:1"}]}})),
            escapes: false, fixed: false, refused_with: "changes its image", note: "" },
        Attempt { family: "pod update: JSON patch replaces the sidecar image", how: How::JsonPatch("victim", json!([{"op": "replace", "path": "/spec/initContainers/0/image", "value": "evil:2"}])),
            escapes: false, fixed: false, refused_with: "changes its image", note: "" },
        Attempt { family: "ephemeral via merge patch mounting the credential volume", how: How::EphemeralMerge("victim", json!({"spec": {"ephemeralContainers": [{"name": "m", "image": "busybox", "volumeMounts": [{"name": "portcullis-cred-customers-db", "mountPath": "/x"}]}]}})),
            escapes: false, fixed: false, refused_with: "refers to portcullis-cred-customers-db", note: "" },
        Attempt { family: "ephemeral container with capability SYS_PTRACE targeting the agent", how: How::Ephemeral("victim", json!({"spec": {"ephemeralContainers": [{"name": "ptrace", "image": "busybox", "targetContainerName": "agent", "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}}}]}})),
            escapes: false, fixed: false, refused_with: "asks for capability SYS_PTRACE", note: "" },
        Attempt { family: "ephemeral container runAsGroup 65532", how: How::Ephemeral("victim", json!({"spec": {"ephemeralContainers": [{"name": "gid", "image": "busybox", "securityContext": {"runAsUser": 1000, "runAsGroup": 65532}}]}})),
            escapes: false, fixed: false, refused_with: "runs as user or group 65532", note: "" },
        Attempt { family: "ephemeral container envFrom masking key", how: How::Ephemeral("victim", json!({"spec": {"ephemeralContainers": [{"name": "mk", "image": "busybox", "envFrom": [{"secretRef": {"name": "portcullis-masking-key"}}]}]}})),
            escapes: false, fixed: false, refused_with: "reads Secret \"portcullis-masking-key\"", note: "" },
    ]
}

/// The table as alice, then the escapes once more as the agent through its sidecar's proxy.
#[tokio::test]
async fn redteam_escape_table() {
    use k8s_openapi::api::core::v1::Secret;
    use portcullis_e2e::User;

    let scope = "rt30-escape";
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let webhook = Webhook::start(client.clone()).await;
    let name = format!("portcullis-test-{scope}");
    register(
        &client,
        &options(&name, webhook.url(), Some(webhook.ca_pem.clone()), scope),
    )
    .await;

    let labelled = h.namespace(scope).await;
    let plain = h.namespace(scope).await;
    for ns in [&labelled, &plain] {
        label_namespace(&client, ns, &[(TEST_LABEL, scope)]).await;
        secret(
            &client,
            ns,
            "customers-db-credentials",
            &[("password", "s3cret")],
        )
        .await;
        secret(&client, ns, "portcullis-masking-key", &[("key", "k")]).await;
        create::<Secret>(
            &client,
            ns,
            json!({"metadata": {"name": "portcullis-sidecar-tls"}, "stringData": {"tls.crt": "x", "tls.key": "y"}}),
        )
        .await;
        h.service_account(ns, "agent").await;
        let all = [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ];
        create::<k8s_openapi::api::rbac::v1::Role>(&client, ns, json!({"metadata": {"name": "edit-and-debug"}, "rules": [
            {"apiGroups": [""], "resources": ["pods", "secrets", "configmaps"], "verbs": all},
            {"apiGroups": ["apps"], "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"], "verbs": all},
            {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": all},
            {"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["get", "patch", "update"]}]}))
        .await;
        create::<k8s_openapi::api::rbac::v1::RoleBinding>(&client, ns, json!({
            "metadata": {"name": "edit-and-debug"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "edit-and-debug"},
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": User::Owner.name()},
                {"kind": "ServiceAccount", "name": "agent", "namespace": ns},
            ]}))
        .await;
    }
    postgres_resource(
        &client,
        &labelled,
        "customers-db",
        5432,
        "customers-db-credentials",
    )
    .await;
    let sidecar_token = h.token(&labelled, "agent", None, None).await;
    // A shared-PID pod that existed before the namespace was labelled (the webhook refuses
    // new ones): target of the ephemeral-container row.
    let shared_victim = pod(
        "victim-shared",
        json!({"shareProcessNamespace": true, "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}),
    );
    for ns in [&labelled, &plain] {
        attempt(&client, ns, &How::Create(shared_victim.clone()))
            .await
            .expect("shared-PID victim, created before the label");
    }
    label_namespace(&client, &labelled, &[("portcullis.dev/inject", "enabled")]).await;
    wait_until_injecting(&client, &labelled).await;

    let alice = h.client_as(User::Owner).await;
    // Targets of the update and ephemeral attempts: injected in the labelled namespace,
    // look-alikes in the twin.
    for (ns, extra) in [
        (&labelled, json!({})),
        (
            &plain,
            json!({
            "volumes": [{"name": "portcullis-cred-customers-db", "secret": {"secretName": "customers-db-credentials"}}],
            "initContainers": [{"name": "portcullis-sidecar", "image": "portcullis-sidecar:1", "restartPolicy": "Always",
                "volumeMounts": [{"name": "portcullis-cred-customers-db", "mountPath": "/creds"}]}]}),
        ),
    ] {
        attempt(&alice, ns, &How::Create(pod("victim", extra)))
            .await
            .expect("victim");
    }

    let shared = |name: &str, c: serde_json::Value| {
        pod(
            name,
            json!({"shareProcessNamespace": true, "containers": [c]}),
        )
    };
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for a in table() {
        if let Err(e) = attempt(&alice, &plain, &a.how).await {
            failures.push(format!(
                "{}: not possible without Portcullis: {e}",
                a.family
            ));
            continue;
        }
        let result = attempt(&alice, &labelled, &a.how).await;
        let line = match (&result, a.escapes, a.refused_with.is_empty()) {
            (Ok(()), true, _) => format!("ESCAPED  {}: {}", a.family, a.note),
            (Ok(()), false, true) => format!("ADMITTED {}: {}", a.family, a.note),
            (Ok(()), false, false) => {
                failures.push(format!(
                    "{}: admitted, expected {:?}",
                    a.family, a.refused_with
                ));
                format!("ADMITTED?! {}", a.family)
            }
            (Err(e), false, false) if e.to_string().contains(a.refused_with) => {
                format!("refused  {}: {e}", a.family)
            }
            (Err(e), _, _) => {
                failures.push(format!("{}: refused (table says otherwise): {e}", a.family));
                format!("refused?! {}: {e}", a.family)
            }
        };
        report.push(line);
    }
    // The neutralised token volume: nothing but the sidecar's own volumes projects a token.
    let sa: Pod = Api::<Pod>::namespaced(alice.clone(), &labelled)
        .get("sa-token")
        .await
        .expect("sa-token stored");
    for v in sa.spec.as_ref().expect("spec").volumes.iter().flatten() {
        let token = v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .any(|s| s.service_account_token.is_some());
        assert!(!token || v.name.starts_with("portcullis-"), "{v:?}");
    }

    // The agent, through its own sidecar's Kubernetes API proxy (same check, same gaps).
    let (_dir, sidecar, agent) = agent_through_sidecar(&labelled, &sidecar_token).await;
    let rename = |mut v: serde_json::Value| {
        let n = v["metadata"]["name"].as_str().unwrap_or("x").to_owned();
        v["metadata"]["name"] = json!(format!("proxy-{n}"));
        v
    };
    for a in table().into_iter().filter(|a| a.escapes || a.fixed) {
        // The proxy refuses every ephemeral-container write (rule builtin/ephemeral-containers).
        let How::Create(p) = a.how else { continue };
        let how = How::Create(rename(p));
        match (attempt(&agent, &labelled, &how).await, a.escapes) {
            (Ok(()), true) => report.push(format!("ESCAPED  (agent via proxy) {}", a.family)),
            (Err(e), false)
                if e.to_string().contains(a.refused_with)
                    && e.to_string().contains("(rule builtin/pod-guard)") =>
            {
                report.push(format!("refused  (agent via proxy) {}", a.family))
            }
            (Ok(()), false) => {
                failures.push(format!("{} via proxy: admitted", a.family));
                report.push(format!("ADMITTED?! (agent via proxy) {}", a.family));
            }
            (Err(e), _) => {
                failures.push(format!("{} via proxy: refused otherwise: {e}", a.family));
                report.push(format!("refused?! (agent via proxy) {}: {e}", a.family));
            }
        }
    }
    // A Deployment template with the shared-PID root escape is refused by the proxy too.
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({"metadata": {"name": "shared-root"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {"metadata": {"labels": {"app": "x"}},
        "spec": {"shareProcessNamespace": true, "containers": [{"name": "agent", "image": "a", "securityContext": {"runAsUser": 0, "runAsGroup": 0}}]}}}}))
    .expect("deployment");
    match Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(agent.clone(), &labelled)
        .create(&PostParams::default(), &d)
        .await
    {
        Ok(_) => failures.push("deployment via proxy: shareProcessNamespace admitted".to_owned()),
        Err(e) if e.to_string().contains("sets shareProcessNamespace: true") => report.push(
            "refused  (agent via proxy) Deployment template shareProcessNamespace + root"
                .to_owned(),
        ),
        Err(e) => failures.push(format!("deployment via proxy refused otherwise: {e}")),
    }

    // The agent itself (service account with `edit`'s configmaps rights) may not rewrite the
    // sidecar's configuration through its own proxy (rule builtin/operator-objects).
    {
        use k8s_openapi::api::core::v1::ConfigMap;
        let admin_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &labelled);
        if admin_cms
            .get_opt("portcullis-sidecar-config")
            .await
            .expect("get")
            .is_none()
        {
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": "portcullis-sidecar-config"}, "data": {}}),
            )
            .expect("cm");
            let _ = admin_cms.create(&PostParams::default(), &cm).await;
        }
        match Api::<ConfigMap>::namespaced(agent.clone(), &labelled)
            .patch(
                "portcullis-sidecar-config",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"rt30-probe": "written by the agent"}})),
            )
            .await
        {
            Ok(_) => failures.push(
                "agent's merge patch of ConfigMap portcullis-sidecar-config admitted by the proxy"
                    .to_owned(),
            ),
            Err(e) if e.to_string().contains("(rule builtin/operator-objects)") => report.push(
                "refused  (agent via proxy) merge patch of ConfigMap portcullis-sidecar-config"
                    .to_owned(),
            ),
            Err(e) => failures.push(format!("agent config map write refused otherwise: {e}")),
        }
    }
    // The README's advice, PodSecurity on the agents' namespace, against the worst rows.
    label_namespace(
        &client,
        &labelled,
        &[("pod-security.kubernetes.io/enforce", "baseline")],
    )
    .await;
    let pss = |r: Result<(), kube::Error>| r.map_err(|e| e.to_string());
    match pss(attempt(
        &alice,
        &labelled,
        &How::Create(shared(
            "pss-baseline-shared-root",
            json!({"name": "agent", "image": "registry.example/agent:1",
        "securityContext": {"runAsUser": 0, "runAsGroup": 0}}),
        )),
    )
    .await)
    {
        Ok(()) => failures.push("PodSecurity baseline + webhook: shared-root admitted".to_owned()),
        Err(e) if e.contains("sets shareProcessNamespace: true") => report.push(
            "refused  (webhook, PodSecurity baseline admits it) shareProcessNamespace + root agent"
                .to_owned(),
        ),
        Err(e) => failures.push(format!("baseline: shared-root refused otherwise: {e}")),
    }
    label_namespace(
        &client,
        &labelled,
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    for (name, spec, refused_with) in [
        (
            "pss-restricted-host-alias",
            json!({"hostAliases": [{"ip": "127.0.0.2", "hostnames": ["customers-db.data.svc.cluster.local"]}]}),
            "the pod sets hostAliases",
        ),
        (
            "pss-restricted-dns",
            json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["192.0.2.53"]}}),
            "the pod sets dnsPolicy: None",
        ),
    ] {
        let p = serde_json::to_value(restricted_pod(name, json!({"spec": spec}))).expect("pod");
        match pss(attempt(&alice, &labelled, &How::Create(p)).await) {
            Ok(()) => failures.push(format!("PodSecurity restricted + webhook: {name} admitted")),
            Err(e) if e.contains(refused_with) => report.push(format!(
                "refused  (webhook, PodSecurity restricted admits it) {name}"
            )),
            Err(e) => failures.push(format!("restricted: {name} refused otherwise: {e}")),
        }
    }
    eprintln!("\n==== rt-30 red-team table ====\n{}\n", report.join("\n"));
    sidecar.shutdown().await;
    unregister(&client, &name).await;
    webhook.stop().await;
    assert!(
        failures.is_empty(),
        "table mismatches:\n{}",
        failures.join("\n")
    );
}

/// What the hostAliases / dnsConfig rows (now refused by the webhook and the proxy) would give
/// the agent at run time, with the real sidecar: its
/// upstream name resolves (through the pod-wide /etc/hosts or resolv.conf the agent chose) to
/// a listener of the agent on the pod's loopback. Here the sidecar's upstream is that
/// listener's address directly (the in-process sidecar cannot have a pod's /etc/hosts), with
/// the tlsMode the operator compiles for a postgres ProtectedResource without `tls`
/// (`require`). The agent's fake server offers TLS with its own certificate and asks for a
/// cleartext password; it used to receive the database credential. The sidecar now sends a
/// cleartext password only to a server whose certificate it verified.
#[tokio::test]
async fn a_redirected_upstream_gets_no_cleartext_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("creds");
    std::fs::create_dir_all(&creds).expect("creds dir");
    std::fs::write(creds.join("username"), "app\n").expect("user file");
    std::fs::write(creds.join("password"), "the-real-db-password\n").expect("password");

    // The agent's fake PostgreSQL on loopback, with a certificate nobody trusts.
    let bundle = portcullis_operator::certs::generate(
        &["127.0.0.1".to_owned()],
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
    .expect("certificates");
    let tls = portcullis_operator::certs::ReloadableCert::new(&bundle.cert_pem, &bundle.key_pem)
        .expect("cert")
        .server_config()
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let fake_port = fake.local_addr().expect("addr").port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = fake.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut ssl_request = [0u8; 8];
                if tcp.read_exact(&mut ssl_request).await.is_err() {
                    return;
                }
                let _ = tx.send(format!("first message {ssl_request:?}"));
                if tcp.write_all(b"S").await.is_err() {
                    return;
                }
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    let _ = tx.send("tls handshake failed".to_owned());
                    return;
                };
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                if s.read_exact(&mut startup).await.is_err() {
                    return;
                }
                let _ = tx.send(format!("startup {:?}", String::from_utf8_lossy(&startup)));
                // AuthenticationCleartextPassword
                let mut ask = vec![b'R'];
                ask.extend_from_slice(&8i32.to_be_bytes());
                ask.extend_from_slice(&3i32.to_be_bytes());
                if s.write_all(&ask).await.is_err() || s.flush().await.is_err() {
                    return;
                }
                let mut head = [0u8; 5];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
                let mut body = vec![0u8; n];
                if s.read_exact(&mut body).await.is_err() {
                    return;
                }
                let password = String::from_utf8_lossy(&body)
                    .trim_end_matches('\0')
                    .to_owned();
                let _ = tx.send(format!("PASSWORD {password}"));
            });
        }
    });

    let config = portcullis_crds::SidecarConfig::from_yaml(&format!(
        "apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: agents
adminListen: 127.0.0.1:0
audit:
  spoolDir: {dir}/spool
resources:
- name: customers-db
  type: postgres
  listenPort: 0
  upstream:
    host: 127.0.0.1
    port: {fake_port}
    database: shop
    tlsMode: require
  credentials:
    usernameFile: {creds}/username
    passwordFile: {creds}/password
  policies: [agents]
policies:
- name: agents
  purpose: Agent work
",
        dir = dir.path().display(),
        creds = creds.display(),
    ))
    .expect("sidecar config");
    let sidecar = portcullis_sidecar::start(
        config,
        portcullis_sidecar::config::Options::service_account("agents", "agent"),
    )
    .await
    .expect("sidecar starts");
    let port = sidecar.addr("customers-db").expect("listening").port();

    // The agent connects to its sidecar as usual; the sidecar dials "the database".
    let agent = tokio::spawn(async move {
        let conn = format!(
            "host=127.0.0.1 port={port} user=agent dbname=shop sslmode=disable connect_timeout=10"
        );
        tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    });
    let mut seen = Vec::new();
    let stolen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = rx.recv().await {
            seen.push(m.clone());
            if let Some(p) = m.strip_prefix("PASSWORD ") {
                return Some(p.to_owned());
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    agent.abort();
    sidecar.shutdown().await;
    eprintln!("fake upstream saw: {seen:?}");
    // Closed: the sidecar sends a cleartext password only to a server whose certificate it
    // verified, so an upstream it reaches by a redirected name gets nothing.
    assert_eq!(
        stolen, None,
        "the sidecar sent its credential to an unverified upstream; saw {seen:?}"
    );
}

/// Not a pod write, so outside the claim's letter, but it would give the same thing: the
/// sidecar's whole configuration (upstream hosts, tlsMode, credential file paths, policies,
/// masking) lives in ConfigMap `portcullis-sidecar-config` of the agents' namespace, which
/// `edit` and the README's recommended `agent-owner` Role (configmaps: create/update/patch)
/// may write. Pointing `upstream.host` at the attacker's server with `tlsMode: disable` would
/// hand the credential over as `a_redirected_upstream_gets_no_cleartext_credential` shows is now closed. The
/// operator compares the ConfigMap's data with what it compiled (not only the
/// `portcullis.dev/config-hash` annotation) and puts it back.
#[tokio::test]
async fn namespace_user_rewrites_the_sidecar_configuration() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use portcullis_e2e::User;

    let scope = "rt30-config";
    let webhooks = "portcullis-test-rt30-config";
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let system = h.namespace("portcullis-system").await;
    let settings = operator_settings(&system, "rt30", webhooks);
    register(
        &client,
        &options(
            webhooks,
            format!("https://{}", settings.webhook_addr),
            None,
            scope,
        ),
    )
    .await;
    let op_client = client.clone();
    let operator = tokio::spawn(async move {
        portcullis_operator::run(op_client, settings, std::future::pending())
            .await
            .expect("operator");
    });

    let ns = h.namespace(scope).await;
    label_namespace(
        &client,
        &ns,
        &[(TEST_LABEL, scope), ("portcullis.dev/inject", "enabled")],
    )
    .await;
    secret(
        &client,
        &ns,
        "customers-db-credentials",
        &[("username", "app"), ("password", "s3cret")],
    )
    .await;
    postgres_resource(
        &client,
        &ns,
        "customers-db",
        5432,
        "customers-db-credentials",
    )
    .await;
    // The README's recommended agent-owner Role, as written there.
    create::<k8s_openapi::api::rbac::v1::Role>(&client, &ns, json!({"metadata": {"name": "agent-owner"}, "rules": [
        {"apiGroups": [""], "resources": ["pods", "pods/log", "services", "configmaps", "persistentvolumeclaims"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["update", "patch"]}]}))
    .await;
    create::<k8s_openapi::api::rbac::v1::RoleBinding>(&client, &ns, json!({
        "metadata": {"name": "agent-owner"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent-owner"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": User::Owner.name()}]}))
    .await;

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let original = eventually(
        Duration::from_secs(60),
        "the compiled sidecar ConfigMap",
        || {
            let cms = cms.clone();
            async move {
                let cm = cms
                    .get_opt("portcullis-sidecar-config")
                    .await
                    .ok()
                    .flatten()?;
                let text = cm.data.as_ref()?.get("sidecar.yaml")?.clone();
                text.contains("customers-db").then_some(text)
            }
        },
    )
    .await;
    assert!(original.contains("tlsMode: require"), "{original}");

    // alice rewrites the upstream: her server, no TLS. The annotation is left as it is.
    let tampered = original
        .replace("customers-db.data.svc.cluster.local", "db.attacker.example")
        .replace("tlsMode: require", "tlsMode: disable");
    portcullis_crds::SidecarConfig::from_yaml(&tampered).expect("the tampered document parses");
    let alice = h.client_as(User::Owner).await;
    Api::<ConfigMap>::namespaced(alice, &ns)
        .patch(
            "portcullis-sidecar-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"sidecar.yaml": tampered}})),
        )
        .await
        .expect("ESCAPE expected: the namespace user may rewrite the sidecar's configuration");

    // The operator's ConfigMap watch fires on the change and restores the compiled data.
    eventually(
        Duration::from_secs(30),
        "the operator restores the compiled sidecar configuration",
        || {
            let cms = cms.clone();
            let original = original.clone();
            async move {
                let cm = cms
                    .get_opt("portcullis-sidecar-config")
                    .await
                    .ok()
                    .flatten()?;
                let text = cm.data.as_ref()?.get("sidecar.yaml")?.clone();
                (text == original).then_some(())
            }
        },
    )
    .await;
    eprintln!("refused  the operator restored the sidecar configuration after alice's change");

    operator.abort();
    unregister(&client, webhooks).await;
}

/// What the rewritten ConfigMap of `namespace_user_rewrites_the_sidecar_configuration` does to
/// the Kubernetes resource: `upstream` set to the attacker's server with `tlsMode: disable`
/// (the configuration check accepts it). With `tlsMode: require` the agent's next API call
/// through its sidecar used to carry the sidecar's REAL service-account token to that server;
/// the sidecar now refuses a Kubernetes upstream it cannot verify.
#[tokio::test]
async fn an_unverified_kubernetes_upstream_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = portcullis_operator::certs::generate(
        &["127.0.0.1".to_owned()],
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
    .expect("certificates");
    std::fs::write(dir.path().join("tls.crt"), &certs.cert_pem).expect("cert");
    std::fs::write(dir.path().join("tls.key"), &certs.key_pem).expect("key");
    std::fs::write(dir.path().join("ca.crt"), &certs.ca_pem).expect("ca");
    std::fs::write(dir.path().join("token"), "REAL-SERVICE-ACCOUNT-TOKEN").expect("token");

    let tls = portcullis_operator::certs::ReloadableCert::new(&certs.cert_pem, &certs.key_pem)
        .expect("cert")
        .server_config()
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let fake_port = fake.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = fake.accept().await else {
                return;
            };
            let tx = tx.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tcp) = acceptor.accept(tcp).await else {
                    let _ = tx.send("tls handshake failed".to_owned());
                    return;
                };
                let mut buf = vec![0u8; 16384];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
                let body = r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[]}"#;
                let _ = tcp
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
                    .await;
            });
        }
    });

    let config = portcullis_crds::SidecarConfig::from_yaml(&format!(
        "apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: agents
adminListen: 127.0.0.1:0
audit:
  spoolDir: {dir}/spool
resources:
- name: cluster-api
  type: kubernetes
  listenPort: 0
  upstream: {{host: 127.0.0.1, port: {fake_port}, tlsMode: require}}
  serverTls: {{certFile: {dir}/tls.crt, keyFile: {dir}/tls.key}}
  tokenFile: {dir}/token
  policies: [agents]
policies:
- name: agents
  purpose: Agent work
",
        dir = dir.path().display(),
    ))
    .expect("the configuration check accepts an unverified Kubernetes upstream");
    // Closed: a Kubernetes upstream is reached only over verified TLS, so the sidecar
    // refuses this configuration instead of sending its token to a server it cannot verify.
    let refused = portcullis_sidecar::start(
        config,
        portcullis_sidecar::config::Options::service_account("agents", "agent"),
    )
    .await
    .err()
    .map(|e| e.to_string())
    .expect("the sidecar refuses an unverified Kubernetes upstream");
    assert!(refused.contains("verified TLS only"), "{refused}");
    drop(rx);
}
