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
