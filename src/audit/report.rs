//! The audit's findings and how they are printed: a table grouped by
//! namespace (with a summary line), JSON, the mutated manifests as YAML
//! (without server-set fields, ready for Git), or one JSON Patch per
//! object.
//!
//! Memory stays flat as the cluster grows: a finding keeps its patch as
//! compact JSON text, not as a tree of values; JSON is written finding by
//! finding; and the YAML manifests go to a temporary file as they are
//! made, copied to stdout only once every list has succeeded (a failed
//! audit prints nothing).

use std::collections::BTreeMap;
use std::io::{self, Write};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use json_patch::{Patch, PatchOperation};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::RuleFinding;
use crate::admission::Kind;
use crate::object;

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: String,
    #[serde(skip)]
    pub api_version: String,
    pub namespace: String,
    pub name: String,
    pub check: String,
    pub message: String,
    /// The rule's JSON Patch, as compact JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Box<RawValue>>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub server_version: String,
    /// Said when the server is outside the supported range (a newer one is
    /// answered as the newest known version).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_note: Option<String>,
    pub scope: String,
    pub namespaces: usize,
    /// Objects reviewed, by kind.
    pub objects_read: BTreeMap<String, usize>,
    /// Objects some rule would change.
    pub would_change: usize,
    /// Services the webhook would deny (local-policy).
    pub would_deny: usize,
    pub findings: usize,
    pub findings_by_check: BTreeMap<String, usize>,
    /// (Service, zone) pairs where a zone with Ready nodes has no ready
    /// endpoint of a zone-routed Service.
    pub zones_uncovered: usize,
    /// Ready nodes where a Local Service's traffic is dropped.
    pub nodes_dropping_traffic: usize,
    pub nodes: usize,
    pub ready_nodes: usize,
    pub zones: Vec<String>,
    /// What zone-routing sets on this server.
    pub routing: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub summary: Summary,
    /// The mutated manifests as YAML documents (`-o yaml`), spilled to a
    /// temporary file.
    manifests: Option<Spill>,
}

impl Report {
    pub fn new(summary: Summary, keep_manifests: bool) -> io::Result<Self> {
        Ok(Report {
            summary,
            findings: Vec::new(),
            manifests: if keep_manifests {
                Some(Spill::new()?)
            } else {
                None
            },
        })
    }

    pub fn push(&mut self, f: Finding) {
        self.findings.push(f);
    }

    /// Records one reviewed object and its findings.
    pub fn add_object(
        &mut self,
        kind: Kind,
        obj: &Value,
        findings: Vec<RuleFinding>,
        after: Option<Value>,
    ) -> io::Result<()> {
        *self
            .summary
            .objects_read
            .entry(kind.name().to_string())
            .or_default() += 1;
        let namespace = object::str_at(obj, &["metadata", "namespace"])
            .unwrap_or("")
            .to_string();
        let name = object::display_name(obj).to_string();
        for f in findings {
            if f.denied {
                self.summary.would_deny += 1;
            }
            let patch = f
                .patch
                .map(|p| serde_json::to_string(&p).and_then(RawValue::from_string))
                .transpose()
                .map_err(io::Error::other)?;
            self.findings.push(Finding {
                kind: kind.name().to_string(),
                api_version: kind.api_version(),
                namespace: namespace.clone(),
                name: name.clone(),
                check: f.rule.name().to_string(),
                message: f.message,
                patch,
            });
        }
        if let Some(mut after) = after {
            self.summary.would_change += 1;
            if let Some(spill) = &mut self.manifests {
                strip_server_fields(&mut after);
                spill.document(&after)?;
            }
        }
        Ok(())
    }

