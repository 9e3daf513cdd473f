//! Polling with a deadline: tests wait for a condition, never for a fixed
//! time, and fail with a message saying what they were waiting for.

use std::time::{Duration, Instant};

/// Polls `check` every `every` until it returns `Some`, or fails after
/// `timeout` naming `what`.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_value_or_names_what_timed_out() {
        let mut n = 0;
        let v = until(
            "n to reach 3",
            Duration::from_secs(1),
            Duration::from_millis(1),
            || {
                n += 1;
                (n >= 3).then_some(n)
            },
        )
        .unwrap();
        assert_eq!(v, 3);
        let err = until::<()>(
            "never",
            Duration::from_millis(20),
            Duration::from_millis(5),
            || None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("waiting for never"));
    }
}
