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

use std::collections::{BTreeMap, HashMap, HashSet};
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
use super::traffic::{Estimate, Share};
use crate::core::admission::Kind;
use crate::core::object;

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
    /// The modeled cross-zone share of requests, over every Service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_zone: Option<CrossZoneSummary>,
}

/// Options for the traffic estimate's money and table.
#[derive(Debug, Clone)]
pub struct TrafficOptions {
    /// GB per month by (namespace, Service), from `--traffic`.
    pub volumes: Option<HashMap<(String, String), f64>>,
    /// Dollars per cross-zone GB (out and in together).
    pub price_per_gb: f64,
    /// The table lists Services whose share today is above this.
    pub threshold: f64,
}

impl Default for TrafficOptions {
    fn default() -> Self {
        TrafficOptions {
            volumes: None,
            price_per_gb: 0.02,
            threshold: 0.1,
        }
    }
}

/// Reads `--traffic`: one Service a line, as CSV `namespace,service,gb_per_month`
/// (a header line of those names is allowed first) or as a JSON object
/// `{"namespace": .., "service": .., "gb_per_month": ..}`; blank lines and
/// `#` comments are skipped. An error names the line.
pub fn parse_volumes(text: &str) -> Result<HashMap<(String, String), f64>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        namespace: String,
        service: String,
        gb_per_month: f64,
    }
    let mut out: HashMap<(String, String), (f64, usize)> = HashMap::new();
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let header = std::mem::replace(&mut first, false)
            && line.replace(' ', "") == "namespace,service,gb_per_month";
        if header {
            continue;
        }
        let entry = if line.starts_with('{') {
            serde_json::from_str::<Line>(line).map_err(|e| format!("line {n}: {e}"))?
        } else {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [namespace, service, gb] = fields[..] else {
                return Err(format!(
                    "line {n}: expected namespace,service,gb_per_month, got {} field(s)",
                    fields.len()
                ));
            };
            Line {
                namespace: namespace.to_string(),
                service: service.to_string(),
                gb_per_month: gb
                    .parse()
                    .map_err(|_| format!("line {n}: {gb:?} is not a number of GB"))?,
            }
        };
        if !crate::core::names::is_dns1123_label(&entry.namespace)
            || !crate::core::names::is_dns1035_label(&entry.service)
        {
            return Err(format!(
                "line {n}: {:?}/{:?} is not a namespace and Service name",
                entry.namespace, entry.service
            ));
        }
        if !entry.gb_per_month.is_finite() || entry.gb_per_month < 0.0 {
            return Err(format!(
                "line {n}: gb_per_month must be a number of GB, 0 or more"
            ));
        }
        let key = (entry.namespace, entry.service);
        if let Some((_, earlier)) = out.get(&key) {
            return Err(format!(
                "line {n}: {}/{} is already on line {earlier}",
                key.0, key.1
            ));
        }
        out.insert(key, (entry.gb_per_month, n));
    }
    Ok(out.into_iter().map(|(k, (gb, _))| (k, gb)).collect())
}

/// The three figures of the estimate: as things are, once zonewise's
/// routing is set, and once workloads are re-spread over zones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    pub today: f64,
    pub after_routing: f64,
    pub after_rollout: f64,
}

impl Figures {
    fn map(self, f: impl Fn(f64) -> f64) -> Figures {
        Figures {
            today: f(self.today),
            after_routing: f(self.after_routing),
            after_rollout: f(self.after_rollout),
        }
    }

    fn plus(self, o: Figures) -> Figures {
        Figures {
            today: self.today + o.today,
            after_routing: self.after_routing + o.after_routing,
            after_rollout: self.after_rollout + o.after_rollout,
        }
    }

    fn of(e: &Estimate, part: impl Fn(&Share) -> f64) -> Figures {
        Figures {
            today: part(&e.today),
            after_routing: part(&e.after_routing),
            after_rollout: part(&e.after_rollout),
        }
    }
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let k = 10f64.powi(decimals);
    (x * k).round() / k
}

/// One Service's estimate, as reported.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTraffic {
    pub namespace: String,
    pub name: String,
    pub routing: String,
    pub clients: &'static str,
    /// Fractions of its requests that cross zones, 0–1.
    pub cross_zone: Figures,
    /// Fractions dropped (Local without a local endpoint), when any are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Figures>,
    /// Its monthly volume, from `--traffic`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_gb_per_month: Option<f64>,
    /// Cross-zone GB per month.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gb_per_month: Option<Figures>,
    /// Dollars per month for the cross-zone GB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_per_month: Option<Figures>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CrossZoneSummary {
    /// Services modeled.
    pub services: usize,
    /// Services in scope with no ready endpoint (not modeled).
    pub without_endpoints: usize,
    /// `gbPerMonth` when the means are weighted by volume, else `services`.
    pub weighted_by: &'static str,
    pub today: f64,
    pub after_routing: f64,
    pub after_rollout: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_gb_per_month: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gb_per_month: Option<Figures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_per_month: Option<Figures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_per_gb: Option<f64>,
    /// `--traffic` lines that name no modeled Service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_unmatched: Option<usize>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub summary: Summary,
    /// The traffic estimate of every modeled Service.
    pub services: Vec<ServiceTraffic>,
    threshold: f64,
    /// The mutated manifests as YAML documents (`-o yaml`), spilled to a
    /// temporary file.
    manifests: Option<Spill>,
}

