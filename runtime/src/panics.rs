//! What a panic does in a Dash binary.
//!
//! The release profile unwinds (it used to abort), so that the few places
//! that must survive a panic in a dependency can: sled panics on some
//! damage of its files instead of returning an error, and the agent moves
//! such a buffer aside instead of crash-looping (see the agent's
//! `buffer::recovery`). Everywhere else a panic still ends the process, as
//! `panic = "abort"` did, so the service manager restarts it: a worker task
//! that died quietly inside a running process would be worse.
//!
//! [`install`] sets that policy (the binaries call it first thing);
//! [`catch`] runs a closure inside which panics unwind to the caller as an
//! error. A panic on any thread while a [`catch`] is running unwinds rather
//! than aborts, because sled recovers its files on a pool of threads. Without
//! [`install`] (tests, other embedders) panics behave as Rust's default.

use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Calls of [`catch`] in progress.
static CATCHING: AtomicUsize = AtomicUsize::new(0);

/// Makes every panic outside [`catch`] end the process after the usual
/// message (exit by `abort`, as with `panic = "abort"`). With `record`,
/// each such panic first appends one line to that file: `FILE:LINE` of
/// the panic, a tab, and its message (so the next start can tell a
/// dependency's panic from its own; see the agent's buffer recovery).
pub fn install(record: Option<PathBuf>) {
    let report = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        report(info);
        if CATCHING.load(Ordering::SeqCst) > 0 {
            return;
        }
        tracing::error!(panic = %info, "a panic ends the process; its service manager restarts it");
        if let Some(path) = &record {
            let at = info
                .location()
                .map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
            let message = message(info.payload()).replace(['\n', '\t'], " ");
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(file, "{at}\t{message}");
                let _ = file.sync_all();
            }
        }
        std::process::abort();
    }));
}

fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Runs `f`; a panic inside it (on this thread, or on a thread it waits
/// for) comes back as `Err` with the panic's message.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    CATCHING.fetch_add(1, Ordering::SeqCst);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.fetch_sub(1, Ordering::SeqCst);
    result.map_err(|payload| message(payload.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_catch_comes_back_as_its_message() {
        let caught = catch(|| -> u32 { panic!("page {} is damaged", 7) });
        assert_eq!(caught, Err("page 7 is damaged".to_owned()));
        assert_eq!(catch(|| 5), Ok(5));
        assert_eq!(CATCHING.load(Ordering::SeqCst), 0);
    }
}
