-- Dimension tables shared by every fact table (reference DDL; kept in sync
-- with src/db/timescale/schema.rs by tests/timescale_schema.rs).
CREATE SCHEMA IF NOT EXISTS mart;
CREATE TABLE IF NOT EXISTS mart.dim_symbol (
    symbol_id SERIAL PRIMARY KEY,
    symbol TEXT UNIQUE,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_date TIMESTAMPTZ NULL
);
CREATE TABLE IF NOT EXISTS mart.dim_exchange (
    exchange_id SERIAL PRIMARY KEY,
    exchange TEXT UNIQUE
);
CREATE TABLE IF NOT EXISTS mart.dim_interval (
    interval_id SERIAL PRIMARY KEY,
    "interval" TEXT UNIQUE
);
