//! The retry policy: how failures add up and when to try again. Pure bookkeeping on a clock
//! (tokio's, so that tests run it on paused time); the supervisor acts on what it says.
//!
//! - A failed reconcile backs off exponentially with jitter: capped at 30 s while the engine
//!   cannot be reached, 60 s otherwise.
//! - A container that dies by itself twice in a row is in a crash loop: each further start
//!   waits longer (by the number of deaths, capped at 60 s), whatever else pokes.
//! - One timer: scheduling keeps the later of two deadlines, so nothing defeats a backoff, and
//!   while a retry is scheduled the health tick stands aside.
//! - How long the builder has been unhealthy decides when it is taken out of the machines file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Deaths in a row from which the container is in a crash loop.
const CRASH_LOOP: u32 = 2;

#[derive(Debug, Default)]
pub struct Retry {
    /// Failed reconciles in a row.
    failures: u32,
    /// Container deaths builderd did not cause, in a row.
    deaths: u32,
    next: Option<Instant>,
    unhealthy_since: Option<Instant>,
}

impl Retry {
    /// When the next reconcile is due, if one is scheduled.
    pub fn due(&self) -> Option<Instant> {
        self.next
    }

    pub fn scheduled(&self) -> bool {
        self.next.is_some()
    }

    /// Schedules a retry after `delay`, keeping a later one already scheduled.
    pub fn schedule(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.next = Some(self.next.map_or(at, |t| t.max(at)));
    }

    /// Forgets the scheduled retry (it ran, or nothing is wanted any more).
    pub fn cancel(&mut self) {
        self.next = None;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn deaths(&self) -> u32 {
        self.deaths
    }

    pub fn in_crash_loop(&self) -> bool {
        self.deaths >= CRASH_LOOP
    }

    /// A reconcile succeeded. Returns how many had failed before it. A crash loop keeps its
    /// scheduled start: the container may die again.
    pub fn reconciled(&mut self) -> u32 {
        let before = std::mem::take(&mut self.failures);
        if !self.in_crash_loop() {
            self.next = None;
        }
        before
    }

    /// A reconcile failed; returns the delay of the retry it scheduled.
    pub fn reconcile_failed(&mut self, engine_unreachable: bool) -> Duration {
        self.failures += 1;
        let cap = if engine_unreachable { 30 } else { 60 };
        let delay = backoff(self.failures, Duration::from_secs(cap));
        self.schedule(delay);
        delay
    }

    /// The container died without being asked to. In a crash loop, returns the delay before
    /// its next start (scheduled here); otherwise `None`: start it again now.
    pub fn died(&mut self) -> Option<Duration> {
        self.deaths += 1;
        if !self.in_crash_loop() {
            return None;
        }
        let delay = backoff(self.deaths - 1, Duration::from_secs(60));
        self.schedule(delay);
        Some(delay)
    }

    /// An explicit `up`: the user asks for a fresh start.
    pub fn forget_deaths(&mut self) {
        self.deaths = 0;
    }

    /// A health check passed: the container is not looping. Returns how long it had been
    /// unhealthy, if it had.
    pub fn healthy(&mut self) -> Option<Duration> {
        self.deaths = 0;
        self.unhealthy_since.take().map(|t| t.elapsed())
    }

    /// A health check failed; returns how long the builder has been unhealthy.
    pub fn unhealthy(&mut self) -> Duration {
        self.unhealthy_since
            .get_or_insert_with(Instant::now)
            .elapsed()
    }

    /// The builder was registered afresh: it is not unhealthy any more.
    pub fn registered(&mut self) {
        self.unhealthy_since = None;
    }
}

/// Exponential backoff with jitter: 0.5 s · 2^(n-1), capped, plus up to 10 %.
pub fn backoff(n: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let base = base.min(cap);
    // Jitter from the wall clock's low bits, so that several instances do not align.
    let jitter = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 1000)
        .unwrap_or(0) as u64;
    base + base.mul_f64(jitter as f64 / 10_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn about(d: Duration, base_ms: u64) -> bool {
        let base = Duration::from_millis(base_ms);
        d >= base && d <= base + base / 10
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cap = Duration::from_secs(30);
        assert!(about(backoff(1, cap), 500));
        assert!(about(backoff(3, cap), 2000));
        assert!(about(backoff(20, cap), 30_000));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_reconciles_back_off_and_a_success_clears_the_retry() {
        let mut r = Retry::default();
        let d1 = r.reconcile_failed(false);
        let d2 = r.reconcile_failed(false);
        assert!(about(d1, 500) && about(d2, 1000), "{d1:?} {d2:?}");
        // One timer, the later deadline.
        assert!(r.due().unwrap() >= Instant::now() + d2 - Duration::from_millis(1));
        for _ in 0..10 {
            r.reconcile_failed(true);
        }
        let d = r.reconcile_failed(true);
        assert!(about(d, 30_000), "the engine's cap is 30 s: {d:?}");
        // Due once the cap and its jitter (at most 10 %) have passed, not before.
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(
            r.due().unwrap() > Instant::now(),
            "not due before the delay"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(r.due().unwrap() <= Instant::now(), "due after the delay");
        assert_eq!(r.reconciled(), 13);
        assert_eq!(r.failures(), 0);
        assert!(!r.scheduled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_death_in_a_row_is_a_crash_loop_that_waits_longer_each_time() {
        let mut r = Retry::default();
        assert_eq!(r.died(), None, "the first death: start again now");
        let d2 = r.died().expect("the second: back off");
        let d3 = r.died().unwrap();
        assert!(about(d2, 500) && about(d3, 1000), "{d2:?} {d3:?}");
        assert!(r.in_crash_loop());
        // A successful start does not cancel the loop's backoff.
        r.reconciled();
        assert!(r.scheduled());
        // A shorter delay scheduled later does not pull the deadline in.
        let due = r.due().unwrap();
        r.schedule(Duration::from_millis(1));
        assert_eq!(r.due(), Some(due));
        // Healthy again: the loop is over.
        assert_eq!(r.healthy(), None);
        assert!(!r.in_crash_loop());
        assert_eq!(r.died(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn unhealthy_time_counts_from_the_first_failed_check() {
        let mut r = Retry::default();
        assert_eq!(r.unhealthy(), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(90)).await;
        r.unhealthy();
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(r.unhealthy(), Duration::from_secs(130));
        assert_eq!(r.healthy(), Some(Duration::from_secs(130)));
        assert_eq!(r.unhealthy(), Duration::ZERO, "a new spell starts afresh");
        r.registered();
        assert_eq!(r.healthy(), None);
    }
}
