#!/usr/bin/env bash
# The e2e harness: a real etcd + kube-apiserver (built from upstream source) and a real
# PostgreSQL (Debian packages), on loopback only, torn down on exit, failure or Ctrl-C.
#
#   e2e/scripts/harness.sh                      start, print kubeconfig and PostgreSQL URL, wait for Ctrl-C
#   e2e/scripts/harness.sh --watch-pid PID      also stop when process PID exits (used by the Rust tests)
#   e2e/scripts/harness.sh --state DIR          keep state in DIR (default: a new temporary directory)
#
# When everything is ready it writes DIR/env (shell syntax, one VAR=value per line) and prints
# "harness ready: DIR/env". Variables: KUBECONFIG (system:masters), PORTCULLIS_E2E_KUBECONFIG_OWNER
# and PORTCULLIS_E2E_KUBECONFIG_APPROVER (ordinary users), PORTCULLIS_E2E_PG_URL (SCRAM user),
# PORTCULLIS_E2E_PG_ADMIN_URL, KUBECTL, HELM, the certificate paths, and PORTCULLIS_EXEC_NODE: the
# Node to bind pods to (spec.nodeName) for pods/exec and pods/attach, whose kubelet endpoint is the
# exec peer (PORTCULLIS_EXEC_PEER_PORT, log PORTCULLIS_EXEC_PEER_LOG), so commands run as local
# processes of this machine.
set -euo pipefail
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

STATE=""
WATCH_PID=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --state) STATE=$2; shift 2 ;;
        --watch-pid) WATCH_PID=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "harness: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[harness %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[harness] error: %s\n' "$*" >&2; exit 1; }

PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    log "tearing down"
    for pid in "${PIDS[@]:-}"; do
        [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
    done
    if [[ -n ${PGDATA:-} && -f $PGDATA/postmaster.pid ]]; then
        as_pg pg_ctl -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    fi
    for pid in "${PIDS[@]:-}"; do
        [[ -n $pid ]] && wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${CREATED_STATE:-} ]]; then rm -rf "$STATE"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # DESCRIPTION SECONDS COMMAND...
    local what=$1 limit=$2; shift 2
    local start=$SECONDS
    until "$@" >/dev/null 2>&1; do
        if (( SECONDS - start > limit )); then
            die "$what did not become ready within ${limit}s"
        fi
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || die "$what exited during start-up (see its log in $STATE/logs)"
        done
        sleep 0.2
    done
    log "$what ready after $((SECONDS - start))s"
}

# ---- tools -------------------------------------------------------------------------------------
source "$E2E_DIR/versions.env"
eval "$("$E2E_DIR/scripts/build-tools.sh")"
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[[ -x $PG_BIN/initdb ]] || die "PostgreSQL server binaries not found under /usr/lib/postgresql (install Debian's postgresql package: e2e/scripts/install-deps.sh)"
command -v openssl >/dev/null || die "openssl not found (install Debian's openssl package)"

if [[ -z $STATE ]]; then
    STATE=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-e2e.XXXXXX")
    CREATED_STATE=1
fi
mkdir -p "$STATE/logs" "$STATE/pki"
STATE=$(cd "$STATE" && pwd)
log "state in $STATE"

# ---- certificates ------------------------------------------------------------------------------
PKI=$STATE/pki
make_pki() {
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=portcullis-e2e-ca" \
        -keyout ca.key -out ca.crt 2>/dev/null
    # issue NAME SUBJECT [SAN]
    issue() {
        local name=$1 subj=$2 san=${3:-}
        openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$name.key" -out "$name.csr" 2>/dev/null
        local ext
        if [[ -n $san ]]; then
            ext="subjectAltName=$san\nextendedKeyUsage=serverAuth,clientAuth"
        else
            ext="extendedKeyUsage=clientAuth"
        fi
        openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile <(printf '%b\n' "$ext") -out "$name.crt" 2>/dev/null
        rm -f "$name.csr"
    }
    issue apiserver "/CN=kube-apiserver" \
        "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    issue admin "/O=system:masters/CN=e2e-admin"
    # Two ordinary users: the person who owns the agent, and an approver.
    issue owner "/O=agent-owners/CN=alice"
    issue approver "/O=portcullis-approvers/CN=bob"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    cd - >/dev/null
}
make_pki
log "certificates issued (CA, API server, admin, users alice and bob, service-account key)"

