//! Panics that ended earlier runs, so a start can tell a crash loop.
//!
//! The binary installs [`dash_runtime::panics`] with [`record_path`]: a
//! panic outside a guarded section appends `FILE:LINE<TAB>message` to
//! `data_dir/panics.log`, then aborts, and the service restarts the agent.
//! At the next start [`sled_panics`] counts the recorded panics raised in
//! sled's own code; the buffer uses it to read everything back once and,
//! after [`crate::buffer::MAX_SLED_PANICS`], to move itself aside (see
//! [`crate::buffer::Buffer::open_or_recover`]). The record is cleared by a
//! clean stop and by [`CLEAR_AFTER`] of uptime, so it counts runs in a row.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Uptime after which earlier panics no longer count as a loop.
pub const CLEAR_AFTER: Duration = Duration::from_secs(600);

/// Where panics of the agent using `data_dir` are recorded.
pub fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("panics.log")
}

/// Recorded panics raised inside sled.
pub fn sled_panics(data_dir: &Path) -> usize {
    std::fs::read_to_string(record_path(data_dir))
        .map(|text| count_sled(&text))
        .unwrap_or(0)
}

fn count_sled(text: &str) -> usize {
    text.lines()
        .filter_map(|line| line.split('\t').next())
        .filter(|at| at.contains("/sled-"))
        .count()
}

/// Forgets the recorded panics (a clean stop, or long enough up).
pub fn clear(data_dir: &Path) {
    match std::fs::remove_file(record_path(data_dir)) {
        Ok(()) => tracing::info!("earlier panics forgotten"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "could not remove panics.log"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_panics_raised_in_sled_count() {
        let text = "/root/.cargo/registry/src/idx/sled-0.34.7/src/node.rs:68\tsomehow a link was applied\n\
                    agent/src/uplink.rs:40\tan agent bug\n\
                    /home/b/.cargo/registry/src/idx/sled-0.34.7/src/pagecache/iterator.rs:371\tduplicate segment LSN\n";
        assert_eq!(count_sled(text), 2);
        assert_eq!(count_sled(""), 0);
    }

    #[test]
    fn a_missing_or_cleared_record_counts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(sled_panics(dir.path()), 0);
        std::fs::write(
            record_path(dir.path()),
            "/x/sled-0.34.7/src/node.rs:68\tm\n",
        )
        .unwrap();
        assert_eq!(sled_panics(dir.path()), 1);
        clear(dir.path());
        assert_eq!(sled_panics(dir.path()), 0);
    }
}
