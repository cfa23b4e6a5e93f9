//! A private PostgreSQL cluster run from the machine's own install.
//!
//! With no `database_url`, the aggregator keeps its database under
//! `data_dir/postgres`: `initdb` on first start, `pg_ctl start` on every start,
//! `pg_ctl stop` on exit. The server listens on a Unix socket inside the data
//! directory only (no TCP port to collide with or to expose), and trusts local
//! connections because only the socket's owner can reach it.
//!
//! # Ownership
//!
//! `dash-aggregator serve` holds an exclusive lock on `data_dir/serve.lock`
//! ([`DataDirLock`]) for as long as it runs, so a second `serve` on the same
//! directory refuses to start instead of sharing (and then stopping) the
//! first one's cluster. The lock holder owns the cluster: it starts it (or
//! adopts the one a killed predecessor left running), restarts it if it
//! dies ([`PrivatePostgres::supervise`]), and stops it on exit. Anything
//! else on the same directory (`agent add`, `agent list`) uses the cluster
//! when a `serve` runs and never stops it; with no `serve` running it takes
//! the lock itself for its few seconds.
//!
//! # Recovery
//!
//! If the aggregator was killed, its server is still running: `pg_ctl status`
//! finds it and the next owner adopts it. A stale `postmaster.pid` of a dead
//! server is handled by `pg_ctl start` itself.
//!
//! PostgreSQL refuses to run as root; when the aggregator runs as root, the
//! cluster is owned by and run as the `postgres` system user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nix::unistd::{Gid, Uid, User};

/// Why the private cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// A file or directory of the cluster could not be made or opened.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// `initdb` or `pg_ctl` ran and failed; `output` is what it printed
    /// (its own log is `data_dir/postgres/postgres.log`).
    #[error("{what} failed ({status}): {output}")]
    Tool {
        what: String,
        status: String,
        output: String,
    },
    /// A command other than `serve` found no cluster, or one that is not
    /// running although a `serve` holds the directory.
    #[error("{0}")]
    NotServing(String),
    /// No PostgreSQL server is installed where Dash looks for one.
    #[error("{0} (apt-get install postgresql, or set database_url)")]
    NotInstalled(String),
    /// Running as root and there is no `postgres` user to run the server as.
    #[error(
        "running as root, PostgreSQL needs a non-root owner, and there is no 'postgres' user; \
         run as another user or set database_url"
    )]
    NoPostgresUser,
    /// The server runs but would not create Dash's database.
    #[error("creating the database in the private PostgreSQL failed: {0}")]
    Database(#[from] sqlx::Error),
}

type Result<T> = std::result::Result<T, PrivateError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PrivateError {
    let what = what.into();
    move |source| PrivateError::Io { what, source }
}

/// Database name and role inside the private cluster.
pub const DATABASE: &str = "dash";

/// The exclusive lock of one `data_dir` (see the module docs); released
/// when dropped or when the process ends, however it ends.
#[derive(Debug)]
pub struct DataDirLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl DataDirLock {
    /// Takes the lock, or says which process holds it (`Ok(Err(pid))`).
    pub fn try_take(data_dir: &Path) -> Result<std::result::Result<DataDirLock, String>> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(data_dir)
            .map_err(io(format!("creating data_dir {}", data_dir.display())))?;
        let path = data_dir.join("serve.lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let pid = std::process::id();
                lock.set_len(0)
                    .and_then(|()| lock.rewind())
                    .and_then(|_| write!(lock, "{pid}"))
                    .map_err(io(format!("writing {}", path.display())))?;
                Ok(Ok(DataDirLock { _lock: lock }))
            }
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Ok(Err(pid.trim().to_owned()))
            }
            Err((_, e)) => Err(io(format!("locking {}", path.display()))(e.into())),
        }
    }
}

/// A running private cluster. Its owner stops it with [`PrivatePostgres::stop`]
/// (or by dropping it); a handle that does not own it never stops it.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    run_as: Option<(Uid, Gid)>,
    /// This handle restarts and stops the server: it was started by the
    /// lock holder and has not been stopped yet.
    managed: bool,
}

