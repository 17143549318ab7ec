#!/usr/bin/env bash
# Installs what walrelay's demo and tests need and is missing: PostgreSQL 15
# server binaries, VictoriaMetrics (speaks the InfluxDB v2 write API),
# TimescaleDB where this checkout has ../shared/timescaledb/install.sh beside
# it, and a Rust toolchain check. Idempotent; safe to run on every invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

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
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# InfluxDB 1.x (Debian's `influxdb`, the server only): tests/common/influx1.rs
# starts a throwaway `influxd run -config` per test on free loopback ports.
# Installed without starting or enabling its system service: a policy-rc.d
# that refuses every service action for the duration of the install (any
# existing one is put back afterwards, also on failure), then the unit is
# stopped and disabled in case a service manager started it anyway.
if ! command -v influxd >/dev/null 2>&1; then
  echo "setup: installing influxdb (service not started)" >&2
  POLICY=/usr/sbin/policy-rc.d
  POLICY_SAVED=""
  if [ -e "$POLICY" ]; then POLICY_SAVED=$(mktemp /tmp/walrelay-policy-rc.XXXXXX); $SUDO cp -p "$POLICY" "$POLICY_SAVED"; fi
  restore_policy() {
    if [ -n "$POLICY_SAVED" ]; then $SUDO cp -p "$POLICY_SAVED" "$POLICY"; $SUDO rm -f "$POLICY_SAVED"; else $SUDO rm -f "$POLICY"; fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends influxdb >/dev/null
  restore_policy
  trap - EXIT
fi
# Nothing of the system service is left running or enabled (tests never use
# it): the package enables influxdb.service and its SysV links on install.
if command -v systemctl >/dev/null 2>&1; then
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now influxdb >/dev/null 2>&1 || true
  else
    $SUDO systemctl disable influxdb >/dev/null 2>&1 || true   # offline: removes the links
  fi
fi
if command -v update-rc.d >/dev/null 2>&1 && [ -e /etc/init.d/influxdb ]; then
  $SUDO update-rc.d influxdb disable >/dev/null 2>&1 || true
fi
if pgrep -x -u influxdb influxd >/dev/null 2>&1; then
  echo "setup: stopping the system influxd (pid $(pgrep -x -u influxdb influxd | tr '\n' ' '))" >&2
  $SUDO kill $(pgrep -x -u influxdb influxd) 2>/dev/null || true
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
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install a Rust toolchain" >&2; exit 1; }
echo "setup: postgresql 15, victoria-metrics, influxdb 1.x and the influxdb-client venv present" >&2

# TimescaleDB: the tests and the demo preload it whenever it is installed into
# PostgreSQL 15 (tests/common/pg.rs, scripts/services.sh); without it they run
# on plain PostgreSQL, as a user's machine may.
TS_INSTALL=../shared/timescaledb/install.sh   # relative to the repo root
PG_BIN=/usr/lib/postgresql/15/bin
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# Whether this PostgreSQL can load TimescaleDB: a single-user server on a
# throwaway cluster with the library preloaded. Prints the server's error.
timescaledb_loads() {
  local d rc=0
  d=$(mktemp -d /tmp/walrelay-tscheck.XXXXXX)
  chmod 755 "$d"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$d"
  as_postgres "$PG_BIN/initdb" -D "$d/data" -U postgres -A trust --no-sync >"$d/initdb.log" 2>&1 || rc=$?
  if [ $rc -eq 0 ]; then
    echo "SELECT 1;" | as_postgres "$PG_BIN/postgres" --single -D "$d/data" \
      -c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off postgres >"$d/out" 2>&1 || rc=$?
    grep -q FATAL "$d/out" && rc=1
    [ $rc -eq 0 ] || grep -m1 FATAL "$d/out" >&2 || true
  else
    cat "$d/initdb.log" >&2
  fi
  rm -rf "$d"
  return $rc
}
if [ -f "$TS_INSTALL" ]; then
  echo "setup: installing TimescaleDB with $TS_INSTALL" >&2
  bash "$TS_INSTALL" >&2
  if ! timescaledb_loads; then
    # The prebuilt archive is built against Debian's current postgresql-15
    # (bookworm-security); an older minor release lacks symbols it links
    # against (15.18 has no heap_datum_check). Upgrade within 15, then retry.
    echo "setup: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') cannot load TimescaleDB; upgrading postgresql-15 to Debian's current release" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --only-upgrade postgresql-15 postgresql-client-15 >/dev/null
    timescaledb_loads || {
      echo "setup: TimescaleDB is installed but PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') cannot load it (error above); tests that preload it would fail. Fix the install, or set WALRELAY_TEST_TIMESCALEDB=off to test on plain PostgreSQL." >&2
      [ "${WALRELAY_TEST_TIMESCALEDB:-}" = off ] || exit 1
    }
  fi
  echo "setup: TimescaleDB installed and loadable by PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}')" >&2
else
  echo "setup: no $TS_INSTALL here; TimescaleDB not installed by setup (tests and demo use plain PostgreSQL unless it is already installed)" >&2
fi
