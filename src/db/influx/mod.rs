//! InfluxDB v2 sink (issue 4).
