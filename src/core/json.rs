//! JSON values read from input exactly as written.
//!
//! serde_json's own `Deserialize` for `Value` is not exact in this crate.
//! The `raw_value` feature, which the audit needs to page through lists
//! without building them, makes it read an object whose first key is
//! `$serde_json::private::RawValue` as that key's string parsed as JSON, or
//! fail on it. An annotation with that key then turned a manifest into a
//! different object (`zonewise mutate` printed it so, and skipped the rules
//! its parsed value named) or into a misleading parse error (found by
//! fuzzing). So every `Value` read from input goes through [`Exact`], or
//! through [`crate::core::sparse`] on the admission path; both build
//! objects key by key.

use serde::de::DeserializeSeed;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::core::sparse::{Budget, Counted};

/// A whole `Value`, every object as written. Unbounded: for input whose
/// size its reader already limits (a manifest file, an item of an API
/// server's list); the admission path bounds what it builds with a
/// [`Budget`] of its own.
#[derive(Debug)]
pub struct Exact(pub Value);

impl<'de> Deserialize<'de> for Exact {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Exact, D::Error> {
        Counted(&Budget::unlimited()).deserialize(d).map(Exact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOKEN: &str = "$serde_json::private::RawValue";

    #[test]
    fn an_object_keyed_by_serde_jsons_private_token_stays_as_written() {
        for (text, written) in [
            (
                format!(r#"{{"{TOKEN}": "{{\"a\": 1}}"}}"#),
                json!({TOKEN: "{\"a\": 1}"}),
            ),
            (
                format!(r#"{{"{TOKEN}": "not json"}}"#),
                json!({TOKEN: "not json"}),
            ),
            (
                format!(r#"{{"{TOKEN}": 7, "b": [1, {{"{TOKEN}": ""}}]}}"#),
                json!({TOKEN: 7, "b": [1, {TOKEN: ""}]}),
            ),
        ] {
            let exact: Exact = serde_json::from_str(&text).unwrap();
            assert_eq!(exact.0, written, "{text}");
        }
        // What serde_json's own `Value` makes of them in this crate, which
        // is why `Exact` exists.
        let plain: Value =
            serde_json::from_str(&format!(r#"{{"{TOKEN}": "{{\"a\": 1}}"}}"#)).unwrap();
        assert_eq!(plain, json!({"a": 1}));
        assert!(serde_json::from_str::<Value>(&format!(r#"{{"{TOKEN}": "not json"}}"#)).is_err());
    }

    #[test]
    fn every_other_value_reads_as_serde_json_reads_it() {
        let text = r#"{"s": "é\n", "n": [0, -1, 18446744073709551615, 1.5e300, -0.0],
                       "b": [true, false, null], "o": {"z": {}, "a": [], "z2": 1, "z": 2}}"#;
        let exact: Exact = serde_json::from_str(text).unwrap();
        let plain: Value = serde_json::from_str(text).unwrap();
        assert_eq!(exact.0, plain);
        // Keys keep their order (and a repeated key its first place), as
        // `zonewise mutate` prints them.
        let keys: Vec<&String> = exact.0["o"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["z", "a", "z2"]);
        assert_eq!(exact.0["o"]["z"], json!(2));
    }

    #[test]
    fn yaml_reads_the_same_way() {
        let yaml = format!(
            "metadata:\n  annotations:\n    \"{TOKEN}\": '{{\"a\": 1}}'\nbig: 12345678901234567890\n"
        );
        let exact: Exact = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(
            exact.0,
            json!({"metadata": {"annotations": {TOKEN: "{\"a\": 1}"}}, "big": 12345678901234567890u64})
        );
        // Integers past 64 bits: the same answer as serde_json's `Value`
        // (serde-saphyr hands them over as floats).
        for big in [
            "123456789012345678901234567890",
            "-123456789012345678901234567890",
            "-9223372036854775809",
        ] {
            let exact = serde_saphyr::from_str::<Exact>(big).map(|e| e.0);
            let plain = serde_saphyr::from_str::<Value>(big);
            match (exact, plain) {
                (Ok(e), Ok(p)) => assert_eq!(e, p, "{big}"),
                (Err(_), Err(_)) => {}
                (e, p) => panic!("{big}: {e:?} against {p:?}"),
            }
        }
    }
}
