//! The two sinks: InfluxDB v2 (raw ticks, line protocol) and TimescaleDB
//! (star-schema bars and klines).

pub mod influx;
pub mod timescale;