    /// Orders the findings by namespace, kind and name (stable within an
    /// object), and counts them.
    pub fn finish(&mut self) {
        self.findings.sort_by(|a, b| {
            (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name))
        });
        self.summary.findings = self.findings.len();
        self.summary.findings_by_check.clear();
        for f in &self.findings {
            *self
                .summary
                .findings_by_check
                .entry(f.check.clone())
                .or_default() += 1;
        }
    }

    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        let read: usize = s.objects_read.values().sum();
        let kinds: Vec<String> = s
            .objects_read
            .iter()
            .map(|(k, n)| format!("{n} {k}{}", if *n == 1 { "" } else { "s" }))
            .collect();
        format!(
            "Kubernetes {}, {} ({}): {read} objects read ({}), {} would change, {} would be denied, \
             {} zone(s) uncovered, {} node(s) dropping traffic; {} finding(s); zone-routing sets {}",
            s.server_version,
            s.scope,
            s.namespaces,
            if kinds.is_empty() {
                "none".to_string()
            } else {
                kinds.join(", ")
            },
            s.would_change,
            s.would_deny,
            s.zones_uncovered,
            s.nodes_dropping_traffic,
            s.findings,
            s.routing,
        ) + &s
            .version_note
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    }

    /// Findings grouped by namespace, then the summary line.
    pub fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut by_ns: BTreeMap<&str, Vec<&Finding>> = BTreeMap::new();
        for f in &self.findings {
            by_ns.entry(&f.namespace).or_default().push(f);
        }
        for (ns, findings) in by_ns {
            writeln!(out, "NAMESPACE {ns}")?;
            let w = |get: fn(&Finding) -> &str, title: &str| {
                findings
                    .iter()
                    .map(|f| get(f).chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(title.len())
            };
            let (wk, wn, wc) = (
                w(|f| &f.kind, "KIND"),
                w(|f| &f.name, "NAME"),
                w(|f| &f.check, "CHECK"),
            );
            writeln!(
                out,
                "  {:wk$}  {:wn$}  {:wc$}  MESSAGE",
                "KIND", "NAME", "CHECK"
            )?;
            for f in findings {
                writeln!(
                    out,
                    "  {:wk$}  {:wn$}  {:wc$}  {}",
                    f.kind, f.name, f.check, f.message
                )?;
            }
            writeln!(out)?;
        }
        writeln!(out, "{}", self.summary_line())
    }

    /// `{"findings": [...], "summary": {...}}`, a finding a line.
    pub fn write_json(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{{\"findings\": [")?;
        for (i, f) in self.findings.iter().enumerate() {
            write!(out, "  ")?;
            serde_json::to_writer(&mut *out, f)?;
            writeln!(
                out,
                "{}",
                if i + 1 < self.findings.len() { "," } else { "" }
            )?;
        }
        write!(out, "], \"summary\": ")?;
        serde_json::to_writer_pretty(&mut *out, &self.summary)?;
        writeln!(out, "}}")
    }

    /// The mutated manifests, multi-document, without server-set fields.
    pub fn write_yaml(&mut self, out: &mut dyn Write) -> io::Result<()> {
        match &mut self.manifests {
            Some(spill) => spill.copy_to(out),
            None => Ok(()),
        }
    }

    /// One line per object that would change: its identity and JSON Patch
    /// (the rules' patches in order, which JSON Patch applies in sequence).
    pub fn write_patches(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut i = 0;
        while i < self.findings.len() {
            let first = &self.findings[i];
            let same = |f: &Finding| {
                (&f.namespace, &f.kind, &f.name) == (&first.namespace, &first.kind, &first.name)
            };
            let end = self.findings[i..]
                .iter()
                .position(|f| !same(f))
                .map_or(self.findings.len(), |n| i + n);
            let ops: Vec<&str> = self.findings[i..end]
                .iter()
                .filter_map(|f| f.patch.as_ref())
                .map(|p| p.get().trim().trim_start_matches('[').trim_end_matches(']'))
                .filter(|p| !p.is_empty())
                .collect();
            if !ops.is_empty() {
                let id = serde_json::json!({"apiVersion": first.api_version, "kind": first.kind,
                    "namespace": first.namespace, "name": first.name});
                let id = id.to_string();
                // `{...}` without its closing brace, then the patch.
                writeln!(
                    out,
                    "{},\"patch\":[{}]}}",
                    &id[..id.len() - 1],
                    ops.join(",")
                )?;
            }
            i = end;
        }
        Ok(())
    }
}

