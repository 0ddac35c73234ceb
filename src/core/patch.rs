//! Builds RFC 6902 JSON Patch operations against the raw incoming object.
//!
//! Every operation is a targeted `add`: a missing parent is added as `{}`
//! first, arrays are appended with `/-`, and nothing existing is ever
//! replaced wholesale, so fields this program does not know survive. One
//! builder is shared by all rules of a review, so two rules that both need
//! `/metadata/annotations` on an object without annotations do not each
//! create it (the second `add` would wipe the first rule's key).

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::Value;

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
    /// Containers this patch added, so later operations see them as present.
    created: Vec<Vec<String>>,
}

/// What is at a path once this patch's own additions are taken into account.
enum Slot<'a> {
    Missing,
    Created,
    Present(&'a Value),
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
        self.ensure_parents(path)?;
        self.record_container(path, &value);
        self.ops.push(add(pointer(path, None), value));
        Ok(())
    }

    /// Appends `value` to the array at `path`, creating the array (and its
    /// parents) when missing.
    pub fn push(&mut self, path: &[&str], value: Value) -> Result<(), PatchError> {
        match self.slot(path) {
            Slot::Created => {
                self.ops.push(add(pointer(path, Some("-")), value));
                Ok(())
            }
            Slot::Present(Value::Array(_)) => {
                self.ops.push(add(pointer(path, Some("-")), value));
                Ok(())
            }
            Slot::Present(Value::Null) | Slot::Missing => self.set(path, Value::Array(vec![value])),
            Slot::Present(_) => Err(PatchError {
                path: display(path),
                what: "not an array",
            }),
        }
    }

    fn ensure_parents(&mut self, path: &[&str]) -> Result<(), PatchError> {
        for depth in 1..path.len() {
            let parent = &path[..depth];
            match self.slot(parent) {
                Slot::Created | Slot::Present(Value::Object(_)) => {}
                Slot::Present(Value::Null) | Slot::Missing => {
                    self.ops.push(add(
                        pointer(parent, None),
                        Value::Object(Default::default()),
                    ));
                    self.created
                        .push(parent.iter().map(|s| s.to_string()).collect());
                }
                Slot::Present(_) => {
                    return Err(PatchError {
                        path: display(parent),
                        what: "not an object",
                    });
                }
            }
        }
        Ok(())
    }

    fn record_container(&mut self, path: &[&str], value: &Value) {
        if value.is_object() || value.is_array() {
            self.created
                .push(path.iter().map(|s| s.to_string()).collect());
        }
    }

    fn slot(&self, path: &[&str]) -> Slot<'a> {
        if self
            .created
            .iter()
            .any(|c| c.iter().map(String::as_str).eq(path.iter().copied()))
        {
            return Slot::Created;
        }
        let mut cur = self.base;
        for key in path {
            match cur.as_object().and_then(|m| m.get(*key)) {
                Some(next) => cur = next,
                None => return Slot::Missing,
            }
        }
        Slot::Present(cur)
    }
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

/// RFC 6901 pointer; `Token::new` escapes `~` and `/` (`~0`, `~1`), which
/// annotation keys such as `service.kubernetes.io/topology-mode` need.
fn pointer(path: &[&str], last: Option<&str>) -> PointerBuf {
    PointerBuf::from_tokens(path.iter().copied().chain(last).map(Token::new))
}

fn display(path: &[&str]) -> String {
    pointer(path, None).to_string()
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
