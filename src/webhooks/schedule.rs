//! When a failed delivery is tried again: the endpoint's schedule (seconds after the previous
//! attempt) with ±20% jitter, or what `Retry-After` asks for on 429/503.

/// The default schedule (seconds after the previous attempt): the first attempt is immediate,
/// the last one a day after the one before.
pub const DEFAULT: [i32; 10] = [0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400];

/// Seconds until attempt number `attempt` (1-based, the one after `attempt - 1` failures), or
/// None when the schedule is exhausted (the delivery is dead). `jitter` is in [-1, 1].
pub fn delay(schedule: &[i32], attempt: usize, jitter: f64) -> Option<f64> {
    let base = *schedule.get(attempt.checked_sub(1)?)? as f64;
    Some((base * (1.0 + 0.2 * jitter.clamp(-1.0, 1.0))).max(0.0))
}

/// A `Retry-After` value in seconds: delta-seconds, or an HTTP-date relative to `now` (unix s).
pub fn retry_after(value: &str, now: i64) -> Option<f64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.min(86_400 * 7) as f64);
    }
    http_date(value).map(|at| ((at - now).max(0)).min(86_400 * 7) as f64)
}

/// Unix seconds of an IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(value: &str) -> Option<i64> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let month = crate::calendar::MONTHS
        .iter()
        .position(|m| m == month)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let t: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = t.as_slice() else { return None };
    Some(crate::calendar::days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Checks a schedule given at endpoint creation.
pub fn validate(schedule: &[i32]) -> Result<(), String> {
    if schedule.is_empty() {
        return Err("retry_schedule must not be empty".into());
    }
    if schedule.len() > 50 {
        return Err(format!("retry_schedule has {} steps; at most 50 are allowed", schedule.len()));
    }
    if let Some(bad) = schedule.iter().find(|s| !(0..=7 * 86_400).contains(*s)) {
        return Err(format!("retry_schedule step {bad} is out of range (0 to 604800 seconds)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_and_jitter() {
        assert_eq!(delay(&DEFAULT, 1, 0.7), Some(0.0));
        assert_eq!(delay(&DEFAULT, 2, 0.0), Some(5.0));
        assert_eq!(delay(&DEFAULT, 3, 1.0), Some(360.0));
        assert_eq!(delay(&DEFAULT, 3, -1.0), Some(240.0));
        assert_eq!(delay(&DEFAULT, 10, 0.0), Some(86400.0));
        assert_eq!(delay(&DEFAULT, 11, 0.0), None);
        assert_eq!(delay(&[1, 2], 0, 0.0), None);
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(retry_after("3", 0), Some(3.0));
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784111777));
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:47 GMT", 784111777), Some(10.0));
        assert_eq!(retry_after("soon", 0), None);
    }

    #[test]
    fn schedules_are_checked() {
        assert!(validate(&[0, 5, 60]).is_ok());
        assert!(validate(&[]).is_err());
        assert!(validate(&[-1]).is_err());
        assert!(validate(&[1_000_000]).is_err());
    }
}
