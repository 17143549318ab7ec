#!/usr/bin/env bash
# Start/stop throwaway PostgreSQL 15 and VictoriaMetrics on loopback for the
# demo. Sourced by demo.sh: defines start_services / stop_services and exports
# PG_PORT, VM_PORT, PG_URL, VM_URL and PG_TIMESCALEDB (1 when PostgreSQL
# preloads TimescaleDB, else 0). Data lives under $1 (a temp dir).
# TimescaleDB is preloaded whenever it is installed into PostgreSQL 15
# (scripts/setup.sh installs it where ../shared/timescaledb/install.sh exists),
# so `walrelay init` makes hypertables; otherwise plain PostgreSQL (also with
# WALRELAY_TEST_TIMESCALEDB=off, the tests' switch).
PG_BIN=/usr/lib/postgresql/15/bin

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_services() {
  local base="$1"
  PG_PORT=$(free_port); VM_PORT=$(free_port)
  mkdir -p "$base/pg" "$base/vm"
  chmod 755 "$base"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$base/pg"
  as_postgres "$PG_BIN/initdb" -D "$base/pg" -U postgres -A trust --no-sync >"$base/initdb.log" 2>&1
  PG_TIMESCALEDB=0
  if [ -f /usr/lib/postgresql/15/lib/timescaledb.so ] && [ "${WALRELAY_TEST_TIMESCALEDB:-}" != off ]; then
    PG_TIMESCALEDB=1
    printf "\nshared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n" >>"$base/pg/postgresql.conf"
  fi
  as_postgres "$PG_BIN/pg_ctl" -D "$base/pg" -l "$base/pg/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$base/pg" start >/dev/null
  as_postgres "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres walrelay
  victoria-metrics -storageDataPath="$base/vm" -httpListenAddr="127.0.0.1:$VM_PORT" \
    -retentionPeriod=100y -loggerLevel=ERROR >"$base/vm.log" 2>&1 &
  VM_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$VM_PORT/health" >/dev/null && break; sleep 0.1; done
  PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/walrelay"
  VM_URL="http://127.0.0.1:$VM_PORT"
  export PG_PORT VM_PORT PG_URL VM_URL VM_PID PG_TIMESCALEDB
  local flavour="plain: TimescaleDB not installed or WALRELAY_TEST_TIMESCALEDB=off"
  [ "$PG_TIMESCALEDB" = 1 ] && flavour="TimescaleDB preloaded"
  echo "services: PostgreSQL 15 ($flavour) on 127.0.0.1:$PG_PORT, VictoriaMetrics on 127.0.0.1:$VM_PORT (data in $base)"
}

stop_services() {
  local base="$1"
  [ -n "${VM_PID:-}" ] && kill "$VM_PID" 2>/dev/null || true
  [ -d "$base/pg" ] && as_postgres "$PG_BIN/pg_ctl" -D "$base/pg" -m fast stop >/dev/null 2>&1 || true
}
