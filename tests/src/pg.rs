//! A throwaway PostgreSQL cluster per test, from the machine's install,
//! started with the aggregator's own private-cluster code.

use std::os::unix::fs::PermissionsExt;

use std::sync::Arc;

use dash_aggregator::ingest::Ingestor;
use dash_aggregator::metrics::Metrics;
use dash_aggregator::postgres::{DATABASE, PrivatePostgres};
use dash_aggregator::tiers::TieredWriter;
use dash_shared::Limits;
use sqlx::PgPool;

pub struct TestPostgres {
    pub url: String,
    pub pool: PgPool,
    _pg: PrivatePostgres,
    _dir: tempfile::TempDir,
}

impl TestPostgres {
    /// Starts a cluster with the Dash schema applied.
    pub async fn start() -> TestPostgres {
        let dir = tempfile::tempdir().unwrap();
        // When tests run as root, the cluster runs as `postgres`, which must reach the directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("pg");
        let pg = tokio::task::spawn_blocking(move || PrivatePostgres::start(&path, None))
            .await
            .unwrap()
            .unwrap();
        pg.ensure_database(DATABASE).await.unwrap();
        let url = pg.url(DATABASE);
        let pool = dash_aggregator::db::connect(&url, 4, std::time::Duration::from_secs(10))
            .await
            .unwrap();
        TestPostgres {
            url,
            pool,
            _pg: pg,
            _dir: dir,
        }
    }

    /// The aggregator's ingest path on this database, with default limits.
    pub fn ingestor(&self) -> Ingestor<TieredWriter> {
        Ingestor::new(
            self.pool.clone(),
            TieredWriter::default(),
            Limits::default(),
            Arc::new(Metrics::default()),
        )
    }

    /// `(device, value) -> rows` for one tenant's metric.
    pub async fn counts(
        &self,
        tenant: &str,
        metric: &str,
    ) -> std::collections::HashMap<(String, i64), i64> {
        let rows: Vec<(String, f64, i64)> = sqlx::query_as(
            "SELECT s.device, x.value, count(*) FROM samples x JOIN series s ON s.id = x.series_id
             WHERE s.tenant = $1 AND s.metric = $2 GROUP BY s.device, x.value",
        )
        .bind(tenant)
        .bind(metric)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(d, v, n)| ((d, v as i64), n))
            .collect()
    }

    pub async fn total(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM samples")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}
