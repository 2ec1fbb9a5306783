#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers of untrusted input (targets in fuzz/fuzz_targets).
#
#   scripts/fuzz.sh TARGET MINUTES      one target for MINUTES minutes (a deep session)
#   scripts/fuzz.sh all DURATION        every target in turn, DURATION each (`20s`, `5`)
#   scripts/fuzz.sh list                the targets
#
# A duration is minutes, or seconds with an `s` suffix. Each target starts from its checked-in
# seeds (fuzz/seeds/TARGET) and the corpus earlier runs grew ($PORTCULLIS_CACHE/fuzz/corpus,
# kept between runs, not checked in). An input that crashes or breaks a property is saved
# under $PORTCULLIS_CACHE/fuzz/artifacts/TARGET/ and the script fails, printing the command
# that reproduces it; such an input becomes a regression test of the normal suite.
# FUZZ_JOBS=N runs N processes of one target at once; FUZZ_SANITIZER=address builds with ASan
# (the default is none: the targets are safe Rust, and uninstrumented runs are faster).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}
WORK=$CACHE/fuzz
TARGET_DIR=${FUZZ_TARGET_DIR:-$WORK/target}
SANITIZER=${FUZZ_SANITIZER:-none}
log() { printf '[fuzz] %s\n' "$*" >&2; }

targets() { ls "$ROOT/fuzz/fuzz_targets" | sed -n 's/\.rs$//p'; }
usage() { sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[[ $# -ge 1 ]] || usage
if [[ $1 == list ]]; then targets; exit 0; fi
[[ $# -eq 2 ]] || usage
case $2 in
    *s) seconds=${2%s} ;;
    *) seconds=$(( $2 * 60 )) ;;
esac
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || usage
if [[ $1 == all ]]; then
    mapfile -t run < <(targets)
else
    targets | grep -qx "$1" || { log "no target $1 (scripts/fuzz.sh list)"; exit 2; }
    run=("$1")
fi

bin=$("$ROOT/e2e/scripts/install-fuzz.sh")
export PATH=$bin:$PATH CARGO_INCREMENTAL=0
log "building ${#run[@]} target(s) (nightly, sanitizer $SANITIZER)"
build_start=$SECONDS
# cargo fuzz build takes one target or all of them.
if [[ ${#run[@]} -eq 1 ]]; then
    (cd "$ROOT/fuzz" && cargo +nightly fuzz build --sanitizer "$SANITIZER" --target-dir "$TARGET_DIR" "${run[0]}")
else
    (cd "$ROOT/fuzz" && cargo +nightly fuzz build --sanitizer "$SANITIZER" --target-dir "$TARGET_DIR")
fi
log "built in $((SECONDS - build_start))s"
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
failed=()
summary=()
for t in "${run[@]}"; do
    corpus=$WORK/corpus/$t
    artifacts=$WORK/artifacts/$t
    mkdir -p "$corpus" "$artifacts" "$WORK/logs"
    out=$WORK/logs/$t.log
    seeds=$ROOT/fuzz/seeds/$t
    [[ -d $seeds ]] || seeds=
    log "$t for ${seconds}s"
    status=0
    ( cd "$WORK" && "$TARGET_DIR/$triple/release/$t" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" \
        ${FUZZ_JOBS:+-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS} \
        "$corpus" ${seeds:+"$seeds"} ) >"$out" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
    summary+=("$(printf '%-18s %10s executions in %ss%s' "$t" "${runs:-?}" "$seconds" "$( ((status)) && echo ' FAILED')")")
    if ((status)); then
        failed+=("$t")
        grep -E '^(thread|panicked|==[0-9]+==|SUMMARY|Test unit written|artifact_prefix)' "$out" | head -20 >&2 || tail -30 "$out" >&2
        for a in "$artifacts"/*; do
            [[ -f $a ]] && log "reproduce: $TARGET_DIR/$triple/release/$t $a"
        done
    fi
done
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
    log "failed: ${failed[*]} (inputs in $WORK/artifacts)"
    exit 1
fi
log "every target ran ${seconds}s without a failure"
