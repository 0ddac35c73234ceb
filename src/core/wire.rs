//! The `admission.k8s.io/v1` AdmissionReview on the wire.
//!
//! Own serde code rather than `kube::core::admission`: the request side
//! parses `object` once, as raw JSON, and only as much of it as the rules
//! read (kube's `DynamicObject` goes through `serde(flatten)`, which buffers
//! the whole object twice), and the response side sends `patch` as the
//! base64 string the Kubernetes API documents, where kube-core 5 sends an
//! array of numbers (kube-rs/kube#1781).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::core::admission::{AdmissionRequest, GroupVersionKind, Operation, Outcome, Verdict};
use crate::core::json::Exact;
use crate::core::sparse::{self, Budget};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// Why a body is not a usable AdmissionReview (answered with 400).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON: {0}")]
    Malformed(String),
    #[error("not an AdmissionReview: {0}")]
    NotAReview(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request has no uid")]
    NoUid,
    /// An identifier no API server sends: too long, or with control
    /// characters. Refused rather than echoed back or logged.
    #[error("AdmissionReview request {field} is not a valid identifier: {why}")]
    BadIdentifier { field: &'static str, why: String },
}

impl DecodeError {
    /// A stable machine-readable name, used in the error body and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed_json",
            DecodeError::NotAReview(_) => "not_admission_review",
            DecodeError::NoRequest => "no_request",
            DecodeError::NoUid => "no_uid",
            DecodeError::BadIdentifier { .. } => "bad_identifier",
        }
    }
}

/// How much of `object`/`oldObject` to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objects {
    /// Only what the rules read (the admission path; see [`crate::core::sparse`]).
    Sparse,
    /// Everything (`zonewise mutate`, which prints the objects).
    Full,
}

/// Decodes an AdmissionReview for the admission path.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest, DecodeError> {
    decode_with(body, Objects::Sparse)
}

pub fn decode_with(body: &[u8], objects: Objects) -> Result<AdmissionRequest, DecodeError> {
    // JSON is UTF-8 (RFC 8259). Checked over the whole body first, because
    // the parts the sparse parse skips are not decoded and so would not be
    // checked otherwise (found by fuzzing).
    let text = std::str::from_utf8(body)
        .map_err(|e| DecodeError::Malformed(format!("body is not UTF-8: {e}")))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let review = ReviewSeed(objects)
        .deserialize(&mut de)
        .and_then(|r| de.end().map(|()| r))
        .map_err(refused)?;
    match (review.api_version.as_deref(), review.kind.as_deref()) {
        (Some(API_VERSION), Some(KIND)) => {}
        (v, k) => {
            return Err(DecodeError::NotAReview(format!(
                "expected apiVersion {API_VERSION} and kind {KIND}, got {} {}",
                v.unwrap_or("<none>"),
                k.unwrap_or("<none>")
            )));
        }
    }
    let mut req = review.request.ok_or(DecodeError::NoRequest)?;
    req.read_early_objects().map_err(refused)?;
    let uid = req
        .uid
        .filter(|u| !u.is_empty())
        .ok_or(DecodeError::NoUid)?;
    let kind = req
        .kind
        .ok_or_else(|| DecodeError::NotAReview("request has no kind".into()))?;
    let operation = req
        .operation
        .ok_or_else(|| DecodeError::NotAReview("request has no operation".into()))?;
    let name = req.name.unwrap_or_default();
    let namespace = req.namespace.unwrap_or_default();
    let sub_resource = req.sub_resource;
    identifier("uid", &uid, MAX_UID)?;
    identifier("name", &name, MAX_NAME)?;
    identifier("namespace", &namespace, MAX_NAMESPACE)?;
    identifier("kind.group", &kind.group, MAX_NAME)?;
    identifier("kind.version", &kind.version, MAX_NAMESPACE)?;
    identifier("kind.kind", &kind.kind, MAX_NAMESPACE)?;
    identifier(
        "subResource",
        sub_resource.as_deref().unwrap_or(""),
        MAX_NAMESPACE,
    )?;
    identifier("operation", &operation, MAX_NAMESPACE)?;
    Ok(AdmissionRequest {
        uid,
        kind,
        sub_resource,
        name,
        namespace,
        operation: Operation::parse(&operation),
        dry_run: req.dry_run.unwrap_or(false),
        object: req.object,
        old_object: req.old_object,
        complete: req.complete,
        oversized: req.oversized,
    })
}

