//! The one exponential back-off of skiff: how long to wait before the n-th
//! retry in a row. The work queue uses it per key; loops that retry one
//! thing (an informer's watch, a node registration, an nft transaction)
//! keep their failure streak in a [`Retry`].

use std::time::Duration;

use rand::Rng;

/// Exponential back-off: the n-th retry in a row waits `base * 2^n`, at
/// most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// client-go's work-queue defaults: 5ms doubling to 1000s.
    fn default() -> Self {
        Self { base: Duration::from_millis(5), max: Duration::from_secs(1000) }
    }
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The wait before retry number `failures` (0 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        // In floating point so that a long failure streak saturates at `max`
        // instead of overflowing.
        let secs = self.base.as_secs_f64() * 2f64.powi(failures.min(1024) as i32);
        Duration::from_secs_f64(secs.min(self.max.as_secs_f64()))
    }

    /// [`delay`](Self::delay) shortened by a random part of up to half, so
    /// that many clients cut off at once do not retry in step.
    pub fn jittered(&self, failures: u32) -> Duration {
        let full = self.delay(failures);
        let half = full / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

/// A failure streak of one retried operation: each failure lengthens the
/// next wait, a success ends the streak.
#[derive(Debug, Clone)]
pub struct Retry {
    backoff: Backoff,
    failures: u32,
}

impl Retry {
    pub const fn new(backoff: Backoff) -> Self {
        Self { backoff, failures: 0 }
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The operation worked: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The operation failed: how long to wait before trying again.
    pub fn failed(&mut self) -> Duration {
        let delay = self.backoff.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// The operation failed: sleeps its jittered back-off.
    pub async fn wait(&mut self) {
        let delay = self.backoff.jittered(self.failures);
        self.failures = self.failures.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_and_saturates() {
        let b = Backoff::default();
        assert_eq!(b.delay(0), Duration::from_millis(5));
        assert_eq!(b.delay(1), Duration::from_millis(10));
        assert_eq!(b.delay(10), Duration::from_millis(5 * 1024));
        assert_eq!(b.delay(30), Duration::from_secs(1000));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1000));
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for failures in 0..12 {
            let full = b.delay(failures);
            for _ in 0..20 {
                let d = b.jittered(failures);
                assert!(d >= full / 2 && d <= full, "{d:?} vs {full:?}");
            }
        }
    }

    #[test]
    fn a_streak_grows_until_reset() {
        let mut r = Retry::new(Backoff::new(Duration::from_millis(200), Duration::from_secs(1)));
        let waits: Vec<_> = (0..5).map(|_| r.failed()).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(waits, [ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        assert_eq!(r.failures(), 5);
        r.reset();
        assert_eq!(r.failed(), ms(200));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_jittered_delay() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut r = Retry::new(b);
        for failures in 0..10 {
            let start = tokio::time::Instant::now();
            r.wait().await;
            let waited = start.elapsed();
            let full = b.delay(failures);
            assert!(waited >= full / 2 && waited <= full, "{waited:?} vs {full:?}");
        }
    }
}
