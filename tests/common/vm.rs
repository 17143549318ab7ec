//! VictoriaMetrics speaking the InfluxDB v2 write API (filled by the Influx work).
