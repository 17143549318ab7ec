//! Dimension IDs for (symbol, exchange, interval) natural keys.
//!
//! Invariants:
//! - A cache hit makes no database round trip.
//! - All keys a batch misses are resolved in **one** round trip: a single
//!   statement upserting the three dimensions over arrays
//!   (`ON CONFLICT … DO UPDATE … RETURNING`), which also reactivates a
//!   soft-deleted symbol.
//! - The cache lives in the log's meta tree (`timescale/dim/…`), so a restart
//!   resolves known keys without the database. It is tied to the database's
//!   identity (system identifier, database name, schema); a different
//!   identity clears it.
//! - A foreign-key violation on a fact insert means a dimension row vanished:
//!   the caller forgets the batch's IDs (`forget`) and resolves again once.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::Client;

use super::error::TimescaleError;
use crate::wal::Meta;

const PREFIX: &[u8] = b"timescale/dim/";
const IDENTITY_KEY: &[u8] = b"timescale/identity";

/// The three dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Symbol,
    Exchange,
    Interval,
}

impl Dim {
    fn tag(self) -> u8 {
        match self {
            Dim::Symbol => b's',
            Dim::Exchange => b'e',
            Dim::Interval => b'i',
        }
    }
}

/// The persisted cache.
pub struct DimCache {
    ids: HashMap<(Dim, String), i32>,
    meta: Meta,
    /// Round trips made to resolve keys (for tests and metrics).
    pub round_trips: u64,
}

fn key(d: Dim, v: &str) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.push(d.tag());
    k.push(b'/');
    k.extend_from_slice(v.as_bytes());
    k
}

/// The identity of the database behind `client`: system identifier (when the
/// role may read it), database name, server port, and schema.
///
/// # Errors
/// [`TimescaleError`] when the query fails.
pub async fn identity(client: &Client, schema: &str) -> Result<String, TimescaleError> {
    let sysid = match client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
    {
        Ok(row) => row.get::<_, String>(0),
        Err(_) => String::from("unknown-sysid"),
    };
    let row = client
        .query_one("SELECT current_database()::text, (SELECT oid::text FROM pg_database WHERE datname = current_database()), coalesce(inet_server_port(), 0)::text", &[])
        .await
        .map_err(|e| TimescaleError::from_pg("read database identity", "", e))?;
    Ok(format!(
        "{sysid}/{}/{}/{}/{schema}",
        row.get::<_, String>(0),
        row.get::<_, String>(1),
        row.get::<_, String>(2)
    ))
}

impl DimCache {
    /// Loads the persisted cache (no database needed).
    ///
    /// # Errors
    /// [`TimescaleError::Wal`] when the meta tree cannot be read.
    pub fn load(meta: Meta) -> Result<DimCache, TimescaleError> {
        let mut ids = HashMap::new();
        for (k, v) in meta.scan_prefix(PREFIX).map_err(TimescaleError::Wal)? {
            let rest = &k[PREFIX.len()..];
            let dim = match rest.first() {
                Some(b's') => Dim::Symbol,
                Some(b'e') => Dim::Exchange,
                Some(b'i') => Dim::Interval,
                _ => continue,
            };
            let (Some(name), Ok(bytes)) = (rest.get(2..), <[u8; 4]>::try_from(&v[..])) else {
                continue;
            };
            ids.insert(
                (dim, String::from_utf8_lossy(name).into_owned()),
                i32::from_le_bytes(bytes),
            );
        }
        Ok(DimCache {
            ids,
            meta,
            round_trips: 0,
        })
    }

    /// Entries in the cache.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Compares the database identity with the persisted one; on a change the
    /// cache is cleared (IDs of another database mean nothing here).
    ///
    /// # Errors
    /// [`TimescaleError::Wal`] when the meta tree fails.
    pub fn bind_identity(&mut self, identity: &str) -> Result<(), TimescaleError> {
        let wal = TimescaleError::Wal;
        let stored = self.meta.get(IDENTITY_KEY).map_err(wal)?;
        if stored.as_deref() != Some(identity.as_bytes()) {
            if stored.is_some() || !self.ids.is_empty() {
                tracing::warn!(
                    entries = self.ids.len(),
                    "database identity changed: dimension-ID cache cleared"
                );
            }
            self.meta.remove_prefix(PREFIX).map_err(wal)?;
            self.ids.clear();
            self.meta
                .insert(IDENTITY_KEY, identity.as_bytes())
                .map_err(wal)?;
        }
        Ok(())
    }

    /// The cached ID, if any.
    pub fn get(&self, d: Dim, v: &str) -> Option<i32> {
        self.ids.get(&(d, v.to_string())).copied()
    }

    /// Forgets the given keys (after a foreign-key violation).
    pub fn forget(&mut self, keys: &[(Dim, String)]) {
        for k in keys {
            self.ids.remove(k);
            let _ = self.meta.remove(&key(k.0, &k.1));
        }
    }

    /// Makes sure every key is cached, resolving all misses in one round trip.
    ///
    /// # Errors
    /// [`TimescaleError`] from the upsert.
    pub async fn resolve(
        &mut self,
        client: &Client,
        schema: &str,
        timeout_ms: u64,
        keys: &[(Dim, String)],
    ) -> Result<(), TimescaleError> {
        let mut missing: [BTreeSet<&str>; 3] = Default::default();
        for (d, v) in keys {
            if !self.ids.contains_key(&(*d, v.clone())) {
                missing[*d as usize].insert(v);
            }
        }
        if missing.iter().all(BTreeSet::is_empty) {
            return Ok(());
        }
        let arrays: Vec<Vec<&str>> = missing
            .iter()
            .map(|s| s.iter().copied().collect())
            .collect();
        let sql = format!(
            "WITH s AS (INSERT INTO {schema}.dim_symbol (symbol) SELECT unnest($1::text[]) \
                 ON CONFLICT (symbol) DO UPDATE SET is_deleted = FALSE, deleted_date = NULL RETURNING 's'::text, symbol, symbol_id), \
              e AS (INSERT INTO {schema}.dim_exchange (exchange) SELECT unnest($2::text[]) \
                 ON CONFLICT (exchange) DO UPDATE SET exchange = EXCLUDED.exchange RETURNING 'e'::text, exchange, exchange_id), \
              i AS (INSERT INTO {schema}.dim_interval (\"interval\") SELECT unnest($3::text[]) \
                 ON CONFLICT (\"interval\") DO UPDATE SET \"interval\" = EXCLUDED.\"interval\" RETURNING 'i'::text, \"interval\", interval_id) \
             SELECT * FROM s UNION ALL SELECT * FROM e UNION ALL SELECT * FROM i"
        );
        self.round_trips += 1;
        let rows = super::conn::deadline(
            timeout_ms,
            "resolve dimensions",
            client.query(&sql, &[&arrays[0], &arrays[1], &arrays[2]]),
        )
        .await?;
        for row in rows {
            let (tag, name, id): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
            let dim = match tag.as_str() {
                "s" => Dim::Symbol,
                "e" => Dim::Exchange,
                _ => Dim::Interval,
            };
            self.meta
                .insert(&key(dim, &name), &id.to_le_bytes())
                .map_err(TimescaleError::Wal)?;
            self.ids.insert((dim, name), id);
        }
        Ok(())
    }
}
