#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs every test
# (unit, property, crash, and the integration tests against real PostgreSQL
# and VictoriaMetrics, which the tests start themselves on loopback), and
# checks that the benchmarks build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --all-targets
cargo test --locked -- --test-threads=2
# Fault injection (fail points compiled in only with the feature).
cargo test --locked --features failpoints --test failpoints -- --test-threads=1
cargo bench --locked --no-run
