//! Storage: the series registry and the writer for samples.
//!
//! The ingest transaction calls a [`SampleWriter`] with a batch whose series
//! are already resolved to ids. [`crate::storage::tiers::TieredWriter`] is the one
//! Dash uses: raw blocks plus hourly and daily rollups.
//!
//! Series ids are resolved outside the ingest transaction (an orphan series
//! row from a batch that then failed is harmless, and a resend reuses it), in
//! key order, so concurrent workers registering the same new series cannot
//! deadlock.

pub mod access;
pub mod agents;
pub mod alert_reads;
pub mod alerts;
pub mod audit;
pub mod fleet;
pub mod held;
pub mod ledger;
pub mod pool;
pub mod private;
pub mod read;
pub mod retention;
pub mod tiers;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use dash_shared::{AgentId, Batch, Micros, SeriesKey, TenantId};
use sqlx::{PgConnection, PgPool};

/// A batch the ledger admitted, with its series ids.
#[derive(Debug, Clone, Copy)]
pub struct Admitted<'a> {
    pub tenant: &'a TenantId,
    pub agent: &'a AgentId,
    pub batch: &'a Batch,
    /// Ids of `batch.series`, then of `batch.windows`, in order.
    pub series_ids: &'a [i64],
}

/// Writes the samples of the admitted batches inside the ingest transaction.
pub trait SampleWriter: Send + Sync + 'static {
    /// Returns how many samples were written.
    fn write(
        &self,
        conn: &mut PgConnection,
        batches: &[Admitted<'_>],
    ) -> impl Future<Output = sqlx::Result<u64>> + Send;
}

/// PostgreSQL's binary COPY format, just the types Dash writes.
pub struct BinaryCopy {
    buf: Vec<u8>,
    fields: i16,
}

/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_OFFSET: Micros = 946_684_800_000_000;

