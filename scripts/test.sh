#!/usr/bin/env bash
# The test command (README "Tests"): installs the real MCP peers the end-to-end tests talk to
# (idempotent; see scripts/install-peers.sh), then runs the whole Rust test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-peers.sh
exec cargo test --all-targets "$@"