fn refused(e: serde_json::Error) -> DecodeError {
    // serde_json's recursion limit (128) turns pathological nesting into a
    // syntax error, before it can exhaust the stack.
    match e.classify() {
        serde_json::error::Category::Data => DecodeError::NotAReview(e.to_string()),
        _ => DecodeError::Malformed(e.to_string()),
    }
}

/// The API server's uids are UUIDs (36 characters).
pub const MAX_UID: usize = 128;
/// Object names: DNS subdomains, at most 253 characters.
pub const MAX_NAME: usize = 253;
/// Namespaces, versions, kinds: DNS labels, at most 63 characters.
pub const MAX_NAMESPACE: usize = 63;

/// An identifier is echoed in the response and written to logs: it must
/// be what an API server sends, short and printable.
fn identifier(field: &'static str, value: &str, max: usize) -> Result<(), DecodeError> {
    let why = if value.len() > max {
        format!("longer than {max} bytes")
    } else if value.chars().any(char::is_control) {
        "contains control characters".to_string()
    } else {
        return Ok(());
    };
    Err(DecodeError::BadIdentifier { field, why })
}

#[derive(Default)]
struct ReviewIn<'de> {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<RequestIn<'de>>,
}

struct RequestIn<'de> {
    uid: Option<String>,
    kind: Option<GroupVersionKind>,
    sub_resource: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    operation: Option<String>,
    dry_run: Option<bool>,
    object: Option<Value>,
    old_object: Option<Value>,
    complete: bool,
    oversized: bool,
    /// Objects sent before `kind` (the API server never does), as the text
    /// they are: read once the kind is known, so that the answer does not
    /// depend on the order of the fields and nothing is built beyond the
    /// budget.
    early: [Option<&'de RawValue>; 2],
    /// One budget for object and oldObject together (see `sparse`).
    budget: Budget,
}

/// The review, visited by hand so the objects can be parsed according to
/// `request.kind` (which the API server sends before `object`).
struct ReviewSeed(Objects);

impl<'de> DeserializeSeed<'de> for ReviewSeed {
    type Value = ReviewIn<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ReviewIn<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReviewSeed {
    type Value = ReviewIn<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AdmissionReview object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReviewIn<'de>, A::Error> {
        let mut out = ReviewIn::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.as_str() {
                "apiVersion" => out.api_version = map.next_value()?,
                "kind" => out.kind = map.next_value()?,
                "request" => out.request = map.next_value_seed(RequestSeed(self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

struct RequestSeed(Objects);

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = Option<RequestIn<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<RequestIn<'de>>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = Option<RequestIn<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AdmissionRequest object")
    }

    fn visit_none<E>(self) -> Result<Option<RequestIn<'de>>, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Option<RequestIn<'de>>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<RequestIn<'de>>, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<RequestIn<'de>>, A::Error> {
        let mut out = RequestIn {
            uid: None,
            kind: None,
            sub_resource: None,
            name: None,
            namespace: None,
            operation: None,
            dry_run: None,
            object: None,
            old_object: None,
            complete: true,
            oversized: false,
            early: [None, None],
            budget: Budget::new(sparse::MAX_VALUES),
        };
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key.as_str() {
                "uid" => out.uid = map.next_value()?,
                "kind" => out.kind = map.next_value()?,
                "subResource" => out.sub_resource = map.next_value()?,
                "name" => out.name = map.next_value()?,
                "namespace" => out.namespace = map.next_value()?,
                "operation" => out.operation = map.next_value()?,
                "dryRun" => out.dry_run = map.next_value()?,
                field @ ("object" | "oldObject") => {
                    let slot = usize::from(field == "oldObject");
                    out.early[slot] = None;
                    let value = match (self.0, out.kind.as_ref()) {
                        (Objects::Full, _) => map.next_value::<Option<Exact>>()?.map(|e| e.0),
                        (Objects::Sparse, None) => {
                            out.early[slot] = Some(map.next_value()?);
                            None
                        }
                        (Objects::Sparse, Some(gvk)) => match sparse::interest(gvk) {
                            Some(interests) => {
                                out.complete = false;
                                map.next_value_seed(OptionalSparse(
                                    interests_for(interests, slot),
                                    &out.budget,
                                ))?
                            }
                            // A kind no rule handles: its objects are never read.
                            None => {
                                map.next_value::<IgnoredAny>()?;
                                None
                            }
                        },
                    };
                    out.set_object(slot, value);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(out))
    }
}

/// The interest for `object` (slot 0) or `oldObject` (slot 1).
fn interests_for(
    (object, old): (&'static sparse::Interest, &'static sparse::Interest),
    slot: usize,
) -> &'static sparse::Interest {
    if slot == 0 { object } else { old }
}

impl RequestIn<'_> {
    /// Reads the objects sent before `kind`. Without a kind the request is
    /// refused anyway; with one no rule handles, they are never read.
    fn read_early_objects(&mut self) -> Result<(), serde_json::Error> {
        // The usual order has none: no kind lookup for it.
        if self.early.iter().any(Option::is_some)
            && let Some(interests) = self.kind.as_ref().and_then(sparse::interest)
        {
            for slot in 0..2 {
                let Some(raw) = self.early[slot].take() else {
                    continue;
                };
                self.complete = false;
                let i = interests_for(interests, slot);
                let value = sparse::parse_str(raw.get(), i, &self.budget)?;
                self.set_object(slot, (!value.is_null()).then_some(value));
            }
        }
        self.oversized = self.budget.exhausted();
        Ok(())
    }

    fn set_object(&mut self, slot: usize, value: Option<Value>) {
        if slot == 0 {
            self.object = value;
        } else {
            self.old_object = value;
        }
    }
}

/// `null` or a sparsely parsed object.
struct OptionalSparse<'b>(&'static sparse::Interest, &'b Budget);

impl<'de> DeserializeSeed<'de> for OptionalSparse<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        match sparse::Sparse(self.0, self.1).deserialize(d)? {
            Value::Null => Ok(None),
            v => Ok(Some(v)),
        }
    }
}

