#!/usr/bin/env bash
# Throughput and latency of the sidecar against a direct connection and pgbouncer.
#
#   e2e/bench/pgbench.sh                 start a harness PostgreSQL, run everything, print a table
#   BENCH_SECONDS=20 e2e/bench/pgbench.sh    longer runs (default 10 s per cell)
#   PORTCULLIS_E2E_ENV=/tmp/pc/env e2e/bench/pgbench.sh   use a running harness instead
#
# PostgreSQL runs with fsync on (its default, and what production runs) for the benchmark.
# Targets: direct (SCRAM to PostgreSQL), pgbouncer (Debian package, session pooling, trust on
# the client side), and the sidecar (release build, guardrails and the fsync'd write-ahead
# audit spool on; spool on the root disk), plus the sidecar with its spool on tmpfs to show
# what the per-statement disk flush costs. Workloads: pgbench select-only (-S) and the
# built-in read/write TPC-B-like script, at 1, 8 and 32 clients, simple query protocol.
# p50 is the median transaction latency from pgbench's per-transaction log; for select-only a
# transaction is one query, so the p50 difference to direct is the latency added per query.
# proxy CPU is the user + system CPU time the proxy process spent per transaction (one query
# for select-only, seven statements for read/write): where pgbench, PostgreSQL and the proxy
# share the cores and keep them busy, throughput falls with the sum of their CPU per
# transaction, so this column tells what each proxy costs apart from the machine's noise.
set -euo pipefail
# shellcheck source=e2e/bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CLIENTS=${BENCH_CLIENTS:-"1 8 32"}
bench_init portcullis-bench
command -v pgbench >/dev/null || { echo "pgbench not found (Debian package postgresql-client)" >&2; exit 1; }
command -v pgbouncer >/dev/null || { echo "pgbouncer not found (Debian package pgbouncer)" >&2; exit 1; }

# ---- PostgreSQL ---------------------------------------------------------------------------
bench_postgres
# The database commits durably, as in production (the e2e harness runs it with fsync off to
# keep the tests quick); BENCH_PG_FSYNC=off measures against a database that does not.
PG_FSYNC=${BENCH_PG_FSYNC:-on}
set_fsync() {
    psql -X -qtA "$PORTCULLIS_E2E_PG_ADMIN_URL" -c "ALTER SYSTEM SET fsync = $1" -c 'SELECT pg_reload_conf()' >/dev/null
    for _ in $(seq 1 50); do
        [[ $(psql -X -qtA "$PORTCULLIS_E2E_PG_ADMIN_URL" -c 'SHOW fsync') == "$1" ]] && return 0
        sleep 0.1
    done
    echo "PostgreSQL did not take fsync = $1" >&2
    exit 1
}
restore_fsync() {
    psql -X -qtA "$PORTCULLIS_E2E_PG_ADMIN_URL" -c 'ALTER SYSTEM RESET fsync' -c 'SELECT pg_reload_conf()' >/dev/null 2>&1 || true
}
trap 'restore_fsync; cleanup' EXIT
log "PostgreSQL fsync = $PG_FSYNC"
set_fsync "$PG_FSYNC"
log "initialising pgbench tables (scale 10)"
pgbench -i -q -s 10 "$DIRECT_URL" >"$WORK/init.log" 2>&1 || { cat "$WORK/init.log" >&2; exit 1; }

# ---- pgbouncer (session mode) -------------------------------------------------------------
BOUNCER_PORT=$(free_port)
mkdir -p "$WORK/bouncer"
printf '"app" "%s"\n' "$PG_PASSWORD" >"$WORK/bouncer/userlist.txt"
cat >"$WORK/bouncer/pgbouncer.ini" <<INI
[databases]
shop = host=$PG_HOST port=$PG_PORT dbname=shop user=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
auth_type = trust
auth_file = $WORK/bouncer/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 64
unix_socket_dir =
logfile = $WORK/bouncer/pgbouncer.log
INI
BOUNCER_USER=()
[[ $(id -u) -eq 0 ]] && { chown -R postgres "$WORK/bouncer"; BOUNCER_USER=(-u postgres); }
pgbouncer "${BOUNCER_USER[@]}" "$WORK/bouncer/pgbouncer.ini" >"$WORK/bouncer/stdout.log" 2>&1 &
PIDS+=($!)
BOUNCER_PID=$!

# ---- sidecar (release) --------------------------------------------------------------------
bench_sidecar_build
POLICY='  spoolLimitBytes: 107374182400
  guardrails:
  - {name: no-ddl, statementKinds: [ddl, dcl, truncate, doBlock, setRole], action: deny}
  - {name: no-unbounded-writes, missingWhere: true, action: deny}
  - {name: deletes, statementKinds: [delete], action: requireApproval}
  - {name: accounts-export, tables: [pgbench_accounts], rowsOver: 10000, action: deny}
  - {name: history-writes, statementKinds: [insert], tables: [pgbench_history], action: audit}
  approval: {approverGroups: [dba], timeoutSeconds: 60, grantSeconds: 60, grantScope: statement}'
