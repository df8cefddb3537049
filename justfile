# Everyday recipes. Nothing here is needed first: the README's commands work without `just`.

# Run a distributor and a buffer server in one process on the embedded defaults.
run:
    cargo run --release -p agent-edge

# Every test, installing SIPp when missing (what CI runs).
test:
    ./scripts/test.sh

# Format and lint as CI expects.
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Runs every fuzz target for SECONDS each (stable toolchain; installs cargo-fuzz when missing).
fuzz SECONDS="60":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz && for t in sip_message sip_websocket tunnel_frame handoff_uri handoff_message handoff_table transactions acd_events media_input media_frame turn_message digest_credentials; do \
        cargo fuzz run --sanitizer none "$t" -- -max_total_time={{SECONDS}} || exit 1; done

# CPU and memory per bridged call at 50 and 200 concurrent calls (release build).
bench-media *COUNTS:
    cargo build --release -p agent-edge
    AGENT_EDGE_BIN=$PWD/target/release/agent-edge cargo bench -p agent-edge-tests --bench media_bridge -- {{COUNTS}}

# What the caller media relay costs the distributor per relayed call (default 50 and 200).
bench-relay *COUNTS:
    cargo build --release -p agent-edge
    AGENT_EDGE_BIN=$PWD/target/release/agent-edge cargo bench -p agent-edge-tests --bench media_relay -- {{COUNTS}}

# Calls per second, post-dial delay, CPU per call, memory per idle agent and the parse +
# re-address micro-benchmark; appends a dated row to bench/results.md (about 10 minutes).
bench:
    ./scripts/bench.sh

# Memory soak (issue 22): ROUNDS rounds of 15,000 calls at 500 calls/s through 50 UDP desk-phone
# agents, resident memory 35 s after each and bytes per held transaction at the plateau (about
# 80 s a round). Prints the figures; bench/results.md keeps them by hand.
bench-soak ROUNDS="10":
    cargo build --release -p agent-edge
    AGENT_EDGE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/agent-edge" SOAK_ROUNDS={{ROUNDS}} cargo bench -p agent-edge-tests --bench memory_soak
