//! What ingest keeps instead of storing: readings stamped outside the
//! accepted time window (`ingest_quarantine`) and payloads that can never be
//! stored (`ingest_rejections`, with their bytes). Written in the ingest
//! transaction; [`crate::ingest`] decides what goes here.

use dash_shared::Micros;
use sqlx::PgConnection;

/// One reading held back: its kind (`sample`, `window`, `event`), series,
/// time, value and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub kind: &'static str,
    pub series: String,
    pub ts: Micros,
    pub value: Option<f64>,
    pub reason: &'static str,
}

/// Inserts held readings, each with its `(tenant, agent)`, in one statement.
pub async fn insert_quarantined(
    conn: &mut PgConnection,
    held: &[(&str, &str, &Quarantined)],
) -> sqlx::Result<()> {
    let col = |f: &dyn Fn(&str, &str, &Quarantined) -> String| -> Vec<String> {
        held.iter().map(|(t, a, q)| f(t, a, q)).collect()
    };
    sqlx::query(
        "INSERT INTO ingest_quarantine (tenant, agent, kind, series, ts, value, reason)
         SELECT t, a, k, s, 'epoch'::timestamptz + ts * interval '1 microsecond', v, r
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::float8[], $7::text[])
             AS u(t, a, k, s, ts, v, r)",
    )
    .bind(col(&|t, _, _| t.to_owned()))
    .bind(col(&|_, a, _| a.to_owned()))
    .bind(col(&|_, _, q| q.kind.to_owned()))
    .bind(col(&|_, _, q| q.series.clone()))
    .bind(held.iter().map(|(_, _, q)| q.ts).collect::<Vec<i64>>())
    .bind(held.iter().map(|(_, _, q)| q.value).collect::<Vec<Option<f64>>>())
    .bind(col(&|_, _, q| q.reason.to_owned()))
    .execute(conn)
    .await?;
    Ok(())
}

/// A payload refused for good, with its stream and seq when it had them.
#[derive(Debug, Clone, Copy)]
pub struct Rejection<'a> {
    pub tenant: &'a str,
    pub agent: &'a str,
    pub stream: Option<&'a str>,
    pub seq: Option<u64>,
    pub reason: &'a str,
    pub payload: &'a [u8],
}

pub async fn insert_rejection(conn: &mut PgConnection, r: &Rejection<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO ingest_rejections (tenant, agent, stream, seq, reason, payload)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(r.tenant)
    .bind(r.agent)
    .bind(r.stream)
    .bind(r.seq.map(|s| s as i64))
    .bind(r.reason)
    .bind(r.payload)
    .execute(conn)
    .await?;
    Ok(())
}
