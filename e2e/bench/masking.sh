#!/usr/bin/env bash
# Throughput of a large SELECT with two masked columns: direct, through the sidecar with no
# masking rule, through the sidecar masking both columns (e-mail `partial`, SSN `hash`, i.e. one
# HMAC-SHA-256 per row), the same with `redact` instead of `hash`, and with value detectors on
# every text value as well.
#
#   e2e/bench/masking.sh                      start a harness PostgreSQL, run, print a table
#   BENCH_ROWS=100000 e2e/bench/masking.sh    smaller table (default 1,000,000 rows)
#   PORTCULLIS_E2E_ENV=/tmp/pc/env e2e/bench/masking.sh   use a running harness instead
#
# Each cell is the best of BENCH_RUNS (default 5) runs of
#   psql -c "SELECT id, email, ssn, note FROM bench_masking"
# with output discarded; throughput is rows per second of that wall-clock time, so psql's own
# parsing is part of every figure (as it is for a real client). Target: masking on >= 0.8x
# direct.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ROWS=${BENCH_ROWS:-1000000}
RUNS=${BENCH_RUNS:-5}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-mbench.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do [[ -n $pid ]] && kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]:-}"; do [[ -n $pid ]] && wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

if [[ -n ${PORTCULLIS_E2E_ENV:-} ]]; then
    ENV_FILE=$PORTCULLIS_E2E_ENV
else
    log "starting the e2e harness"
    "$ROOT/e2e/scripts/harness.sh" --state "$WORK/harness" --watch-pid $$ >"$WORK/harness.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 600); do [[ -f $WORK/harness/env ]] && break; sleep 0.5; done
    [[ -f $WORK/harness/env ]] || { cat "$WORK/harness.log" >&2; exit 1; }
    ENV_FILE=$WORK/harness/env
fi
# shellcheck disable=SC1090
source "$ENV_FILE"
PG_HOST=$PORTCULLIS_E2E_PG_HOST PG_PORT=$PORTCULLIS_E2E_PG_PORT PG_PASSWORD=$PORTCULLIS_E2E_PG_PASSWORD
DIRECT_URL=$PORTCULLIS_E2E_PG_URL
# The sidecars talk to PostgreSQL without TLS here; so does the direct baseline.
[[ $DIRECT_URL == *\?* ]] && DIRECT_URL="$DIRECT_URL&sslmode=disable" || DIRECT_URL="$DIRECT_URL?sslmode=disable"

log "creating bench_masking ($ROWS rows)"
psql -X -q "$DIRECT_URL" >/dev/null <<SQL
DROP TABLE IF EXISTS bench_masking;
CREATE TABLE bench_masking AS
SELECT i AS id,
       'customer.' || i || '@example.com' AS email,
       lpad((i % 900)::text, 3, '1') || '-' || lpad((i % 97)::text, 2, '0') || '-' || lpad((i % 9973)::text, 4, '0') AS ssn,
       'order note number ' || i AS note
FROM generate_series(1, $ROWS) AS i;
ANALYZE bench_masking;
SQL

log "building the sidecar (release)"
cargo build --release -q -p portcullis-sidecar --manifest-path "$ROOT/Cargo.toml"
SIDECAR=${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis-sidecar
mkdir -p "$WORK/secrets"
printf 'app\n' >"$WORK/secrets/username"
printf '%s\n' "$PG_PASSWORD" >"$WORK/secrets/password"
head -c 32 /dev/urandom | base64 >"$WORK/secrets/hash-key"
chmod 600 "$WORK/secrets/"*

start_sidecar() { # NAME POLICY_BODY -> prints port
    local name=$1 body=$2 port admin
    port=$(free_port); admin=$(free_port)
    cat >"$WORK/$name.yaml" <<YAML
apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: bench
adminListen: 127.0.0.1:$admin
masking:
  hashKeyFile: $WORK/secrets/hash-key
audit:
  spoolDir: $WORK/spool-$name
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
    RUST_LOG=warn "$SIDECAR" --config "$WORK/$name.yaml" --service-account bench >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "$port"
}
OFF_PORT=$(start_sidecar masking-off "  guardrails: []")
ON_PORT=$(start_sidecar masking-on "  masking:
  - {name: contact, columns: [bench_masking.email], strategy: partial}
  - {name: national-id, columns: [bench_masking.ssn], strategy: hash}")
REDACT_PORT=$(start_sidecar masking-redact "  masking:
  - {name: contact, columns: [bench_masking.email], strategy: partial}
  - {name: national-id, columns: [bench_masking.ssn], strategy: redact}")
DET_PORT=$(start_sidecar masking-detectors "  masking:
  - {name: contact, columns: [bench_masking.email], strategy: partial}
  - {name: national-id, columns: [bench_masking.ssn], strategy: hash}
  - {name: cards, detector: paymentCard, strategy: redact}
  - {name: ibans, detector: iban, strategy: redact}
  - {name: emails, detector: email, strategy: redact}")

declare -A URL=(
    [direct]=$DIRECT_URL
    [sidecar-masking-off]="postgresql://agent@127.0.0.1:$OFF_PORT/shop?sslmode=disable"
    [sidecar-masking-on]="postgresql://agent@127.0.0.1:$ON_PORT/shop?sslmode=disable"
    [sidecar-masking-no-hash]="postgresql://agent@127.0.0.1:$REDACT_PORT/shop?sslmode=disable"
    [sidecar-masking+detectors]="postgresql://agent@127.0.0.1:$DET_PORT/shop?sslmode=disable"
)
TARGETS=(direct sidecar-masking-off sidecar-masking-on sidecar-masking-no-hash sidecar-masking+detectors)
QUERY="SELECT id, email, ssn, note FROM bench_masking"

# Sanity: masked values differ from the clear ones, clean ones do not.
clear=$(psql -X -qtA "$DIRECT_URL" -c "$QUERY WHERE id = 42")
masked=$(psql -X -qtA "${URL[sidecar-masking-on]}" -c "$QUERY WHERE id = 42")
[[ $masked != "$clear" && $masked == 42\|\*\*\*@example.com\|h:* ]] || {
    echo "masking is not in effect: $masked" >&2; exit 1; }

declare -A BEST
for t in "${TARGETS[@]}"; do
    best=
    for _ in $(seq 1 "$RUNS"); do
        start=$(date +%s.%N)
        psql -X -qtA "${URL[$t]}" -c "$QUERY" -o /dev/null
        end=$(date +%s.%N)
        s=$(echo "$end - $start" | bc -l)
        if [[ -z $best ]] || (( $(echo "$s < $best" | bc -l) )); then best=$s; fi
    done
    BEST[$t]=$best
    log "$t: best of $RUNS runs ${best}s"
done

printf '\n%-28s %10s %14s %10s\n' target seconds rows/s vs-direct
for t in "${TARGETS[@]}"; do
    s=${BEST[$t]}
    printf '%-28s %10.3f %14.0f %9.2fx\n' "$t" "$s" "$(echo "$ROWS / $s" | bc -l)" \
        "$(echo "${BEST[direct]} / $s" | bc -l)"
done
psql -X -q "$DIRECT_URL" -c "DROP TABLE bench_masking" >/dev/null