/// A map key, borrowed from the body when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl Key<'_> {
    fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseHead<'a>,
}

/// The response's fields before the patch; the patch, its type and the
/// warnings are appended by [`encode`].
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseHead<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut<'a>>,
}

/// A `metav1.Status`: the API server shows `message` to the user and uses
/// `code` as the HTTP status of the rejected request.
#[derive(Serialize)]
struct StatusOut<'a> {
    status: &'static str,
    message: &'a str,
    reason: &'static str,
    code: u16,
}

/// Serializes the AdmissionReview response for `uid`: `{"apiVersion",
/// "kind", "response": {"uid", "allowed", "status"?, "patch"?,
/// "patchType"?, "warnings"?}}`.
///
/// The head goes through serde_json; the base64 patch is written into the
/// buffer as it is: its alphabet never needs JSON escaping, and running a
/// few KiB of it through serde_json's escape scan was a measurable part of
/// the response-encoding line of the per-stage profile (BENCHMARKS.md).
pub fn encode(uid: &str, outcome: &Outcome) -> Vec<u8> {
    use base64::Engine as _;
    let head = ReviewOut {
        api_version: API_VERSION,
        kind: KIND,
        response: ResponseHead {
            uid,
            allowed: outcome.verdict.is_allowed(),
            status: match &outcome.verdict {
                Verdict::Denied { message, .. } => Some(StatusOut {
                    status: "Failure",
                    message,
                    reason: "Forbidden",
                    code: 403,
                }),
                _ => None,
            },
        },
    };
    // Only strings, bools and numbers: serialization cannot fail.
    let mut out = serde_json::to_vec(&head).unwrap_or_default();
    // Reopen the two objects the head closed.
    out.truncate(out.len().saturating_sub(2));
    if let Some(p) = outcome.patch().filter(|p| !p.0.is_empty()) {
        let json = patch_json(p);
        out.extend_from_slice(br#","patch":""#);
        let start = out.len();
        out.resize(
            start + base64::encoded_len(json.len(), true).unwrap_or(0),
            0,
        );
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(&json, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + written);
        out.extend_from_slice(br#"","patchType":"JSONPatch""#);
    }
    if !outcome.warnings.is_empty() {
        out.extend_from_slice(br#","warnings":["#);
        for (i, w) in outcome.warnings.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(&mut out, w);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}}");
    out
}

/// The patch as JSON. `add` operations (all that the rules write) are
/// written field by field, which skips serde's tagged-enum plumbing (about
/// a tenth of the answer's cost); anything else goes through serde.
fn patch_json(p: &json_patch::Patch) -> Vec<u8> {
    use json_patch::PatchOperation;
    let mut out = Vec::with_capacity(1024);
    out.push(b'[');
    for (i, op) in p.0.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Strings and JSON values only: writing to a Vec cannot fail.
        let _ = match op {
            PatchOperation::Add(add) => {
                out.extend_from_slice(br#"{"op":"add","path":"#);
                write_str(&mut out, add.path.as_str());
                out.extend_from_slice(br#","value":"#);
                write_value(&mut out, &add.value);
                out.push(b'}');
                Ok(())
            }
            other => serde_json::to_writer(&mut out, other),
        };
    }
    out.push(b']');
    out
}

/// Writes `v` as serde_json would (compact, keys in their order). Only the
/// strings differ in how: see [`write_str`].
fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Object(m) => {
            out.push(b'{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                write_value(out, v);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, v);
            }
            out.push(b']');
        }
        Value::String(s) => write_str(out, s),
        // Null, booleans and numbers: serde_json's own formatting, and
        // writing to a Vec cannot fail.
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// A JSON string. Nearly every string in an answer (keys, label values,
/// pointers, warnings) needs no escape; those are copied as they are.
/// serde_json's writer looks each byte up in its escape table, which was
/// 5% of a review's instructions (BENCHMARKS.md). Anything else goes
/// through serde_json, so its escapes stay exactly serde_json's.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether any byte is a quote, a backslash or a control character (the
/// bytes JSON requires escaped), eight bytes at a time: each test is the
/// "has a byte less than n" bit trick on a u64, exact for the whole word.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x;
    let any = |x: u64| {
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        (below(x, 0x20) | below(quote, 1) | below(backslash, 1)) & HIGH != 0
    };
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        if any(u64::from_le_bytes(word)) {
            return true;
        }
    }
    // The tail, padded with a byte that needs no escape.
    let tail = chunks.remainder();
    let mut word = [b'a'; 8];
    word[..tail.len()].copy_from_slice(tail);
    any(u64::from_le_bytes(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn decode_errors_are_classified() {
        assert!(matches!(
            decode(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(decode(b""), Err(DecodeError::Malformed(_))));
        let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for fields in [
            [("kind", DEPLOYMENT), ("object", &nested)],
            [("object", &nested), ("kind", DEPLOYMENT)],
        ] {
            let e = decode(&review_of(&[("uid", r#""u""#), fields[0], fields[1]])).unwrap_err();
            assert!(matches!(e, DecodeError::Malformed(_)), "{e}");
            assert!(e.to_string().contains("recursion limit"), "{e}");
        }
        // Skipped without recursing, then refused for what is missing.
        let e = decode(&review_of(&[("uid", r#""u""#), ("object", &nested)])).unwrap_err();
        assert!(e.to_string().contains("no kind"), "{e}");
        assert!(matches!(decode(b"[]"), Err(DecodeError::NotAReview(_))));
        assert!(matches!(
            decode(&body(json!({"apiVersion": "v1", "kind": "Pod"}))),
            Err(DecodeError::NotAReview(_))
        ));
        assert!(matches!(
            decode(&body(json!({"apiVersion": API_VERSION, "kind": KIND}))),
            Err(DecodeError::NoRequest)
        ));
        assert!(matches!(
            decode(&body(
                json!({"apiVersion": API_VERSION, "kind": KIND, "request": {"uid": ""}})
            )),
            Err(DecodeError::NoUid)
        ));
        assert!(matches!(
            decode(&body(
                json!({"apiVersion": API_VERSION, "kind": KIND, "request": {"uid": 7}})
            )),
            Err(DecodeError::NotAReview(_))
        ));
    }

    #[test]
    fn identifiers_are_bounded_and_printable() {
        let review = |uid: &str, name: &str| {
            body(json!({"apiVersion": API_VERSION, "kind": KIND, "request": {
                "uid": uid, "name": name, "namespace": "shop", "operation": "CREATE",
                "kind": {"group": "", "version": "v1", "kind": "Service"}}}))
        };
        assert!(decode(&review("705ab4f5-6393-11e8-b7cc-42010a800002", "orders")).is_ok());
        let long_uid = "u".repeat(MAX_UID + 1);
        let e = decode(&review(&long_uid, "orders")).unwrap_err();
        assert_eq!(e.reason(), "bad_identifier");
        assert!(
            e.to_string().contains("uid") && !e.to_string().contains(&long_uid),
            "{e}"
        );
        let e = decode(&review("u", &"n".repeat(300))).unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
        let e = decode(&review("u", "forged\n{\"level\":\"ERROR\"}")).unwrap_err();
        assert!(e.to_string().contains("control characters"), "{e}");
        let e = decode(&review("\u{1b}[31m", "x")).unwrap_err();
        assert!(e.to_string().contains("uid"), "{e}");
    }

    #[test]
    fn invalid_utf8_anywhere_is_malformed() {
        // Found by fuzzing: a broken byte inside a field the sparse parse
        // skips (a container's probe) was accepted.
        let mut body = serde_json::to_vec(&json!({"apiVersion": API_VERSION, "kind": KIND, "request": {
            "uid": "u", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"}, "operation": "CREATE",
            "object": {"spec": {"template": {"spec": {"containers": [{"failureThreshold": 3}]}}}}}}))
        .unwrap();
        let at = body.windows(7).position(|w| w == b"failure").unwrap();
        body[at + 4] = 0xe3;
        for objects in [Objects::Sparse, Objects::Full] {
            let e = decode_with(&body, objects).unwrap_err();
            assert!(matches!(e, DecodeError::Malformed(_)), "{e}");
        }
    }

    const DEPLOYMENT: &str = r#"{"group": "apps", "version": "v1", "kind": "Deployment"}"#;

    /// A review whose request is `fields`, written in that order.
    fn review_of(fields: &[(&str, &str)]) -> Vec<u8> {
        let request: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v}"))
            .collect();
        format!(
            r#"{{"apiVersion": "{API_VERSION}", "kind": "{KIND}", "request": {{{}}}}}"#,
            request.join(", ")
        )
        .into_bytes()
    }

    /// The review of a Deployment's creation, in the API server's order.
    fn create(object: &str) -> Vec<u8> {
        review_of(&[
            ("uid", r#""u""#),
            ("operation", r#""CREATE""#),
            ("kind", DEPLOYMENT),
            ("object", object),
        ])
    }

    /// The API server sends `kind` before the objects; a body with the
    /// objects first decodes to the same request, and builds no more of it.
    #[test]
    fn objects_before_the_kind_decode_the_same() {
        let object = r#"{"metadata": {"name": "web", "annotations": {"a": "b"}},
                         "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c"}]}}}}"#;
        let old = r#"{"metadata": {"name": "web"}, "status": {"replicas": 1}}"#;
        let first = review_of(&[
            ("uid", r#""u""#),
            ("kind", DEPLOYMENT),
            ("operation", r#""UPDATE""#),
            ("object", object),
            ("oldObject", old),
        ]);
        let last = review_of(&[
            ("uid", r#""u""#),
            ("object", object),
            ("oldObject", old),
            ("operation", r#""UPDATE""#),
            ("kind", DEPLOYMENT),
        ]);
        let (first, last) = (decode(&first).unwrap(), decode(&last).unwrap());
        assert_eq!(first.object, last.object);
        assert_eq!(first.old_object, last.old_object);
        assert_eq!((last.complete, last.oversized), (false, false));
        let kept = last.object.unwrap();
        assert_eq!(kept["spec"]["replicas"], json!(2));
        assert!(
            kept["spec"]["template"]["spec"].get("containers").is_none(),
            "{kept}"
        );
        assert!(
            last.old_object.unwrap().get("status").is_none(),
            "not read, not built"
        );

        // A repeated object: the last one counts, in any order.
        let name = |fields: &[(&str, &str)]| {
            let req = decode(&review_of(fields)).unwrap();
            req.object.unwrap()["metadata"]["name"].clone()
        };
        let (early, late) = (
            r#"{"metadata": {"name": "early"}}"#,
            r#"{"metadata": {"name": "late"}}"#,
        );
        let uid = ("uid", r#""u""#);
        let op = ("operation", r#""CREATE""#);
        assert_eq!(
            name(&[
                uid,
                op,
                ("object", early),
                ("kind", DEPLOYMENT),
                ("object", late)
            ]),
            "late"
        );
        assert_eq!(
            name(&[
                uid,
                op,
                ("kind", DEPLOYMENT),
                ("object", early),
                ("object", late)
            ]),
            "late"
        );
        assert_eq!(
            name(&[uid, op, ("object", late), ("kind", DEPLOYMENT)]),
            "late"
        );

        // Past the budget, early objects are cut short and say so, as late ones are.
        let many: Vec<String> = (0..sparse::MAX_VALUES)
            .map(|i| format!(r#""k{i}": """#))
            .collect();
        let big = format!(
            r#"{{"metadata": {{"annotations": {{{}}}}}}}"#,
            many.join(",")
        );
        let req = decode(&review_of(&[
            uid,
            op,
            ("object", &big),
            ("kind", DEPLOYMENT),
        ]))
        .unwrap();
        assert!(req.oversized);
        // A kind no rule reads: its objects are neither built nor refused.
        let cm = r#"{"group": "", "version": "v1", "kind": "ConfigMap"}"#;
        let req = decode(&review_of(&[uid, op, ("object", object), ("kind", cm)])).unwrap();
        assert_eq!((req.object, req.complete), (None, true));
    }

    /// Found by fuzzing: serde_json's own `Value` reads an object whose
    /// first key is its private raw-value token as that key's string parsed
    /// as JSON; an annotation with that key changed the object, or made a
    /// valid review unreadable.
    #[test]
    fn objects_are_read_as_written_whatever_their_keys() {
        let token = "$serde_json::private::RawValue";
        for value in [r#""{\"zonewise.io/skip\": \"true\"}""#, r#""shop/orders""#] {
            let object = format!(
                r#"{{"metadata": {{"name": "web", "annotations": {{"{token}": {value}}}}}}}"#
            );
            let written: Value = json!({token: serde_json::from_str::<String>(value).unwrap()});
            let uid = ("uid", r#""u""#);
            let op = ("operation", r#""CREATE""#);
            for fields in [
                [uid, op, ("kind", DEPLOYMENT), ("object", &object)],
                [uid, op, ("object", &object), ("kind", DEPLOYMENT)],
            ] {
                for objects in [Objects::Sparse, Objects::Full] {
                    let req = decode_with(&review_of(&fields), objects).unwrap();
                    assert_eq!(req.object.unwrap()["metadata"]["annotations"], written);
                }
            }
        }
    }

    /// Found by fuzzing: a `\u` escape of half a surrogate pair, left
    /// unpaired, in a string no rule reads is only scanned (Go's decoder,
    /// the API server's, accepts it too); in a string a rule reads, and in
    /// the whole parse, it is refused as malformed.
    #[test]
    fn unpaired_surrogates_are_refused_only_where_they_are_read() {
        let review = |metadata: &str| create(&format!(r#"{{"metadata": {metadata}}}"#));
        for lone in [r"\uDAAAng", r"\uDC00", r"\uD800\u0041"] {
            let skipped = review(&format!(r#"{{"name": "web", "finalizers": ["a{lone}"]}}"#));
            assert_eq!(
                decode(&skipped).unwrap().object.unwrap()["metadata"],
                json!({"name": "web"})
            );
            let e = decode_with(&skipped, Objects::Full).unwrap_err();
            assert!(matches!(e, DecodeError::Malformed(_)), "{lone}: {e}");
            let read = review(&format!(r#"{{"name": "w{lone}"}}"#));
            for objects in [Objects::Sparse, Objects::Full] {
                let e = decode_with(&read, objects).unwrap_err();
                assert!(matches!(e, DecodeError::Malformed(_)), "{lone}: {e}");
            }
        }
    }

    /// Found by fuzzing: a number beyond an f64's range is valid JSON (RFC
    /// 8259 leaves range to implementations). Where no rule reads it, it is
    /// only scanned, as the API server's decoder scans fields it drops;
    /// where a rule reads it, it cannot be built and the review is refused
    /// as malformed, as the whole parse (`zonewise mutate`) refuses it.
    #[test]
    fn numbers_beyond_f64_are_refused_only_where_they_are_read() {
        let review = |spec: &str| create(&format!(r#"{{"spec": {spec}}}"#));
        let skipped = review(r#"{"progressDeadlineSeconds": 5E600, "replicas": 2}"#);
        assert_eq!(
            decode(&skipped).unwrap().object.unwrap()["spec"],
            json!({"replicas": 2})
        );
        let e = decode_with(&skipped, Objects::Full).unwrap_err();
        assert!(
            matches!(e, DecodeError::Malformed(_)) && e.to_string().contains("out of range"),
            "{e}"
        );
        let read = review(r#"{"replicas": 5E600}"#);
        for objects in [Objects::Sparse, Objects::Full] {
            let e = decode_with(&read, objects).unwrap_err();
            assert!(matches!(e, DecodeError::Malformed(_)), "{e}");
        }
    }

    /// The spliced answer is byte for byte what serde_json writes for the
    /// whole response, for every verdict, with and without warnings.
    #[test]
    fn encode_is_what_serde_json_writes() {
        use crate::core::admission::Rule;
        use base64::Engine as _;
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/metadata/annotations", "value": {"a/b": "x\"y\\z\u{7f}é"}},
            {"op": "add", "path": "/spec/list/-", "value": [1, {"k": null, "f": 0.5}]},
            {"op": "remove", "path": "/spec/x~1y"}
        ]))
        .unwrap();
        let outcomes = [
            Outcome::allowed(vec![]),
            Outcome {
                verdict: Verdict::Patched {
                    patch: patch.clone(),
                    applied: vec![Rule::ZoneRouting],
                },
                warnings: vec!["zonewise: \"quoted\"\nnext".into(), "two".into()],
                ..Outcome::allowed(vec![])
            },
            Outcome {
                verdict: Verdict::Denied {
                    rule: Rule::LocalPolicy,
                    message: "no \"Local\" here".into(),
                },
                ..Outcome::allowed(vec![])
            },
        ];
        for outcome in &outcomes {
            let mut response = json!({"uid": "u-\"1", "allowed": outcome.verdict.is_allowed()});
            if let Verdict::Denied { message, .. } = &outcome.verdict {
                response["status"] = json!({"status": "Failure", "message": message,
                    "reason": "Forbidden", "code": 403});
            }
            if let Some(p) = outcome.patch() {
                let b64 = base64::engine::general_purpose::STANDARD
                    .encode(serde_json::to_vec(p).unwrap());
                response["patch"] = json!(b64);
                response["patchType"] = json!("JSONPatch");
            }
            if !outcome.warnings.is_empty() {
                response["warnings"] = json!(outcome.warnings);
            }
            let whole = json!({"apiVersion": API_VERSION, "kind": KIND, "response": response});
            assert_eq!(
                String::from_utf8(encode("u-\"1", outcome)).unwrap(),
                serde_json::to_string(&whole).unwrap()
            );
        }
    }

    /// Strings with and without escapes, on either side of the 16-byte
    /// chunks, are written exactly as serde_json writes them.
    #[test]
    fn strings_and_values_are_what_serde_json_writes() {
        let specials = [
            "\"", "\\", "\n", "\u{1}", "\u{1f}", "\u{7f}", "é", "/", "~", " ",
        ];
        for len in [0, 1, 15, 16, 17, 31, 32, 33] {
            for pos in 0..len.max(1) {
                for special in specials {
                    let mut s: String = "a".repeat(len);
                    if len > 0 {
                        s.replace_range(pos..pos + 1, special);
                    }
                    let mut out = Vec::new();
                    write_str(&mut out, &s);
                    assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
                }
            }
        }
        let v = json!({"a\"b": [null, true, false, 0, -1, 1.5, 1e300, u64::MAX, i64::MIN, "x"],
            "": {}, "e": [], "n": {"k": {"k": "\u{0}"}}});
        let mut out = Vec::new();
        write_value(&mut out, &v);
        assert_eq!(out, serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn encode_allowed_without_patch_has_no_patch_type() {
        let out = Outcome::allowed(vec![]);
        let v: Value = serde_json::from_slice(&encode("abc", &out)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": API_VERSION, "kind": KIND, "response": {"uid": "abc", "allowed": true}})
        );
    }
}
