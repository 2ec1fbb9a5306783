#!/usr/bin/env bash
# Operator benchmark: injection webhook admission latency (1,000 server-side dry-run pod
# creations, measured by the client, the API server's webhook histogram and the webhook's own
# histogram) and reconcile time and memory with 1,000 ProtectedResources and 1,000
# GatewayPolicies across 100 namespaces. Targets: webhook p99 < 5 ms, all 2,000 objects
# Ready within 30 s, operator RSS < 100 MiB.
#
# Attaches to a running harness when PORTCULLIS_E2E_ENV is set, else starts one.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
cargo build --release -p portcullis-operator --bin portcullis-operator --example operator_bench
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$TARGET/release/examples/operator_bench" --operator-bin "$TARGET/release/portcullis-operator"
