//! A recorded check's name, typed: one of the thresholds ([`CheckName`]), the search's
//! not-slower check, a bound on a custom evaluator's metric, or an edge-case check. On the
//! wire (status, report.json, events, metrics labels) it is the same string as ever:
//! `maxAccuracyDrop`, `maxLatencyNotSlower`, `custom.wer`, `edgeCases.minAgreement`.

use super::task::CheckName;
use std::borrow::Cow;
use std::fmt;

/// The name of a recorded check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckId {
    /// A threshold of `spec.thresholds` (or `tensorsCompressed`, which every run has).
    Threshold(CheckName),
    /// Without `maxLatencyRatio`, a search candidate measurably slower than the original
    /// fails this check.
    NotSlower,
    /// `spec.thresholds.custom`: a bound on a metric the custom evaluator printed.
    Custom(String),
    /// A check on the edge-case set (`spec.edgeCases.thresholds`).
    EdgeCases(Box<CheckId>),
    /// A name this version does not know (a status another version wrote).
    Other(String),
}

const NOT_SLOWER: &str = "maxLatencyNotSlower";
const CUSTOM: &str = "custom.";
const EDGE_CASES: &str = "edgeCases.";

impl CheckId {
    /// The check every run has: a candidate no pass changed is the original re-encoded, and
    /// is never promoted as a compressed model.
    pub const TENSORS_COMPRESSED: CheckId = CheckId::Threshold(CheckName::TensorsCompressed);

    pub fn parse(s: &str) -> Self {
        if s == NOT_SLOWER {
            Self::NotSlower
        } else if let Some(m) = s.strip_prefix(CUSTOM) {
            Self::Custom(m.into())
        } else if let Some(c) = s.strip_prefix(EDGE_CASES) {
            Self::EdgeCases(Box::new(Self::parse(c)))
        } else {
            CheckName::from_name(s).map_or_else(|| Self::Other(s.into()), Self::Threshold)
        }
    }

    /// The same check on the edge-case set.
    pub fn on_edge_cases(self) -> Self {
        Self::EdgeCases(Box::new(self))
    }

    /// Whether the check passes at or below its limit (a `max...` name).
    pub fn is_max(&self) -> bool {
        match self {
            Self::Threshold(c) => c.is_max(),
            Self::NotSlower => true,
            Self::Custom(_) | Self::EdgeCases(_) => false,
            Self::Other(s) => s.starts_with("max"),
        }
    }

    /// Whether the check measures output quality of the evaluation set (what leaving a layer
    /// in float can improve: the search's fallback).
    pub fn is_quality(&self) -> bool {
        matches!(self, Self::Threshold(c) if c.is_quality())
    }
}

impl fmt::Display for CheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Threshold(c) => f.write_str(c.name()),
            Self::NotSlower => f.write_str(NOT_SLOWER),
            Self::Custom(m) => write!(f, "{CUSTOM}{m}"),
            Self::EdgeCases(c) => write!(f, "{EDGE_CASES}{c}"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

impl From<CheckName> for CheckId {
    fn from(c: CheckName) -> Self {
        Self::Threshold(c)
    }
}

impl From<&str> for CheckId {
    fn from(s: &str) -> Self {
        Self::parse(s)
    }
}

impl PartialEq<str> for CheckId {
    fn eq(&self, other: &str) -> bool {
        *self == Self::parse(other)
    }
}

impl PartialEq<&str> for CheckId {
    fn eq(&self, other: &&str) -> bool {
        *self == Self::parse(other)
    }
}

impl serde::Serialize for CheckId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CheckId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

/// A string in the schema, as before the name was typed.
impl schemars::JsonSchema for CheckId {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        String::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_as_the_same_string() {
        let mut names: Vec<String> = CheckName::ALL.iter().map(|c| c.name().into()).collect();
        names.extend(
            [
                "maxLatencyNotSlower",
                "custom.wer",
                "edgeCases.minAgreement",
                "edgeCases.custom.x",
                "someFutureCheck",
            ]
            .map(String::from),
        );
        for n in names {
            let id = CheckId::parse(&n);
            assert_eq!(id.to_string(), n);
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(json, format!("\"{n}\""));
            assert_eq!(serde_json::from_str::<CheckId>(&json).unwrap(), id);
        }
        assert_eq!(CheckId::parse("custom.wer"), CheckId::Custom("wer".into()));
        assert_eq!(
            CheckId::parse("edgeCases.maxAccuracyDrop"),
            CheckId::from(CheckName::MaxAccuracyDrop).on_edge_cases()
        );
    }
}
