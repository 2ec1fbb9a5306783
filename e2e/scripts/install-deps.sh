#!/usr/bin/env bash
# Install what the build and the test suite need on a Debian machine, skipping what is there:
#   - Debian packages: PostgreSQL server and client (the e2e database), pgbouncer (benchmark
#     baseline), openssl (harness certificates), curl, python3-venv, and the shells and tools
#     the shell analysis is compared with (dash, busybox, mawk, GNU time), and tmux (a real
#     terminal the recording tests compare the sidecar's screen with)
#   - Rust components rustfmt and clippy
#   - Python clients for the e2e tests (e2e/requirements.txt) in $PORTCULLIS_CACHE/venv
# Go and Rust themselves must already be installed (see README).
set -euo pipefail
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}
log() { printf '[install-deps] %s\n' "$*" >&2; }

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v psql >/dev/null || need_apt+=(postgresql-client)
command -v pgbench >/dev/null || need_apt+=(postgresql-contrib)
command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || need_apt+=(pgbouncer)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
# The shell analysis is compared with what bash, dash and busybox sh really run.
command -v dash >/dev/null || need_apt+=(dash)
command -v busybox >/dev/null || need_apt+=(busybox)
command -v mawk >/dev/null || need_apt+=(mawk)
[[ -x /usr/bin/time ]] || need_apt+=(time)
# A real terminal emulator the recording tests compare the sidecar's screen with.
command -v tmux >/dev/null || need_apt+=(tmux)
if (( ${#need_apt[@]} )); then
    log "apt-get install ${need_apt[*]}"
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian starts a cluster on install; the tests run their own.
    $SUDO service postgresql stop >/dev/null 2>&1 || true
    $SUDO service pgbouncer stop >/dev/null 2>&1 || true
fi

command -v go >/dev/null || { log "error: Go is required to build the e2e control plane (https://go.dev/doc/install)"; exit 1; }
command -v cargo >/dev/null || { log "error: Rust (cargo) is required (https://rustup.rs)"; exit 1; }
if command -v rustup >/dev/null; then
    cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
    cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi

if [[ -f $E2E_DIR/requirements.txt ]]; then
    venv=$CACHE/venv
    stamp=$venv/.requirements.sha256
    want=$(sha256sum "$E2E_DIR/requirements.txt" | cut -d' ' -f1)
    if [[ ! -x $venv/bin/python || $(cat "$stamp" 2>/dev/null) != "$want" ]]; then
        log "python clients into $venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$E2E_DIR/requirements.txt"
        echo "$want" >"$stamp"
    fi
fi
log "dependencies present"
