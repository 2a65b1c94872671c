#!/usr/bin/env bash
# The benchmark command (README "Benchmarks", issue 7): builds the gateway, the fixture
# upstream and the harness in release mode, then runs the harness, which starts the fixture,
# the gateways and nginx on loopback, drives them, and prints the report.
#
#   bench/run.sh                       # defaults: 5 s per cell, c = 1,16,64, set-ups a–e
#   bench/run.sh --duration 30s --rounds 3 --write
#   bench/run.sh --help                # every option of the harness
#
# --write updates bench/RESULTS.md (between its markers); every other argument goes to the
# harness. Set-up (d) needs nginx (apt-get install -y nginx); without it, (d) is skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

target="${CARGO_TARGET_DIR:-$PWD/target}"
args=()
for arg in "$@"; do
    case "$arg" in
        --write) args+=(--write bench/RESULTS.md) ;;
        *) args+=("$arg") ;;
    esac
done

cargo build --release --locked -p portcullis --bin portcullis --example conformance_fixture
cargo build --release --locked -p portcullis-bench

recorded="bench/run.sh"
if (($#)); then recorded+=$(printf ' %q' "$@"); fi
exec "$target/release/portcullis-bench" \
    --recorded-command "$recorded" \
    --portcullis "$target/release/portcullis" \
    --fixture "$target/release/examples/conformance_fixture" \
    "${args[@]}"
