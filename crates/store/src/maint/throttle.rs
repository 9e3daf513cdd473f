//! Pacing of background data movement (recovery, scrub) so client I/O
//! keeps priority.
//!
//! * [`LoadMeter`] counts client chunk operations on this node (object API
//!   reads and writes, and chunk writes/reads other nodes make on behalf of
//!   their clients). "Busy" means one happened within [`BUSY_WINDOW`].
//! * [`Throttle`] is a token bucket in bytes per second. Its rate is the
//!   configured ceiling while the node is idle and a fraction of it while
//!   the node is busy, re-evaluated on every take: recovery backs off within
//!   a window of client activity and speeds up again when clients stop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How recent a client operation must be for the node to count as busy.
pub const BUSY_WINDOW: Duration = Duration::from_millis(500);

/// Counts client chunk operations; cheap to clone and to bump.
#[derive(Debug, Clone)]
pub struct LoadMeter {
    inner: Arc<LoadInner>,
}

#[derive(Debug)]
struct LoadInner {
    ops: AtomicU64,
    /// Milliseconds since `epoch` of the last operation.
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Default for LoadMeter {
    fn default() -> Self {
        Self {
            inner: Arc::new(LoadInner {
                ops: AtomicU64::new(0),
                last_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }
}

impl LoadMeter {
    /// Records one client operation.
    pub fn record(&self) {
        self.inner.ops.fetch_add(1, Ordering::Relaxed);
        let ms = self.inner.epoch.elapsed().as_millis() as u64;
        self.inner.last_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Client operations recorded so far.
    pub fn ops(&self) -> u64 {
        self.inner.ops.load(Ordering::Relaxed)
    }

    /// Whether a client operation happened within [`BUSY_WINDOW`].
    pub fn busy(&self) -> bool {
        let last = self.inner.last_ms.load(Ordering::Relaxed);
        if last == 0 {
            return false;
        }
        let now = self.inner.epoch.elapsed().as_millis() as u64;
        now.saturating_sub(last) < BUSY_WINDOW.as_millis() as u64
    }
}

/// Limits of one kind of background traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Bytes per second when no client I/O is going on (0 = unlimited).
    pub idle_bps: u64,
    /// Fraction of `idle_bps` allowed while clients are active (0..=1).
    pub busy_fraction: f64,
    /// Transfers in flight when idle.
    pub idle_concurrency: usize,
    /// Transfers in flight while clients are active.
    pub busy_concurrency: usize,
}

impl Limits {
    /// Rate (bytes/s, 0 = unlimited) for the given load.
    pub fn rate(&self, busy: bool) -> u64 {
        if !busy {
            return self.idle_bps;
        }
        if self.idle_bps == 0 {
            // Unlimited when idle still means bounded when busy: 64 MiB/s.
            return 64u64 << 20;
        }
        ((self.idle_bps as f64 * self.busy_fraction.clamp(0.0, 1.0)) as u64).max(1)
    }

    /// Transfers in flight for the given load (at least one).
    pub fn concurrency(&self, busy: bool) -> usize {
        if busy {
            self.busy_concurrency.max(1)
        } else {
            self.idle_concurrency.max(1)
        }
    }
}

/// A token bucket whose rate follows the node's load.
#[derive(Debug)]
pub struct Throttle {
    limits: Limits,
    load: LoadMeter,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens (bytes) available; negative = debt to wait off.
    tokens: f64,
    last: Instant,
}

impl Throttle {
    /// A throttle with `limits` following `load`.
    pub fn new(limits: Limits, load: LoadMeter) -> Self {
        Self {
            limits,
            load,
            state: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// Its limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the node is busy with client I/O right now.
    pub fn busy(&self) -> bool {
        self.load.busy()
    }

    /// How long to wait before moving `bytes` more (and books them).
    pub fn reserve(&self, bytes: u64) -> Duration {
        let rate = self.limits.rate(self.load.busy());
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        reserve_in(&mut b, rate, bytes, Instant::now())
    }

    /// Waits until `bytes` more may be moved.
    pub async fn take(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Token bucket step: refill at `rate` (burst of a quarter second), book
/// `bytes`, return the wait that pays any debt. Pure, for tests.
fn reserve_in(b: &mut Bucket, rate: u64, bytes: u64, now: Instant) -> Duration {
    if rate == 0 {
        b.last = now;
        return Duration::ZERO;
    }
    let rate = rate as f64;
    let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
    b.last = now;
    b.tokens = (b.tokens + elapsed * rate).min(rate / 4.0);
    b.tokens -= bytes as f64;
    if b.tokens >= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(-b.tokens / rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_to_the_rate() {
        let start = Instant::now();
        let mut b = Bucket {
            tokens: 0.0,
            last: start,
        };
        // 10 MB at 100 MB/s: 0.1 s of debt, then each further MB costs 10 ms.
        let w = reserve_in(&mut b, 100_000_000, 10_000_000, start);
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-6, "{w:?}");
        let later = start + Duration::from_millis(100);
        let w = reserve_in(&mut b, 100_000_000, 1_000_000, later);
        assert!((w.as_secs_f64() - 0.01).abs() < 1e-6, "{w:?}");
        // An idle second only refills a quarter-second burst.
        let much_later = later + Duration::from_secs(1);
        let w = reserve_in(&mut b, 100_000_000, 25_000_000, much_later);
        assert!(w.as_millis() <= 11, "{w:?}");
        // Unlimited never waits.
        assert_eq!(reserve_in(&mut b, 0, u64::MAX, much_later), Duration::ZERO);
    }

    #[test]
    fn busy_lowers_rate_and_concurrency() {
        let l = Limits {
            idle_bps: 100 << 20,
            busy_fraction: 0.25,
            idle_concurrency: 4,
            busy_concurrency: 1,
        };
        assert_eq!(l.rate(false), 100 << 20);
        assert_eq!(l.rate(true), 25 << 20);
        assert_eq!(l.concurrency(false), 4);
        assert_eq!(l.concurrency(true), 1);
        let unlimited = Limits { idle_bps: 0, ..l };
        assert_eq!(unlimited.rate(false), 0);
        assert!(unlimited.rate(true) > 0);
    }

    #[test]
    fn load_meter_goes_busy_then_idle() {
        let m = LoadMeter::default();
        assert!(!m.busy());
        m.record();
        assert!(m.busy());
        assert_eq!(m.ops(), 1);
        std::thread::sleep(BUSY_WINDOW + Duration::from_millis(50));
        assert!(!m.busy());
    }
}
