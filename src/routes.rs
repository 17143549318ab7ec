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
    /// (`""` for the default). Allocates nothing: both candidate keys start
    /// with `venue`, so one ordered scan from `venue` over the keys sharing
    /// that prefix finds them (sinks resolve once per record).
    pub fn resolve(&self, venue: &str, data_type: &str) -> (&T, &str) {
        use std::ops::Bound;
        let mut by_venue = None;
        let from: (Bound<&str>, Bound<&str>) = (Bound::Included(venue), Bound::Unbounded);
        for (key, t) in self.table.range::<str, _>(from) {
            let Some(rest) = key.strip_prefix(venue) else {
                break;
            };
            if rest.is_empty() {
                by_venue = Some((t, key.as_str()));
            } else if rest.strip_prefix(':') == Some(data_type) {
                return (t, key);
            }
        }
        by_venue.unwrap_or((&self.default, ""))
    }

    pub fn default(&self) -> &T {
        &self.default
    }
}

#[cfg(test)]
mod tests {
    use super::Routes;

    #[test]
    fn a_venue_that_prefixes_another_matches_only_its_own_keys() {
        let t: std::collections::BTreeMap<String, u8> = [
            ("OKX".to_string(), 1),
            ("OKX:TRADE:X".to_string(), 2),
            ("OKXB:TRADE".to_string(), 3),
            ("OKX:TRADEX".to_string(), 4),
            ("OKX:TRADE".to_string(), 5),
        ]
        .into_iter()
        .collect();
        let r = Routes::new(t, 0);
        assert_eq!(r.resolve("OKX", "TRADE"), (&5, "OKX:TRADE"));
        assert_eq!(r.resolve("OKX", "FUNDING"), (&1, "OKX"));
        assert_eq!(r.resolve("OKXB", "TRADE"), (&3, "OKXB:TRADE"));
        assert_eq!(r.resolve("OKXB", "FUNDING"), (&0, ""));
        assert_eq!(r.resolve("OK", "TRADE"), (&0, ""));
    }
}
