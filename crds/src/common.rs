//! Types shared by several CRDs.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The Go `time.ParseDuration` grammar the API server checks, restricted to
/// non-negative values: "90s", "10m", "1h30m", "250ms".
pub const DURATION_PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$";

/// A non-negative duration written the Kubernetes way ("10m", "1h30m").
///
/// The text is kept as written so that reading and re-applying an object never
/// rewrites what the user typed; `as_std()` gives the parsed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duration {
    text: String,
    value: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid duration {text:?}: {reason}")]
pub struct DurationError {
    text: String,
    reason: String,
}

impl Duration {
    pub fn as_std(&self) -> std::time::Duration {
        self.value
    }

    pub fn from_secs(secs: u64) -> Self {
        let value = std::time::Duration::from_secs(secs);
        let text = if secs.is_multiple_of(3600) && secs > 0 {
            format!("{}h", secs / 3600)
        } else if secs.is_multiple_of(60) && secs > 0 {
            format!("{}m", secs / 60)
        } else {
            format!("{secs}s")
        };
        Self { text, value }
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| DurationError { text: text.to_owned(), reason };
        if text.is_empty() {
            return Err(err("empty".into()));
        }
        let parsed: kube::core::Duration = text.parse().map_err(|e| err(format!("{e}")))?;
        if parsed.is_negative() {
            return Err(err("must not be negative".into()));
        }
        Ok(Self { text: text.to_owned(), value: parsed.into() })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration such as 30s, 10m or 1h30m (units: ns, us, ms, s, m, h).",
        })
    }
}

/// A key in a Secret of the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret of the object's namespace, used whole.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// An object of a known kind in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Marks `conditions` as a list keyed by `type`, so that server-side apply from
/// several field managers merges conditions instead of replacing the list.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    let object = schema.ensure_object();
    object.insert("x-kubernetes-list-type".into(), "map".into());
    object.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    object.insert(
        "description".into(),
        "Standard conditions (Available, Progressing, ... per kind), one per type.".into(),
    );
    schema
}

/// Condition status values.
pub mod condition_status {
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_the_go_way_and_keep_their_text() {
        let d: Duration = "1h30m".parse().unwrap();
        assert_eq!(d.as_std(), std::time::Duration::from_secs(5400));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
        assert_eq!("250ms".parse::<Duration>().unwrap().as_std().as_millis(), 250);
        assert!("-5s".parse::<Duration>().is_err());
        assert!("ten minutes".parse::<Duration>().is_err());
        assert!(serde_json::from_str::<Duration>("\"5 parsecs\"").is_err());
    }

    #[test]
    fn duration_pattern_agrees_with_the_parser() {
        // The API server checks the pattern, the operator the parser: the two must agree.
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for ok in ["0", "10m", "1h30m", "1.5h", "250ms", "30s", "4h"] {
            assert!(pattern.is_match(ok), "{ok} should match");
            assert!(ok.parse::<Duration>().is_ok(), "{ok} should parse");
        }
        for bad in ["", "10", "m", "-5s", "10 m", "1d", "PT10M"] {
            assert!(!pattern.is_match(bad), "{bad} should not match");
            assert!(bad.parse::<Duration>().is_err(), "{bad} should not parse");
        }
    }
}
