#!/usr/bin/env bash
# The one test command: installs what the tests need when missing, then runs every test.
# CI calls exactly this (see .ci/run). Safe to run again: installed tools are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=false
need_pkg() { # need_pkg COMMAND PACKAGE
    if ! command -v "$1" >/dev/null 2>&1; then
        if [ "$apt_updated" = false ]; then
            as_root apt-get update -qq
            apt_updated=true
        fi
        echo "installing $2 (for $1)" >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
}

need_pkg sipp sip-tester
need_pkg chromium chromium
need_pkg chromedriver chromium-driver
# A real desk phone as an agent (tests/tests/desk_phone_digest.rs).
need_pkg baresip baresip-core
# The network-namespace tests (tests/src/netns.rs) build their network with these.
need_pkg ip iproute2
need_pkg nft nftables
need_pkg sysctl procps
# The metrics test scrapes the distributor with a real Prometheus (and checks with promtool).
need_pkg prometheus prometheus
# The agent page is bundled by server/build.rs with npm (Node.js comes with the machine).
command -v npm >/dev/null || { echo "npm is needed to build the agent page" >&2; exit 1; }

locked=()
if [ "${CI:-}" = "true" ]; then
    locked=(--locked)
    # A one-off build from a clean clone gains nothing from incremental state, which only
    # takes disk (1.6 GB of it).
    export CARGO_INCREMENTAL=0
fi

cargo build "${locked[@]}" --workspace --all-targets
# The end-to-end tests start the agent-edge binary built just above.
export AGENT_EDGE_BIN="${AGENT_EDGE_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/agent-edge}"
cargo test "${locked[@]}" --workspace --no-fail-fast "$@"
