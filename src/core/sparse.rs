//! Parsing only the parts of an object that the rules read.
//!
//! A 10 KB Deployment is mostly containers, env and probes, none of which
//! any rule looks at. Building a `serde_json::Value` for all of it was most
//! of the cost of a review (profiled: over 40% of instructions in malloc and
//! free). So the admission path deserializes the object through an
//! [`Interest`] tree: kept subtrees become `Value`s exactly as sent, and
//! everything else is skipped (still checked as JSON) without allocating.
//!
//! The tree is not written by hand: it is the union of the paths declared
//! in [`crate::core::rules::RULES`] and [`crate::core::rules::KINDS`], so a rule that
//! declares a new read gets it parsed, and nothing else is. Every path a
//! rule reads or a patch writes is inside a kept subtree, so patches
//! computed on the sparse object apply to the full one.
//!
//! The kept parts are bounded too: a [`Budget`] of values per request. A
//! hostile body of a million tiny annotations would otherwise become a
//! million map entries (a twentyfold growth over its bytes); past the
//! budget the rest is only checked as JSON and the request is marked
//! oversized, which the review answers with "not reviewed".

use std::cell::Cell;
use std::fmt;
use std::sync::LazyLock;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::core::admission::{GroupVersionKind, Kind};
use crate::core::rules;

/// Which parts of a JSON value to keep.
#[derive(Debug, PartialEq)]
pub enum Interest {
    /// The whole subtree, as a `Value`.
    Keep,
    /// Only these members of an object; the rest is skipped.
    Fields(Vec<(&'static str, Interest)>),
    /// Every item of an array, through this interest.
    Items(Box<Interest>),
}

impl Interest {
    /// The tree keeping exactly `paths` (`"*"` for every item of an array).
    pub fn of_paths<'a>(paths: impl IntoIterator<Item = &'a [&'static str]>) -> Interest {
        let mut root = Interest::Fields(Vec::new());
        for path in paths {
            root.insert(path);
        }
        root
    }

    fn insert(&mut self, path: &[&'static str]) {
        let Some((first, rest)) = path.split_first() else {
            *self = Interest::Keep;
            return;
        };
        let child = match self {
            Interest::Keep => return,
            Interest::Items(child) => child.as_mut(),
            Interest::Fields(fields) if *first == "*" && fields.is_empty() => {
                *self = Interest::Items(Box::new(Interest::Fields(Vec::new())));
                match self {
                    Interest::Items(child) => child.as_mut(),
                    _ => return,
                }
            }
            Interest::Fields(fields) => {
                let i = match fields.iter().position(|(name, _)| name == first) {
                    Some(i) => i,
                    None => {
                        fields.push((first, Interest::Fields(Vec::new())));
                        fields.len() - 1
                    }
                };
                &mut fields[i].1
            }
        };
        child.insert(rest);
    }
}

/// What to keep of an object and of an old object, per kind.
struct Interests {
    object: Interest,
    old: Interest,
}

static INTERESTS: LazyLock<Vec<(Kind, Interests)>> = LazyLock::new(|| {
    Kind::ALL
        .into_iter()
        .map(|kind| {
            let paths = |old| Interest::of_paths(rules::declared_reads(kind, old).map(|r| r.path));
            (
                kind,
                Interests {
                    object: paths(false),
                    old: paths(true),
                },
            )
        })
        .collect()
});

/// What to keep of an object (and of its old object) of kind `gvk`; `None`
/// for kinds no rule reads.
pub fn interest(gvk: &GroupVersionKind) -> Option<(&'static Interest, &'static Interest)> {
    let kind = Kind::of(gvk)?;
    INTERESTS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, i)| (&i.object, &i.old))
}

/// Most values one request may build in its kept parts. Real objects keep
/// a few hundred (annotations, selectors, affinity); the API server caps
/// annotations at 256 KiB, a few ten thousand entries at the very most.
pub const MAX_VALUES: usize = 100_000;

/// Values left to build for one request.
#[derive(Debug)]
pub struct Budget {
    left: Cell<usize>,
    exhausted: Cell<bool>,
}

impl Budget {
    pub fn new(values: usize) -> Self {
        Budget {
            left: Cell::new(values),
            exhausted: Cell::new(false),
        }
    }

