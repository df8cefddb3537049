#!/usr/bin/env bash
# The benchmark command (`just bench`): release builds, the criterion micro-benchmark of
# parse + re-address, then the end-to-end call load (SIPp → distributor → tunnel → buffer
# server → load agents over WSS), which appends a dated row to bench/results.md.
# Installs SIPp when missing. Takes about 10 minutes; BENCH_STEP_S=5 for a quick look.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
if ! command -v sipp >/dev/null 2>&1; then
    echo "installing sip-tester (for sipp)" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester >/dev/null
fi

# 10,000 idle agents hold 10,000 connections in each of agent-edge and the load agents.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt 12000 ]; then
    echo "warning: open files limited to $(ulimit -n): the 10,000-agent figure needs 12,000" >&2
fi

target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p agent-edge -p agent-edge-load
cargo bench -p agent-edge --bench sip_path
AGENT_EDGE_BIN="$target/release/agent-edge" AGENT_EDGE_LOAD_BIN="$target/release/agent-edge-load" \
    cargo bench -p agent-edge-tests --bench call_load
