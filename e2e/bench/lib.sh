# Shared by the benchmark scripts (sourced): a work directory torn down on exit, the harness
# PostgreSQL (started unless PORTCULLIS_E2E_ENV names a running one), and release sidecars in
# front of it.
#   bench_init PREFIX      WORK, PIDS, cleanup on exit, log, free_port
#   bench_postgres         PG_HOST, PG_PORT, PG_PASSWORD, DIRECT_URL
#   bench_sidecar_build    SIDECAR (release build) and its credential files under $WORK/secrets
#   start_sidecar NAME SPOOL_DIR POLICY_BODY [TOP_LEVEL_YAML]   prints the port it serves on;
#                          its process id is in $WORK/NAME.pid ($SIDECAR_BIN, if set, is the
#                          binary started instead of $SIDECAR)
# BENCH_BASELINE_SIDECAR=PATH (a sidecar binary built from an earlier commit) makes the scripts
# add targets run by it, so a change is measured against its baseline in the same run.
#   cpu_ticks PID          user + system CPU time of a process, in clock ticks
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

bench_init() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    chmod 755 "$WORK"   # PostgreSQL runs as its own user under it
    PIDS=()
    trap cleanup EXIT
}
cleanup() {
    # Sidecars start in command substitutions, so their ids are in files rather than PIDS.
    for f in "$WORK"/*.pid; do [[ -f $f ]] && PIDS+=("$(cat "$f")"); done
    for pid in "${PIDS[@]:-}"; do [[ -n $pid ]] && kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]:-}"; do [[ -n $pid ]] && wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

bench_postgres() {
    local env_file
    if [[ -n ${PORTCULLIS_E2E_ENV:-} ]]; then
        env_file=$PORTCULLIS_E2E_ENV
    else
        log "starting the e2e harness"
        "$ROOT/e2e/scripts/harness.sh" --state "$WORK/harness" --watch-pid $$ >"$WORK/harness.log" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 1 600); do [[ -f $WORK/harness/env ]] && break; sleep 0.5; done
        [[ -f $WORK/harness/env ]] || { cat "$WORK/harness.log" >&2; exit 1; }
        env_file=$WORK/harness/env
    fi
    # shellcheck disable=SC1090
    source "$env_file"
    PG_HOST=$PORTCULLIS_E2E_PG_HOST PG_PORT=$PORTCULLIS_E2E_PG_PORT PG_PASSWORD=$PORTCULLIS_E2E_PG_PASSWORD
    DIRECT_URL=$PORTCULLIS_E2E_PG_URL
}

bench_sidecar_build() {
    log "building the sidecar (release)"
    cargo build --release -q -p portcullis-sidecar --manifest-path "$ROOT/Cargo.toml"
    SIDECAR=${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-sidecar
    mkdir -p "$WORK/secrets"
    printf 'app\n' >"$WORK/secrets/username"
    printf '%s\n' "$PG_PASSWORD" >"$WORK/secrets/password"
    chmod 600 "$WORK/secrets/"*
}

start_sidecar() {
    local name=$1 spool=$2 body=$3 top=${4:-} port admin
    port=$(free_port); admin=$(free_port)
    cat >"$WORK/$name.yaml" <<YAML
apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: bench
adminListen: 127.0.0.1:$admin
${top}audit:
  spoolDir: $spool
resources:
- name: shop-db
  type: postgres
  listenPort: $port
  upstream: {host: $PG_HOST, port: $PG_PORT, tlsMode: disable}
  credentials: {usernameFile: $WORK/secrets/username, passwordFile: $WORK/secrets/password}
  policies: [bench]
policies:
- name: bench
$body
YAML
    RUST_LOG=warn "${SIDECAR_BIN:-$SIDECAR}" --config "$WORK/$name.yaml" --service-account bench >"$WORK/$name.log" 2>&1 &
    echo $! >"$WORK/$name.pid"
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "$port"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
