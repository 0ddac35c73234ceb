//! `zonewise mutate`: the webhook's answer without a cluster.
//!
//! Reads manifests (multi-document YAML, JSON, `kind: List`) or an
//! AdmissionReview, runs the same [`review`] the server runs, and prints the
//! mutated manifests, the patches, or the AdmissionReview responses. GitOps
//! users bake the result into Git, so the repository already holds what the
//! cluster would have, and a sync never fights the webhook. Comments and
//! YAML anchors in the input are not preserved.

use std::io::Write;

use json_patch::Patch;
use serde_json::{Value, json};

use crate::core::json::Exact;
use crate::core::lookups::NoCluster;
use crate::core::object;
use crate::core::policy::Policy;
use crate::core::review::{
    self, AdmissionRequest, Endpoint, GroupVersionKind, Operation, Outcome, Verdict,
};
use crate::core::wire;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Yaml,
    Json,
    Patch,
    Review,
}

#[derive(Debug, thiserror::Error)]
pub enum MutateError {
    #[error("input is neither YAML nor JSON: {0}")]
    Parse(String),
    #[error("AdmissionReview: {0}")]
    Review(#[from] wire::DecodeError),
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

/// What `run` did, for the exit code.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub reviewed: usize,
    pub patched: usize,
    pub denied: usize,
}

/// One top-level input document.
enum Doc {
    Object(Value),
    Review(Box<AdmissionRequest>),
}

/// Reviews every object in `input` and writes the result in `format` to
/// `out`; warnings and denials go to `err`, as kubectl prints them.
pub fn run(
    input: &str,
    format: Output,
    policy: &Policy,
    default_namespace: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Summary, MutateError> {
    let docs = parse(input)?;
    let mut summary = Summary::default();
    let mut results: Vec<Value> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let one = |mut req: AdmissionRequest,
               summary: &mut Summary,
               err: &mut dyn Write|
     -> Result<(Option<Value>, Patch, Vec<u8>), MutateError> {
        let outcome = review::review(&req, policy, &NoCluster, Endpoint::Mutate);
        report(&req, &outcome, summary, err)?;
        let response = wire::encode(&req.uid, &outcome);
        // Both are done with; take them rather than copy them.
        let patch = match outcome.verdict {
            Verdict::Patched { patch, .. } => patch,
            _ => Patch::default(),
        };
        let mut object = req.object.take();
        if let Some(obj) = object.as_mut() {
            // The patch was computed on this very object; failing to apply
            // would be a bug, reported rather than hidden.
            if let Err(e) = json_patch::patch(obj, &patch) {
                writeln!(err, "Error: internal: patch does not apply: {e}")?;
            }
        }
        Ok((object, patch, response))
    };

    let mut counter = 0usize;
    for doc in docs {
        match doc {
            Doc::Review(req) => {
                let (object, patch, response) = one(*req, &mut summary, err)?;
                results.push(object.unwrap_or(Value::Null));
                lines.push(line(format, &patch, &response));
            }
            Doc::Object(mut value) => {
                if is_list(&value) {
                    if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
                        for item in items.iter_mut() {
                            counter += 1;
                            let req = synthetic_request(item.take(), default_namespace, counter);
                            let (object, patch, response) = one(req, &mut summary, err)?;
                            *item = object.unwrap_or(Value::Null);
                            lines.push(line(format, &patch, &response));
                        }
                    }
                    results.push(value);
                } else {
                    counter += 1;
                    let req = synthetic_request(value, default_namespace, counter);
                    let (object, patch, response) = one(req, &mut summary, err)?;
                    results.push(object.unwrap_or(Value::Null));
                    lines.push(line(format, &patch, &response));
                }
            }
        }
    }

    match format {
        Output::Yaml => {
            for (i, v) in results.iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                let text =
                    serde_saphyr::to_string(v).map_err(|e| std::io::Error::other(e.to_string()))?;
                out.write_all(text.as_bytes())?;
                if !text.ends_with('\n') {
                    writeln!(out)?;
                }
            }
        }
        Output::Json => {
            let v = match results.len() {
                1 => results.pop().unwrap_or(Value::Null),
                _ => json!({"apiVersion": "v1", "kind": "List", "items": results}),
            };
            serde_json::to_writer_pretty(&mut *out, &v).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Output::Patch | Output::Review => {
            for l in lines {
                writeln!(out, "{l}")?;
            }
        }
    }
    Ok(summary)
}

fn line(format: Output, patch: &Patch, response: &[u8]) -> String {
    match format {
        Output::Review => String::from_utf8_lossy(response).into_owned(),
        _ => serde_json::to_string(patch).unwrap_or_default(),
    }
}

fn report(
    req: &AdmissionRequest,
    outcome: &Outcome,
    summary: &mut Summary,
    err: &mut dyn Write,
) -> Result<(), MutateError> {
    summary.reviewed += 1;
    let what = format!(
        "{} {}/{}",
        req.kind.kind,
        req.namespace,
        req.object
            .as_ref()
            .map(object::display_name)
            .unwrap_or(&req.name)
    );
    for w in &outcome.warnings {
        writeln!(err, "Warning: {w}")?;
    }
    match &outcome.verdict {
        Verdict::Denied { message, .. } => {
            summary.denied += 1;
            writeln!(err, "Error: {what} denied: {message}")?;
        }
        Verdict::Patched { .. } => summary.patched += 1,
        Verdict::Allowed => {}
    }
    Ok(())
}

fn is_list(v: &Value) -> bool {
    object::str_at(v, &["kind"]).is_some_and(|k| k.ends_with("List"))
        && v.get("items").is_some_and(Value::is_array)
}

/// A CREATE request for a raw manifest, as the API server would send it.
fn synthetic_request(obj: Value, default_namespace: &str, n: usize) -> AdmissionRequest {
    let api_version = object::str_at(&obj, &["apiVersion"]).unwrap_or("");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = GroupVersionKind::new(
        group,
        version,
        object::str_at(&obj, &["kind"]).unwrap_or(""),
    );
    let namespace = object::str_at(&obj, &["metadata", "namespace"])
        .unwrap_or(default_namespace)
        .to_string();
    AdmissionRequest {
        uid: format!("zonewise-mutate-{n}"),
        kind,
        sub_resource: None,
        name: object::str_at(&obj, &["metadata", "name"])
            .unwrap_or("")
            .to_string(),
        namespace,
        operation: Operation::Create,
        dry_run: false,
        object: Some(obj),
        old_object: None,
        complete: true,
        oversized: false,
    }
}

fn parse(input: &str) -> Result<Vec<Doc>, MutateError> {
    let trimmed = input.trim_start();
    let mut values: Vec<Value> = Vec::new();
    let mut parsed_json = false;
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        // Concatenated JSON documents; a top-level array is a list of them.
        let docs: Result<Vec<Exact>, _> = serde_json::Deserializer::from_str(input)
            .into_iter::<Exact>()
            .collect();
        if let Ok(docs) = docs {
            for Exact(d) in docs {
                match d {
                    Value::Array(items) => values.extend(items),
                    other => values.push(other),
                }
            }
            parsed_json = true;
        }
    }
    if !parsed_json {
        values = serde_saphyr::from_multiple::<Exact>(input)
            .map_err(|e| MutateError::Parse(e.to_string()))?
            .into_iter()
            .map(|Exact(v)| v)
            .collect();
    }
    let mut docs = Vec::new();
    for v in values.into_iter().filter(|v| !v.is_null()) {
        if object::str_at(&v, &["kind"]) == Some(wire::KIND) {
            let bytes = serde_json::to_vec(&v).map_err(|e| MutateError::Parse(e.to_string()))?;
            docs.push(Doc::Review(Box::new(wire::decode_with(
                &bytes,
                wire::Objects::Full,
            )?)));
        } else {
            docs.push(Doc::Object(v));
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mutate(input: &str, format: Output) -> (String, String, Summary) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let s = run(
            input,
            format,
            &Policy::default(),
            "default",
            &mut out,
            &mut err,
        )
        .unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            s,
        )
    }

