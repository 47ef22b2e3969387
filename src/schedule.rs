//! When a feed loop acts: its fixed-rate poll schedule, its phase, jitter and retry backoff.
//!
//! Pure functions of the current time (passed in) and a little noise: no clock, no I/O.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const RETRY_BASE: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// A send window shorter than this before the next poll is not worth starting.
const MIN_SEND_WINDOW: Duration = Duration::from_millis(100);
/// Polls start up to this share of the interval late (at most `MAX_POLL_JITTER`), so many
/// gateways started together don't hit a feed server in the same millisecond.
const POLL_JITTER_SHARE: u32 = 50;
const MAX_POLL_JITTER: Duration = Duration::from_millis(500);

/// What the loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Poll,
    Send,
    Sleep(Duration),
    Stop,
}

/// `send_at`: when the queue may be sent next (None when it is empty).
pub fn next_step(
    now: Instant,
    next_poll: Instant,
    send_at: Option<Instant>,
    stop_requested: bool,
) -> Step {
    if stop_requested {
        return Step::Stop;
    }
    if now >= next_poll {
        return Step::Poll;
    }
    match send_at {
        Some(at) if now >= at && next_poll - now >= MIN_SEND_WINDOW => Step::Send,
        Some(at) if at < next_poll && now < at => Step::Sleep(at - now),
        _ => Step::Sleep(next_poll - now),
    }
}

/// Fixed-rate schedule: the slot after `scheduled`, even if it just passed (a send attempt
/// ends right at the slot, so "now" is often a hair late). Only when polls overran by half
/// an interval or more are the missed slots skipped — never fired in a burst.
pub fn next_poll_after(scheduled: Instant, interval: Duration, now: Instant) -> Instant {
    let next = scheduled + interval;
    let late = now.saturating_duration_since(next);
    if late < interval / 2 {
        return next;
    }
    let missed = late.as_nanos() / interval.as_nanos().max(1) + 1;
    let skip = u32::try_from(missed).unwrap_or(u32::MAX);
    next + interval.saturating_mul(skip)
}

/// A little random delay for one poll: up to 2 % of the interval, at most half a second.
pub fn poll_jitter(interval: Duration, noise: u64) -> Duration {
    let max = (interval / POLL_JITTER_SHARE).min(MAX_POLL_JITTER);
    let max_micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(noise % max_micros.saturating_add(1))
}

/// Exponential backoff between failed send attempts, with ±25 % jitter from `noise`.
pub fn retry_delay(failures: u32, noise: u64) -> Duration {
    let exp = RETRY_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(RETRY_MAX);
    let jitter = (noise % 501) as f64 / 1000.0 + 0.75;
    capped.mul_f64(jitter)
}

/// A feed's stable offset within its interval, so many feeds in one process spread their polls
/// instead of all polling in the same instant. Derived from `source_id` (its CRC32C, already
/// linked for the spool), so it stays the same across restarts and reloads. A process with a
/// single feed polls at once.
pub fn phase(source_id: &str, interval: Duration, n_feeds: usize) -> Duration {
    if n_feeds <= 1 {
        return Duration::ZERO;
    }
    // The 32-bit hash scaled onto the interval, so long intervals are spread over whole.
    let micros = interval.as_micros();
    let scaled = (micros * u128::from(crc32c::crc32c(source_id.as_bytes()))) >> 32;
    Duration::from_micros(u64::try_from(scaled).unwrap_or(u64::MAX))
}

/// Cheap per-call noise for jitter; no RNG crate needed.
pub fn jitter_noise() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos) ^ u64::from(std::process::id()).rotate_left(17)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(next_step(t0, t0, None, false), Step::Poll);
        assert_eq!(next_step(t0, t0 + s, None, false), Step::Sleep(s));
        assert_eq!(next_step(t0, t0 + s, None, true), Step::Stop);
        assert_eq!(next_step(t0 + s, t0, None, true), Step::Stop);
        // Queue waiting and due: send; due later: sleep until then; a poll is due first.
        assert_eq!(next_step(t0, t0 + s, Some(t0), false), Step::Send);
        let half = Duration::from_millis(500);
        assert_eq!(
            next_step(t0, t0 + s, Some(t0 + half), false),
            Step::Sleep(half)
        );
        assert_eq!(
            next_step(t0, t0 + s, Some(t0 + 2 * s), false),
            Step::Sleep(s)
        );
        assert_eq!(next_step(t0 + s, t0 + s, Some(t0), false), Step::Poll);
        // Too little time before the next poll to start a send: wait for the poll.
        let tiny = Duration::from_millis(10);
        assert_eq!(next_step(t0, t0 + tiny, Some(t0), false), Step::Sleep(tiny));
    }

    #[test]
    fn fixed_rate_schedule_skips_missed_slots() {
        let t0 = Instant::now();
        let i = Duration::from_secs(10);
        assert_eq!(next_poll_after(t0, i, t0 + Duration::from_secs(1)), t0 + i);
        // At the slot or a little past it: that slot still runs (now).
        assert_eq!(next_poll_after(t0, i, t0 + i), t0 + i);
        assert_eq!(next_poll_after(t0, i, t0 + Duration::from_secs(14)), t0 + i);
        // Half an interval late or more: skip to the next slot.
        assert_eq!(
            next_poll_after(t0, i, t0 + Duration::from_secs(16)),
            t0 + 2 * i
        );
        // A 35 s poll on a 10 s schedule: next is the 40 s slot, not three catch-up polls.
        assert_eq!(
            next_poll_after(t0, i, t0 + Duration::from_secs(35)),
            t0 + 4 * i
        );
    }

    #[test]
    fn poll_jitter_is_small_and_bounded() {
        let check = |interval_ms: u64, noise: u64, expected_us: u64| {
            assert_eq!(
                poll_jitter(Duration::from_millis(interval_ms), noise),
                Duration::from_micros(expected_us)
            );
        };
        // 1 s interval: up to 20 ms.
        check(1000, 0, 0);
        check(1000, 20_000, 20_000);
        check(1000, 20_001, 0);
        // 60 s interval: capped at 500 ms.
        check(60_000, 500_000, 500_000);
        check(60_000, 1_000_000, 499_999);
    }

    #[test]
    fn retry_delays_grow_and_cap_with_jitter() {
        let check = |failures, noise, expected_ms| {
            assert_eq!(
                retry_delay(failures, noise),
                Duration::from_millis(expected_ms),
                "failures={failures} noise={noise}"
            );
        };
        // noise 250 → factor 1.0 exactly.
        check(1, 250, 250);
        check(2, 250, 500);
        check(3, 250, 1000);
        check(10, 250, 5000);
        check(40, 250, 5000);
        // Jitter spans 0.75 .. 1.25.
        check(2, 0, 375);
        check(10, 500, 6250);
    }

    #[test]
    fn phases_are_stable_spread_and_within_the_interval() {
        let i = Duration::from_secs(10);
        assert_eq!(phase("only", i, 1), Duration::ZERO);
        assert_eq!(phase("a", i, 2), phase("a", i, 500));
        let phases: Vec<Duration> = (0..500)
            .map(|n| phase(&format!("feed{n}"), i, 500))
            .collect();
        assert!(phases.iter().all(|p| *p < i));
        // Spread: every tenth of the interval holds some feeds, none holds most of them.
        for tenth in 0..10 {
            let lo = i / 10 * tenth;
            let n = phases
                .iter()
                .filter(|p| **p >= lo && **p < lo + i / 10)
                .count();
            assert!((20..=80).contains(&n), "tenth {tenth}: {n} of 500");
        }
    }
}
