#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs every test
# (unit, property, crash, and the integration tests against real PostgreSQL
# and VictoriaMetrics, which the tests start themselves on loopback), checks
# that the benchmarks build, and (as root) builds and installs the Debian
# package.
#
# TimescaleDB: where it is installed (setup.sh installs it when
# ../shared/timescaledb/install.sh exists), the harness preloads it and the
# warehouse tests run against hypertables, while the fallback tests use a
# plain cluster beside it. The Timescale sink's tests then run once more with
# WALRELAY_TEST_TIMESCALEDB=off, the way a machine without TimescaleDB runs
# them (hypertable checks print SKIPPED).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --all-targets
# Builds the benchmarks and, with them, target/release/walrelay (the bench
# profile is the release profile), which the Debian package reuses.
cargo bench --locked --no-run
# The package test (tests/package.rs) installs the .deb with dpkg: root only.
if [ "$(id -u)" -eq 0 ] && command -v dpkg >/dev/null 2>&1; then
  bash scripts/package.sh --no-build
  export WALRELAY_REQUIRE_DEB=1
fi
cargo test --locked -- --test-threads=2
if [ -f /usr/lib/postgresql/15/lib/timescaledb.so ]; then
  echo "test.sh: the Timescale sink's tests again, on plain PostgreSQL (WALRELAY_TEST_TIMESCALEDB=off)" >&2
  WALRELAY_TEST_TIMESCALEDB=off cargo test --locked --test timescale_sink -- --test-threads=2
fi
# Fault injection (fail points compiled in only with the feature).
cargo test --locked --features failpoints --test failpoints -- --test-threads=1