    const TWO_DOCS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: orders
  namespace: shop
  annotations:
    team: "true"
spec:
  selector: {app: orders}
  ports: [{port: 80}]
---
# a comment-only document in between
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "web:1"}]}
"#;

    #[test]
    fn yaml_round_trip_keeps_strings_and_order() {
        let (out, err, s) = mutate(TWO_DOCS, Output::Yaml);
        assert_eq!(
            s,
            Summary {
                reviewed: 2,
                patched: 2,
                denied: 0
            },
            "{err}"
        );
        let docs: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[0]["metadata"]["annotations"]["team"],
            json!("true"),
            "a string stays a string:\n{out}"
        );
        assert_eq!(docs[0]["spec"]["trafficDistribution"], "PreferClose");
        assert_eq!(
            docs[1]["metadata"]["annotations"]["zonewise.io/applied"],
            "zone-spread"
        );
        assert!(
            out.find("apiVersion").unwrap() < out.find("spec").unwrap(),
            "field order kept"
        );
    }

    /// Found by fuzzing: with serde_json's own `Value`, an object whose
    /// first key is serde_json's private raw-value token was read as that
    /// key's string parsed as JSON. This Service came out with
    /// `zonewise.io/skip: "true"` in place of its own annotation, and
    /// unpatched.
    #[test]
    fn objects_print_as_written_whatever_their_keys() {
        let token = "$serde_json::private::RawValue";
        let skip = r#"{"zonewise.io/skip": "true"}"#;
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "orders", "annotations": {token: skip}},
            "spec": {"selector": {"app": "orders"}, "ports": [{"port": 80}]}});
        let yaml = serde_saphyr::to_string(&svc).unwrap();
        for input in [svc.to_string(), yaml] {
            let (out, err, s) = mutate(&input, Output::Json);
            assert_eq!(s.patched, 1, "{err}");
            let Exact(v) = serde_json::from_str(&out).unwrap();
            assert_eq!(
                v["metadata"]["annotations"],
                json!({token: skip, "zonewise.io/applied": "zone-routing"}),
                "{input}"
            );
            assert_eq!(v["spec"]["trafficDistribution"], "PreferClose");
        }
    }

    #[test]
    fn a_workload_without_its_required_template_previews_as_the_webhook_answers() {
        // k8s-openapi alone reads a missing template as an empty one, and
        // this preview once added a pod template the webhook never would.
        let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}}});
        let (out, err, s) = mutate(&dep.to_string(), Output::Json);
        assert_eq!((s.reviewed, s.patched), (1, 0), "{err}");
        assert!(
            err.contains("does not parse (missing field `spec.template`)"),
            "{err}"
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, dep);
    }

    #[test]
    fn json_list_and_patch_output() {
        let (out, _, _) = mutate(TWO_DOCS, Output::Json);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["kind"], "List");
        assert_eq!(v["items"].as_array().unwrap().len(), 2);

        let (out, _, _) = mutate(TWO_DOCS, Output::Patch);
        let patches: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(patches.len(), 2);
        assert_eq!(patches[0][0]["path"], "/spec/trafficDistribution");
    }

    #[test]
    fn kind_list_items_are_mutated_in_place() {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
             "spec": {"selector": {"app": "a"}, "ports": [{"port": 80}]}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}
        ]});
        let (out, _, s) = mutate(&list.to_string(), Output::Json);
        assert_eq!(s.reviewed, 2);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["items"][0]["spec"]["trafficDistribution"], "PreferClose");
        assert_eq!(v["items"][1], list["items"][1]);
    }

    #[test]
    fn denial_is_reported_and_counted() {
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: cache}\nspec: {selector: {app: c}, internalTrafficPolicy: Local, ports: [{port: 1}]}\n";
        let (out, err, s) = mutate(svc, Output::Yaml);
        assert_eq!(s.denied, 1);
        assert!(err.contains("Error: Service default/cache denied"), "{err}");
        assert!(
            out.contains("internalTrafficPolicy: Local"),
            "unchanged object still printed"
        );
    }

    #[test]
    fn admission_review_input_gives_review_output() {
        let review = json!({"apiVersion": wire::API_VERSION, "kind": wire::KIND, "request": {
            "uid": "abc", "kind": {"group": "", "version": "v1", "kind": "Service"},
            "namespace": "shop", "operation": "CREATE",
            "object": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                       "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}}}});
        let (out, _, _) = mutate(&review.to_string(), Output::Review);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["response"]["uid"], "abc");
        assert_eq!(v["response"]["patchType"], "JSONPatch");
    }

    #[test]
    fn garbage_is_an_error() {
        let mut out = Vec::new();
        let mut err = Vec::new();
        assert!(
            run(
                "key: [unclosed",
                Output::Yaml,
                &Policy::default(),
                "default",
                &mut out,
                &mut err
            )
            .is_err()
        );
    }
}