impl Report {
    pub fn new(summary: Summary, keep_manifests: bool) -> io::Result<Self> {
        Ok(Report {
            summary,
            findings: Vec::new(),
            services: Vec::new(),
            threshold: TrafficOptions::default().threshold,
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
                spill.document(&with_type(after, kind))?;
            }
        }
        Ok(())
    }

    /// Records the traffic estimate: per Service, with money where the
    /// volumes name it, and the summary's means (weighted by volume when
    /// volumes are known, else by Service).
    pub fn set_traffic(
        &mut self,
        estimates: Vec<Estimate>,
        without_endpoints: usize,
        opts: &TrafficOptions,
    ) {
        self.threshold = opts.threshold;
        let price = opts.price_per_gb;
        let mut matched: HashSet<(String, String)> = HashSet::new();
        let (mut weight, mut sum) = (0.0, Figures::default());
        let (mut total_gb, mut gb_sum) = (0.0, Figures::default());
        for e in &estimates {
            let cross = Figures::of(e, |s| s.cross);
            let dropped = Figures::of(e, |s| s.dropped);
            let key = (e.namespace.clone(), e.name.clone());
            let gb = opts.volumes.as_ref().and_then(|v| v.get(&key)).copied();
            if gb.is_some() {
                matched.insert(key);
            }
            let w = match (&opts.volumes, gb) {
                (Some(_), g) => g.unwrap_or(0.0),
                (None, _) => 1.0,
            };
            weight += w;
            sum = sum.plus(cross.map(|f| w * f));
            let cross_gb = gb.map(|g| cross.map(|f| f * g));
            if let (Some(g), Some(c)) = (gb, cross_gb) {
                total_gb += g;
                gb_sum = gb_sum.plus(c);
            }
            self.services.push(ServiceTraffic {
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                routing: e.routing.clone(),
                clients: e.clients.name(),
                cross_zone: cross.map(|f| round_to(f, 3)),
                dropped: (dropped != Figures::default()).then(|| dropped.map(|f| round_to(f, 3))),
                traffic_gb_per_month: gb.map(|g| round_to(g, 2)),
                gb_per_month: cross_gb.map(|c| c.map(|f| round_to(f, 2))),
                cost_per_month: cross_gb.map(|c| c.map(|f| round_to(f * price, 2))),
            });
        }
        // With volumes that match nothing, the means fall back to Services.
        let by_volume = opts.volumes.is_some() && weight > 0.0;
        if !by_volume {
            weight = estimates.len() as f64;
            sum = estimates.iter().fold(Figures::default(), |a, e| {
                a.plus(Figures::of(e, |s| s.cross))
            });
        }
        let mean = if weight > 0.0 {
            sum.map(|f| round_to(f / weight, 3))
        } else {
            Figures::default()
        };
        let volumes = opts.volumes.as_ref();
        self.summary.cross_zone = Some(CrossZoneSummary {
            services: estimates.len(),
            without_endpoints,
            weighted_by: if by_volume { "gbPerMonth" } else { "services" },
            today: mean.today,
            after_routing: mean.after_routing,
            after_rollout: mean.after_rollout,
            traffic_gb_per_month: volumes.map(|_| round_to(total_gb, 2)),
            gb_per_month: volumes.map(|_| gb_sum.map(|f| round_to(f, 2))),
            cost_per_month: volumes.map(|_| gb_sum.map(|f| round_to(f * price, 2))),
            price_per_gb: volumes.map(|_| price),
            traffic_unmatched: volumes.map(|v| v.len() - matched.len()),
        });
    }

