#!/usr/bin/env bash
# The local demo: starts a real control plane (etcd + kube-apiserver built from upstream source)
# and a real PostgreSQL on loopback, installs the Portcullis API, applies the GDPR examples and
# shows them as a platform engineer sees them. Everything is torn down at the end.
#   scripts/demo.sh            run the demo and exit
#   scripts/demo.sh --keep     keep the harness running until Ctrl-C
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
keep=false; [[ ${1:-} == --keep ]] && keep=true
export PORTCULLIS_CACHE=${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PORTCULLIS_CACHE/target}
say() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*" >&2; "$@"; }

say "Install dependencies and build the control plane from upstream source (cached after the first run)"
e2e/scripts/install-deps.sh
eval "$(e2e/scripts/build-tools.sh)"
cargo build -q -p portcullis-crds --bin crdgen -p portcullis-sidecar --bin portcullis-sidecar

say "Start etcd, kube-apiserver and PostgreSQL on loopback"
state=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-demo.XXXXXX")
e2e/scripts/harness.sh --state "$state" --watch-pid $$ >"$state.out" 2>"$state.log" &
harness=$!
trap 'kill $harness 2>/dev/null || true; wait $harness 2>/dev/null || true; rm -rf "$state" "$state.out" "$state.log"' EXIT
until grep -q '^harness ready: ' "$state.out" 2>/dev/null; do
    kill -0 $harness 2>/dev/null || { cat "$state.log" >&2; exit 1; }
    sleep 0.5
done
set -a; source "$state/env"; set +a
cat "$state.out" | grep -v '^harness ready'

say "Generate the CRDs from the Rust types and install them (server-side apply)"
run "$CARGO_TARGET_DIR/debug/crdgen" --stdout | "$KUBECTL" apply --server-side -f -
run "$KUBECTL" wait --for=condition=Established --timeout=30s \
    crd/protectedresources.portcullis.dev crd/gatewaypolicies.portcullis.dev \
    crd/accessrequests.portcullis.dev crd/auditretentions.portcullis.dev
# The API server publishes a new CRD's schema a moment after it is Established.
for _ in $(seq 60); do "$KUBECTL" explain gatewaypolicy >/dev/null 2>&1 && break; sleep 0.5; done
run "$KUBECTL" explain gatewaypolicy.spec.masking | sed -n '1,12p'

say "Apply the GDPR examples into namespace agents"
run "$KUBECTL" create namespace agents
run "$KUBECTL" apply -n agents -f examples/gdpr/

say "Everything Portcullis manages, in one list"
run "$KUBECTL" get portcullis -n agents

say "A policy the API server refuses: a masking rule that names neither a column nor a detector"
"$KUBECTL" apply -n agents -f crds/tests/invalid/09-gp-masking-rule-without-column-or-detector.yaml 2>&1 | sed 's/^/  /' || true

say "The seeded customer database (what the sidecar will protect)"
run psql "$PORTCULLIS_E2E_PG_URL" -c 'SELECT id, full_name, email, ssn FROM customers ORDER BY id LIMIT 3'

say "Put the sidecar in front of the database (standalone mode, examples/local/sidecar.yaml)"
local_dir=$state/local
mkdir -p "$local_dir/secrets"
printf '%s\n' app >"$local_dir/secrets/username"
printf '%s\n' "$PORTCULLIS_E2E_PG_PASSWORD" >"$local_dir/secrets/password"
chmod 600 "$local_dir/secrets/"*
sed -e "s|/tmp/portcullis-local|$local_dir|g" -e "s|^    port: 5432|    port: $PORTCULLIS_E2E_PG_PORT|" \
    examples/local/sidecar.yaml >"$local_dir/sidecar.yaml"
"$CARGO_TARGET_DIR/debug/portcullis-sidecar" --config "$local_dir/sidecar.yaml" \
    --service-account support-agent --namespace agents >"$state.sidecar.log" 2>&1 &
sidecar=$!
trap 'kill $sidecar 2>/dev/null || true; kill $harness 2>/dev/null || true; wait $harness 2>/dev/null || true; rm -rf "$state" "$state.out" "$state.log" "$state.sidecar.log"' EXIT
until curl -fs http://127.0.0.1:15090/readyz >/dev/null; do
    kill -0 $sidecar 2>/dev/null || { cat "$state.sidecar.log" >&2; exit 1; }
    sleep 0.2
done
agent="postgresql://agent@127.0.0.1:15432/shop?sslmode=disable"
say "The agent connects without any password; an ordinary query passes"
run psql "$agent" -c 'SELECT id, full_name, city FROM customers ORDER BY id LIMIT 3'
say "A DELETE without WHERE is refused by the guardrail, and the session stays usable"
run psql "$agent" -c 'DELETE FROM orders' -c 'SELECT count(*) AS orders_still_there FROM orders' || true
say "Schema changes are refused too"
run psql "$agent" -c 'DROP TABLE customers' || true
say "Every decision was written to the audit spool before anything was forwarded (literals replaced)"
python3 - "$local_dir"/spool/*.jsonl <<'PY'
import json, sys
for path in sys.argv[1:]:
    for line in open(path):
        r = json.loads(line)
        e = r["event"]
        if e["type"] == "statement":
            rule = (e.get("rule") or {}).get("rule", "-")
            print("  seq %3d  %-14s %-6s %-20s %s" % (r["seq"], r["identity"]["name"], e["decision"], rule, e.get("statement")))
PY

if $keep; then
    say "Harness running; KUBECONFIG=$KUBECONFIG. Ctrl-C to stop."
    wait $harness
fi
say "Done; tearing down."
