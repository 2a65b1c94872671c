#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::{Error, LimitsConfig, RateLimits, retry_after_seconds};

fn limits(requests_per_second: u32, burst: Option<u32>) -> RateLimits {
    let config = LimitsConfig { requests_per_second, burst };
    config.validate().unwrap();
    RateLimits::new(&config)
}

#[test]
fn off_by_default_and_never_refuses() {
    let limits = RateLimits::new(&LimitsConfig::default());
    assert!(!limits.enabled());
    for _ in 0..10_000 {
        limits.check("iss\u{1f}alice".to_owned()).unwrap();
    }
    assert!(limits.is_empty(), "nothing is kept while the limits are off");
}

#[test]
fn burst_is_allowed_then_refused_with_the_wait() {
    // 1 request per second sustained, 3 at once: the 4th within the second is refused.
    let limits = limits(1, Some(3));
    assert!(limits.enabled());
    for _ in 0..3 {
        limits.check("iss\u{1f}alice".to_owned()).unwrap();
    }
    let wait = limits.check("iss\u{1f}alice".to_owned()).unwrap_err();
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
    assert_eq!(retry_after_seconds(wait), 1);
}

#[test]
fn principals_have_budgets_of_their_own() {
    let limits = limits(1, None);
    limits.check("iss\u{1f}alice".to_owned()).unwrap();
    assert!(limits.check("iss\u{1f}alice".to_owned()).is_err());
    // Another subject, and the same subject from another issuer, are not affected.
    limits.check("iss\u{1f}bob".to_owned()).unwrap();
    limits.check("other\u{1f}alice".to_owned()).unwrap();
    assert_eq!(limits.len(), 3);
}

#[test]
fn budget_refills_and_idle_principals_are_forgotten() {
    // 1000/s with a burst of 1: the budget is full again after 1 ms.
    let limits = limits(1000, Some(1));
    limits.check("iss\u{1f}alice".to_owned()).unwrap();
    assert!(limits.check("iss\u{1f}alice".to_owned()).is_err());
    std::thread::sleep(Duration::from_millis(5));
    limits.check("iss\u{1f}alice".to_owned()).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    limits.retain_recent();
    assert!(limits.is_empty(), "a principal whose budget is full again is dropped");
}

#[test]
fn burst_must_be_positive_and_needs_a_rate() {
    assert_eq!(LimitsConfig { requests_per_second: 5, burst: Some(0) }.validate(), Err(Error::Burst("must be at least 1")));
    assert!(LimitsConfig { requests_per_second: 0, burst: Some(5) }.validate().is_err());
    assert!(LimitsConfig { requests_per_second: 5, burst: Some(50) }.validate().is_ok());
    assert!(LimitsConfig::default().validate().is_ok());
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
    assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
    assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
}
