//! An alert instance's life: normal → pending (`for`) → firing →
//! recovering (`keep_firing_for`) → normal, with a clear threshold apart
//! from the firing one (hysteresis). Pure: the evaluator stores what this
//! returns, and the notice it returns, in one transaction.

use dash_shared::Micros;

/// Where an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Normal,
    /// Over the threshold, for less than `for` so far.
    Pending,
    Firing,
    /// Cleared, for less than `keep_firing_for` so far: still firing for
    /// the people it paged.
    Recovering,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Normal => "normal",
            Phase::Pending => "pending",
            Phase::Firing => "firing",
            Phase::Recovering => "recovering",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Some(match s {
            "normal" => Phase::Normal,
            "pending" => Phase::Pending,
            "firing" => Phase::Firing,
            "recovering" => Phase::Recovering,
            _ => return None,
        })
    }
}

/// An instance as stored: its phase and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub phase: Phase,
    pub since: Micros,
}

/// What to tell the contact points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Trigger,
    Resolve,
}

impl Notice {
    pub fn as_str(self) -> &'static str {
        match self {
            Notice::Trigger => "trigger",
            Notice::Resolve => "resolve",
        }
    }
}

/// A rule's thresholds and times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Firing when the value is above this.
    pub above: f64,
    /// Cleared when the value is at or below this (at most `above`).
    pub clear_at: f64,
    pub for_us: Micros,
    pub keep_firing_for_us: Micros,
}

/// The next state of an instance (`None`: new) given its value `now`, and
/// the notice the change owes, if any.
pub fn step(
    prev: Option<Instance>,
    value: f64,
    t: &Thresholds,
    now: Micros,
) -> (Instance, Option<Notice>) {
    let over = value > t.above;
    let cleared = value <= t.clear_at;
    let prev = prev.unwrap_or(Instance {
        phase: Phase::Normal,
        since: now,
    });
    let at = |phase| Instance { phase, since: now };
    match prev.phase {
        Phase::Normal if over && t.for_us <= 0 => (at(Phase::Firing), Some(Notice::Trigger)),
        Phase::Normal if over => (at(Phase::Pending), None),
        Phase::Normal => (prev, None),
        Phase::Pending if !over => (at(Phase::Normal), None),
        Phase::Pending if now - prev.since >= t.for_us => {
            (at(Phase::Firing), Some(Notice::Trigger))
        }
        Phase::Pending => (prev, None),
        Phase::Firing if cleared && t.keep_firing_for_us <= 0 => {
            (at(Phase::Normal), Some(Notice::Resolve))
        }
        Phase::Firing if cleared => (at(Phase::Recovering), None),
        Phase::Firing => (prev, None),
        Phase::Recovering if !cleared => (at(Phase::Firing), None),
        Phase::Recovering if now - prev.since >= t.keep_firing_for_us => {
            (at(Phase::Normal), Some(Notice::Resolve))
        }
        Phase::Recovering => (prev, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    fn run(t: &Thresholds, values: &[(Micros, f64)]) -> Vec<(Phase, Option<Notice>)> {
        let mut state = None;
        values
            .iter()
            .map(|&(at, v)| {
                let (next, notice) = step(state, v, t, at);
                state = Some(next);
                (next.phase, notice)
            })
            .collect()
    }

    #[test]
    fn a_value_flapping_around_its_threshold_with_hysteresis_triggers_once() {
        let t = Thresholds {
            above: 0.10,
            clear_at: 0.05,
            for_us: 0,
            keep_firing_for_us: 0,
        };
        let values: Vec<(Micros, f64)> = [0.02, 0.11, 0.09, 0.12, 0.08, 0.11, 0.06, 0.04, 0.03]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as Micros * 30 * S, *v))
            .collect();
        let notices: Vec<Notice> = run(&t, &values)
            .into_iter()
            .filter_map(|(_, n)| n)
            .collect();
        assert_eq!(notices, [Notice::Trigger, Notice::Resolve]);
        // Without hysteresis the same values page three times.
        let plain = Thresholds {
            clear_at: 0.10,
            ..t
        };
        let n = run(&plain, &values)
            .into_iter()
            .filter(|(_, n)| *n == Some(Notice::Trigger))
            .count();
        assert_eq!(n, 3);
    }

    #[test]
    fn for_holds_a_trigger_and_keep_firing_for_holds_a_resolve() {
        let t = Thresholds {
            above: 10.0,
            clear_at: 10.0,
            for_us: 60 * S,
            keep_firing_for_us: 120 * S,
        };
        let got = run(
            &t,
            &[
                (0, 11.0),       // pending
                (30 * S, 12.0),  // still pending
                (45 * S, 9.0),   // back: never fired
                (60 * S, 11.0),  // pending again
                (120 * S, 11.0), // 60 s over: fires
                (150 * S, 5.0),  // recovering
                (200 * S, 11.0), // over again: firing, no new page
                (230 * S, 5.0),  // recovering
                (349 * S, 5.0),  // 119 s: still recovering
                (350 * S, 5.0),  // 120 s: resolved
            ],
        );
        let phases: Vec<Phase> = got.iter().map(|(p, _)| *p).collect();
        use Phase::*;
        assert_eq!(
            phases,
            [
                Pending, Pending, Normal, Pending, Firing, Recovering, Firing, Recovering,
                Recovering, Normal
            ]
        );
        let notices: Vec<(usize, Notice)> = got
            .iter()
            .enumerate()
            .filter_map(|(i, (_, n))| Some((i, (*n)?)))
            .collect();
        assert_eq!(notices, [(4, Notice::Trigger), (9, Notice::Resolve)]);
    }

    #[test]
    fn phases_read_back_as_written() {
        for p in [
            Phase::Normal,
            Phase::Pending,
            Phase::Firing,
            Phase::Recovering,
        ] {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(Phase::parse("FIRING"), None);
    }
}
