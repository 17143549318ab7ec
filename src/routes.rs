//! [`Routes`]: the routing table type shared by the Influx sink (buckets)
//! and gRPC ingest (upstreams). A leaf module: imports nothing of the crate.

/// A routing table keyed by `"VENUE:DATA_TYPE"`, then `"VENUE"`, with a
/// default. Used for Influx buckets and gRPC upstreams.
#[derive(Debug, Clone, PartialEq)]
pub struct Routes<T> {
    table: std::collections::BTreeMap<String, T>,
    default: T,
}

impl<T> Routes<T> {
    pub fn new(table: std::collections::BTreeMap<String, T>, default: T) -> Self {
        Routes { table, default }
    }

    /// The entry for `venue` and `data_type`, and the key that matched
    /// (`""` for the default).
    pub fn resolve(&self, venue: &str, data_type: &str) -> (&T, String) {
        let composite = format!("{venue}:{data_type}");
        if let Some(t) = self.table.get(&composite) {
            return (t, composite);
        }
        if let Some(t) = self.table.get(venue) {
            return (t, venue.to_string());
        }
        (&self.default, String::new())
    }

    pub fn default(&self) -> &T {
        &self.default
    }
}
