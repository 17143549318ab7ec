#!/usr/bin/env bash
# The main job: installs what is missing, builds walrelay, starts PostgreSQL 15
# and VictoriaMetrics on loopback, runs `walrelay init`, starts the relay, feeds
# it with the built-in synthetic collector, then shows `walrelay status` and
# where the data went (row counts in PostgreSQL, series and samples in
# VictoriaMetrics). Everything lives in a temporary directory and is stopped
# at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --release
BIN="${CARGO_TARGET_DIR:-target}/release/walrelay"
BASE="${WALRELAY_DEMO_DIR:-$(mktemp -d /tmp/walrelay-demo.XXXXXX)}"
source scripts/services.sh
RELAY_PID=""
cleanup() {
  [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null && wait "$RELAY_PID" 2>/dev/null || true
  stop_services "$BASE"
}
trap cleanup EXIT
start_services "$BASE"
RELAY_PORT=$(free_port)
CONF="$BASE/walrelay.toml"
cat > "$CONF" <<TOML
[wal]
dir = "$BASE/wal"

[ingest]
listen = "127.0.0.1:$RELAY_PORT"

[influx]
url = "$VM_URL"
org = "demo"
bucket = "ticks"

[timescale]
url = "$PG_URL"

[timescale.dimensions]
symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
exchanges = ["BINANCE_FUTURES", "BYBIT", "OKX"]
intervals = ["1m", "tick_100"]
TOML
echo "== walrelay check"
$BIN check --config "$CONF"
echo "== walrelay init"
$BIN init --config "$CONF"
echo "== walrelay run (log: $BASE/relay.log)"
$BIN run --config "$CONF" 2>"$BASE/relay.log" &
RELAY_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$RELAY_PORT/health" >/dev/null && break; sleep 0.1; done
echo "== walrelay feed: ${RATE:-5000} records/s for ${SECONDS_TO_RUN:-10} s"
$BIN feed --url "http://127.0.0.1:$RELAY_PORT" --rate "${RATE:-5000}" --duration "${SECONDS_TO_RUN:-10}" --symbols 4
sleep 2
echo "== walrelay status"
$BIN status --config "$CONF"
echo "== where the data went"
echo "-- PostgreSQL ($PG_URL), schema mart (rows = the timescale sink's delivered count; klines are sent once per venue, symbol and closed minute):"
if psql "$PG_URL" -At -c "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'" | grep -q 1; then
  echo "-- TimescaleDB $(psql "$PG_URL" -At -c "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"): hypertables partitioned by time, chunks created by the inserts:"
  psql "$PG_URL" -At -F ' ' -c "SELECT t, (SELECT count(*) FROM timescaledb_information.hypertables h WHERE h.hypertable_schema = 'mart' AND h.hypertable_name = t) = 1, (SELECT count(*) FROM timescaledb_information.chunks c WHERE c.hypertable_schema = 'mart' AND c.hypertable_name = t), n FROM (VALUES ('bar__tick_imbalance', (SELECT count(*) FROM mart.bar__tick_imbalance)), ('bar__volume_imbalance', (SELECT count(*) FROM mart.bar__volume_imbalance)), ('bar__vpin', (SELECT count(*) FROM mart.bar__vpin)), ('bar__kline', (SELECT count(*) FROM mart.bar__kline))) v(t, n)" |
    while read -r t hyper chunks n; do echo "$t rows: $n (hypertable: $([ "$hyper" = t ] && echo yes || echo NO), chunks: $chunks)"; done
else
  echo "-- plain PostgreSQL tables (TimescaleDB not installed or switched off; scripts/setup.sh installs it where ../shared/timescaledb/install.sh exists):"
  psql "$PG_URL" -At -c "SELECT 'bar__tick_imbalance', count(*) FROM mart.bar__tick_imbalance UNION ALL SELECT 'bar__volume_imbalance', count(*) FROM mart.bar__volume_imbalance UNION ALL SELECT 'bar__vpin', count(*) FROM mart.bar__vpin UNION ALL SELECT 'bar__kline', count(*) FROM mart.bar__kline" | sed 's/|/ rows: /'
fi
echo "-- VictoriaMetrics ($VM_URL), InfluxDB measurements as <measurement>_<field>:"
curl -s "$VM_URL/internal/force_flush" >/dev/null
for m in trades orderbook funding_rate liquidation open_interest options_ticker price_index; do
  field=price; case $m in orderbook) field=bid_price;; funding_rate) field=rate;; open_interest) field=open_interest;; options_ticker) field=mark_price;; esac
  n=$(curl -s "$VM_URL/api/v1/export?match[]=${m}_${field}&start=0" | python3 -c 'import sys,json; print(sum(len(json.loads(l)["values"]) for l in sys.stdin if l.strip()))')
  echo "$m: $n points"
done
