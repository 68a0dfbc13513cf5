//! Fault injection, per route and for notifications: set in the sandbox's settings (a TOML file)
//! and changeable at run time (tests).

use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// The simulated routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// `POST /global-processing/digital/cards/searches`.
    Searches,
    /// `GET /global-processing/digital/cards/{id}/tokens`.
    CardTokens,
    /// `GET /global-processing/digital/clients/{id}/tokens`.
    ClientTokens,
    /// `POST /src/api/digital/payments/cards`.
    EnrollCards,
    /// Legacy lifecycle: `GET`, `PUT`, `DELETE /src/api/digital/payments/cards/{srcDigitalCardId}`.
    LifecycleCards,
    /// Legacy lifecycle: `GET`, `PUT /…/profiles/{srcConsumerId}`, `DELETE /…/profiles`.
    LifecycleProfiles,
    /// Credential Directory: `GET`, `PUT`, `DELETE /…/directories/{d}/consumers/{c}`.
    DirectoryConsumers,
    /// Credential Directory: `GET`, `PUT`, `DELETE /…/consumers/{c}/credentials/{id}`.
    DirectoryCredentials,
}

impl Route {
    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Route::Searches => "searches",
            Route::CardTokens => "card_tokens",
            Route::ClientTokens => "client_tokens",
            Route::EnrollCards => "enroll_cards",
            Route::LifecycleCards => "lifecycle_cards",
            Route::LifecycleProfiles => "lifecycle_profiles",
            Route::DirectoryConsumers => "directory_consumers",
            Route::DirectoryCredentials => "directory_credentials",
        }
    }
}

/// What a route does wrong. Several may be set: latency first, then the first failure among
/// hang, reset, throttle, error, malformed JSON.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFault {
    /// Added before answering.
    #[serde(default, with = "humantime_serde_opt")]
    pub latency: Option<Duration>,
    /// Never answer.
    #[serde(default)]
    pub hang: bool,
    /// Reset the connection after reading the request.
    #[serde(default)]
    pub reset: bool,
    /// Process the request fully, then never answer (the answer is lost on the way back).
    #[serde(default)]
    pub drop_response: bool,
    /// Answer 429 with this `Retry-After` (whole seconds).
    #[serde(default, with = "humantime_serde_opt")]
    pub throttle: Option<Duration>,
    /// Answer this error status with a Mastercard-shaped body.
    #[serde(default)]
    pub error: Option<ErrorFault>,
    /// Answer 200 with a body that is not JSON.
    #[serde(default)]
    pub malformed_json: bool,
    /// Apply to the next N requests only (then the route behaves again); unset = always.
    #[serde(default)]
    pub times: Option<u32>,
}

impl RouteFault {
    /// What the fault does, for logs: its first failure, else `latency`.
    pub fn kind(&self) -> &'static str {
        if self.hang {
            "hang"
        } else if self.reset {
            "reset"
        } else if self.throttle.is_some() {
            "throttle"
        } else if self.error.is_some() {
            "error"
        } else if self.malformed_json {
            "malformed_json"
        } else if self.drop_response {
            "drop_response"
        } else {
            "latency"
        }
    }
}

/// An injected error answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorFault {
    /// HTTP status.
    pub status: u16,
    /// Mastercard reason code in the body.
    pub reason_code: String,
}

/// When TAR and TCN are sent relative to the `POST /cards` answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationTiming {
    /// Delivered (and acknowledged) before the 200 is sent: tokenization happens inside the call.
    #[default]
    BeforeResponse,
    /// Delivered only after the 200 was sent.
    AfterResponse,
}

/// What the notifier does wrong.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationFaults {
    /// Wait this long before delivering.
    #[serde(default, with = "humantime_serde_opt")]
    pub delay: Option<Duration>,
    /// Deliver every notification twice.
    #[serde(default)]
    pub duplicate: bool,
    /// Deliver TCN before TAR.
    #[serde(default)]
    pub reorder: bool,
    /// Before or after the 200.
    #[serde(default)]
    pub timing: NotificationTiming,
}

