//! Builds RFC 6902 JSON Patch operations against the raw incoming object.
//!
//! Every operation is a targeted `add`: a missing parent is added as `{}`
//! first, arrays are appended with `/-`, and nothing existing is ever
//! replaced wholesale, so fields this program does not know survive. One
//! builder is shared by all rules of a review, so two rules that both need
//! `/metadata/annotations` on an object without annotations do not each
//! create it (the second `add` would wipe the first rule's key).

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::Value;

use crate::core::object;

/// The object does not have the shape a rule needs (a parent that is not an
/// object, an array that is not an array). The typed check before the rules
/// makes this unreachable for well-formed objects; it exists so a malformed
/// one yields "no patch" instead of a patch the API server cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot patch {path}: {what}")]
pub struct PatchError {
    pub path: String,
    pub what: &'static str,
}

#[derive(Debug)]
pub struct PatchBuilder<'a> {
    base: &'a Value,
    ops: Vec<PatchOperation>,
    /// Containers this patch added (as encoded pointers), so later
    /// operations see them as present.
    created: Vec<String>,
}

impl<'a> PatchBuilder<'a> {
    pub fn new(base: &'a Value) -> Self {
        PatchBuilder {
            base,
            ops: Vec::new(),
            created: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn ops(&self) -> &[PatchOperation] {
        &self.ops
    }

    pub fn into_patch(self) -> Patch {
        Patch(self.ops)
    }

    /// Sets `path` to `value` (an `add`, which also replaces an existing
    /// member), creating missing parent objects first.
    pub fn set(&mut self, path: &[&str], value: Value) -> Result<(), PatchError> {
        let pointer = self.ensure_parents(path)?;
        if value.is_object() || value.is_array() {
            self.created.push(pointer.clone());
        }
        self.add(pointer, value)
    }

    /// Appends `value` to the array at `path`, creating the array (and its
    /// parents) when missing.
    pub fn push(&mut self, path: &[&str], value: Value) -> Result<(), PatchError> {
        let mut pointer = encode(path);
        let present = if self.created.contains(&pointer) {
            None
        } else {
            Some(walk(self.base, path))
        };
        match present {
            None | Some(Some(Value::Array(_))) => {
                pointer.push_str("/-");
                self.add(pointer, value)
            }
            Some(None | Some(Value::Null)) => self.set(path, Value::Array(vec![value])),
            Some(Some(_)) => Err(PatchError {
                path: pointer,
                what: "not an array",
            }),
        }
    }

    /// Adds `{}` for each missing (or null) parent of `path`, and returns
    /// the encoded pointer of `path`. One walk down the object: each
    /// parent's pointer is a prefix of the next one's.
    fn ensure_parents(&mut self, path: &[&str]) -> Result<String, PatchError> {
        let mut pointer = String::with_capacity(path.iter().map(|t| t.len() + 2).sum());
        let mut below = Some(self.base);
        for (depth, token) in path.iter().enumerate() {
            // `pointer` is the parent `path[..depth]` here.
            if depth > 0 && !self.created.contains(&pointer) {
                match below {
                    Some(Value::Object(_)) => {}
                    None | Some(Value::Null) => {
                        self.add(pointer.clone(), Value::Object(Default::default()))?;
                        self.created.push(pointer.clone());
                    }
                    Some(_) => {
                        return Err(PatchError {
                            path: pointer,
                            what: "not an object",
                        });
                    }
                }
            }
            push_token(&mut pointer, token);
            below = below.and_then(|v| object::field(v, token));
        }
        Ok(pointer)
    }

    fn add(&mut self, pointer: String, value: Value) -> Result<(), PatchError> {
        // `encode` escapes every token, so this only re-checks the escapes.
        let path = PointerBuf::parse(pointer).map_err(|e| PatchError {
            path: e.to_string(),
            what: "not a JSON pointer",
        })?;
        self.ops
            .push(PatchOperation::Add(AddOperation { path, value }));
        Ok(())
    }
}

/// What the base object holds at `path`, if anything.
fn walk<'v>(base: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter()
        .try_fold(base, |cur, key| object::field(cur, key))
}

/// RFC 6901 pointer of `path`: `~` and `/` escaped as `~0` and `~1`, which
/// annotation keys such as `service.kubernetes.io/topology-mode` need.
/// Ours, not jsonptr's `PointerBuf` builders: they grow the string per
/// token, and the rules that patch ran 7–17% slower on them (BENCHMARKS.md).
fn encode(path: &[&str]) -> String {
    let mut pointer = String::with_capacity(path.iter().map(|t| t.len() + 2).sum::<usize>() + 2);
    for token in path {
        push_token(&mut pointer, token);
    }
    pointer
}

fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    let mut rest = token;
    // A byte scan: both are ASCII, so `i` is a char boundary (a `find` with
    // a char set was 2% of a review's instructions).
    while let Some(i) = rest.bytes().position(|b| b == b'~' || b == b'/') {
        pointer.push_str(&rest[..i]);
        pointer.push_str(if rest.as_bytes()[i] == b'~' {
            "~0"
        } else {
            "~1"
        });
        rest = &rest[i + 1..];
    }
    pointer.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(base: &Value, b: PatchBuilder<'_>) -> Value {
        let mut doc = base.clone();
        json_patch::patch(&mut doc, &b.into_patch()).unwrap();
        doc
    }

