//! The time a rule looks at: a sliding window, or a calendar period of the
//! tenant's zone (this hour, today, this week from Monday, this month), and
//! the period before it for period-over-period rules; and the local times
//! of a schedule (doses at 08:00, 14:00 and 20:00) between two instants.
//! Local days are 23 or 25 hours across a DST change; a schedule's time
//! that a change skips is taken at the first instant after it, one that
//! happens twice at the first.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Tz;
use dash_shared::Micros;
use serde::{Deserialize, Serialize};

const SEC: Micros = 1_000_000;

/// A calendar period of the tenant's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
}

/// `[from, to)` in µs.
pub type Range = (Micros, Micros);

fn local(t: Micros, tz: Tz) -> DateTime<Tz> {
    DateTime::from_timestamp_micros(t)
        .unwrap_or_default()
        .with_timezone(&tz)
}

/// The first instant of local `date` at `time`, or the first after a gap.
fn at_local(date: NaiveDate, time: NaiveTime, tz: Tz) -> Micros {
    let mut naive = date.and_time(time);
    // A DST gap is at most a few hours; walk forward out of it.
    for _ in 0..(4 * 60) {
        if let Some(t) = tz.from_local_datetime(&naive).earliest() {
            return t.timestamp_micros();
        }
        naive += Duration::minutes(1);
    }
    date.and_time(time).and_utc().timestamp_micros()
}

impl Period {
    /// The start of the period holding `t`.
    pub fn start(self, t: Micros, tz: Tz) -> Micros {
        let l = local(t, tz);
        match self {
            // An hour is a UTC hour: zones off by 30 or 45 minutes aside,
            // it is the local hour too, and it never repeats across DST.
            Period::Hour => t.div_euclid(3_600 * SEC) * 3_600 * SEC,
            Period::Day => at_local(l.date_naive(), NaiveTime::MIN, tz),
            Period::Week => {
                let back = l.weekday().num_days_from_monday();
                at_local(
                    l.date_naive() - chrono::Days::new(u64::from(back)),
                    NaiveTime::MIN,
                    tz,
                )
            }
            Period::Month => at_local(
                l.date_naive().with_day(1).unwrap_or_default(),
                NaiveTime::MIN,
                tz,
            ),
        }
    }

    /// The start of the period before the one starting at `start`.
    pub fn previous(self, start: Micros, tz: Tz) -> Micros {
        match self {
            Period::Hour => start - 3_600 * SEC,
            // Noon of the day before lands in the previous period even
            // across a 23- or 25-hour day.
            Period::Day => self.start(start - 12 * 3_600 * SEC, tz),
            Period::Week => self.start(start - 84 * 3_600 * SEC, tz),
            Period::Month => self.start(start - 12 * 3_600 * SEC, tz),
        }
    }
}

/// Where a rule looks: the last `window` µs or the current `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Window(Micros),
    Period(Period),
}

impl Span {
    /// What the rule reads at `now`: the window up to now, or the period so
    /// far.
    pub fn current(self, now: Micros, tz: Tz) -> Range {
        match self {
            Span::Window(w) => (now - w, now),
            Span::Period(p) => (p.start(now, tz), now),
        }
    }

    /// For a period-over-period rule at `now`: `(current, previous)`.
    /// `to_date`: this period so far against the same length of the one
    /// before (sales until 14:00 today against yesterday until 14:00);
    /// otherwise the last whole period against the one before it.
    pub fn compared(self, now: Micros, tz: Tz, to_date: bool) -> (Range, Range) {
        match self {
            Span::Window(w) => ((now - w, now), (now - 2 * w, now - w)),
            Span::Period(p) => {
                let this = p.start(now, tz);
                let last = p.previous(this, tz);
                if to_date {
                    // The same local clock time of the period before: until
                    // 14:00 today against until 14:00 yesterday, whichever
                    // day is 23 or 25 hours long.
                    let elapsed = local(now, tz).naive_local() - local(this, tz).naive_local();
                    let end = local(last, tz)
                        .naive_local()
                        .checked_add_signed(elapsed)
                        .map_or(this, |then| at_local(then.date(), then.time(), tz))
                        .clamp(last, this);
                    ((this, now), (last, end))
                } else {
                    let before = p.previous(last, tz);
                    ((last, this), (before, last))
                }
            }
        }
    }
}

/// A local time of day, "HH:MM".
pub fn parse_time(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M").ok()
}