/// All faults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Per route.
    #[serde(default)]
    pub routes: HashMap<Route, RouteFault>,
    /// Notifications.
    #[serde(default)]
    pub notifications: NotificationFaults,
    /// Decline every TAR, whatever the CMS says.
    #[serde(default)]
    pub decline_tar: bool,
    /// Random faults on the routes without a fault of their own (`[chaos] rate = 0.2`).
    #[serde(default)]
    pub chaos: Option<ChaosFaults>,
}

/// Random faults, for chaos tests: each request on a route without a `[routes.*]` fault fails
/// with probability `rate`, the kind drawn evenly among a 503, a 429, a connection reset, added
/// latency and (on `enroll_cards`, the route that can lose its answer) a lost answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChaosFaults {
    /// The share of requests that meet a fault, 0 to 1.
    pub rate: f64,
    /// The latency fault's delay (default 300 ms).
    #[serde(default, with = "humantime_serde_opt")]
    pub latency: Option<Duration>,
}

impl ChaosFaults {
    /// The fault for one request on `route`, if it meets one.
    pub fn draw(&self, route: Route) -> Option<RouteFault> {
        use rand::Rng as _;
        let mut rng = rand::rng();
        if !rng.random_bool(self.rate.clamp(0.0, 1.0)) {
            return None;
        }
        let kinds = if route == Route::EnrollCards { 5 } else { 4 };
        let mut fault = RouteFault::default();
        match rng.random_range(0..kinds) {
            0 => {
                fault.error = Some(ErrorFault {
                    status: 503,
                    reason_code: "SERVICE_UNAVAILABLE".into(),
                })
            }
            1 => fault.throttle = Some(Duration::from_secs(1)),
            2 => fault.reset = true,
            3 => fault.latency = Some(self.latency.unwrap_or(Duration::from_millis(300))),
            _ => fault.drop_response = true,
        }
        Some(fault)
    }
}

impl Faults {
    /// Parses a faults file (`[routes.searches] latency = "200ms"`, `[notifications] ...`).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    /// The fault to apply to one request on `route`, counting down `times`.
    pub fn take(&mut self, route: Route) -> Option<RouteFault> {
        let Some(fault) = self.routes.get_mut(&route) else {
            return self.chaos.as_ref().and_then(|c| c.draw(route));
        };
        let taken = fault.clone();
        match &mut fault.times {
            Some(0) => {
                self.routes.remove(&route);
                return None;
            }
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.routes.remove(&route);
                }
            }
            None => {}
        }
        Some(taken)
    }
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_toml_and_count_down() {
        let mut f = Faults::parse(
            "decline_tar = true\n[routes.searches]\nlatency = \"200ms\"\nerror = { status = 503, reason_code = \"SERVICE_UNAVAILABLE\" }\ntimes = 2\n[notifications]\nduplicate = true\ntiming = \"after_response\"\n",
        )
        .unwrap();
        assert!(f.decline_tar);
        assert_eq!(f.notifications.timing, NotificationTiming::AfterResponse);
        let first = f.take(Route::Searches).unwrap();
        assert_eq!(first.latency, Some(Duration::from_millis(200)));
        assert_eq!(first.error.unwrap().status, 503);
        assert!(f.take(Route::Searches).is_some());
        assert!(f.take(Route::Searches).is_none());
        assert!(Faults::parse("[routes.nope]\nhang = true\n").is_err());
    }

    #[test]
    fn chaos_faults_hit_about_their_rate_and_leave_routes_with_their_own_fault_alone() {
        let mut f = Faults::parse(
            "[chaos]\nrate = 0.2\nlatency = \"50ms\"\n[routes.searches]\nreset = true\n",
        )
        .unwrap();
        let hits = (0..10_000)
            .filter(|_| f.take(Route::CardTokens).is_some())
            .count();
        assert!((1_500..2_500).contains(&hits), "{hits}");
        assert!((0..100).all(|_| f.take(Route::Searches).is_some_and(|r| r.reset)));
        let never = Faults::parse("[chaos]\nrate = 0.0\n").unwrap();
        assert!((0..1_000).all(|_| {
            never
                .chaos
                .as_ref()
                .unwrap()
                .draw(Route::EnrollCards)
                .is_none()
        }));
    }
}