    fn paths(b: &PatchBuilder<'_>) -> Vec<String> {
        b.ops()
            .iter()
            .map(|op| match op {
                PatchOperation::Add(a) => a.path.to_string(),
                other => panic!("unexpected op {other:?}"),
            })
            .collect()
    }

    #[test]
    fn escapes_and_creates_parents_once() {
        let base = json!({"metadata": {"name": "a"}});
        let mut b = PatchBuilder::new(&base);
        b.set(
            &[
                "metadata",
                "annotations",
                "service.kubernetes.io/topology-mode",
            ],
            json!("Auto"),
        )
        .unwrap();
        b.set(&["metadata", "annotations", "a~b"], json!("x"))
            .unwrap();
        assert_eq!(
            paths(&b),
            [
                "/metadata/annotations",
                "/metadata/annotations/service.kubernetes.io~1topology-mode",
                "/metadata/annotations/a~0b"
            ]
        );
        let out = apply(&base, b);
        assert_eq!(
            out,
            json!({"metadata": {"name": "a", "annotations": {
                "service.kubernetes.io/topology-mode": "Auto", "a~b": "x"}}})
        );
    }

    #[test]
    fn null_parent_is_replaced_by_an_object() {
        let base = json!({"metadata": {"annotations": null}});
        let mut b = PatchBuilder::new(&base);
        b.set(&["metadata", "annotations", "k"], json!("v"))
            .unwrap();
        assert_eq!(
            apply(&base, b),
            json!({"metadata": {"annotations": {"k": "v"}}})
        );
    }

    #[test]
    fn arrays_are_created_then_appended() {
        let base = json!({"spec": {}});
        let mut b = PatchBuilder::new(&base);
        b.push(&["spec", "list"], json!(1)).unwrap();
        b.push(&["spec", "list"], json!(2)).unwrap();
        assert_eq!(paths(&b), ["/spec/list", "/spec/list/-"]);
        assert_eq!(apply(&base, b), json!({"spec": {"list": [1, 2]}}));

        let base = json!({"spec": {"list": [0]}});
        let mut b = PatchBuilder::new(&base);
        b.push(&["spec", "list"], json!(1)).unwrap();
        assert_eq!(apply(&base, b), json!({"spec": {"list": [0, 1]}}));
    }

    #[test]
    fn deep_missing_chain() {
        let base = json!({"spec": {"template": {"spec": {"containers": []}}}});
        let mut b = PatchBuilder::new(&base);
        let path = [
            "spec",
            "template",
            "spec",
            "affinity",
            "podAffinity",
            "preferred",
        ];
        b.push(&path, json!({"w": 1})).unwrap();
        b.push(&path, json!({"w": 2})).unwrap();
        let out = apply(&base, b);
        assert_eq!(
            out["spec"]["template"]["spec"]["affinity"],
            json!({"podAffinity": {"preferred": [{"w": 1}, {"w": 2}]}})
        );
    }

    #[test]
    fn wrong_shapes_are_errors_not_panics() {
        let base = json!({"metadata": {"annotations": "oops"}, "spec": {"list": {}}});
        let mut b = PatchBuilder::new(&base);
        let e = b
            .set(&["metadata", "annotations", "k"], json!("v"))
            .unwrap_err();
        assert_eq!(e.path, "/metadata/annotations");
        assert!(b.push(&["spec", "list"], json!(1)).is_err());
    }
}
