# orch's recipes. Each one is a thin wrapper over scripts/, which need only
# Rust and a running Docker engine.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Build the offline task image orch-agent:dev (static binary, FROM scratch).
image:
    scripts/build-image

# Run a real task in a container, end to end.
demo:
    scripts/demo

# Run every test (unit, property, end-to-end against Docker).
test *ARGS:
    scripts/test {{ARGS}}

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --check
    cargo clippy --workspace --all-targets --locked -j 2 -- -D warnings

# Benchmarks against the plain docker CLI (`just bench --quick` for a short run).
bench *ARGS:
    scripts/bench {{ARGS}}

# The chaos test, long: kill orch at random 300 times (CI runs 30 within `test`).
chaos ITERATIONS="300":
    scripts/build-image git
    ORCH_CHAOS_ITERATIONS={{ITERATIONS}} cargo test --locked -j 2 -p orch-cli --test e2e chaos -- --nocapture
