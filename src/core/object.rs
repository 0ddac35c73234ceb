//! Read-only accessors over the raw JSON of an incoming object.
//!
//! The rules read the object as the API server sent it (`serde_json::Value`)
//! so that nothing a typed struct does not know about is lost or reordered.
//! JSON `null` is treated as absent, as the API server does.

use serde_json::{Map, Value};

/// Maps up to this many entries are searched key by key instead of through
/// their hash index.
const SCAN_LIMIT: usize = 16;

/// `map[key]`. The objects a review walks are small (a handful of keys per
/// level), and serde_json's maps hash every lookup with SipHash, which
/// costs more than comparing a few short keys: profiled, lookups were 6% of
/// a review's instructions.
pub fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if map.len() <= SCAN_LIMIT {
        map.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    } else {
        map.get(key)
    }
}

/// `v[key]` when `v` is an object.
pub fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    get(v.as_object()?, key)
}

/// The value at `path`, or `None` when any step is missing or `null`.
pub fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for key in path {
        cur = field(cur, key)?;
    }
    (!cur.is_null()).then_some(cur)
}

pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path)?.as_str()
}

pub fn object_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Map<String, Value>> {
    at(v, path)?.as_object()
}

pub fn array_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

pub fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    get(object_at(obj, &["metadata", "annotations"])?, key)?.as_str()
}

pub fn has_annotation(obj: &Value, key: &str) -> bool {
    object_at(obj, &["metadata", "annotations"]).is_some_and(|a| get(a, key).is_some())
}

/// `metadata.name`, falling back to `generateName` for objects the API
/// server has not named yet (it names them after admission).
pub fn display_name(obj: &Value) -> &str {
    str_at(obj, &["metadata", "name"])
        .or_else(|| str_at(obj, &["metadata", "generateName"]))
        .unwrap_or("")
}

/// A string map such as a Service selector or pod labels; non-string values
/// are skipped (the typed check rejects them before rules run).
pub fn string_map<'a>(v: &'a Value, path: &[&str]) -> impl Iterator<Item = (&'a str, &'a str)> {
    object_at(v, path)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
}

/// True when every `key=value` of `selector` appears in `labels`, the way a
/// Service selector matches pods. An empty selector matches nothing here:
/// for a Service it means "no selector", not "every pod".
pub fn selector_matches<'a>(
    selector: impl IntoIterator<Item = (&'a str, &'a str)>,
    labels: &Map<String, Value>,
) -> bool {
    let mut any = false;
    for (k, v) in selector {
        any = true;
        if get(labels, k).and_then(Value::as_str) != Some(v) {
            return false;
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_is_absent() {
        let v = json!({"metadata": {"annotations": null, "name": "a"}});
        assert!(at(&v, &["metadata", "annotations"]).is_none());
        assert_eq!(str_at(&v, &["metadata", "name"]), Some("a"));
        assert!(annotation(&v, "x").is_none());
        assert!(array_at(&v, &["spec", "x"]).is_empty());
    }

    #[test]
    fn selectors() {
        let labels = json!({"app": "orders", "tier": "api"});
        let labels = labels.as_object().unwrap();
        assert!(selector_matches([("app", "orders")], labels));
        assert!(!selector_matches([("app", "orders"), ("v", "2")], labels));
        assert!(!selector_matches([], labels));
    }

    #[test]
    fn lookups_agree_on_small_and_large_maps() {
        for n in [0, 1, SCAN_LIMIT, SCAN_LIMIT + 1, 100] {
            let map: Map<String, Value> = (0..n).map(|i| (format!("k{i}"), json!(i))).collect();
            for i in 0..n + 2 {
                let key = format!("k{i}");
                assert_eq!(get(&map, &key), map.get(&key), "{n} entries, {key}");
            }
            assert_eq!(get(&map, ""), None);
        }
    }
}
