#!/usr/bin/env bash
# The local demo, the whole story on one machine: a real control plane (etcd + kube-apiserver
# built from upstream source) and a real PostgreSQL on loopback, the operator and its webhooks,
# the examples, an agent pod with the injected sidecar, the sidecar run from that pod's compiled
# configuration, and an agent workload through it: a masked result, a refused bulk delete, a
# write approved by a second person, and the evidence bundle verified offline.
#   scripts/demo.sh            run the demo and exit
#   scripts/demo.sh --keep     keep everything running until Ctrl-C
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
keep=false; [[ ${1:-} == --keep ]] && keep=true
export PORTCULLIS_CACHE=${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PORTCULLIS_CACHE/target}
export PATH=$PORTCULLIS_CACHE/venv/bin:$PATH
BIN=$CARGO_TARGET_DIR/debug
say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
show() { # print a command as a reader would type it: tools by name, the demo's directory as $STATE
    local line="$*"
    line=${line//"$KUBECTL"/kubectl}
    line=${line//"$BIN/"/}
    [[ -n ${state:-} ]] && line=${line//"$state"/\$STATE}
    printf '$ %s\n' "$line" >&2
}
run() { show "$@"; "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_for() { # DESCRIPTION COMMAND...: retry for 60 s
    local what=$1; shift
    for _ in $(seq 120); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    echo "timed out waiting for $what; the last log lines:" >&2
    tail -n 20 "$state"/*.log >&2 2>/dev/null || true
    return 1
}

say "Install dependencies and build the control plane (from upstream source) and Portcullis; cached after the first run"
e2e/scripts/install-deps.sh
eval "$(e2e/scripts/build-tools.sh)"
cargo build -q -p portcullis-crds --bin crdgen -p portcullis-operator --bins \
    -p portcullis-sidecar --bin portcullis-sidecar -p portcullis-audit --bin portcullis-audit

PIDS=()
state=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-demo.XXXXXX")
chmod 755 "$state"   # PostgreSQL runs as its own user under it
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$state"
}
trap cleanup EXIT

say "Start etcd, kube-apiserver and PostgreSQL (seeded with 500 synthetic customers) on loopback"
e2e/scripts/harness.sh --state "$state/harness" --watch-pid $$ >"$state/harness.out" 2>"$state/harness.log" &
PIDS+=($!)
until grep -q '^harness ready: ' "$state/harness.out" 2>/dev/null; do
    kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$state/harness.log" >&2; exit 1; }
    sleep 0.5
done
set -a; source "$state/harness/env"; set +a
grep -v '^harness ready' "$state/harness.out"
export PATH=$BIN:$PATH   # kubectl finds the kubectl-portcullis plugin here
as_alice() { KUBECONFIG=$PORTCULLIS_E2E_KUBECONFIG_OWNER "$@"; }
as_bob() { KUBECONFIG=$PORTCULLIS_E2E_KUBECONFIG_APPROVER "$@"; }

say "Install the Portcullis API: CRDs generated from the Rust types, applied server-side"
"$BIN/crdgen" --stdout | run "$KUBECTL" apply --server-side -f - | sed 's/^/  /'
run "$KUBECTL" wait --for=condition=Established --timeout=60s \
    crd/protectedresources.portcullis.dev crd/gatewaypolicies.portcullis.dev \
    crd/accessrequests.portcullis.dev crd/auditretentions.portcullis.dev | sed 's/^/  /'

say "Run the operator: controllers, admission webhooks (registered by URL), its own CA"
run "$KUBECTL" create namespace portcullis-system | sed 's/^/  /'
webhook_port=$(free_port); metrics_port=$(free_port)
RUST_LOG=warn "$BIN/portcullis-operator" --namespace portcullis-system \
    --webhook-addr "127.0.0.1:$webhook_port" --webhook-san 127.0.0.1 \
    --metrics-addr "127.0.0.1:$metrics_port" --register-webhooks "https://127.0.0.1:$webhook_port" \
    --sidecar-image ghcr.io/portcullis/sidecar:dev >"$state/operator.log" 2>&1 &
PIDS+=($!)
wait_for "the operator" curl -fs "http://127.0.0.1:$metrics_port/readyz"
# The API server accepts the webhook once its caBundle is in place.
wait_for "the webhook CA bundle" sh -c "'$KUBECTL' get mutatingwebhookconfiguration portcullis-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | grep -q ."
run "$KUBECTL" get mutatingwebhookconfigurations,validatingwebhookconfigurations | sed 's/^/  /'

say "A team namespace with injection on; the customer database as a ProtectedResource; the GDPR policy and a 400-day retention"
ns=support
run "$KUBECTL" create namespace $ns | sed 's/^/  /'
run "$KUBECTL" label namespace $ns portcullis.dev/inject=enabled | sed 's/^/  /'
# The example database, pointed at the local PostgreSQL; its credential lives in a Secret that
# only the sidecar mounts.
"$KUBECTL" -n $ns create secret generic customers-db-credentials \
    --from-literal=username=app --from-literal=password="$PORTCULLIS_E2E_PG_PASSWORD" >/dev/null
sed -e "s/host: customers-db.data.svc.cluster.local/host: $PORTCULLIS_E2E_PG_HOST/" \
    -e "s/port: 5432$/port: $PORTCULLIS_E2E_PG_PORT/" examples/gdpr/customers-db.yaml |
    python3 -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] == "ProtectedResource"]
for d in docs:
    d["spec"]["tls"] = {"mode": "disable"}
    d["spec"]["listenPort"] = 15432
print(yaml.safe_dump_all(docs))' >"$state/customers-db.yaml"
run "$KUBECTL" apply -n $ns -f "$state/customers-db.yaml" -f examples/gdpr/gatewaypolicy.yaml \
    -f examples/gdpr/auditretention.yaml | sed 's/^/  /'
run "$KUBECTL" apply -n $ns -f examples/autogen/agent.yaml | sed 's/^/  /'
wait_for "the compiled policy" sh -c "'$KUBECTL' -n $ns get gatewaypolicy customers-gdpr -o jsonpath='{.status.configHash}' | grep -q ."
run "$KUBECTL" get portcullis -n $ns | sed 's/^/  /'

say "A policy the API server refuses, with the reason: a masking rule that names neither a column nor a detector"
"$KUBECTL" apply -n $ns -f crds/tests/invalid/09-gp-masking-rule-without-column-or-detector.yaml 2>&1 | sed 's/^/  /' || true

say "An agent pod (the AutoGen Deployment's pod template; this control plane runs no controllers or kubelet, so the pod is created directly): the webhook injects the sidecar"
python3 -c '
import json, yaml
items = list(yaml.safe_load_all(open("examples/autogen/agent.yaml")))
dep = next(i for i in items if i["kind"] == "Deployment")
pod = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "support-agent-0", "labels": dep["spec"]["template"]["metadata"]["labels"]},
       "spec": dep["spec"]["template"]["spec"]}
print(json.dumps(pod))' >"$state/pod.json"
run "$KUBECTL" -n $ns apply -f "$state/pod.json" | sed 's/^/  /'
run "$KUBECTL" -n $ns get pod support-agent-0 -o json | python3 -c '
import json, sys
p = json.load(sys.stdin)
print("  annotations:", {k: v for k, v in p["metadata"].get("annotations", {}).items() if "portcullis" in k})
for c in p["spec"].get("initContainers", []) + p["spec"]["containers"]:
    env = {e["name"]: e.get("value", "<from " + next(iter(e.get("valueFrom", {"?": 0}))) + ">") for e in c.get("env", [])}
    print("  container %-20s restartPolicy=%-7s image=%s" % (c["name"], c.get("restartPolicy", "-"), c["image"]))
    print("    mounts:", ", ".join(m["mountPath"] for m in c.get("volumeMounts", [])))
    if "DATABASE_URL" in env: print("    DATABASE_URL:", env["DATABASE_URL"])
sc = p["spec"]["securityContext"]
print("  pod securityContext:", sc)'

say "Run the audit service: an HTTPS ingest that authenticates each sidecar by its pod-bound token, a Merkle log with ed25519-signed tree heads witnessed in the AuditRetention status"
audit_dir=$state/audit
mkdir -p "$audit_dir"
# A CA of its own (in the cluster: the chart's) and a serving certificate for 127.0.0.1.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=portcullis-audit-ca" \
    -keyout "$audit_dir/ca.key" -out "$audit_dir/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=portcullis-audit" \
    -keyout "$audit_dir/tls.key" -out "$audit_dir/tls.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$audit_dir/ext.cnf"
openssl x509 -req -in "$audit_dir/tls.csr" -CA "$audit_dir/ca.crt" -CAkey "$audit_dir/ca.key" \
    -CAcreateserial -days 1 -extfile "$audit_dir/ext.cnf" -out "$audit_dir/tls.crt" 2>/dev/null
"$BIN/portcullis-audit" keygen "$audit_dir/signing.pk8" >"$audit_dir/public-key.hex"
audit_port=$(free_port)
RUST_LOG=warn "$BIN/portcullis-audit" serve --listen "127.0.0.1:$audit_port" --data-dir "$audit_dir/log" \
    --tls-cert "$audit_dir/tls.crt" --tls-key "$audit_dir/tls.key" --signing-key "$audit_dir/signing.pk8" \
    --sign-every-ms 1000 --witness $ns/default >"$state/audit.log" 2>&1 &
PIDS+=($!)
wait_for "the audit service" curl -fs --cacert "$audit_dir/ca.crt" "https://127.0.0.1:$audit_port/v1/sth"
echo "  public key of the log (give it to the auditor): $(cat "$audit_dir/public-key.hex")"

say "Start the sidecar from the configuration the operator compiled for this namespace (credential files as the pod would mount them)"
sidecar_dir=$state/sidecar
mkdir -p "$sidecar_dir/credentials"
printf 'app' >"$sidecar_dir/credentials/username"
printf '%s' "$PORTCULLIS_E2E_PG_PASSWORD" >"$sidecar_dir/credentials/password"
chmod 600 "$sidecar_dir/credentials/"*
"$KUBECTL" -n $ns get configmap portcullis-sidecar-config -o jsonpath='{.data.sidecar\.yaml}' >"$sidecar_dir/compiled.yaml"
# The key of the hash masking strategy, which the pod mounts from the namespace's Secret.
wait_for "the masking key" "$KUBECTL" -n $ns get secret portcullis-masking-key
"$KUBECTL" -n $ns get secret portcullis-masking-key -o jsonpath='{.data.key}' | base64 -d >"$sidecar_dir/masking-key"
chmod 600 "$sidecar_dir/masking-key"
# The pod-bound token the sidecar proves itself with to the audit service (audience portcullis-audit).
"$KUBECTL" -n $ns create token support-agent --audience portcullis-audit --duration 1h \
    --bound-object-kind Pod --bound-object-name support-agent-0 >"$sidecar_dir/audit-token"
python3 - "$sidecar_dir" "https://127.0.0.1:$audit_port" "$audit_dir/ca.crt" <<'PY'
import sys, yaml
d, url, ca = sys.argv[1:4]
c = yaml.safe_load(open(d + "/compiled.yaml"))
c["audit"]["spoolDir"] = d + "/spool"
c["audit"].update({"serviceUrl": url, "caFile": ca, "tokenFile": d + "/audit-token"})
c["adminListen"] = "127.0.0.1:15090"
c["masking"]["hashKeyFile"] = d + "/masking-key"
for r in c["resources"]:
    r["credentials"] = {"usernameFile": d + "/credentials/username", "passwordFile": d + "/credentials/password"}
yaml.safe_dump(c, open(d + "/sidecar.yaml", "w"))
PY
sed -n '/^policies:/,$p' "$sidecar_dir/sidecar.yaml" | head -30 | sed 's/^/  /'
# In the pod the sidecar alone holds the service account's token; here it gets one from the
# TokenRequest API, with the rights the chart's sidecar-approvals ClusterRole grants.
"$KUBECTL" apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: portcullis-sidecar-approvals}
rules:
- {apiGroups: [portcullis.dev], resources: [accessrequests], verbs: [create, get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: support-agent-approvals, namespace: $ns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: portcullis-sidecar-approvals}
subjects:
- {kind: ServiceAccount, name: support-agent, namespace: $ns}
YAML
# People who may record decisions (the chart's approver ClusterRole). Admission decides whose
# decision counts: an approver of the policy who is not the requester.
"$KUBECTL" apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: portcullis-approver}
rules:
- {apiGroups: [portcullis.dev], resources: [accessrequests], verbs: [get, list, watch, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: accessrequest-deciders, namespace: $ns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: portcullis-approver}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: portcullis-approvers}
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: agent-owners}
YAML
token=$("$KUBECTL" -n $ns create token support-agent --duration 1h)
cat >"$sidecar_dir/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: $PORTCULLIS_E2E_APISERVER, certificate-authority: $PORTCULLIS_E2E_CA}
users:
- name: support-agent
  user: {token: $token}
contexts:
- name: local
  context: {cluster: local, user: support-agent, namespace: $ns}
current-context: local
YAML
chmod 600 "$sidecar_dir/kubeconfig"
RUST_LOG=warn "$BIN/portcullis-sidecar" --config "$sidecar_dir/sidecar.yaml" --kubeconfig "$sidecar_dir/kubeconfig" \
    --service-account support-agent --namespace $ns --pod support-agent-0 >"$state/sidecar.log" 2>&1 &
PIDS+=($!)
wait_for "the sidecar" curl -fs http://127.0.0.1:15090/readyz
agent="postgresql://support-agent@127.0.0.1:15432/shop?sslmode=disable"

say "The agent's query through the sidecar: e-mail, national id and card number come back masked"
run psql -X "$agent" -c 'SELECT id, full_name, email, ssn, card_number FROM customers ORDER BY id LIMIT 3'
say "The same data asked for creatively (concatenation, JSON of the whole row) is masked too"
run psql -X "$agent" -c "SELECT 'mail: ' || email AS contact, row_to_json(c)::text AS whole_row FROM customers c WHERE id = 1"

say "A bulk delete: refused by the guardrail before it reaches the database; the session stays usable"
run psql -X "$agent" -c 'DELETE FROM orders' -c 'SELECT count(*) AS orders_still_there FROM orders' || true

say "A Python client (psycopg) does the same work through the same sidecar"
python3 - "$agent" <<'PY'
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    row = conn.execute("SELECT email, iban FROM customers WHERE id = %s", (2,)).fetchone()
    print("  customer 2:", row)
    try:
        conn.execute("DROP TABLE customers")
    except psycopg.Error as e:
        print("  DROP TABLE refused:", e.sqlstate, str(e).strip())
PY

say "A write to customers needs a person's approval: the agent waits while the request is pending"
(psql -X "$agent" -c "SET portcullis.justification = 'ticket 4711: customer moved'" \
    -c "UPDATE customers SET city = 'Lisbon' WHERE id = 7" >"$state/write.out" 2>&1; echo "exit $?" >>"$state/write.out") &
writer=$!
wait_for "the access request" sh -c "'$KUBECTL' -n $ns get accessrequests -o name | grep -q ."
request=$("$KUBECTL" -n $ns get accessrequests -o jsonpath='{.items[0].metadata.name}')
run "$KUBECTL" -n $ns get accessrequests | sed 's/^/  /'
run "$KUBECTL" portcullis -n $ns show "$request" | sed 's/^/  /'
say "alice owns the agent but is no approver: admission refuses her decision; bob (portcullis-approvers) approves"
show "kubectl portcullis approve $request --reason mine   # as alice"
as_alice "$KUBECTL" portcullis -n $ns approve "$request" --reason "mine" 2>&1 | sed 's/^/  /' || true
show "kubectl portcullis approve $request --reason '...'   # as bob"
as_bob "$KUBECTL" portcullis -n $ns approve "$request" \
    --reason "verified with the customer on the phone" | sed 's/^/  /'
wait "$writer" || true
sed 's/^/  /' "$state/write.out"
run "$KUBECTL" -n $ns get accessrequest "$request" | sed 's/^/  /'

say "Every step is in the audit spool, written before each statement was forwarded (literals replaced)"
python3 - "$sidecar_dir"/spool/*.jsonl <<'PY'
import json, sys
for path in sys.argv[1:]:
    for line in open(path):
        r = json.loads(line)
        e = r["event"]
        if e["type"] in ("sessionStart", "sessionEnd", "completion"):
            continue
        rule = (e.get("rule") or {}).get("rule", "-")
        if e["type"] == "approval":
            decision = e["step"]
            what = "AccessRequest %s%s" % (e["request"], " by " + e["decidedBy"] if e.get("decidedBy") else "")
        else:
            decision = e.get("decision", "")
            what = e.get("statement") or ""
        print("  seq %3d  %-14s %-10s %-16s %-20s %s" % (r["seq"], r["identity"]["name"], e["type"], decision, rule, what))
PY

say "The sidecar shipped its spool to the audit service; the cluster's own state witnesses the log's signed tree head"
wait_for "the spool to be shipped" sh -c "curl -fs http://127.0.0.1:15090/metrics | grep -q '^portcullis_sidecar_audit_unshipped_bytes 0$'"
sleep 2   # the next signed tree head covers every record
run "$KUBECTL" -n $ns get auditretention default -o jsonpath='{.status.latestSignedTreeHead}{"\n"}' | sed 's/^/  /'

say "An auditor exports the evidence bundle (RBAC: get auditretentions/evidence) and verifies it offline with the public key alone"
"$KUBECTL" -n $ns create serviceaccount auditor >/dev/null
"$KUBECTL" apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: portcullis-evidence-reader}
rules:
- {apiGroups: [portcullis.dev], resources: [auditretentions, auditretentions/evidence], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: auditor-evidence, namespace: $ns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: portcullis-evidence-reader}
subjects:
- {kind: ServiceAccount, name: auditor, namespace: $ns}
YAML
"$KUBECTL" -n $ns create token auditor --duration 1h >"$audit_dir/auditor-token"
run "$KUBECTL" portcullis -n $ns evidence --audit-url "https://127.0.0.1:$audit_port" --ca "$audit_dir/ca.crt" \
    --token-file "$audit_dir/auditor-token" -o "$state/bundle" | sed 's/^/  /'
ls "$state/bundle" | sed 's/^/  bundle: /'
sed -n '1,40p' "$state/bundle/summary.md" | sed 's/^/  | /'
run "$KUBECTL" portcullis verify "$state/bundle" --public-key "$audit_dir/public-key.hex" | sed 's/^/  /'
say "One changed byte in the bundle and verification fails"
cp -r "$state/bundle" "$state/bundle-tampered"
python3 - "$state/bundle-tampered" <<'PY'
import os, sys
d = sys.argv[1]
name = "records.jsonl"
data = bytearray(open(os.path.join(d, name), "rb").read())
i = data.index(b'"decision":"deny"') + len('"decision":"')
data[i:i + 4] = b"allo"   # deny -> allo(w): rewrite history
open(os.path.join(d, name), "wb").write(bytes(data))
print("  changed %s: a refused statement now claims it was allowed" % name)
PY
"$KUBECTL" portcullis verify "$state/bundle-tampered" --public-key "$audit_dir/public-key.hex" 2>&1 | sed 's/^/  /' || true

if $keep; then
    say "Everything is running; KUBECONFIG=$KUBECONFIG, agent URL $agent. Ctrl-C to stop."
    wait "${PIDS[0]}"
fi
say "Done; tearing down."
