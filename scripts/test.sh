#!/usr/bin/env bash
# The test command (README "Tests"): installs the real MCP peers the end-to-end tests talk to
# (idempotent; see scripts/install-peers.sh), then runs the whole Rust test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-peers.sh
# Real PostgreSQL (audit store) and Redis on loopback, unless the caller points at its own.
if [ -z "${PORTCULLIS_TEST_POSTGRES_URL:-}" ] && [ -z "${PORTCULLIS_SKIP_POSTGRES:-}" ]; then
    services=$(bash scripts/start-services.sh env)
    eval "$services"
fi
# Plain `cargo test` also builds the examples as binaries (target/debug/examples/), which the
# end-to-end tests start as upstream processes; `--all-targets` would build them as test
# harnesses instead. Lints cover every target (.ci/run runs clippy --all-targets).
exec cargo test --no-fail-fast "$@"
