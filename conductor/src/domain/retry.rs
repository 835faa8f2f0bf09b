//! When a deferred recipient may be tried again. Pure.

/// The provider's `Retry-After` when it gave one; otherwise exponential backoff from 5 s, capped at
/// 10 minutes, with ±20 % jitter (`jitter` in `[0, 1)`) so that a burst of deferrals does not come
/// back as a burst.
pub fn retry_delay_ms(attempts: u32, retry_after_ms: Option<i64>, jitter: f64) -> i64 {
    if let Some(ms) = retry_after_ms {
        return ms.max(0);
    }
    let base = 5_000i64.saturating_mul(1 << attempts.saturating_sub(1).min(16));
    let capped = base.min(600_000) as f64;
    (capped * (0.8 + 0.4 * jitter.clamp(0.0, 1.0))) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        assert_eq!(retry_delay_ms(1, None, 0.5), 5_000);
        assert_eq!(retry_delay_ms(2, None, 0.5), 10_000);
        assert_eq!(retry_delay_ms(30, None, 0.5), 600_000);
        assert_eq!(retry_delay_ms(1, None, 0.0), 4_000);
        assert_eq!(retry_delay_ms(1, None, 0.999_999), 5_999);
        assert_eq!(retry_delay_ms(7, Some(12_000), 0.9), 12_000);
    }
}
