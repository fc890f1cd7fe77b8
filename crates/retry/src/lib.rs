//! The one way orch waits before trying something again.
//!
//! Every retry loop of orch (engine calls, git's lock files, the
//! watchdog's reaping, webhook deliveries) asks a [`Backoff`] how long to
//! wait next: the delay doubles from `first` up to `max`, with a little
//! jitter if asked (so several processes that failed together do not try
//! again together), and there is no next time once waiting would pass the
//! deadline. Sync callers sleep with [`Backoff::sleep`], async ones with
//! [`Backoff::wait`].

#![warn(missing_docs)]

use std::time::{Duration, Instant};

/// Delays between attempts: doubling, capped, optionally jittered, within
/// an optional deadline.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    end: Option<Instant>,
    jitter: bool,
}

impl Backoff {
    /// Starts at `first`, doubles up to `max`; no deadline.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            next: first,
            max,
            end: None,
            jitter: false,
        }
    }

    /// No next attempt once waiting would pass `deadline` from now.
    #[must_use]
    pub fn within(mut self, deadline: Duration) -> Backoff {
        self.end = Instant::now().checked_add(deadline);
        self
    }

    /// No next attempt once waiting would pass `end`.
    #[must_use]
    pub fn until(mut self, end: Instant) -> Backoff {
        self.end = Some(end);
        self
    }

    /// Adds up to half of each delay, from the clock.
    #[must_use]
    pub fn jittered(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// Starts over from `first` (after a success, say).
    pub fn reset(&mut self, first: Duration) {
        self.next = first;
    }

    /// The next delay, or `None` if waiting it would pass the deadline.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let mut delay = self.next;
        if self.jitter {
            delay += jitter(delay);
        }
        if self.end.is_some_and(|end| Instant::now() + delay >= end) {
            return None;
        }
        self.next = (self.next * 2).min(self.max);
        Some(delay)
    }

    /// Waits the next delay; false (at once) if there is no next attempt.
    pub async fn wait(&mut self) -> bool {
        match self.next_delay() {
            Some(delay) => {
                tokio::time::sleep(delay).await;
                true
            }
            None => false,
        }
    }

    /// Sleeps the next delay on this thread; false (at once) if there is
    /// no next attempt.
    pub fn sleep(&mut self) -> bool {
        match self.next_delay() {
            Some(delay) => {
                std::thread::sleep(delay);
                true
            }
            None => false,
        }
    }
}

/// Up to half of `base`, from the clock: enough to spread retries apart.
fn jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base / 2 * (nanos % 1000) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_its_cap_and_stops_at_its_deadline() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(40));
        let delays: Vec<_> = (0..4).map(|_| b.next_delay().unwrap()).collect();
        assert_eq!(delays, [10, 20, 40, 40].map(Duration::from_millis).to_vec());
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(5))
            .within(Duration::from_secs(1));
        assert_eq!(b.next_delay(), None, "past the deadline");
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).jittered();
        let d = b.next_delay().unwrap();
        assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(150));
        b.reset(Duration::from_millis(100));
        assert!(b.next_delay().unwrap() < Duration::from_millis(151));
    }
}
