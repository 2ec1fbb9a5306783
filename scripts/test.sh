#!/usr/bin/env bash
# The whole test suite, as CI runs it: install dependencies, format and lint checks, build the
# e2e control plane from upstream source (cached), start one harness for the run, and run
# every unit, integration and end-to-end test of the workspace. FUZZ_SECONDS=N adds a run of
# every fuzz target for N seconds (scripts/fuzz.sh) after the tests: any crash or broken
# property then fails the run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PORTCULLIS_CACHE=${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PORTCULLIS_CACHE/target}
# One build per run: incremental compilation data would only fill the disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
export PATH=$PORTCULLIS_CACHE/venv/bin:$PATH
start=$SECONDS
step() { printf '\n==> [%ss] %s\n' "$((SECONDS - start))" "$*"; }

step "installing dependencies"
e2e/scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building the e2e control plane (kube-apiserver, kubectl, etcd, helm) from upstream source"
e2e/scripts/build-tools.sh >/dev/null

step "building the tests"
cargo test --workspace --locked --no-run

step "starting the e2e harness"
state=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-test.XXXXXX")
e2e/scripts/harness.sh --state "$state" --watch-pid $$ >"$state.out" &
harness_pid=$!
trap 'kill $harness_pid 2>/dev/null || true; wait $harness_pid 2>/dev/null || true; rm -rf "$state" "$state.out"' EXIT
until grep -q '^harness ready: ' "$state.out" 2>/dev/null; do
    kill -0 $harness_pid 2>/dev/null || { echo "harness failed to start" >&2; exit 1; }
    sleep 0.5
done
export PORTCULLIS_E2E_ENV=$state/env

step "cargo test --workspace"
cargo test --workspace --locked --no-fail-fast -- --test-threads=2

if [[ -n ${FUZZ_SECONDS:-} ]]; then
    step "fuzzing: every target for ${FUZZ_SECONDS}s (scripts/fuzz.sh)"
    scripts/fuzz.sh all "${FUZZ_SECONDS}s"
fi

step "all tests passed in $((SECONDS - start))s"