    /// No bound, for input whose size its reader already limits (a
    /// manifest file, an item of an API server's list).
    pub fn unlimited() -> Self {
        Budget::new(usize::MAX)
    }

    /// Some value was skipped for want of budget.
    pub fn exhausted(&self) -> bool {
        self.exhausted.get()
    }

    /// Takes one value; `false` once there is none left.
    fn take(&self) -> bool {
        match self.left.get() {
            0 => {
                self.exhausted.set(true);
                false
            }
            n => {
                self.left.set(n - 1);
                true
            }
        }
    }
}

/// Parses a whole JSON text keeping what `interest` names; the rest is
/// still checked as JSON, trailing characters included.
pub fn parse_str(text: &str, interest: &Interest, budget: &Budget) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = Sparse(interest, budget).deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// Deserializes a `Value` keeping only what an [`Interest`] names.
pub struct Sparse<'b>(pub &'b Interest, pub &'b Budget);

impl<'de> DeserializeSeed<'de> for Sparse<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            Interest::Keep => Counted(self.1).deserialize(d),
            _ => d.deserialize_any(SparseVisitor(self.0, self.1)),
        }
    }
}

struct SparseVisitor<'b>(&'b Interest, &'b Budget);

impl<'de> Visitor<'de> for SparseVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Interest::Fields(fields) = self.0 else {
            // An object where an array is expected: kept whole, so the
            // typed check reports it.
            return CountedVisitor(self.1).visit_map(map);
        };
        let mut out = Map::new();
        while let Some(field) = map.next_key_seed(FieldIndex(fields))? {
            match field {
                Some(i) => {
                    let (name, interest) = &fields[i];
                    let v = map.next_value_seed(Sparse(interest, self.1))?;
                    out.insert((*name).to_string(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let Interest::Items(item) = self.0 else {
            // Anything but an object where one is expected is kept as it
            // is, so the typed check reports it.
            return CountedVisitor(self.1).visit_seq(seq);
        };
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Sparse(item, self.1))? {
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

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        CountedVisitor(self.1).visit_bool(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        CountedVisitor(self.1).visit_i64(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        CountedVisitor(self.1).visit_u64(v)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        CountedVisitor(self.1).visit_f64(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        CountedVisitor(self.1).visit_str(v)
    }
}

/// A whole `Value`, each node paid for from the budget; once it runs out,
/// the rest is skipped (still parsed as JSON) and `null` stands in. Unlike
/// serde_json's own `Value::deserialize` it builds every object as written
/// (see [`crate::core::json::Exact`]).
pub(crate) struct Counted<'b>(pub(crate) &'b Budget);

impl<'de> DeserializeSeed<'de> for Counted<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0.exhausted() {
            d.deserialize_ignored_any(IgnoredAny)?;
            return Ok(Value::Null);
        }
        d.deserialize_any(CountedVisitor(self.0))
    }
}

struct CountedVisitor<'b>(&'b Budget);

impl CountedVisitor<'_> {
    fn leaf(&self, v: Value) -> Value {
        if self.0.take() { v } else { Value::Null }
    }
}

impl<'de> Visitor<'de> for CountedVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.take();
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let v = map.next_value_seed(Counted(self.0))?;
            if !self.0.exhausted() {
                out.insert(key, v);
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.take();
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Counted(self.0))? {
            if !self.0.exhausted() {
                out.push(v);
            }
        }
        Ok(Value::Array(out))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Counted(self.0).deserialize(d)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(self.leaf(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(self.leaf(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(self.leaf(Value::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(self.leaf(Number::from_f64(v).map_or(Value::Null, Value::Number)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(if self.0.take() {
            Value::String(v.to_string())
        } else {
            Value::Null
        })
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(self.leaf(Value::String(v)))
    }
}

/// A map key, matched against the wanted fields without allocating.
struct FieldIndex<'b>(&'b [(&'static str, Interest)]);

impl<'de> DeserializeSeed<'de> for FieldIndex<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldIndex<'_> {
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

    fn interest(kind: Kind) -> &'static Interest {
        let (group, version, name, _) = kind.api();
        super::interest(&GroupVersionKind::new(group, version, name))
            .unwrap()
            .0
    }

    fn sparse(interest: &Interest, v: &Value) -> Value {
        let text = serde_json::to_string(v).unwrap();
        parse_str(&text, interest, &Budget::new(MAX_VALUES)).unwrap()
    }

    #[test]
    fn keeps_what_the_rules_declare_and_drops_the_rest() {
        let dep = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"a": "b"}, "annotations": {"a": "b"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply", "time": "t",
                                            "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"big": 1}}}}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "strategy": {"type": "Recreate"},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "env": [{"name": "X"}]}],
                                           "affinity": {"podAffinity": {}, "podAntiAffinity": {"x": 1}}}}},
            "status": {"replicas": 2}
        });
        assert_eq!(
            sparse(interest(Kind::Deployment), &dep),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "annotations": {"a": "b"},
                             "managedFields": [{"operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"affinity": {"podAffinity": {}}}}}
            })
        );
    }

    #[test]
    fn a_service_keeps_the_fields_its_rules_read_not_its_ports() {
        let svc = json!({"kind": "Service", "spec": {"type": "LoadBalancer", "selector": {"app": "x"},
            "ports": [{"port": 80}], "externalTrafficPolicy": "Local", "sessionAffinity": "None"}});
        assert_eq!(
            sparse(interest(Kind::Service), &svc),
            json!({"kind": "Service", "spec": {"type": "LoadBalancer", "selector": {"app": "x"},
                   "externalTrafficPolicy": "Local"}})
        );
    }

    #[test]
    fn the_tree_is_the_union_of_the_declared_paths() {
        let i = Interest::of_paths([
            &["a", "b"][..],
            &["a", "c", "*", "d"][..],
            &["a", "b", "deeper"][..],
            &["e"][..],
        ]);
        assert_eq!(
            i,
            Interest::Fields(vec![
                (
                    "a",
                    Interest::Fields(vec![
                        ("b", Interest::Keep),
                        (
                            "c",
                            Interest::Items(Box::new(Interest::Fields(vec![(
                                "d",
                                Interest::Keep
                            )])))
                        )
                    ])
                ),
                ("e", Interest::Keep)
            ])
        );
    }

    #[test]
    fn unexpected_shapes_are_kept_for_the_typed_check() {
        let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": null,
                         "spec": {"template": "oops", "selector": 3}});
        assert_eq!(sparse(interest(Kind::Deployment), &dep), dep);
        let arr = json!({"metadata": [1, {"a": 2}]});
        assert_eq!(sparse(interest(Kind::Service), &arr), arr);
    }

    #[test]
    fn escaped_keys_still_match() {
        let text = r#"{"k\u0069nd": "Service", "spec": {"type": "ClusterIP"}, "other": "\u00e9"}"#;
        let v = parse_str(text, interest(Kind::Service), &Budget::new(10)).unwrap();
        assert_eq!(v, json!({"kind": "Service", "spec": {"type": "ClusterIP"}}));
    }

    #[test]
    fn invalid_json_in_skipped_parts_is_still_an_error() {
        let text = r#"{"kind": "Deployment", "status": {"x": tru}}"#;
        assert!(parse_str(text, interest(Kind::Deployment), &Budget::new(10)).is_err());
    }

    #[test]
    fn the_budget_bounds_what_is_built_and_says_so() {
        let many: Map<String, Value> = (0..1000).map(|i| (format!("k{i}"), json!(""))).collect();
        let svc = json!({"metadata": {"annotations": many}, "spec": {"type": "ClusterIP"}});
        let text = serde_json::to_string(&svc).unwrap();
        let budget = Budget::new(100);
        let v = parse_str(&text, interest(Kind::Service), &budget).unwrap();
        assert!(budget.exhausted());
        let kept = v["metadata"]["annotations"].as_object().map_or(0, Map::len);
        assert!(kept < 100, "{kept}");
        // Within budget nothing is lost or flagged.
        let budget = Budget::new(MAX_VALUES);
        let v = parse_str(&text, interest(Kind::Service), &budget).unwrap();
        assert!(!budget.exhausted());
        assert_eq!(v, svc);
    }
}
