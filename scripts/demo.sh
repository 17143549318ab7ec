#!/usr/bin/env bash
# The main job: installs what is missing, builds walrelay, runs the relay fed by
# its built-in synthetic collector for a few seconds, and shows where the data
# went (the write-ahead log, verified frame by frame).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --release
DATA="${WALRELAY_DEMO_DIR:-$(mktemp -d /tmp/walrelay-demo.XXXXXX)}"
CONF="$DATA/walrelay.toml"
cat > "$CONF" <<TOML
[wal]
dir = "$DATA/wal"
durability = "sync"
TOML
echo "== walrelay run: synthetic collector at ${RATE:-20000} records/s for ${SECONDS_TO_RUN:-5} s"
./target/release/walrelay run --config "$CONF" --synthetic-rate "${RATE:-20000}" --duration "${SECONDS_TO_RUN:-5}"
echo "== walrelay wal verify: where the data went"
./target/release/walrelay wal verify --config "$CONF"
echo "== the log lives in $DATA/wal"
