//! The agent's clock: the local clock, corrected by what the aggregator's
//! acks say the time is.
//!
//! A gateway without a real-time clock boots with a stale time (1970, or
//! the time it last shut down) and may have no NTP on a factory network.
//! Every ack carries the aggregator's clock, and the aggregator answers each
//! status message with a time-only ack, so the agent learns the time as
//! soon as its uplink connects, before it sends a batch.
//!
//! - **Trusted** means an ack was seen since the start, or the local clock
//!   was plausible at start: not before [`PLAUSIBLE_FROM`] (this release) nor
//!   before the last server time the buffer remembers.
//! - **Correction**: once an ack shows the local clock off by more than
//!   [`MAX_SKEW`], the readings the agent stamps itself (MQTT payloads
//!   without a time, Modbus polls, HTTP records without a time field) are
//!   stamped with local time plus that offset. Within [`MAX_SKEW`] the local
//!   clock is left alone: NTP does better than an MQTT round trip.
//! - **Flagging**: stamps taken while the clock is not trusted are counted
//!   and reported in the status (`clock.unsynced_stamps`). They are not
//!   corrected afterwards: the agent cannot know how far its clock was off
//!   before it learned the offset (it may have rebooted in between). Those
//!   from before 2000 are refused by the protocol and counted as invalid;
//!   the aggregator quarantines those more than a few minutes in the future.
//!
//! Timestamps that devices send themselves are never changed.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use dash_shared::{ClockStatus, Micros, now_micros};

/// 2026-11-01T00:00:00Z: a local clock before this release is stale.
pub const PLAUSIBLE_FROM: Micros = 1_793_491_200_000_000;

/// An offset within ±2 s is left to NTP.
pub const MAX_SKEW: Micros = 2_000_000;

/// The agent's clock. One per agent process, shared by its inputs (which
/// stamp with [`Clock::now`]) and its uplink (which feeds it acks); it
/// outlives a pipeline restarted in-process, so a reopened buffer keeps
/// what the clock learned. Nothing about it is process-wide: two agents in
/// one test process each have their own.
#[derive(Debug)]
pub struct Clock {
    /// The correction added to local time (0 within [`MAX_SKEW`]).
    applied: AtomicI64,
    /// The best estimate of the offset, reported even when not applied.
    measured: AtomicI64,
    trusted: AtomicBool,
    unsynced: AtomicU64,
    /// Whether [`Clock::init`] has decided.
    decided: AtomicBool,
    /// The offsets measured from the last acks: an ack's delay in transit
    /// only makes its offset lower, so the highest of them is the best
    /// estimate.
    recent: std::sync::Mutex<[Micros; 16]>,
    next: AtomicU64,
}

impl Default for Clock {
    /// Trusted and uncorrected until [`Clock::init`] or an ack says otherwise.
    fn default() -> Self {
        Clock {
            applied: AtomicI64::new(0),
            measured: AtomicI64::new(0),
            trusted: AtomicBool::new(true),
            unsynced: AtomicU64::new(0),
            decided: AtomicBool::new(false),
            recent: std::sync::Mutex::new([Micros::MIN; 16]),
            next: AtomicU64::new(0),
        }
    }
}

impl Clock {
    /// Decides at start whether the local clock can be trusted; `floor` is
    /// the last server time the buffer remembers (0 when none). Only the
    /// first call decides: a pipeline restarted in-process keeps what it
    /// learned.
    pub fn init(&self, floor: Micros) {
        if self.decided.swap(true, Ordering::SeqCst) {
            return;
        }
        let local = now_micros();
        let plausible = local >= PLAUSIBLE_FROM && local >= floor.saturating_sub(60_000_000);
        self.trusted.store(plausible, Ordering::SeqCst);
        if !plausible {
            tracing::warn!(
                local = %rfc3339(local),
                last_known = %rfc3339(floor),
                "the local clock is behind the last known time; readings are flagged until the aggregator's time arrives"
            );
        }
    }

    /// The time to stamp a reading with.
    pub fn now(&self) -> Micros {
        if !self.trusted.load(Ordering::Relaxed) {
            self.unsynced.fetch_add(1, Ordering::Relaxed);
        }
        now_micros().saturating_add(self.applied.load(Ordering::Relaxed))
    }

    /// Learns the offset from an ack's `server_time`.
    pub fn observe(&self, server_time: Micros) {
        if server_time <= 0 {
            return;
        }
        let sample = server_time.saturating_sub(now_micros());
        let measured = {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let slot = self.next.fetch_add(1, Ordering::Relaxed) as usize % recent.len();
            recent[slot] = sample;
            recent.iter().copied().max().unwrap_or(sample)
        };
        self.measured.store(measured, Ordering::Relaxed);
        let applied = if measured.abs() > MAX_SKEW {
            measured
        } else {
            0
        };
        let before = self.applied.swap(applied, Ordering::Relaxed);
        if (applied - before).abs() > MAX_SKEW {
            tracing::warn!(
                offset_ms = applied / 1_000,
                "the local clock is off; readings the agent stamps are corrected by the aggregator's time"
            );
        }
        if !self.trusted.swap(true, Ordering::SeqCst) {
            tracing::info!(
                offset_ms = measured / 1_000,
                "clock trusted: the aggregator's time arrived"
            );
        }
    }

    /// What the status reports.
    pub fn status(&self) -> ClockStatus {
        ClockStatus {
            trusted: self.trusted.load(Ordering::SeqCst),
            offset: self.measured.load(Ordering::Relaxed),
            unsynced_stamps: self.unsynced.load(Ordering::Relaxed),
        }
    }
}

fn rfc3339(t: Micros) -> String {
    chrono::DateTime::from_timestamp_micros(t).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_clock_is_flagged_then_corrected_by_the_server_time() {
        let clock = Clock::default();
        // A floor in the future: this gateway booted with a stale clock.
        clock.init(now_micros() + 3_600_000_000);
        assert!(!clock.status().trusted);
        clock.now();
        clock.now();
        assert_eq!(clock.status().unsynced_stamps, 2);
        // The aggregator says it is an hour later than we think.
        clock.observe(now_micros() + 3_600_000_000);
        let s = clock.status();
        assert!(s.trusted);
        assert!((s.offset - 3_600_000_000).abs() < 1_000_000, "{}", s.offset);
        let stamped = clock.now();
        assert!((stamped - now_micros() - 3_600_000_000).abs() < 1_000_000);
        assert_eq!(
            clock.status().unsynced_stamps,
            2,
            "trusted stamps are not flagged"
        );
        // Only the first init decides: a reopened buffer does not undo it.
        clock.init(now_micros() + 7_200_000_000);
        assert!(clock.status().trusted);
    }

    #[test]
    fn a_late_ack_does_not_pull_the_estimate_down_and_a_small_offset_is_left_to_ntp() {
        let clock = Clock::default();
        clock.observe(now_micros() + 500_000);
        clock.observe(now_micros() - 9_000_000);
        let offset = clock.status().offset;
        assert!((offset - 500_000).abs() < 100_000, "{offset}");
        assert!((clock.now() - now_micros()).abs() < 100_000);
    }

    #[test]
    fn two_clocks_in_one_process_are_independent() {
        let (a, b) = (Clock::default(), Clock::default());
        a.observe(now_micros() + 3_600_000_000);
        assert!((a.now() - now_micros() - 3_600_000_000).abs() < 1_000_000);
        assert!((b.now() - now_micros()).abs() < 100_000);
        assert_eq!(b.status().offset, 0);
    }
}
