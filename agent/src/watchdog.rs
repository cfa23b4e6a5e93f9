//! The commit watchdog: a group commit that hangs stops the agent loudly.
//!
//! Every acknowledgement waits for a group commit (see [`crate::commit`]).
//! If sled's flush or the fsync never returns (sled's flush once hung in the
//! buffer benchmark with every I/O thread waiting), the agent would stop
//! acknowledging its devices forever and tell nobody. So:
//!
//! - The commit loop marks when each commit begins and ends
//!   ([`CommitWatch`]).
//! - A thread of its own (not a tokio task: a wedged runtime must not stop
//!   it) checks every [`CHECK_EVERY`]: a commit running longer than
//!   `buffer.commit_stall_secs` is logged at ERROR, recorded as a fault in
//!   `status.json`, and ends the process with [`EXIT_STALLED`], so the
//!   service restarts it. Nothing acknowledged is lost: the stalled group
//!   was not acknowledged, and what was is on disk.
//! - Under systemd (`WatchdogSec=`), the commit loop itself sends the
//!   keep-alives ([`KeepAlive`]), after each commit and while idle, so a
//!   loop that stops turning is restarted by systemd even if this process
//!   cannot act any more.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the watchdog thread looks.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The exit status after a stalled commit (EX_SOFTWARE is 70; this is
/// EX_TEMPFAIL, "try again": the service restarts the agent).
pub const EXIT_STALLED: i32 = 75;

/// When the commit in progress began.
#[derive(Debug)]
pub struct CommitWatch {
    base: Instant,
    /// Milliseconds since `base`, plus one, when the commit in progress
    /// began; 0 when none is.
    began: AtomicU64,
}

impl Default for CommitWatch {
    fn default() -> Self {
        CommitWatch {
            base: Instant::now(),
            began: AtomicU64::new(0),
        }
    }
}

impl CommitWatch {
    /// A commit begins now.
    pub fn begin(&self) {
        self.began
            .store(self.millis(Instant::now()) + 1, Ordering::SeqCst);
    }

    /// The commit in progress ended (well or not).
    pub fn end(&self) {
        self.began.store(0, Ordering::SeqCst);
    }

    /// How long the commit in progress has run at `now`, if one is.
    pub fn running_for(&self, now: Instant) -> Option<Duration> {
        match self.began.load(Ordering::SeqCst) {
            0 => None,
            began => Some(Duration::from_millis(
                self.millis(now).saturating_sub(began - 1),
            )),
        }
    }

    /// Whether the commit in progress has run longer than `bound` at `now`.
    pub fn stalled(&self, now: Instant, bound: Duration) -> Option<Duration> {
        self.running_for(now).filter(|d| *d > bound)
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }
}

/// Starts the watchdog thread for `watch` (it ends when the watch is
/// dropped, with the commit task). On a stall longer than `bound` it
/// records the fault in `status_file` and exits the process.
pub fn spawn(watch: &Arc<CommitWatch>, bound: Duration, status_file: Option<PathBuf>) {
    let watch: Weak<CommitWatch> = Arc::downgrade(watch);
    let spawned = std::thread::Builder::new()
        .name("commit-watchdog".into())
        .spawn(move || {
            while let Some(watch) = watch.upgrade() {
                if let Some(stalled) = watch.stalled(Instant::now(), bound) {
                    stop(stalled, bound, status_file.as_deref());
                }
                drop(watch);
                std::thread::sleep(CHECK_EVERY);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "the commit watchdog could not start; a hung flush would go unnoticed");
    }
}

/// A stalled commit: log, record, exit.
fn stop(stalled: Duration, bound: Duration, status_file: Option<&std::path::Path>) -> ! {
    let fault = format!(
        "group commit stalled: no flush finished in {} s (bound {} s); the agent exits to be restarted",
        stalled.as_secs(),
        bound.as_secs()
    );
    tracing::error!(
        stalled_secs = stalled.as_secs(),
        bound_secs = bound.as_secs(),
        "group commit stalled; inputs are not acknowledged; exiting so the service restarts the agent"
    );
    if let Some(path) = status_file {
        if let Err(e) = record_fault(path, &fault) {
            tracing::error!(error = %e, path = %path.display(), "could not record the stall in the status file");
        }
    }
    std::process::exit(EXIT_STALLED);
}

/// Adds `fault` to the status file the uplink last wrote (no sled access:
/// sled may be what hangs), or writes a minimal one.
fn record_fault(path: &std::path::Path, fault: &str) -> std::io::Result<()> {
    let mut status: serde_json::Value = std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| serde_json::json!({ "faults": [] }));
    if !status["faults"].is_array() {
        status["faults"] = serde_json::json!([]);
    }
    if let Some(faults) = status["faults"].as_array_mut() {
        faults.push(fault.into());
    }
    status["online"] = false.into();
    status["time"] = dash_shared::now_micros().into();
    let bytes = serde_json::to_vec_pretty(&status).map_err(std::io::Error::other)?;
    crate::replace_file(path, &bytes)
}

