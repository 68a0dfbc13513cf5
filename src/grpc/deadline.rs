//! The caller's deadline from the `grpc-timeout` header, which bounds all upstream work; a call
//! without one gets the server's default (`grpc.limits.default_deadline`).

use std::time::Duration;
use tokio::time::Instant;

/// Time kept back to answer before the caller gives up.
const MARGIN: Duration = Duration::from_millis(100);

/// The deadline of a request: the caller's, or `default` from now when it set none.
pub fn of<T>(request: &tonic::Request<T>, default: Duration) -> Option<Instant> {
    Some(caller_deadline(request).unwrap_or_else(|| Instant::now() + default))
}

/// The deadline of a request, if the caller set one.
fn caller_deadline<T>(request: &tonic::Request<T>) -> Option<Instant> {
    let timeout = timeout(request.metadata().get("grpc-timeout")?.to_str().ok()?)?;
    // A timeout past what the clock can hold (`9999999999999999H`) is no deadline of the
    // caller's: the server's default bounds the call (an addition would panic).
    Instant::now().checked_add(timeout.saturating_sub(MARGIN))
}

/// The caller's timeout in the request headers (`grpc-timeout`), as sent.
pub fn of_headers(headers: &http::HeaderMap) -> Option<Duration> {
    timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value: an integer and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn timeout(value: &str) -> Option<Duration> {
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Some(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_ignores_garbage() {
        for (value, expected) in [("2S", 2000), ("1500m", 1500), ("1M", 60_000)] {
            let mut r = tonic::Request::new(());
            r.metadata_mut()
                .insert("grpc-timeout", value.parse().unwrap());
            let left = of(&r, Duration::from_secs(3600)).unwrap() - Instant::now();
            assert!(
                left <= Duration::from_millis(expected)
                    && left > Duration::from_millis(expected - 200),
                "{value}: {left:?}"
            );
        }
        let mut r = tonic::Request::new(());
        r.metadata_mut()
            .insert("grpc-timeout", "soon".parse().unwrap());
        assert!(caller_deadline(&r).is_none());
        let left = of(&r, Duration::from_secs(30)).unwrap() - Instant::now();
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(29));
    }

    #[test]
    fn a_timeout_past_the_clock_gets_the_default_deadline() {
        let mut r = tonic::Request::new(());
        r.metadata_mut()
            .insert("grpc-timeout", "9999999999999999H".parse().unwrap());
        let left = of(&r, Duration::from_secs(30)).unwrap() - Instant::now();
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(29));
    }
}