/// YAML documents in a temporary file (removed when dropped).
#[derive(Debug)]
struct Spill {
    path: std::path::PathBuf,
    file: io::BufWriter<std::fs::File>,
    documents: usize,
}

impl Spill {
    fn new() -> io::Result<Spill> {
        use std::sync::atomic::AtomicUsize;
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "zonewise-audit-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Spill {
            path,
            file: io::BufWriter::new(file),
            documents: 0,
        })
    }

    fn document(&mut self, v: &Value) -> io::Result<()> {
        if self.documents > 0 {
            writeln!(self.file, "---")?;
        }
        let text = serde_saphyr::to_string(v).map_err(|e| io::Error::other(e.to_string()))?;
        self.file.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            writeln!(self.file)?;
        }
        self.documents += 1;
        Ok(())
    }

    fn copy_to(&mut self, out: &mut dyn Write) -> io::Result<()> {
        use std::io::Seek;
        self.file.flush()?;
        let file = self.file.get_mut();
        file.seek(io::SeekFrom::Start(0))?;
        io::copy(file, out)?;
        Ok(())
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Fields the API server sets, which a manifest in Git must not carry.
pub const SERVER_FIELDS: [&str; 7] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionGracePeriodSeconds",
];
/// Annotations written by clients and controllers, not by the owner.
pub const SERVER_ANNOTATIONS: [&str; 2] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
];

/// Removes status, server-set metadata and annotations, allocated cluster
/// IPs (but `None`, which makes a Service headless), and the null
/// `creationTimestamp` typed clients write into pod templates.
pub fn strip_server_fields(obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    m.remove("status");
    if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in SERVER_FIELDS {
            meta.remove(f);
        }
        if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            for a in SERVER_ANNOTATIONS {
                ann.remove(a);
            }
            if ann.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    if let Some(spec) = m.get_mut("spec").and_then(Value::as_object_mut) {
        if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        if let Some(t) = spec
            .get_mut("template")
            .and_then(|t| t.get_mut("metadata"))
            .and_then(Value::as_object_mut)
            && t.get("creationTimestamp").is_some_and(Value::is_null)
        {
            t.remove("creationTimestamp");
        }
    }
}

/// A patch in words: what it sets or adds, for the table.
pub fn describe(patch: &Patch) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut spread: Vec<String> = Vec::new();
    for op in &patch.0 {
        let PatchOperation::Add(add) = op else {
            continue;
        };
        let tokens: Vec<String> = add
            .path
            .tokens()
            .map(|t| t.decoded().into_owned())
            .collect();
        let last = tokens
            .iter()
            .rev()
            .find(|t| *t != "-")
            .map(String::as_str)
            .unwrap_or("");
        let items: Vec<&Value> = match &add.value {
            Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        match (tokens.as_slice(), &add.value) {
            (_, Value::Object(o)) if o.is_empty() => {}
            ([m, a, key], Value::String(v)) if m == "metadata" && a == "annotations" => {
                if key != crate::rules::APPLIED {
                    parts.push(format!("set annotation {key}: {v}"));
                }
            }
            (_, Value::String(v)) => {
                let dotted = tokens.join(".");
                parts.push(format!("set {dotted}: {v}"));
            }
            _ if last == "topologySpreadConstraints" => spread.extend(
                items
                    .iter()
                    .filter_map(|c| c["topologyKey"].as_str().map(str::to_string)),
            ),
            _ if tokens.iter().any(|t| t == "podAffinity") => {
                let required = last.starts_with("required");
                for item in items {
                    let (weight, term) = match item.get("podAffinityTerm") {
                        Some(t) => (format!(" (weight {})", item["weight"]), t),
                        None => (String::new(), item),
                    };
                    parts.push(format!(
                        "add {} pod affinity{weight} on {} to {}",
                        if required { "required" } else { "preferred" },
                        term["topologyKey"].as_str().unwrap_or("?"),
                        selector_text(&term["labelSelector"])
                    ));
                }
            }
            (_, v) => parts.push(format!("set {}: {v}", tokens.join("."))),
        }
    }
    if !spread.is_empty() {
        parts.push(format!(
            "add topologySpreadConstraints on {}",
            spread.join(", ")
        ));
    }
    format!("would {}", parts.join("; "))
}

