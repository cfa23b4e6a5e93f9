//! A throwaway PostgreSQL cluster per test.
//!
//! By default the machine's PostgreSQL (15 here), started with the
//! aggregator's own private-cluster code. With `DASH_TEST_DB=timescaledb`,
//! PostgreSQL 17 with TimescaleDB from the Debian 13 root that
//! `deploy/scripts/debian13-root.sh` builds (`DASH_DEBIAN13_ROOT`, default
//! /var/tmp/dash-trixie), run through chroot on a loopback port; the
//! aggregator's schema code then creates hypertables instead of partitions.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::sync::Arc;

use dash_aggregator::config::RetentionConfig;
use dash_aggregator::ingest::Ingestor;
use dash_aggregator::storage::private::{DATABASE, PrivatePostgres};
use dash_aggregator::storage::retention::Layout;
use dash_aggregator::storage::tiers::TieredWriter;
use dash_aggregator::telemetry::metrics::Metrics;
use dash_shared::Limits;
use sqlx::PgPool;

pub struct TestPostgres {
    pub url: String,
    pub pool: PgPool,
    _server: Server,
}

/// Kept for its `Drop`, which stops the server.
enum Server {
    Host {
        _pg: PrivatePostgres,
        _dir: tempfile::TempDir,
    },
    Chroot {
        _pg: ChrootPostgres,
    },
    /// Someone else's (an aggregator's private cluster).
    Elsewhere,
}

/// Whether this run tests against TimescaleDB (`DASH_TEST_DB=timescaledb`).
pub fn timescaledb() -> bool {
    match std::env::var("DASH_TEST_DB").as_deref() {
        Ok("timescaledb") => true,
        Ok("postgresql") | Ok("") | Err(_) => false,
        Ok(other) => panic!("DASH_TEST_DB={other}: use postgresql or timescaledb"),
    }
}

/// The layout the schema should have on the selected server.
pub fn expected_layout() -> Layout {
    if timescaledb() {
        Layout::Hypertables
    } else {
        Layout::Native
    }
}

impl TestPostgres {
    /// Starts a cluster with the Dash schema applied.
    pub async fn start() -> TestPostgres {
        let (url, server) = if timescaledb() {
            let pg = tokio::task::spawn_blocking(ChrootPostgres::start)
                .await
                .unwrap();
            let admin = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            (pg.url(DATABASE), Server::Chroot { _pg: pg })
        } else {
            let dir = tempfile::tempdir().unwrap();
            // When tests run as root, the cluster runs as `postgres`, which must reach the directory.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let path = dir.path().join("pg");
            let pg = tokio::task::spawn_blocking(move || PrivatePostgres::start(&path, None, true))
                .await
                .unwrap()
                .unwrap();
            pg.ensure_database(DATABASE).await.unwrap();
            (pg.url(DATABASE), Server::Host { _pg: pg, _dir: dir })
        };
        let pool =
            dash_aggregator::storage::pool::connect(&url, 4, std::time::Duration::from_secs(10))
                .await
                .unwrap();
        TestPostgres {
            url,
            pool,
            _server: server,
        }
    }

    /// A database someone else runs (an aggregator's private cluster), for
    /// the helpers that read it.
    pub async fn connect(url: &str) -> TestPostgres {
        let pool =
            dash_aggregator::storage::pool::connect(url, 2, std::time::Duration::from_secs(10))
                .await
                .unwrap();
        TestPostgres {
            url: url.to_owned(),
            pool,
            _server: Server::Elsewhere,
        }
    }

    /// The aggregator's ingest path on this database, with default limits
    /// and no retention (tests write fixed dates from the past).
    pub fn ingestor(&self) -> Ingestor<TieredWriter> {
        self.ingestor_keeping(RetentionConfig {
            raw_days: 0,
            hourly_days: 0,
            daily_days: 0,
            events_days: 0,
            ..RetentionConfig::default()
        })
    }

    /// The ingest path with a writer that ignores data `retention` no longer keeps.
    pub fn ingestor_keeping(&self, retention: RetentionConfig) -> Ingestor<TieredWriter> {
        Ingestor::new(
            self.pool.clone(),
            TieredWriter::new(retention),
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

/// PostgreSQL 17 with TimescaleDB inside the Debian 13 root, for one test.
struct ChrootPostgres {
    root: PathBuf,
    /// Data directory, as seen inside the root.
    dir: String,
    port: u16,
}

const PG17: &str = "/usr/lib/postgresql/17/bin";

impl ChrootPostgres {
    fn start() -> ChrootPostgres {
        let root = PathBuf::from(
            std::env::var("DASH_DEBIAN13_ROOT").unwrap_or_else(|_| "/var/tmp/dash-trixie".into()),
        );
        assert!(
            root.join("usr/lib/postgresql/17/bin/postgres").exists(),
            "no PostgreSQL 17 in {}: run deploy/scripts/debian13-root.sh (as root)",
            root.display()
        );
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "DASH_TEST_DB=timescaledb needs root (it runs PostgreSQL through chroot)"
        );
        let (uid, gid) = postgres_ids(&root.join("etc/passwd"));
        let tmp = tempfile::Builder::new()
            .prefix("dash-test-")
            .tempdir_in(root.join("tmp"))
            .unwrap()
            .keep();
        nix::unistd::chown(&tmp, Some(uid.into()), Some(gid.into())).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)).unwrap();
        let dir = format!("/tmp/{}", tmp.file_name().unwrap().to_str().unwrap());
        let pg = ChrootPostgres {
            root,
            dir,
            port: crate::free_port(),
        };
        pg.run(&[
            &format!("{PG17}/initdb"),
            "-D",
            &pg.dir,
            "--auth=trust",
            "-U",
            "postgres",
            "--locale=C.UTF-8",
            "-E",
            "UTF8",
        ]);
        let options = format!(
            "-c shared_preload_libraries=timescaledb -c listen_addresses=127.0.0.1 -p {} \
             -c unix_socket_directories=/tmp -c fsync=off -c max_connections=50",
            pg.port
        );
        let log = format!("{}/log", pg.dir);
        pg.run(&[
            &format!("{PG17}/pg_ctl"),
            "-D",
            &pg.dir,
            "-l",
            &log,
            "-w",
            "-o",
            &options,
            "start",
        ]);
        pg
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new("/usr/sbin/chroot")
            .arg("--userspec=postgres:postgres")
            .arg(&self.root)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}{}",
            self.root.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for ChrootPostgres {
    fn drop(&mut self) {
        let stopped = Command::new("/usr/sbin/chroot")
            .arg("--userspec=postgres:postgres")
            .arg(&self.root)
            .args([
                &format!("{PG17}/pg_ctl"),
                "-D",
                &self.dir,
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output();
        if let Err(e) = stopped {
            eprintln!("stopping PostgreSQL 17 in {}: {e}", self.dir);
        }
        let _ = std::fs::remove_dir_all(self.root.join(self.dir.trim_start_matches('/')));
    }
}

/// The uid and gid of `postgres` in a root's /etc/passwd (not the host's).
fn postgres_ids(passwd: &Path) -> (u32, u32) {
    let text = std::fs::read_to_string(passwd).unwrap();
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.first() != Some(&"postgres") || f.len() < 4 {
                return None;
            }
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        })
        .unwrap_or_else(|| panic!("no postgres user in {}", passwd.display()))
}
