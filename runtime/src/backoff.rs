//! How long to wait before reconnecting, after `failures` attempts in a
//! row: exponential from `base`, capped at `max`, with jitter (the wait is
//! between half and all of the step), so a fleet that lost its broker at
//! the same moment does not come back at the same moment.

use std::time::Duration;

/// The wait before the next attempt after `failures` (≥ 1) in a row.
pub fn delay(failures: u32, base: Duration, max: Duration) -> Duration {
    let step = base
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(max);
    let half = step / 2;
    let jitter = (half.as_micros() as u64)
        .checked_add(1)
        .map_or(0, |n| rand::random::<u64>() % n);
    half + Duration::from_micros(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_stay_within_half_and_all_of_a_step() {
        let (base, max) = (Duration::from_millis(250), Duration::from_secs(30));
        for failures in 1..40 {
            let step = (base * 2u32.pow((failures - 1).min(16))).min(max);
            for _ in 0..20 {
                let d = delay(failures, base, max);
                assert!(
                    d >= step / 2 && d <= step,
                    "{failures}: {d:?} for a step of {step:?}"
                );
            }
        }
        assert!(delay(100, base, max) <= max);
    }
}
