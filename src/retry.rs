//! The retry policies: every loop that tries an operation again after it failed waits and gives
//! up as one of these says, so their delays, jitter and number of tries are read and changed
//! here, in one place. They are [`backon`] builders; a loop runs through them with
//! [`Retryable::retry`] (re-exported), which also takes the condition for trying again
//! (`.when(…)`), or, when it must race each pause against something else, steps their delays
//! itself (`.build()` is an iterator of pauses; `None` means give up).
//!
//! | policy | loop | tries | pauses between tries | jitter |
//! |---|---|---|---|---|
//! | [`race`] | [`crate::migrate::Migrator::migrate`]: a job that collided with another write runs again at once | 1 + [`RACE_RERUNS`] | 25 ms, then ×1.5 (25, 37.5, 56, 84 ms) | up to +100 % of each pause |
//! | [`record`] | the worker records a dead letter's failure in the ledger | 1 + 2 | 200 ms, 1 s | none |
//! | [`reconnect`] | the worker opens a new broker session after losing one | unbounded | 250 ms, doubling up to 10 s; from 250 ms again after a session that consumed | none |
//!
//! Jitter decorrelates jobs that collided with each other, so they do not meet again on their
//! rerun; the other two wait on a shared service, where a fixed schedule is what an operator
//! reads in the logs.
//!
//! Not here, as they are not retries of a failed operation: the delayed-retry queues
//! ([`crate::broker::Topology::retry_delays_ms`]: the broker holds the job, across workers), the
//! forks recount (`Migrator::recount`: re-reads and recomputes at once, no pause), and the
//! polling loops (the worker's batch, idle and queue-depth timers, `broker`'s wait for returned
//! messages, `planner status --watch`).

use backon::ExponentialBuilder;
pub use backon::{BackoffBuilder, Retryable};
use std::time::Duration;

/// How many times a job that collided with another write runs again before its error goes to
/// the worker (and through the delayed-retry queues).
pub const RACE_RERUNS: usize = 4;

/// A job that lost a race for one of its V3 documents, or whose write the server refused as a
/// write conflict: up to [`RACE_RERUNS`] reruns after short growing pauses with jitter (each
/// pause between its base and twice that). Re-deriving is idempotent, and going through a
/// delayed-retry queue for an optimistic-lock miss would make the job wait seconds for nothing.
pub fn race() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(25))
        .with_factor(1.5)
        .without_max_delay()
        .with_max_times(RACE_RERUNS)
        .with_jitter()
}

/// Recording a dead letter's failure in the ledger: the dead letter is the record of last
/// resort, so a V3 hiccup gets two more tries, 200 ms then 1 s later, before the job is left
/// without a recorded outcome.
pub fn record() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_factor(5.0)
        .without_max_delay()
        .with_max_times(2)
}

/// A new broker session after the last one was lost (or could not be opened): 250 ms, doubling
/// up to 10 s, for as long as it takes (the pauses never run out). The worker builds it again
/// after a session that consumed, so a broker restart is met with a short pause first.
pub fn reconnect() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(250))
        .with_factor(2.0)
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ms(pauses: impl Iterator<Item = Duration>) -> Vec<u128> {
        pauses.map(|d| d.as_millis()).collect()
    }

    #[test]
    fn race_reruns_four_times_with_jittered_growing_pauses() {
        let bases = [25.0, 37.5, 56.25, 84.375];
        for _ in 0..200 {
            let pauses: Vec<Duration> = race().build().collect();
            assert_eq!(pauses.len(), RACE_RERUNS);
            for (p, base) in pauses.iter().zip(bases) {
                let p = p.as_secs_f64() * 1e3;
                assert!(p >= base - 1e-3 && p < 2.0 * base + 1e-3, "{p} for {base}");
            }
        }
        // The jitter differs between jobs.
        let a: Vec<_> = race().build().collect();
        assert!((0..20).any(|_| race().build().collect::<Vec<_>>() != a));
    }

    #[test]
    fn record_tries_twice_more_after_200_ms_then_1_s() {
        assert_eq!(ms(record().build()), [200, 1_000]);
    }

    #[test]
    fn reconnect_doubles_up_to_10_s_and_never_gives_up() {
        let pauses = ms(reconnect().build().take(10_000));
        assert_eq!(pauses.len(), 10_000);
        assert_eq!(
            pauses[..9],
            [250, 500, 1_000, 2_000, 4_000, 8_000, 10_000, 10_000, 10_000]
        );
        assert!(pauses[9..].iter().all(|&p| p == 10_000));
    }

    /// How `Retryable` runs a policy: one try, then one more per pause (the pauses themselves
    /// are checked above; `race` keeps this test short).
    #[tokio::test]
    async fn a_retry_tries_as_many_times_as_its_policy_allows_and_only_when_asked() {
        let count = AtomicUsize::new(0);
        let tries = &count;
        let failing = || async move {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("down")
        };
        assert_eq!(failing.retry(race()).await, Err("down"));
        assert_eq!(tries.swap(0, Ordering::SeqCst), 1 + RACE_RERUNS);
        // An error the condition refuses is returned at once.
        assert_eq!(failing.retry(race()).when(|_| false).await, Err("down"));
        assert_eq!(tries.swap(0, Ordering::SeqCst), 1);
        // A success ends the retries.
        let second = || async move {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 => Err("once"),
                n => Ok(n),
            }
        };
        assert_eq!(second.retry(race()).await, Ok(1));
    }
}
