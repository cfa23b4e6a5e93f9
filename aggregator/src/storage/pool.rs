//! Connecting to PostgreSQL and applying the embedded migrations.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Why the database could not be opened for Dash.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No connection within the wait: the server is down, the address or
    /// credentials in `database_url` are wrong.
    #[error("connecting to PostgreSQL failed (check database_url): {0}")]
    Connect(#[source] sqlx::Error),
    /// The server answered but the extension check failed.
    #[error("checking for the timescaledb extension failed: {0}")]
    Extension(#[source] sqlx::Error),
    /// A migration failed: the database is newer than this build, or the
    /// role may not create tables.
    #[error("applying database migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Migrations compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool and brings the schema up to date. Retries the first
/// connection for `wait`, so the aggregator can start before its database.
pub async fn connect(
    url: &str,
    max_connections: u32,
    wait: Duration,
) -> Result<PgPool, StorageError> {
    let deadline = tokio::time::Instant::now() + wait;
    let pool = loop {
        let attempt = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await;
        match attempt {
            Ok(pool) => break pool,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "PostgreSQL not reachable yet, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(StorageError::Connect(e)),
        }
    };
    timescaledb(&pool).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Installs the timescaledb extension when the server preloads it, so that
/// the schema is created with hypertables. Returns whether it is installed.
/// A database without it gets native partitions; the tables and queries are
/// the same.
async fn timescaledb(pool: &PgPool) -> Result<bool, StorageError> {
    let (installed, available, preloaded): (bool, bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
                EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
                current_setting('shared_preload_libraries') ~ '(^|[ ,])timescaledb($|[ ,])'",
    )
    .fetch_one(pool)
    .await
    .map_err(StorageError::Extension)?;
    if installed {
        return Ok(true);
    }
    if !(available && preloaded) {
        return Ok(false);
    }
    match sqlx::query("CREATE EXTENSION IF NOT EXISTS timescaledb")
        .execute(pool)
        .await
    {
        Ok(_) => {
            tracing::info!("timescaledb extension installed: tiers use hypertables");
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the timescaledb extension (needs a superuser or a trusted extension); using native partitions");
            Ok(false)
        }
    }
}
