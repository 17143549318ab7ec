-- Dimension tables shared by every fact table (reference DDL; kept in sync
-- with src/db/timescale/schema.rs by the catalog comparison in
-- tests/timescale_sink.rs). Valid on plain PostgreSQL and on TimescaleDB.
-- TimescaleDB, as walrelay does it: create the extension only when the server
-- offers it AND preloads it (without shared_preload_libraries a real
-- TimescaleDB answers CREATE EXTENSION with FATAL and drops the connection).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND 'timescaledb' = ANY (string_to_array(replace(replace(current_setting('shared_preload_libraries'), ' ', ''), '"', ''), ','))
    THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    END IF;
END
$$;
CREATE SCHEMA IF NOT EXISTS mart;
CREATE TABLE IF NOT EXISTS mart.dim_symbol (
    symbol_id SERIAL PRIMARY KEY,
    symbol TEXT NOT NULL UNIQUE,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_date TIMESTAMPTZ NULL
);
CREATE TABLE IF NOT EXISTS mart.dim_exchange (
    exchange_id SERIAL PRIMARY KEY,
    exchange TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS mart.dim_interval (
    interval_id SERIAL PRIMARY KEY,
    "interval" TEXT NOT NULL UNIQUE
);
-- Databases created while the names were nullable get NOT NULL too, unless a
-- NULL name is stored (then a warning says so and nothing changes).
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES ('dim_symbol', 'symbol'), ('dim_exchange', 'exchange'), ('dim_interval', 'interval')) AS v(tbl, col) LOOP
        IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = format('%I.%I', 'mart', c.tbl)::regclass AND attname = c.col AND NOT attnotnull) THEN
            BEGIN
                EXECUTE format('ALTER TABLE %I.%I ALTER COLUMN %I SET NOT NULL', 'mart', c.tbl, c.col);
            EXCEPTION WHEN not_null_violation THEN
                RAISE WARNING '%.%.% holds NULL names; left nullable', 'mart', c.tbl, c.col;
            END;
        END IF;
    END LOOP;
END
$$;
