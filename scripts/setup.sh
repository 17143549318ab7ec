#!/usr/bin/env bash
# Installs what walrelay's demo and tests need and is missing: PostgreSQL 15
# server binaries, VictoriaMetrics (speaks the InfluxDB v2 write API) and a Rust
# toolchain check. Idempotent; safe to run on every invocation.
set -euo pipefail

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v victoria-metrics >/dev/null 2>&1 || [ -x /usr/bin/victoria-metrics ] || need+=(victoria-metrics)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client-15)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)   # TLS test certificates
command -v tmux >/dev/null 2>&1 || need+=(tmux)         # drives `walrelay top` in tests/top.rs

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The InfluxDB client compatibility test (tests/influx_compat.rs) drives the
# relay with the official Python client, pinned, from its own venv under
# target/ (the test finds it there, or at WALRELAY_TEST_VENV). Skipped when
# the pinned version is already importable.
INFLUX_CLIENT_VERSION=1.49.0
VENV="${WALRELAY_TEST_VENV:-$(cd "$(dirname "$0")/.." && pwd)/target/test-venv}"
if ! "$VENV/bin/python" -c "import influxdb_client, sys; sys.exit(influxdb_client.__version__ != '$INFLUX_CLIENT_VERSION')" 2>/dev/null; then
  echo "setup: installing influxdb-client==$INFLUX_CLIENT_VERSION into $VENV" >&2
  python3 -m venv "$VENV" 2>/dev/null || {
    # Debian splits venv support out of python3.
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$VENV"
  }
  "$VENV/bin/pip" install -q --disable-pip-version-check "influxdb-client==$INFLUX_CLIENT_VERSION"
fi
# The Debian package may start a system instance; tests start their own on
# free loopback ports, so a running system service is harmless but unneeded.
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install a Rust toolchain" >&2; exit 1; }
echo "setup: postgresql 15, victoria-metrics and the influxdb-client venv present" >&2