SIDECAR_PORT=$(start_sidecar sidecar "$WORK/spool-disk" "$POLICY")
mkdir -p /dev/shm/portcullis-bench-$$
SHM_SPOOL=/dev/shm/portcullis-bench-$$
trap 'restore_fsync; cleanup; rm -rf "$SHM_SPOOL"' EXIT
SIDECAR_SHM_PORT=$(start_sidecar sidecar-tmpfs "$SHM_SPOOL" "$POLICY")

declare -A URL=(
    [direct]=$DIRECT_URL
    [pgbouncer]="postgresql://app@127.0.0.1:$BOUNCER_PORT/shop?sslmode=disable"
    [sidecar]="postgresql://agent@127.0.0.1:$SIDECAR_PORT/shop?sslmode=disable"
    [sidecar-tmpfs-spool]="postgresql://agent@127.0.0.1:$SIDECAR_SHM_PORT/shop?sslmode=disable"
)
TARGETS=(direct pgbouncer sidecar sidecar-tmpfs-spool)
# The proxy process of each target, whose CPU time per transaction the table shows.
declare -A PROXY_PID=(
    [pgbouncer]=$BOUNCER_PID
    [sidecar]=$(cat "$WORK/sidecar.pid")
    [sidecar-tmpfs-spool]=$(cat "$WORK/sidecar-tmpfs.pid")
)
if [[ -n ${BENCH_BASELINE_SIDECAR:-} ]]; then
    BASELINE_PORT=$(SIDECAR_BIN=$BENCH_BASELINE_SIDECAR start_sidecar sidecar-baseline "$WORK/spool-baseline" "$POLICY")
    URL[sidecar-baseline]="postgresql://agent@127.0.0.1:$BASELINE_PORT/shop?sslmode=disable"
    PROXY_PID[sidecar-baseline]=$(cat "$WORK/sidecar-baseline.pid")
    TARGETS=(direct pgbouncer sidecar-baseline sidecar sidecar-tmpfs-spool)
fi
TICK=$(getconf CLK_TCK)
for t in "${TARGETS[@]}"; do
    psql -X -qtA "${URL[$t]}" -c 'select 1' >/dev/null || { echo "target $t does not answer" >&2; exit 1; }
done

# ---- runs ---------------------------------------------------------------------------------
declare -A TPS P50 CPU
for workload in select-only read-write; do
    flag=(); [[ $workload == select-only ]] && flag=(-S)
    for c in $CLIENTS; do
        j=$(( c < 2 ? 1 : 2 ))
        for t in "${TARGETS[@]}"; do
            dir=$WORK/logs/$t-$workload-$c
            mkdir -p "$dir"
            log "$t $workload $c clients"
            pid=${PROXY_PID[$t]:-}
            [[ -n $pid ]] && before=$(cpu_ticks "$pid")
            out=$(cd "$dir" && pgbench -n "${flag[@]}" -c "$c" -j "$j" -T "$SECONDS_PER_RUN" -l --log-prefix=tx "${URL[$t]}" 2>&1) \
                || { echo "$out" >&2; exit 1; }
            TPS[$t,$workload,$c]=$(awk '/^tps = /{printf "%.0f", $3}' <<<"$out")
            CPU[$t,$workload,$c]=-
            if [[ -n $pid ]]; then
                done_tx=$(awk '/number of transactions actually processed/{split($NF, a, "/"); print a[1]}' <<<"$out")
                CPU[$t,$workload,$c]=$(awk -v t=$(( $(cpu_ticks "$pid") - before )) -v hz="$TICK" -v n="$done_tx" \
                    'BEGIN{printf "%.1f", t * 1e6 / hz / n}')
            fi
            P50[$t,$workload,$c]=$(cat "$dir"/tx* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
        done
    done
done

# ---- table --------------------------------------------------------------------------------
printf '\nPostgreSQL fsync = %s; %s s per run; sidecar session workers: %s\n' "$PG_FSYNC" "$SECONDS_PER_RUN" "${PORTCULLIS_WORKERS:-one per core}"
printf '%-12s %-7s %-20s %10s %9s %9s %12s %18s\n' workload clients target tps "x direct" "p50 µs" "p50 added µs" "proxy CPU µs/tx"
for workload in select-only read-write; do
    for c in $CLIENTS; do
        for t in "${TARGETS[@]}"; do
            d=${TPS[direct,$workload,$c]} v=${TPS[$t,$workload,$c]}
            printf '%-12s %-7s %-20s %10s %9s %9s %12s %18s\n' "$workload" "$c" "$t" "$v" \
                "$(awk -v a="$v" -v b="$d" 'BEGIN{printf "%.2f", a/b}')" \
                "${P50[$t,$workload,$c]}" \
                "$(( ${P50[$t,$workload,$c]} - ${P50[direct,$workload,$c]} ))" \
                "${CPU[$t,$workload,$c]}"
        done
    done
done
