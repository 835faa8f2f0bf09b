//! Injected wall-clock time. Minutes are *calendar* minutes of Unix time in milliseconds, because the
//! provider counts per calendar minute on its clock, not per sliding 60 seconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub const MINUTE_MS: Millis = 60_000;

pub fn minute_start(t: Millis) -> Millis {
    t.div_euclid(MINUTE_MS) * MINUTE_MS
}

pub fn minute_end(t: Millis) -> Millis {
    minute_start(t) + MINUTE_MS
}

pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
    /// Completes once `now_ms() >= at` (at once if that is already so).
    fn sleep_until(&self, at: Millis) -> Sleep;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0)
    }

    fn sleep_until(&self, at: Millis) -> Sleep {
        let wait = (at - self.now_ms()).max(0) as u64;
        Box::pin(tokio::time::sleep(std::time::Duration::from_millis(wait)))
    }
}

/// A clock that moves only when told to; sleepers wake when it passes their deadline.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Millis>,
    moved: tokio::sync::watch::Sender<Millis>,
}

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        Self {
            now: Mutex::new(start),
            moved: tokio::sync::watch::channel(start).0,
        }
    }

    pub fn set(&self, t: Millis) {
        *self.now.lock().expect("clock poisoned") = t;
        self.moved.send_replace(t);
    }

    pub fn advance(&self, ms: Millis) {
        let t = self.now_ms() + ms;
        self.set(t);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        *self.now.lock().expect("clock poisoned")
    }

    fn sleep_until(&self, at: Millis) -> Sleep {
        let mut rx = self.moved.subscribe();
        Box::pin(async move {
            // The sender half lives as long as the clock; if it is gone nobody can wake us anyway.
            let _ = rx.wait_for(|now| *now >= at).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_minute_boundaries() {
        assert_eq!(minute_start(119_999), 60_000);
        assert_eq!(minute_end(119_999), 120_000);
        assert_eq!(minute_start(120_000), 120_000);
        assert_eq!(minute_start(-1), -60_000);
    }

    #[tokio::test]
    async fn manual_sleepers_wake_only_when_time_passes() {
        let clock = std::sync::Arc::new(ManualClock::new(1_000));
        let c = clock.clone();
        let sleeper = tokio::spawn(async move { c.sleep_until(5_000).await });
        tokio::task::yield_now().await;
        clock.advance(3_000);
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(1_000);
        sleeper.await.unwrap();
        clock.sleep_until(0).await;
    }
}
