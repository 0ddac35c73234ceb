//! Parsing only the parts of an object that the rules read.
//!
//! A 10 KB Deployment is mostly containers, env and probes, none of which
//! any rule looks at. Building a `serde_json::Value` for all of it was most
//! of the cost of a review (profiled: over 40% of instructions in malloc and
//! free). So the admission path deserializes the object through an
//! [`Interest`] tree: kept subtrees become `Value`s exactly as sent, and
//! everything else is skipped (still checked as JSON) without allocating.
//! Every path a rule reads or a patch writes is inside a kept subtree, so
//! patches computed on the sparse object apply to the full one.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Which parts of a JSON object to keep.
#[derive(Debug)]
pub enum Interest {
    /// The whole subtree, as a `Value`.
    Keep,
    /// Only these members of an object; the rest is skipped.
    Fields(&'static [(&'static str, Interest)]),
}

use Interest::{Fields, Keep};

const METADATA: Interest = Fields(&[
    ("name", Keep),
    ("generateName", Keep),
    ("namespace", Keep),
    ("labels", Keep),
    ("annotations", Keep),
]);

/// Services are small, and `spec` is what every Service rule reads: kept
/// whole, so a malformed spec is still caught by the typed check.
pub const SERVICE: Interest = Fields(&[
    ("apiVersion", Keep),
    ("kind", Keep),
    ("metadata", METADATA),
    ("spec", Keep),
]);

/// What zone-spread and call-affinity read: the selector, the pod
/// template's labels, and its scheduling constraints.
pub const DEPLOYMENT: Interest = Fields(&[
    ("apiVersion", Keep),
    ("kind", Keep),
    ("metadata", METADATA),
    (
        "spec",
        Fields(&[
            ("replicas", Keep),
            ("selector", Keep),
            (
                "template",
                Fields(&[
                    (
                        "metadata",
                        Fields(&[("labels", Keep), ("annotations", Keep)]),
                    ),
                    (
                        "spec",
                        Fields(&[
                            ("topologySpreadConstraints", Keep),
                            ("affinity", Keep),
                            ("nodeSelector", Keep),
                        ]),
                    ),
                ]),
            ),
        ]),
    ),
]);

/// What to keep of an object of kind `gvk`; `None` for kinds no rule reads.
pub fn interest(gvk: &crate::review::GroupVersionKind) -> Option<&'static Interest> {
    use crate::review::Target;
    Target::of(gvk).map(|t| match t {
        Target::Service => &SERVICE,
        Target::Deployment => &DEPLOYMENT,
    })
}

/// Deserializes a `Value` keeping only what `Interest` names.
pub struct Sparse(pub &'static Interest);

impl<'de> DeserializeSeed<'de> for Sparse {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Keep => serde::Deserialize::deserialize(d),
            Fields(fields) => d.deserialize_any(SparseVisitor(fields)),
        }
    }
}

struct SparseVisitor(&'static [(&'static str, Interest)]);

impl<'de> Visitor<'de> for SparseVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(field) = map.next_key_seed(FieldIndex(self.0))? {
            match field {
                Some(i) => {
                    let (name, interest) = &self.0[i];
                    let v = map.next_value_seed(Sparse(interest))?;
                    out.insert((*name).to_string(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    // Anything but an object where one is expected is kept as it is, so the
    // typed check reports it.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Value>()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
}

/// A map key, matched against the wanted fields without allocating.
struct FieldIndex(&'static [(&'static str, Interest)]);

impl<'de> DeserializeSeed<'de> for FieldIndex {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldIndex {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|(name, _)| *name == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sparse(interest: &'static Interest, v: &Value) -> Value {
        let text = serde_json::to_string(v).unwrap();
        let mut de = serde_json::Deserializer::from_str(&text);
        Sparse(interest).deserialize(&mut de).unwrap()
    }

    #[test]
    fn keeps_what_the_rules_read_and_drops_the_rest() {
        let dep = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"a": "b"}, "managedFields": [{"big": true}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "strategy": {"type": "Recreate"},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "env": [{"name": "X"}]}],
                                           "affinity": {"podAffinity": {}}}}},
            "status": {"replicas": 2}
        });
        assert_eq!(
            sparse(&DEPLOYMENT, &dep),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "annotations": {"a": "b"}},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"affinity": {"podAffinity": {}}}}}
            })
        );
    }

    #[test]
    fn unexpected_shapes_are_kept_for_the_typed_check() {
        let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": null,
                         "spec": {"template": "oops", "selector": 3}});
        assert_eq!(sparse(&DEPLOYMENT, &dep), dep);
        let arr = json!({"metadata": [1, {"a": 2}]});
        assert_eq!(sparse(&SERVICE, &arr), arr);
    }

    #[test]
    fn escaped_keys_still_match() {
        let text = r#"{"k\u0069nd": "Service", "spec": {"type": "ClusterIP"}, "other": "\u00e9"}"#;
        let mut de = serde_json::Deserializer::from_str(text);
        let v = Sparse(&SERVICE).deserialize(&mut de).unwrap();
        assert_eq!(v, json!({"kind": "Service", "spec": {"type": "ClusterIP"}}));
    }

    #[test]
    fn invalid_json_in_skipped_parts_is_still_an_error() {
        let text = r#"{"kind": "Deployment", "status": {"x": tru}}"#;
        let mut de = serde_json::Deserializer::from_str(text);
        assert!(Sparse(&DEPLOYMENT).deserialize(&mut de).is_err());
    }
}
