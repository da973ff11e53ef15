//! Admission control for new streams (`[server] max_new_streams_per_second`): a token bucket that
//! turns a reconnect storm into a ramp. A stream past the rate is told to come back later, after a
//! delay drawn at random over how long the clients refused so far need to get in at that rate.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The longest a refused client is told to wait.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The bucket: `rate` tokens a second, holding at most one second's worth.
pub struct Admission {
    state: Mutex<State>,
}

struct State {
    /// New streams a second; `None` admits every stream.
    rate: Option<u32>,
    tokens: f64,
    refilled: Instant,
    /// Streams refused lately (decays at `rate` a second): how many are waiting to come back.
    waiting: f64,
}

impl Admission {
    pub fn new(rate: Option<u32>) -> Self {
        Self {
            state: Mutex::new(State {
                rate,
                tokens: rate.map_or(0.0, f64::from),
                refilled: Instant::now(),
                waiting: 0.0,
            }),
        }
    }

    /// Sets a new rate (a configuration reload); the bucket starts full.
    pub fn set_rate(&self, rate: Option<u32>) {
        let mut state = sluice_bridge::lock(&self.state);
        if state.rate != rate {
            state.rate = rate;
            state.tokens = rate.map_or(0.0, f64::from);
            state.waiting = 0.0;
        }
    }

    /// Admits a new stream now, or says how long its client should wait before trying again: a
    /// random delay from one second to the time the clients already waiting need at this rate.
    pub fn admit(&self) -> Result<(), Duration> {
        let mut state = sluice_bridge::lock(&self.state);
        let Some(rate) = state.rate.map(f64::from) else {
            return Ok(());
        };
        let now = Instant::now();
        let elapsed = now.duration_since(state.refilled).as_secs_f64();
        state.refilled = now;
        state.tokens = (state.tokens + elapsed * rate).min(rate);
        state.waiting = (state.waiting - elapsed * rate).max(0.0);
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            return Ok(());
        }
        state.waiting += 1.0;
        let spread = (state.waiting / rate).clamp(1.0, MAX_WAIT.as_secs_f64());
        let unit = (sluice_bridge::random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        Err(Duration::from_secs_f64(1.0 + unit * (spread - 1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_past_the_rate_is_spread_over_what_the_rate_takes() {
        let admission = Admission::new(Some(100));
        // A full bucket lets one second's worth in at once.
        assert!((0..100).all(|_| admission.admit().is_ok()));
        // A storm of 1,000 more: each refused client waits between 1 s and about 10 s (1,000 at 100
        // a second), so they come back as a ramp, not at once.
        let waits: Vec<Duration> = (0..1000).filter_map(|_| admission.admit().err()).collect();
        assert_eq!(waits.len(), 1000);
        assert!(waits.iter().all(|w| *w >= Duration::from_secs(1)));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(11)));
        // The k-th refused client waits uniformly from 1 s to k/100 s: about 176 of them past 5 s.
        let late = waits
            .iter()
            .filter(|w| **w > Duration::from_secs(5))
            .count();
        assert!(
            late > 120,
            "the last comers are spread wide: {late} of 1000 wait past 5 s"
        );
        // Tokens come back at the rate.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!((0..20).filter(|_| admission.admit().is_ok()).count(), 10);
    }

    #[test]
    fn no_rate_admits_everything_and_a_reload_sets_one() {
        let admission = Admission::new(None);
        assert!((0..10_000).all(|_| admission.admit().is_ok()));
        admission.set_rate(Some(1));
        assert!(admission.admit().is_ok());
        assert!(admission.admit().is_err());
        admission.set_rate(None);
        assert!(admission.admit().is_ok());
    }
}
