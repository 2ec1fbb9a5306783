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
# shellcheck source=e2e/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROWS=${BENCH_ROWS:-1000000}
RUNS=${BENCH_RUNS:-5}
bench_init portcullis-mbench
bench_postgres
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

bench_sidecar_build
head -c 32 /dev/urandom | base64 >"$WORK/secrets/hash-key"
chmod 600 "$WORK/secrets/hash-key"
MASKING="masking:
  hashKeyFile: $WORK/secrets/hash-key
"
OFF_PORT=$(start_sidecar masking-off "$WORK/spool-masking-off" "  guardrails: []" "$MASKING")
ON_PORT=$(start_sidecar masking-on "$WORK/spool-masking-on" "  masking:
  - {name: contact, columns: [bench_masking.email], strategy: partial}
  - {name: national-id, columns: [bench_masking.ssn], strategy: hash}" "$MASKING")
REDACT_PORT=$(start_sidecar masking-redact "$WORK/spool-masking-redact" "  masking:
  - {name: contact, columns: [bench_masking.email], strategy: partial}
  - {name: national-id, columns: [bench_masking.ssn], strategy: redact}" "$MASKING")
DET_PORT=$(start_sidecar masking-detectors "$WORK/spool-masking-detectors" "  masking:
  - {name: contact, columns: [bench_masking.email], strategy: partial}
  - {name: national-id, columns: [bench_masking.ssn], strategy: hash}
  - {name: cards, detector: paymentCard, strategy: redact}
  - {name: ibans, detector: iban, strategy: redact}
  - {name: emails, detector: email, strategy: redact}" "$MASKING")

declare -A URL=(
    [direct]=$DIRECT_URL
    [sidecar-masking-off]="postgresql://agent@127.0.0.1:$OFF_PORT/shop?sslmode=disable"
    [sidecar-masking-on]="postgresql://agent@127.0.0.1:$ON_PORT/shop?sslmode=disable"
    [sidecar-masking-no-hash]="postgresql://agent@127.0.0.1:$REDACT_PORT/shop?sslmode=disable"
    [sidecar-masking+detectors]="postgresql://agent@127.0.0.1:$DET_PORT/shop?sslmode=disable"
)
TARGETS=(direct sidecar-masking-off sidecar-masking-on sidecar-masking-no-hash sidecar-masking+detectors)
if [[ -n ${BENCH_BASELINE_SIDECAR:-} ]]; then
    export SIDECAR_BIN=$BENCH_BASELINE_SIDECAR
    BASE_ON_PORT=$(start_sidecar baseline-masking-on "$WORK/spool-baseline-on" "  masking:
  - {name: contact, columns: [bench_masking.email], strategy: partial}
  - {name: national-id, columns: [bench_masking.ssn], strategy: hash}" "$MASKING")
    BASE_DET_PORT=$(start_sidecar baseline-masking-detectors "$WORK/spool-baseline-detectors" "  masking:
  - {name: contact, columns: [bench_masking.email], strategy: partial}
  - {name: national-id, columns: [bench_masking.ssn], strategy: hash}
  - {name: cards, detector: paymentCard, strategy: redact}
  - {name: ibans, detector: iban, strategy: redact}
  - {name: emails, detector: email, strategy: redact}" "$MASKING")
    unset SIDECAR_BIN
    URL[baseline-masking-on]="postgresql://agent@127.0.0.1:$BASE_ON_PORT/shop?sslmode=disable"
    URL[baseline-masking+detectors]="postgresql://agent@127.0.0.1:$BASE_DET_PORT/shop?sslmode=disable"
    TARGETS=(direct sidecar-masking-off baseline-masking-on sidecar-masking-on sidecar-masking-no-hash baseline-masking+detectors sidecar-masking+detectors)
fi
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
