//! Cleanup rules of a local repository (tag retention): which tags and untagged manifests each
//! garbage collection run removes. The host validates and stores them; what a tag is stays the
//! format plugin's knowledge, so the plugin applies them (`cleanup` export).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::RepoError;

/// Longest `matching` pattern accepted, in bytes.
const PATTERN_MAX_LEN: usize = 256;
/// Compiled size a pattern may take: a short pattern like `a{1000}{1000}` must not make every
/// plugin call that matches it slow or large.
const PATTERN_SIZE_LIMIT: usize = 256 << 10;
/// `untagged_after_days` beyond this is a mistake (and would overflow seconds as u64 math).
const MAX_DAYS: f64 = 36_500.0;
const SECONDS_PER_DAY: f64 = 86_400.0;

/// A tag-name regular expression that compiled within the size limit. Stored as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TagPattern(String);

impl TagPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TagPattern {
    type Error = RepoError;

    fn try_from(pattern: String) -> Result<Self, Self::Error> {
        if pattern.is_empty() || pattern.len() > PATTERN_MAX_LEN {
            return Err(RepoError::Invalid(format!("cleanup.matching must be a regular expression of 1 to {PATTERN_MAX_LEN} bytes")));
        }
        regex_lite::RegexBuilder::new(&pattern)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|e| RepoError::Invalid(format!("cleanup.matching {pattern:?} is not a usable regular expression: {e}")))?;
        Ok(TagPattern(pattern))
    }
}

impl From<TagPattern> for String {
    fn from(p: TagPattern) -> String {
        p.0
    }
}

impl fmt::Display for TagPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a client sends as `cleanup`: each rule optional, unknown ones refused (a misspelt rule
/// silently doing nothing would keep what the user meant to remove, or the reverse). Values are
/// taken as JSON and checked in `validate`, so that an error names the rule it is about.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupInput {
    pub keep_last: Option<serde_json::Value>,
    pub matching: Option<serde_json::Value>,
    /// fractional days are accepted (0.5: twelve hours)
    pub untagged_after_days: Option<serde_json::Value>,
}

/// The validated rules, as stored with the repository and shown by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanupRules {
    /// keep this many of the most recently pushed matching tags of each image; the rest go
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// the tags `keep_last` counts; other tags are never removed by it
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching: Option<TagPattern>,
    /// manifests no kept tag or kept manifest references go this long after their push
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untagged_after_days: Option<f64>,
}

impl CleanupInput {
    /// None when the input holds no rule at all (the same as no `cleanup`).
    pub fn validate(self) -> Result<Option<CleanupRules>, RepoError> {
        use serde_json::Value;
        let keep_last =
            match self.keep_last {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                    RepoError::Invalid(format!("cleanup.keep_last must be a whole number from 0 to {}, not {v}", u32::MAX))
                })?),
            };
        let matching = match self.matching {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(TagPattern::try_from(p)?),
            Some(v) => return Err(RepoError::Invalid(format!("cleanup.matching must be a regular expression (a string), not {v}"))),
        };
        if matching.is_some() && keep_last.is_none() {
            return Err(RepoError::Invalid("cleanup.matching selects the tags keep_last counts: set keep_last too".into()));
        }
        let untagged_after_days = match self.untagged_after_days {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_f64().filter(|d| d.is_finite() && (0.0..=MAX_DAYS).contains(d)).ok_or_else(|| {
                RepoError::Invalid(format!("cleanup.untagged_after_days must be a number of days from 0 to {MAX_DAYS}, not {v}"))
            })?),
        };
        if keep_last.is_none() && untagged_after_days.is_none() {
            return Ok(None);
        }
        Ok(Some(CleanupRules { keep_last, matching, untagged_after_days }))
    }
}

impl CleanupRules {
    /// `untagged_after_days` in whole seconds, as the contract carries it.
    pub fn untagged_after_seconds(&self) -> Option<u64> {
        // bounded by MAX_DAYS, so the cast cannot overflow
        self.untagged_after_days.map(|d| (d * SECONDS_PER_DAY).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> Result<Option<CleanupRules>, String> {
        let input: CleanupInput = serde_json::from_str(json).map_err(|e| e.to_string())?;
        input.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_the_usual_rules() {
        let r = rules(r#"{"keep_last": 10, "matching": "^v\\d+", "untagged_after_days": 7}"#).unwrap().unwrap();
        assert_eq!(r.keep_last, Some(10));
        assert_eq!(r.matching.as_ref().map(TagPattern::as_str), Some("^v\\d+"));
        assert_eq!(r.untagged_after_seconds(), Some(7 * 86_400));
        let r = rules(r#"{"untagged_after_days": 0.5}"#).unwrap().unwrap();
        assert_eq!(r.untagged_after_seconds(), Some(43_200));
        assert_eq!(rules("{}").unwrap(), None);
    }

    #[test]
    fn refuses_bad_rules() {
        for (json, says) in [
            (r#"{"keep_last": 3, "matching": "v(("}"#, "not a usable regular expression"),
            (r#"{"keep_last": 3, "matching": ""}"#, "1 to 256 bytes"),
            (r#"{"keep_last": 3, "matching": "a{1000}{1000}"}"#, "not a usable regular expression"),
            (r#"{"matching": "^v"}"#, "set keep_last too"),
            (r#"{"untagged_after_days": -1}"#, "from 0 to"),
            (r#"{"untagged_after_days": 1e9}"#, "from 0 to"),
            (r#"{"keep_last": -1}"#, "cleanup.keep_last must be a whole number"),
            (r#"{"keep_last": "3"}"#, "cleanup.keep_last must be a whole number"),
            (r#"{"keep_last": 1.5}"#, "cleanup.keep_last must be a whole number"),
            (r#"{"keep_last": 3, "matching": 7}"#, "cleanup.matching must be a regular expression"),
            (r#"{"keep_lats": 3}"#, "unknown field"),
        ] {
            let err = rules(json).unwrap_err();
            assert!(err.contains(says), "{json}: {err}");
        }
        let long = format!(r#"{{"keep_last": 3, "matching": "{}"}}"#, "a".repeat(257));
        assert!(rules(&long).unwrap_err().contains("1 to 256 bytes"));
    }

    #[test]
    fn the_configuration_file_declares_them_in_toml() {
        let input: CleanupInput = toml::from_str("keep_last = 3\nmatching = '^v\\d+'\nuntagged_after_days = 7").unwrap();
        let r = input.validate().unwrap().unwrap();
        assert_eq!((r.keep_last, r.matching.as_ref().map(TagPattern::as_str)), (Some(3), Some("^v\\d+")));
        assert_eq!(r.untagged_after_seconds(), Some(7 * 86_400));
    }

    #[test]
    fn stored_rules_round_trip() {
        let r = rules(r#"{"keep_last": 2, "matching": "^v"}"#).unwrap().unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"keep_last":2,"matching":"^v"}"#);
        assert_eq!(serde_json::from_str::<CleanupRules>(&json).unwrap(), r);
    }
}
