//! TimescaleDB sink (issue 3).
