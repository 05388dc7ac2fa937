//! Where the library reads the time.
//!
//! Every time-based rule (consent expiry, lease expiry, the refresh skew,
//! retry schedules, the 7-day Testing warning) asks a [`Clock`], so tests
//! can move time with a [`ManualClock`] instead of sleeping. Waiting itself
//! (backoff between retries, timeouts) still uses the async runtime's timer.

use std::sync::Mutex;
use std::time::Duration;

use crate::model::Timestamp;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system's clock (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now_utc()
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    at: Mutex<Timestamp>,
}

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: Timestamp) -> Self {
        ManualClock { at: Mutex::new(at) }
    }

    /// A clock showing the current system time (it then stands still).
    pub fn starting_now() -> Self {
        ManualClock::new(Timestamp::now_utc())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        *at = at.plus(by);
    }

    /// Sets the clock.
    pub fn set(&self, to: Timestamp) {
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.at.lock().unwrap_or_else(|e| e.into_inner())
    }
}