/// systemd's watchdog keep-alives, sent from the commit loop.
#[derive(Debug)]
pub struct KeepAlive {
    /// Half of `WatchdogSec`, as systemd recommends; `None`: not asked for.
    every: Option<Duration>,
    /// When the last one went; `None`: none yet (the first goes at once).
    last: Option<Instant>,
}

impl KeepAlive {
    /// From `WATCHDOG_USEC` (and `WATCHDOG_PID`, when set, must be this
    /// process), as sd_watchdog_enabled(3) reads them.
    pub fn from_env() -> KeepAlive {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        KeepAlive::new(usec.as_deref(), pid.as_deref(), std::process::id())
    }

    fn new(usec: Option<&str>, pid: Option<&str>, me: u32) -> KeepAlive {
        let ours = pid.is_none_or(|p| p.parse() == Ok(me));
        let every = usec
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            .map(|u| Duration::from_micros(u / 2));
        KeepAlive { every, last: None }
    }

    /// How often a keep-alive is due, if systemd asked for them.
    pub fn interval(&self) -> Option<Duration> {
        self.every
    }

    /// Sends a keep-alive if one is due at `now`.
    pub fn tick(&mut self, now: Instant) {
        let Some(every) = self.every else { return };
        if self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= every / 2)
        {
            self.last = Some(now);
            notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }
}

/// Tells systemd (when `NOTIFY_SOCKET` is set) a state change.
pub fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_is_stalled_only_past_the_bound_and_only_while_it_runs() {
        let watch = CommitWatch::default();
        let t0 = Instant::now();
        assert_eq!(watch.running_for(t0), None);
        watch.begin();
        let bound = Duration::from_secs(30);
        assert_eq!(watch.stalled(t0 + Duration::from_secs(29), bound), None);
        let late = watch.stalled(t0 + Duration::from_secs(31), bound);
        assert!(
            late.is_some_and(|d| d >= Duration::from_secs(30)),
            "{late:?}"
        );
        watch.end();
        assert_eq!(watch.stalled(t0 + Duration::from_secs(300), bound), None);
    }

    #[test]
    fn keep_alives_follow_watchdog_usec_and_pid() {
        let every = |usec, pid| KeepAlive::new(usec, pid, 42).interval();
        assert_eq!(every(Some("60000000"), None), Some(Duration::from_secs(30)));
        assert_eq!(
            every(Some("60000000"), Some("42")),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            every(Some("60000000"), Some("7")),
            None,
            "another process's watchdog"
        );
        assert_eq!(every(Some("0"), None), None);
        assert_eq!(every(Some("soon"), None), None);
        assert_eq!(every(None, None), None);
    }

    #[test]
    fn a_stall_is_added_to_the_faults_of_the_last_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        std::fs::write(
            &path,
            r#"{"online":true,"faults":["disk nearly full"],"buffer":{"unsealed":3}}"#,
        )
        .unwrap();
        record_fault(&path, "group commit stalled").unwrap();
        let status: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            status["faults"],
            serde_json::json!(["disk nearly full", "group commit stalled"])
        );
        assert_eq!(status["online"], false);
        assert_eq!(status["buffer"]["unsealed"], 3);
        // No status yet: a minimal one.
        std::fs::remove_file(&path).unwrap();
        record_fault(&path, "group commit stalled").unwrap();
        let status: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            status["faults"],
            serde_json::json!(["group commit stalled"])
        );
    }
}
