#!/usr/bin/env bash
# Install what the fuzz targets need, skipping what is there: the nightly toolchain (libFuzzer
# instrumentation needs `-Z` flags) and cargo-fuzz, built once into $PORTCULLIS_CACHE/cargo-fuzz.
# Prints the directory holding the cargo-fuzz binary.
set -euo pipefail
CACHE=${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}
CARGO_FUZZ_VERSION=${CARGO_FUZZ_VERSION:-0.13.1}
root=$CACHE/cargo-fuzz
log() { printf '[install-fuzz] %s\n' "$*" >&2; }

command -v rustup >/dev/null || { log "error: rustup is required to install the nightly toolchain (https://rustup.rs)"; exit 1; }
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    log "rustup toolchain install nightly"
    rustup toolchain install nightly --profile minimal >&2
fi
if [[ ! -x $root/bin/cargo-fuzz ]] || ! "$root/bin/cargo-fuzz" --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    log "cargo-fuzz $CARGO_FUZZ_VERSION into $root"
    # Its own target dir, removed afterwards: only the binary is kept.
    CARGO_TARGET_DIR=$root/build cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$root" >&2
    rm -rf "$root/build"
fi
echo "$root/bin"
