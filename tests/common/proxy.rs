//! Fault-injecting TCP proxy (filled by the Influx work).
