//! Throwaway PostgreSQL 15 cluster (filled by the Timescale work).