# ---- etcd --------------------------------------------------------------------------------------
ETCD_PORT=$(free_port); ETCD_PEER_PORT=$(free_port)
"$ETCD" --name e2e --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn \
    >"$STATE/logs/etcd.log" 2>&1 &
PIDS+=($!)
log "etcd $ETCD_VERSION starting on 127.0.0.1:$ETCD_PORT"
wait_for etcd 60 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

# ---- kube-apiserver ----------------------------------------------------------------------------
API_PORT=$(free_port)
"$KUBE_APISERVER" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode RBAC \
    --enable-admission-plugins NamespaceLifecycle,ServiceAccount,PodSecurity,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy \
    --profiling=false --enable-priority-and-fairness=false \
    >"$STATE/logs/kube-apiserver.log" 2>&1 &
PIDS+=($!)
log "kube-apiserver $KUBERNETES_VERSION starting on https://127.0.0.1:$API_PORT"

kubeconfig() { # FILE USER
    local file=$1 user=$2
    cat >"$file" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
    client-certificate: $PKI/$user.crt
    client-key: $PKI/$user.key
contexts:
- name: e2e
  context: {cluster: e2e, user: $user, namespace: default}
current-context: e2e
KCFG
}
kubeconfig "$STATE/admin.kubeconfig" admin
kubeconfig "$STATE/owner.kubeconfig" owner
kubeconfig "$STATE/approver.kubeconfig" approver
wait_for kube-apiserver 180 "$KUBECTL" --kubeconfig "$STATE/admin.kubeconfig" get --raw /readyz

# ---- exec peer ---------------------------------------------------------------------------------
# No kubelet runs here. The exec peer serves the kubelet's streaming API (exec, attach) with the
# kubelet's own code; a Node whose kubelet endpoint is the peer makes kube-apiserver proxy
# pods/exec and pods/attach of every pod bound to it there.
EXEC_NODE=portcullis-exec-peer
EXEC_PEER_PORT=$(free_port)
"$EXEC_PEER" --listen "127.0.0.1:$EXEC_PEER_PORT" >"$STATE/logs/execpeer.log" 2>&1 &
PIDS+=($!)
log "exec peer starting on https://127.0.0.1:$EXEC_PEER_PORT"
wait_for "exec peer" 30 curl -fsSk "https://127.0.0.1:$EXEC_PEER_PORT/healthz"
admin_kubectl() { "$KUBECTL" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }
admin_kubectl apply -f - >/dev/null <<NODE
apiVersion: v1
kind: Node
metadata:
  name: $EXEC_NODE
  labels:
    kubernetes.io/hostname: $EXEC_NODE
    kubernetes.io/os: linux
NODE
# Node status is a subresource: the address and the kubelet port are written to it separately.
node_status='{"status": {
  "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
  "daemonEndpoints": {"kubeletEndpoint": {"Port": PORT}},
  "conditions": [{"type": "Ready", "status": "True", "reason": "ExecPeer",
                  "message": "exec and attach are served by the e2e exec peer"}]}}'
admin_kubectl patch node "$EXEC_NODE" --subresource=status --type=merge \
    -p "${node_status/PORT/$EXEC_PEER_PORT}" >/dev/null
log "node $EXEC_NODE registered (kubelet endpoint 127.0.0.1:$EXEC_PEER_PORT)"

# ---- PostgreSQL --------------------------------------------------------------------------------
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- env PATH="$PG_BIN:$PATH" "$@"
    else
        env PATH="$PG_BIN:$PATH" "$@"
    fi
}
PG_PORT=$(free_port)
PGDATA=$STATE/postgres
PG_ADMIN_PASSWORD=$(openssl rand -hex 16)
PG_APP_PASSWORD=$(openssl rand -hex 16)
mkdir -p "$PGDATA" "$STATE/pgsock"
printf '%s\n' "$PG_ADMIN_PASSWORD" >"$STATE/pg-admin-password"
if [[ $(id -u) -eq 0 ]]; then
    chown postgres "$PGDATA" "$STATE/pgsock" "$STATE/pg-admin-password"
    chmod 755 "$STATE" "$STATE/logs"
    touch "$STATE/logs/postgres.log" && chown postgres "$STATE/logs/postgres.log"