/// The instants of `times` (local times of day in `tz`) in `(after, to]`,
/// at most `limit` of them, oldest first.
pub fn slots(times: &[NaiveTime], tz: Tz, after: Micros, to: Micros, limit: usize) -> Vec<Micros> {
    let mut out = Vec::new();
    if after >= to || times.is_empty() {
        return out;
    }
    let mut date = local(after, tz).date_naive();
    let last = local(to, tz).date_naive();
    while date <= last && out.len() < limit {
        for t in times {
            let at = at_local(date, *t, tz);
            if at > after && at <= to && out.len() < limit {
                out.push(at);
            }
        }
        match date.succ_opt() {
            Some(next) => date = next,
            None => break,
        }
    }
    out.sort_unstable();
    // A time a DST gap moves may land on another of the schedule's.
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tz: Tz, y: i32, m: u32, d: u32, h: u32, min: u32) -> Micros {
        tz.with_ymd_and_hms(y, m, d, h, min, 0)
            .earliest()
            .unwrap()
            .timestamp_micros()
    }

    const BERLIN: Tz = chrono_tz::Europe::Berlin;

    #[test]
    fn periods_start_at_local_midnights_across_dst() {
        // 2026-03-29: Berlin skips 02:00-03:00, a 23-hour day.
        let t = at(BERLIN, 2026, 3, 29, 15, 0);
        let day = Period::Day.start(t, BERLIN);
        assert_eq!(day, at(BERLIN, 2026, 3, 29, 0, 0));
        assert_eq!(t - day, 14 * 3_600 * SEC);
        let yesterday = Period::Day.previous(day, BERLIN);
        assert_eq!(yesterday, at(BERLIN, 2026, 3, 28, 0, 0));
        let next = at(BERLIN, 2026, 3, 30, 0, 0);
        assert_eq!(next - day, 23 * 3_600 * SEC);
        // Monday 2026-03-23 starts that week; the month on the 1st.
        assert_eq!(Period::Week.start(t, BERLIN), at(BERLIN, 2026, 3, 23, 0, 0));
        assert_eq!(Period::Month.start(t, BERLIN), at(BERLIN, 2026, 3, 1, 0, 0));
        assert_eq!(
            Period::Month.previous(at(BERLIN, 2026, 3, 1, 0, 0), BERLIN),
            at(BERLIN, 2026, 2, 1, 0, 0)
        );
        assert_eq!(
            Period::Week.previous(at(BERLIN, 2026, 3, 23, 0, 0), BERLIN),
            at(BERLIN, 2026, 3, 16, 0, 0)
        );
    }

    #[test]
    fn compared_ranges_are_whole_or_to_date() {
        let now = at(BERLIN, 2026, 10, 25, 14, 0); // a 25-hour day
        let (cur, prev) = Span::Period(Period::Day).compared(now, BERLIN, true);
        assert_eq!(cur, (at(BERLIN, 2026, 10, 25, 0, 0), now));
        // Until 14:00 on both days: 15 hours of the 25-hour day against 14.
        assert_eq!(
            prev,
            (
                at(BERLIN, 2026, 10, 24, 0, 0),
                at(BERLIN, 2026, 10, 24, 14, 0)
            )
        );
        assert_eq!(cur.1 - cur.0, 15 * 3_600 * SEC);
        let (cur, prev) = Span::Period(Period::Month).compared(now, BERLIN, false);
        assert_eq!(
            cur,
            (at(BERLIN, 2026, 9, 1, 0, 0), at(BERLIN, 2026, 10, 1, 0, 0))
        );
        assert_eq!(
            prev,
            (at(BERLIN, 2026, 8, 1, 0, 0), at(BERLIN, 2026, 9, 1, 0, 0))
        );
        let w = 600 * SEC;
        assert_eq!(
            Span::Window(w).compared(now, BERLIN, false),
            ((now - w, now), (now - 2 * w, now - w))
        );
    }

    #[test]
    fn schedule_slots_follow_local_time_and_dst_gaps() {
        let times: Vec<_> = ["08:00", "02:30", "20:00"]
            .iter()
            .map(|s| parse_time(s).unwrap())
            .collect();
        let from = at(BERLIN, 2026, 3, 28, 12, 0);
        let to = at(BERLIN, 2026, 3, 29, 12, 0);
        let got = slots(&times, BERLIN, from, to, 10);
        assert_eq!(
            got,
            vec![
                at(BERLIN, 2026, 3, 28, 20, 0),
                // 02:30 does not exist that night: 03:00 is the first after.
                at(BERLIN, 2026, 3, 29, 3, 0),
                at(BERLIN, 2026, 3, 29, 8, 0),
            ]
        );
        assert_eq!(slots(&times, BERLIN, from, to, 2).len(), 2);
        // 02:30 moved to 03:00 beside a 03:00 of its own: one slot.
        let both: Vec<_> = ["02:30", "03:00"]
            .iter()
            .map(|s| parse_time(s).unwrap())
            .collect();
        assert_eq!(
            slots(&both, BERLIN, from, to, 10),
            vec![at(BERLIN, 2026, 3, 29, 3, 0)]
        );
        assert!(slots(&times, BERLIN, to, from, 10).is_empty());
        assert!(parse_time("25:00").is_none());
    }
}