    /// "N Services; modeled cross-zone share of requests: X% today → Y%
    /// after routing → Z% after rollout", with money when volumes are known.
    pub fn cross_zone_line(&self) -> Option<String> {
        let c = self.summary.cross_zone.as_ref()?;
        let pct = |f: f64| format!("{:.1}%", f * 100.0);
        let mut line = format!(
            "{} Service{}; modeled cross-zone share of requests: {} today \u{2192} {} after routing \u{2192} {} after rollout",
            c.services,
            if c.services == 1 { "" } else { "s" },
            pct(c.today),
            pct(c.after_routing),
            pct(c.after_rollout)
        );
        if c.weighted_by == "gbPerMonth" {
            line.push_str(" (weighted by traffic)");
        }
        if let (Some(gb), Some(cost), Some(total), Some(price)) = (
            c.gb_per_month,
            c.cost_per_month,
            c.traffic_gb_per_month,
            c.price_per_gb,
        ) {
            line.push_str(&format!(
                "; cross-zone {:.0} \u{2192} {:.0} \u{2192} {:.0} GB/month, ${:.2} \u{2192} ${:.2} \u{2192} ${:.2} per month \
                 (of {total:.0} GB/month, at ${price}/GB)",
                gb.today, gb.after_routing, gb.after_rollout, cost.today, cost.after_routing, cost.after_rollout
            ));
        }
        if let Some(n) = c.traffic_unmatched.filter(|n| *n > 0) {
            line.push_str(&format!("; {n} --traffic line(s) name no modeled Service"));
        }
        if c.without_endpoints > 0 {
            line.push_str(&format!(
                "; {} Service(s) without ready endpoints not modeled",
                c.without_endpoints
            ));
        }
        Some(line)
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

    /// The summary line, and the cross-zone line under it.
    pub fn summary_line(&self) -> String {
        match self.cross_zone_line() {
            Some(cz) => format!("{}\n{cz}", self.counts_line()),
            None => self.counts_line(),
        }
    }

    fn counts_line(&self) -> String {
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
        self.write_cross_zone_table(out)?;
        writeln!(out, "{}", self.summary_line())
    }

    /// Per namespace, the Services whose share today is above the
    /// threshold, highest first.
    fn write_cross_zone_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut by_ns: BTreeMap<&str, Vec<&ServiceTraffic>> = BTreeMap::new();
        for s in self
            .services
            .iter()
            .filter(|s| s.cross_zone.today > self.threshold)
        {
            by_ns.entry(&s.namespace).or_default().push(s);
        }
        if by_ns.is_empty() {
            return Ok(());
        }
        writeln!(
            out,
            "CROSS-ZONE TRAFFIC (modeled share of requests; Services above {:.0}% today)",
            self.threshold * 100.0
        )?;
        let money = self.services.iter().any(|s| s.cost_per_month.is_some());
        let pct = |f: f64| format!("{:.1}%", f * 100.0);
        for (ns, mut list) in by_ns {
            list.sort_by(|a, b| {
                b.cross_zone
                    .today
                    .total_cmp(&a.cross_zone.today)
                    .then(a.name.cmp(&b.name))
            });
            writeln!(out, "NAMESPACE {ns}")?;
            let wn = list
                .iter()
                .map(|s| s.name.chars().count())
                .max()
                .unwrap_or(0)
                .max(7);
            let wr = list
                .iter()
                .map(|s| s.routing.chars().count())
                .max()
                .unwrap_or(0)
                .max(7);
            write!(
                out,
                "  {:wn$}  {:wr$}  {:7}  {:>6}  {:>13}  {:>13}",
                "SERVICE", "ROUTING", "CLIENTS", "TODAY", "AFTER ROUTING", "AFTER ROLLOUT"
            )?;
            writeln!(
                out,
                "{}",
                if money {
                    "  COST/MONTH TODAY → AFTER ROLLOUT"
                } else {
                    ""
                }
            )?;
            for s in list {
                let c = s.cross_zone;
                write!(
                    out,
                    "  {:wn$}  {:wr$}  {:7}  {:>6}  {:>13}  {:>13}",
                    s.name,
                    s.routing,
                    s.clients,
                    pct(c.today),
                    pct(c.after_routing),
                    pct(c.after_rollout)
                )?;
                match s.cost_per_month {
                    Some(m) => writeln!(out, "  ${:.2} → ${:.2}", m.today, m.after_rollout)?,
                    None => writeln!(out)?,
                }
            }
            writeln!(out)?;
        }
        Ok(())
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
        writeln!(out, "], \"services\": [")?;
        for (i, t) in self.services.iter().enumerate() {
            write!(out, "  ")?;
            serde_json::to_writer(&mut *out, t)?;
            writeln!(
                out,
                "{}",
                if i + 1 < self.services.len() { "," } else { "" }
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

/// The manifest with `apiVersion` and `kind` first: list responses leave
/// them out of their items, and `kubectl apply` needs them.
fn with_type(obj: Value, kind: Kind) -> Value {
    let Value::Object(fields) = obj else {
        return obj;
    };
    let mut out = serde_json::Map::with_capacity(fields.len() + 2);
    out.insert("apiVersion".into(), Value::String(kind.api_version()));
    out.insert("kind".into(), Value::String(kind.name().to_string()));
    for (k, v) in fields {
        if k != "apiVersion" && k != "kind" {
            out.insert(k, v);
        }
    }
    Value::Object(out)
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
                if key != crate::core::rules::APPLIED {
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