fi
as_pg initdb -D "$PGDATA" -U postgres --auth=scram-sha-256 --pwfile="$STATE/pg-admin-password" \
    --encoding=UTF8 --locale=C.UTF-8 >"$STATE/logs/initdb.log" 2>&1 \
    || die "initdb failed: $(tail -n 5 "$STATE/logs/initdb.log")"
cat >>"$PGDATA/postgresql.conf" <<PGCONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$STATE/pgsock'
fsync = off
max_connections = 1200
# Debug builds of the proxies under test authenticate slowly on a loaded machine: a thousand
# concurrent start-ups may take longer than the default minute.
authentication_timeout = '5min'
shared_buffers = 128MB
password_encryption = 'scram-sha-256'
PGCONF
as_pg pg_ctl -D "$PGDATA" -l "$STATE/logs/postgres.log" -w -t 60 start >/dev/null \
    || die "PostgreSQL did not start: $(tail -n 5 "$STATE/logs/postgres.log")"
log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') ready on 127.0.0.1:$PG_PORT"
PG_ADMIN_URL="postgresql://postgres:$PG_ADMIN_PASSWORD@127.0.0.1:$PG_PORT/postgres"
psql -q -v ON_ERROR_STOP=1 "$PG_ADMIN_URL" >/dev/null <<SQL
CREATE ROLE app LOGIN PASSWORD '$PG_APP_PASSWORD';
CREATE DATABASE shop OWNER app;
SQL
PG_URL="postgresql://app:$PG_APP_PASSWORD@127.0.0.1:$PG_PORT/shop"
python3 "$E2E_DIR/seed/customers.py" 500 | psql -q -v ON_ERROR_STOP=1 "$PG_URL" >/dev/null
log "database shop seeded: $(psql -tA "$PG_URL" -c 'select count(*) from customers') customers (SCRAM-SHA-256 user app)"

# ---- hand over ---------------------------------------------------------------------------------
cat >"$STATE/env.tmp" <<ENV
KUBECONFIG=$STATE/admin.kubeconfig
PORTCULLIS_E2E_KUBECONFIG=$STATE/admin.kubeconfig
PORTCULLIS_E2E_KUBECONFIG_OWNER=$STATE/owner.kubeconfig
PORTCULLIS_E2E_KUBECONFIG_APPROVER=$STATE/approver.kubeconfig
PORTCULLIS_E2E_APISERVER=https://127.0.0.1:$API_PORT
PORTCULLIS_E2E_CA=$PKI/ca.crt
PORTCULLIS_E2E_SA_KEY=$PKI/sa.key
PORTCULLIS_E2E_PG_URL=$PG_URL
PORTCULLIS_E2E_PG_ADMIN_URL=$PG_ADMIN_URL
PORTCULLIS_E2E_PG_HOST=127.0.0.1
PORTCULLIS_E2E_PG_PORT=$PG_PORT
PORTCULLIS_E2E_PG_PASSWORD=$PG_APP_PASSWORD
PORTCULLIS_E2E_STATE=$STATE
PORTCULLIS_EXEC_NODE=$EXEC_NODE
PORTCULLIS_EXEC_PEER_PORT=$EXEC_PEER_PORT
PORTCULLIS_EXEC_PEER_LOG=$STATE/logs/execpeer.log
KUBECTL=$KUBECTL
HELM=$HELM
ENV
mv "$STATE/env.tmp" "$STATE/env"
log "harness ready: $STATE/env"
echo "kubeconfig:     $STATE/admin.kubeconfig (system:masters); users: $STATE/owner.kubeconfig (alice), $STATE/approver.kubeconfig (bob)"
echo "postgresql url: $PG_URL"
echo "harness ready: $STATE/env"

while true; do
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "a harness process ($pid) exited; logs in $STATE/logs"
    done
    if [[ -n $WATCH_PID ]] && ! kill -0 "$WATCH_PID" 2>/dev/null; then
        log "process $WATCH_PID exited"
        exit 0
    fi
    if ! as_pg pg_ctl -D "$PGDATA" status >/dev/null 2>&1; then
        die "PostgreSQL stopped; log in $STATE/logs/postgres.log"
    fi
    sleep 1
done