impl BinaryCopy {
    pub fn new(fields: i16) -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        BinaryCopy { buf, fields }
    }

    pub fn row(&mut self) {
        self.buf.extend_from_slice(&self.fields.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        self.buf
            .extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(bytes);
    }

    pub fn text(&mut self, s: &str) {
        self.field(s.as_bytes());
    }

    pub fn int8(&mut self, v: i64) {
        self.field(&v.to_be_bytes());
    }

    pub fn int4(&mut self, v: i32) {
        self.field(&v.to_be_bytes());
    }

    /// `jsonb` from JSON text (binary format version 1).
    pub fn jsonb(&mut self, json: &str) {
        self.buf
            .extend_from_slice(&(json.len() as i32 + 1).to_be_bytes());
        self.buf.push(1);
        self.buf.extend_from_slice(json.as_bytes());
    }

    pub fn float8(&mut self, v: f64) {
        self.field(&v.to_be_bytes());
    }

    pub fn timestamptz(&mut self, unix_micros: Micros) {
        self.int8(unix_micros - PG_EPOCH_OFFSET);
    }

    /// A one-dimensional array without NULLs, in PostgreSQL's binary format.
    fn array<T: Copy>(&mut self, oid: u32, width: i32, items: &[T], bytes: impl Fn(T) -> [u8; 8]) {
        let len = 20 + items.len() * (4 + width as usize);
        self.buf.extend_from_slice(&(len as i32).to_be_bytes());
        self.buf.extend_from_slice(&1i32.to_be_bytes()); // dimensions
        self.buf.extend_from_slice(&0i32.to_be_bytes()); // has NULLs
        self.buf.extend_from_slice(&oid.to_be_bytes());
        self.buf
            .extend_from_slice(&(items.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(&1i32.to_be_bytes()); // lower bound
        for item in items {
            self.buf.extend_from_slice(&width.to_be_bytes());
            self.buf
                .extend_from_slice(&bytes(*item)[8 - width as usize..]);
        }
    }

    pub fn int4_array(&mut self, items: &[i32]) {
        self.array(23, 4, items, |v| i64::from(v).to_be_bytes());
    }

    pub fn float8_array(&mut self, items: &[f64]) {
        self.array(701, 8, items, f64::to_be_bytes);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

/// Maps series keys to ids, creating rows for new series. Caches forever:
/// a series id never changes. Keyed by tenant, then series, so the lookup
/// every batch makes for each of its series borrows instead of cloning keys.
#[derive(Debug, Default)]
pub struct SeriesRegistry {
    cache: Mutex<HashMap<TenantId, HashMap<SeriesKey, i64>>>,
}

/// Tags as the canonical JSON object stored in `series.tags`.
fn tags_json(key: &SeriesKey) -> String {
    let map: serde_json::Map<String, serde_json::Value> = key
        .tags
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

impl SeriesRegistry {
    /// Ids for every series block of `batch`, then every window block, in order.
    pub async fn resolve(
        &self,
        pool: &PgPool,
        tenant: &TenantId,
        batch: &Batch,
    ) -> sqlx::Result<Vec<i64>> {
        let keys = || {
            batch
                .series
                .iter()
                .map(|b| &b.key)
                .chain(batch.windows.iter().map(|w| &w.key))
        };
        let lookup = || -> Result<Vec<i64>, Vec<&SeriesKey>> {
            let cache = self.cache.lock().expect("series cache poisoned");
            let known = cache.get(tenant);
            let id = |key: &SeriesKey| known.and_then(|k| k.get(key)).copied();
            let ids: Option<Vec<i64>> = keys().map(id).collect();
            ids.ok_or_else(|| keys().filter(|k| id(k).is_none()).collect())
        };
        let mut missing = match lookup() {
            Ok(ids) => return Ok(ids),
            Err(missing) => missing,
        };
        missing.sort();
        missing.dedup();
        let found = self.register(pool, tenant, &missing).await?;
        {
            let mut cache = self.cache.lock().expect("series cache poisoned");
            let known = cache.entry(tenant.clone()).or_default();
            for (key, id) in missing.into_iter().zip(found) {
                known.insert(key.clone(), id);
            }
        }
        Ok(lookup().expect("every series was just registered"))
    }

    async fn register(
        &self,
        pool: &PgPool,
        tenant: &TenantId,
        keys: &[&SeriesKey],
    ) -> sqlx::Result<Vec<i64>> {
        let devices: Vec<&str> = keys.iter().map(|k| k.device.as_str()).collect();
        let metrics: Vec<&str> = keys.iter().map(|k| k.metric.as_str()).collect();
        let tags: Vec<String> = keys.iter().map(|k| tags_json(k)).collect();
        sqlx::query(
            "INSERT INTO series (tenant, device, metric, tags)
             SELECT $1, d, m, t::jsonb FROM unnest($2::text[], $3::text[], $4::text[]) AS u(d, m, t)
             ON CONFLICT (tenant, device, metric, tags) DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(&devices)
        .bind(&metrics)
        .bind(&tags)
        .execute(pool)
        .await?;
        // A device exists from its first series (the fleet registry).
        sqlx::query(
            "INSERT INTO devices (tenant, device)
             SELECT DISTINCT $1, d FROM unnest($2::text[]) AS u(d)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(&devices)
        .execute(pool)
        .await?;
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT u.ord, s.id FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS u(d, m, t, ord)
             JOIN series s ON s.tenant = $1 AND s.device = u.d AND s.metric = u.m AND s.tags = u.t::jsonb
             ORDER BY u.ord",
        )
        .bind(tenant.as_str())
        .bind(&devices)
        .bind(&metrics)
        .bind(&tags)
        .fetch_all(pool)
        .await?;
        if rows.len() != keys.len() {
            return Err(sqlx::Error::Protocol(format!(
                "registered {} series but found {}",
                keys.len(),
                rows.len()
            )));
        }
        Ok(rows.into_iter().map(|(_, id)| id).collect())
    }
}
