//! Health and readiness, as `/healthz` and `/readyz` answer them.
//!
//! `/healthz` means the process is up and serving HTTP. `/readyz` means
//! it can do its job now: the database answers, the link to the broker is
//! connected, and ingest is not stalled (no message has waited for its
//! commit longer than [`STALL_AFTER`]). A load balancer or an orchestrator
//! routes by `/readyz`; a liveness probe uses `/healthz`.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use dash_shared::Micros;

/// Messages in hand for longer than this without any finishing: stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// What the link and ingest report; read by `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    link_up: AtomicBool,
    /// Messages received from the broker and not yet handled.
    in_hand: AtomicU64,
    /// When a message last finished (or, with none in hand, the first
    /// arrived), in µs since the epoch.
    progress: AtomicI64,
}

/// Why the aggregator is not ready; each names what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the database does not answer: {0}")]
    Database(String),
    #[error("the link to the MQTT broker is down")]
    LinkDown,
    #[error("ingest is stalled: {in_hand} messages in hand, none finished for {secs} s")]
    IngestStalled { in_hand: u64, secs: i64 },
}

impl Health {
    /// The broker link connected (true) or lost its connection (false).
    pub fn link(&self, up: bool) {
        self.link_up.store(up, Ordering::SeqCst);
    }

    /// A message was taken from the broker, at `now`.
    pub fn received(&self, now: Micros) {
        if self.in_hand.fetch_add(1, Ordering::SeqCst) == 0 {
            self.progress.store(now, Ordering::SeqCst);
        }
    }

    /// A message was handled (stored, refused or skipped), at `now`.
    pub fn finished(&self, now: Micros) {
        self.progress.store(now, Ordering::SeqCst);
        let _ = self
            .in_hand
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// The messages in hand of a connection that is gone: the broker
    /// redelivers them, so they no longer count.
    pub fn forget_in_hand(&self, now: Micros) {
        self.in_hand.store(0, Ordering::SeqCst);
        self.progress.store(now, Ordering::SeqCst);
    }

    /// Whether the link and ingest are fine at `now` (the database is
    /// checked by the caller).
    pub fn check(&self, now: Micros) -> Result<(), NotReady> {
        if !self.link_up.load(Ordering::SeqCst) {
            return Err(NotReady::LinkDown);
        }
        let in_hand = self.in_hand.load(Ordering::SeqCst);
        let idle = now - self.progress.load(Ordering::SeqCst);
        if in_hand > 0 && idle > STALL_AFTER.as_micros() as i64 {
            return Err(NotReady::IngestStalled {
                in_hand,
                secs: idle / 1_000_000,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    #[test]
    fn ready_needs_the_link_and_ingest_that_moves() {
        let h = Health::default();
        assert_eq!(h.check(0), Err(NotReady::LinkDown));
        h.link(true);
        assert_eq!(h.check(100 * S), Ok(()), "nothing in hand is never stalled");
        h.received(100 * S);
        h.received(101 * S);
        assert_eq!(h.check(129 * S), Ok(()));
        assert_eq!(
            h.check(131 * S),
            Err(NotReady::IngestStalled {
                in_hand: 2,
                secs: 31
            })
        );
        h.finished(131 * S);
        assert_eq!(h.check(150 * S), Ok(()), "one finished: moving again");
        h.finished(152 * S);
        h.finished(153 * S);
        assert_eq!(h.check(1_000 * S), Ok(()), "never below zero");
        h.received(1_000 * S);
        h.forget_in_hand(1_001 * S);
        assert_eq!(h.check(2_000 * S), Ok(()));
        h.link(false);
        assert_eq!(h.check(2_000 * S), Err(NotReady::LinkDown));
    }
}