impl PrivatePostgres {
    /// Creates the cluster under `dir` if needed and starts it (or adopts a
    /// server already running there). `bin` is where initdb and pg_ctl live;
    /// `None` picks the newest /usr/lib/postgresql/*/bin. `owner`: this
    /// process holds the [`DataDirLock`], so it stops the cluster at the end;
    /// otherwise the cluster must already run (a `serve` owns it).
    pub fn start(dir: &Path, bin: Option<&Path>, owner: bool) -> Result<PrivatePostgres> {
        let bin = match bin {
            Some(b) => b.to_owned(),
            None => find_bin_dir()?,
        };
        let run_as = system_user_if_root()?;
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(io(format!("resolving {}", dir.display())))?;
        if let Some((uid, gid)) = run_as {
            nix::unistd::chown(&dir, Some(uid), Some(gid)).map_err(|e| {
                io(format!("handing {} to the postgres user", dir.display()))(e.into())
            })?;
        }
        let pg = PrivatePostgres {
            bin,
            dir,
            run_as,
            managed: owner,
        };
        if !pg.data().join("PG_VERSION").exists() {
            if !owner {
                return Err(PrivateError::NotServing(format!(
                    "no private PostgreSQL under {}; start dash-aggregator serve first",
                    pg.dir.display()
                )));
            }
            pg.initdb()?;
        }
        let adopted = pg.is_running();
        if !adopted {
            if !owner {
                return Err(PrivateError::NotServing(format!(
                    "the private PostgreSQL under {} is not running, although a dash-aggregator serve holds the data directory",
                    pg.dir.display()
                )));
            }
            pg.pg_start()?;
        }
        tracing::info!(dir = %pg.dir.display(), adopted, owner, "private PostgreSQL running");
        Ok(pg)
    }

    fn pg_start(&self) -> Result<()> {
        self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            &self.dir.join("postgres.log").to_string_lossy(),
            "-o",
            &self.server_options(),
        ])
    }

    /// Whether the server is down and this owner started it again.
    /// Called by the owner's supervisor every few seconds (see
    /// [`crate::database_supervisor`]).
    pub fn restart_if_down(&self) -> Result<bool> {
        if !self.managed || self.is_running() {
            return Ok(false);
        }
        tracing::error!(dir = %self.dir.display(), "the private PostgreSQL stopped under a running aggregator; starting it again");
        self.pg_start()?;
        tracing::info!("the private PostgreSQL runs again");
        Ok(true)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The socket directory doubles as the host in the connection URL.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{DATABASE}@localhost/{database}?host={}",
            self.dir.display()
        )
    }

    fn server_options(&self) -> String {
        format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c max_connections=200",
            self.dir.display()
        )
    }

    fn initdb(&self) -> Result<()> {
        let data = self.data();
        let out = self
            .command("initdb")
            .args([
                "-U",
                DATABASE,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-D",
            ])
            .arg(&data)
            .output()
            .map_err(io("running initdb"))?;
        check(&out, "initdb")
    }

    fn is_running(&self) -> bool {
        self.pg_ctl(&["status"]).is_ok()
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(args)
            .output()
            .map_err(io("running pg_ctl"))?;
        check(&out, &format!("pg_ctl {}", args[0]))
    }

    fn command(&self, tool: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.stdin(std::process::Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
            cmd.env("HOME", &self.dir);
        }
        cmd
    }

    /// Creates database `name` unless it exists.
    pub async fn ensure_database(&self, name: &str) -> Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            sqlx::query(&format!("CREATE DATABASE \"{}\"", name.replace('"', "")))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        Ok(())
    }

    /// Stops the server (if this handle owns it), waiting for a clean shutdown.
    pub fn stop(&mut self) -> Result<()> {
        if !self.managed {
            return Ok(());
        }
        self.managed = false;
        self.pg_ctl(&["stop", "-m", "fast", "-w"])
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "private PostgreSQL did not stop cleanly");
        }
    }
}

fn check(out: &Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(PrivateError::Tool {
        what: what.to_owned(),
        status: out.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

fn system_user_if_root() -> Result<Option<(Uid, Gid)>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres")
        .map_err(|e| io("looking up the postgres user")(e.into()))?
        .ok_or(PrivateError::NoPostgresUser)?;
    Ok(Some((user.uid, user.gid)))
}

/// The newest PostgreSQL server install under /usr/lib/postgresql.
pub fn find_bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let missing =
        || PrivateError::NotInstalled(format!("no initdb under {}/*/bin", root.display()));
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map_err(|_| missing())?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(missing)
}
