//! `Checker`: reads raw setting values (text, durations, numbers, booleans, files) and collects
//! every problem instead of stopping at the first. Its own module, so that each `validate_*`
//! module depends on it and not on one another.

use super::Problem;
use super::raw::{Scalar, Unknown};
use std::time::Duration;

#[derive(Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    pub(super) fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn unknown(&mut self, section: &str, unknown: &Unknown) {
        for name in unknown.keys() {
            let key = if section.is_empty() {
                name.clone()
            } else {
                format!("{section}.{name}")
            };
            self.problem(&key, "unknown setting");
        }
    }

    /// The value, or the default when unset; empty text counts as unset.
    pub(super) fn text(value: &Option<Scalar>, default: &str) -> String {
        match value {
            Some(Scalar(s)) if !s.trim().is_empty() => s.trim().to_owned(),
            _ => default.to_owned(),
        }
    }

    pub(super) fn optional(value: &Option<Scalar>) -> Option<String> {
        match value {
            Some(Scalar(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            _ => None,
        }
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        value: &Option<Scalar>,
        default: &str,
    ) -> Duration {
        let text = Self::text(value, default);
        match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(key, "must be greater than zero");
                Duration::from_secs(1)
            }
            Err(e) => {
                self.problem(
                    key,
                    format!(
                        "{text:?} is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"24h\""
                    ),
                );
                Duration::from_secs(1)
            }
        }
    }
}

impl Checker {
    /// A number within `range`, or the default.
    pub(super) fn number<T>(
        &mut self,
        key: &str,
        value: &Option<Scalar>,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> T
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(text) = Self::optional(value) else {
            return default;
        };
        match text.parse::<T>() {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.problem(
                    key,
                    format!(
                        "{text:?} is not a number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`), or the default.
    pub(super) fn boolean(&mut self, key: &str, value: &Option<Scalar>, default: bool) -> bool {
        match Self::optional(value)
            .map(|t| t.to_ascii_lowercase())
            .as_deref()
        {
            None => default,
            Some("true" | "1" | "yes" | "on") => true,
            Some("false" | "0" | "no" | "off") => false,
            Some(other) => {
                self.problem(
                    key,
                    format!("{other:?} is not a boolean; use true or false"),
                );
                default
            }
        }
    }

    /// A path that must be a readable file, when set.
    pub(super) fn readable_file(
        &mut self,
        key: &str,
        value: &Option<Scalar>,
    ) -> Option<std::path::PathBuf> {
        let path = std::path::PathBuf::from(Self::optional(value)?);
        if let Err(e) = std::fs::File::open(&path) {
            self.problem(key, format!("cannot read {}: {e}", path.display()));
        }
        Some(path)
    }
}