fn selector_text(sel: &Value) -> String {
    object::string_map(sel, &["matchLabels"])
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A progress bar on stderr, shown only when stderr is a terminal and the
/// listing has taken more than a moment; nothing ever goes to stdout.
#[derive(Clone)]
pub struct Progress(Option<Arc<Bar>>);

pub struct Bar {
    bar: ProgressBar,
    start: Instant,
    shown: AtomicBool,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        if !enabled || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        Progress(Some(Arc::new(Bar {
            bar,
            start: Instant::now(),
            shown: AtomicBool::new(false),
        })))
    }

    pub fn tick(&self, what: &str, n: usize) {
        let Some(b) = &self.0 else { return };
        if !b.shown.load(Ordering::Relaxed) && b.start.elapsed() > Duration::from_secs(1) {
            b.bar.set_draw_target(ProgressDrawTarget::stderr());
            b.shown.store(true, Ordering::Relaxed);
        }
        b.bar.set_message(format!("listing {what}: {n}"));
        b.bar.tick();
    }

    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_fields_are_stripped_and_owner_fields_kept() {
        let mut svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "namespace": "shop", "uid": "u", "resourceVersion": "9",
                         "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "x"}},
            "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "selector": {"app": "a"}},
            "status": {"loadBalancer": {}}});
        strip_server_fields(&mut svc);
        assert_eq!(
            svc,
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "a", "namespace": "shop", "annotations": {"team": "x"}},
            "spec": {"selector": {"app": "a"}}})
        );
        let mut headless = json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        strip_server_fields(&mut headless);
        assert_eq!(headless["spec"]["clusterIP"], "None");
    }

    #[test]
    fn patches_in_words() {
        let p: Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/spec/trafficDistribution", "value": "PreferSameZone"},
            {"op": "add", "path": "/metadata/annotations", "value": {}},
            {"op": "add", "path": "/metadata/annotations/service.beta.kubernetes.io~1aws-load-balancer-nlb-target-type", "value": "ip"},
            {"op": "add", "path": "/metadata/annotations/zonewise.io~1applied", "value": "zone-routing"},
        ]))
        .unwrap();
        assert_eq!(
            describe(&p),
            "would set spec.trafficDistribution: PreferSameZone; set annotation service.beta.kubernetes.io/aws-load-balancer-nlb-target-type: ip"
        );
        let p: Patch = serde_json::from_value(json!([
            {"op": "add", "path": "/spec/template/spec/topologySpreadConstraints", "value": [{"topologyKey": "topology.kubernetes.io/zone", "maxSkew": 1}]},
            {"op": "add", "path": "/spec/template/spec/topologySpreadConstraints/-", "value": {"topologyKey": "kubernetes.io/hostname"}},
            {"op": "add", "path": "/spec/template/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution", "value": [
                {"weight": 100, "podAffinityTerm": {"topologyKey": "topology.kubernetes.io/zone", "labelSelector": {"matchLabels": {"app": "orders"}}}}]},
        ]))
        .unwrap();
        assert_eq!(
            describe(&p),
            "would add preferred pod affinity (weight 100) on topology.kubernetes.io/zone to app=orders; \
             add topologySpreadConstraints on topology.kubernetes.io/zone, kubernetes.io/hostname"
        );
    }
}
