-- Fact table bar__tick_imbalance (reference DDL). Requires create_dimensions.sql.
-- A hypertable partitioned by time where the timescaledb extension is
-- installed in this database (create_dimensions.sql creates it when the server
-- preloads TimescaleDB); a plain table on plain PostgreSQL.
CREATE TABLE IF NOT EXISTS mart.bar__tick_imbalance (
    time TIMESTAMPTZ NOT NULL,
    symbol_id INTEGER NOT NULL REFERENCES mart.dim_symbol (symbol_id),
    exchange_id INTEGER NOT NULL REFERENCES mart.dim_exchange (exchange_id),
    interval_id INTEGER NOT NULL REFERENCES mart.dim_interval (interval_id),
    open DOUBLE PRECISION NOT NULL,
    high DOUBLE PRECISION NOT NULL,
    low DOUBLE PRECISION NOT NULL,
    close DOUBLE PRECISION NOT NULL,
    volume DOUBLE PRECISION NOT NULL,
    buy_ticks BIGINT NOT NULL DEFAULT 0,
    sell_ticks BIGINT NOT NULL DEFAULT 0,
    total_ticks BIGINT NOT NULL DEFAULT 0,
    theta DOUBLE PRECISION NOT NULL DEFAULT 0,
    UNIQUE (time, symbol_id, exchange_id, interval_id)
);
CREATE INDEX IF NOT EXISTS bar__tick_imbalance_keys_time_idx ON mart.bar__tick_imbalance (symbol_id, exchange_id, interval_id, time DESC);
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('mart.bar__tick_imbalance', 'time', if_not_exists => TRUE, migrate_data => TRUE);
    END IF;
END
$$;
