//! How much of a Service's traffic leaves its zone: a model of where
//! kube-proxy sends each request, from the cluster's Nodes, the Service's
//! ready endpoints, its routing settings and the call graph. Pure: no I/O.
//!
//! The model follows the two components that decide, as they are written
//! (see docs/design.md for the sources):
//!
//! 1. **The EndpointSlice controller sets hints.** `trafficDistribution:
//!    PreferClose`/`PreferSameZone`: every ready endpoint with a zone is
//!    hinted for its own zone; `PreferSameNode`: also for its own node;
//!    none: no hints. `topology-mode: Auto`: hints in proportion to each
//!    zone's allocatable CPU, or none at all when that cannot be done
//!    without overloading a zone (today's hints are read from the slices;
//!    for a Service that zonewise would annotate they are predicted).
//! 2. **kube-proxy on a client's node picks uniformly among the ready
//!    endpoints it may use**: those hinted for its node when every ready
//!    endpoint has a node hint and one is for this node; else those hinted
//!    for its zone when every ready endpoint has a zone hint and one is for
//!    this zone; else all. `internalTrafficPolicy: Local` ignores hints and
//!    uses the node's own endpoints, dropping the request when there are
//!    none.
//!
//! Clients are weighted by zone (and node): like the pods of the Service's
//! declared callers when they can be placed, else like the Ready nodes'
//! allocatable CPU, the proxy the EndpointSlice controller itself uses.
//! Requests are assumed to be of equal size and spread like the clients.

use std::collections::{BTreeSet, HashMap, HashSet};

use itertools::Itertools;
use serde_json::Value;

use super::checks::{Ep, NodeId, Nodes, OTHER_ZONE, ZoneId};
use crate::core::object;
use crate::core::rules::{self, TOPOLOGY_HINTS, TOPOLOGY_MODE};

/// The EndpointSlice controller's tolerance before it calls a zone
/// overloaded (`overloadThreshold`, 20%).
const OVERLOAD_THRESHOLD: f64 = 0.2;

/// At most this many ways to place the remainder of a re-spread are
/// averaged, the first in lexicographic order (C(k, r) is far below it for
/// real zone counts).
const MAX_PLACEMENTS: usize = 64;

/// How kube-proxy routes a Service's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No topology setting: every ready endpoint.
    Cluster,
    /// `trafficDistribution: PreferClose` or `PreferSameZone`.
    SameZone,
    /// `trafficDistribution: PreferSameNode`.
    SameNode,
    /// `service.kubernetes.io/topology-mode: Auto` (or the older
    /// topology-aware-hints annotation).
    Hints,
    /// `internalTrafficPolicy: Local`.
    Local,
}

impl Mode {
    /// How the Service routes: Local first (kube-proxy ignores hints for
    /// it), then the annotation (it takes precedence over
    /// `trafficDistribution` in the EndpointSlice controller), then the
    /// field.
    pub fn of(svc: &Value) -> Mode {
        if rules::is_local(svc) {
            return Mode::Local;
        }
        let annotated = object::annotation(svc, TOPOLOGY_MODE)
            .or_else(|| object::annotation(svc, TOPOLOGY_HINTS))
            .is_some_and(|m| m.eq_ignore_ascii_case("auto"));
        if annotated {
            return Mode::Hints;
        }
        match object::str_at(svc, &["spec", "trafficDistribution"]) {
            Some("PreferClose" | "PreferSameZone") => Mode::SameZone,
            Some("PreferSameNode") => Mode::SameNode,
            _ => Mode::Cluster,
        }
    }

    /// The setting as the report names it.
    pub fn label(svc: &Value) -> String {
        match Mode::of(svc) {
            Mode::Cluster => "none".into(),
            Mode::SameZone | Mode::SameNode => {
                object::str_at(svc, &["spec", "trafficDistribution"])
                    .unwrap_or_default()
                    .to_string()
            }
            Mode::Hints => "topology-mode: Auto".into(),
            Mode::Local => "Local".into(),
        }
    }
}

/// What a Service's clients are modeled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBasis {
    /// The pods of its declared callers.
    Callers,
    /// The Ready nodes, by allocatable CPU.
    Nodes,
}

impl ClientBasis {
    pub fn name(self) -> &'static str {
        match self {
            ClientBasis::Callers => "callers",
            ClientBasis::Nodes => "nodes",
        }
    }
}

/// Request weight by client place, and the zones' totals.
#[derive(Debug, Clone)]
pub struct Clients {
    pub source: ClientBasis,
    /// Weight by (zone, node); `None` node: a caller whose node is unknown.
    by_node: HashMap<(ZoneId, Option<NodeId>), f64>,
    by_zone: HashMap<ZoneId, f64>,
}

impl Clients {
    fn new(source: ClientBasis) -> Clients {
        Clients {
            source,
            by_node: HashMap::new(),
            by_zone: HashMap::new(),
        }
    }

    fn add(&mut self, zone: ZoneId, node: Option<NodeId>, w: f64) {
        if w <= 0.0 || zone == OTHER_ZONE {
            return;
        }
        *self.by_node.entry((zone, node)).or_default() += w;
        *self.by_zone.entry(zone).or_default() += w;
    }

    fn total(&self) -> f64 {
        self.by_zone.values().sum()
    }

    /// Clients like the Ready nodes with a zone, weighted by allocatable
    /// CPU. (A node without a zone label cannot prefer a zone; its share
    /// is left out.)
    pub fn of_nodes(nodes: &Nodes) -> Clients {
        let mut c = Clients::new(ClientBasis::Nodes);
        for (id, (zone, ready, cpu)) in nodes.node_facts.iter().enumerate() {
            if let (Some(z), true) = (zone, ready) {
                c.add(*z, Some(id as NodeId), *cpu as f64);
            }
        }
        c
    }

    /// Clients like these caller pods (one request weight each); `None`
    /// when none of them is in a known zone.
    pub fn of_callers<'a>(pods: impl IntoIterator<Item = &'a Ep>) -> Option<Clients> {
        let mut c = Clients::new(ClientBasis::Callers);
        for p in pods {
            if let Some(z) = p.zone {
                c.add(z, p.node, 1.0);
            }
        }
        (c.total() > 0.0).then_some(c)
    }

    /// Each zone's share of the cluster's allocatable CPU (the controller's
    /// ratios); `None` when a Ready node has no zone, which makes the
    /// controller give up on hints.
    pub fn cpu_ratios(nodes: &Nodes) -> Option<HashMap<ZoneId, f64>> {
        let mut cpu: HashMap<ZoneId, f64> = HashMap::new();
        for (zone, ready, millis) in &nodes.node_facts {
            match (zone, ready) {
                (None, true) => return None,
                (Some(z), true) => *cpu.entry(*z).or_default() += *millis as f64,
                _ => {}
            }
        }
        let total: f64 = cpu.values().sum();
        (total > 0.0).then(|| cpu.into_iter().map(|(z, c)| (z, c / total)).collect())
    }
}

/// What one routing does to a Service's requests: the share that crosses
/// zones and the share dropped (Local without a local endpoint), each of
/// the requests from clients in a known zone.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Share {
    pub cross: f64,
    pub dropped: f64,
}

/// Where the hints of a `topology-mode: Auto` Service come from.
#[derive(Debug, Clone, Copy)]
pub enum HintSource<'a> {
    /// As the slices carry them now.
    Slices,
    /// As the controller would set them, with these zone CPU ratios
    /// (`None`: it would set none).
    Predicted(Option<&'a HashMap<ZoneId, f64>>),
}

/// The share of requests that cross zones (and are dropped) when clients
/// call a Service with `eps` (its ready endpoints) under `mode`. `None`
/// with no ready endpoint or no client in a known zone.
pub fn share(mode: Mode, hints: HintSource<'_>, eps: &[Ep], clients: &Clients) -> Option<Share> {
    let total = clients.total();
    if eps.is_empty() || total <= 0.0 {
        return None;
    }
    let hinted = hinted(mode, hints, eps);
    let eps = hinted.as_deref().unwrap_or(eps);
    let mut cross = 0.0;
    let mut dropped = 0.0;
    if mode == Mode::Local || eps.iter().any(|e| e.node_hint) {
        // The node matters: client by client node.
        for (&(zone, node), &w) in &clients.by_node {
            match pick(mode, eps, zone, node) {
                Some(c) => cross += w * c,
                None => dropped += w,
            }
        }
    } else {
        for (&zone, &w) in &clients.by_zone {
            if let Some(c) = pick(mode, eps, zone, None) {
                cross += w * c;
            }
        }
    }
    Some(Share {
        cross: cross / total,
        dropped: dropped / total,
    })
}

/// The endpoints with the hints the EndpointSlice controller gives them
/// under `mode` (`None`: keep the slices' own hints).
fn hinted(mode: Mode, source: HintSource<'_>, eps: &[Ep]) -> Option<Vec<Ep>> {
    let own_zone = |node_hints: bool| {
        eps.iter()
            .map(|e| Ep {
                zone_hints: e.zone.into_iter().collect(),
                node_hint: node_hints && e.node.is_some(),
                ..e.clone()
            })
            .collect()
    };
    match (mode, source) {
        // Local ignores hints altogether (see `pick`).
        (Mode::Local, _) => None,
        (Mode::Cluster, _) => Some(
            eps.iter()
                .map(|e| Ep {
                    zone_hints: Vec::new(),
                    node_hint: false,
                    ..e.clone()
                })
                .collect(),
        ),
        (Mode::SameZone, _) => Some(own_zone(false)),
        (Mode::SameNode, _) => Some(own_zone(true)),
        (Mode::Hints, HintSource::Slices) => None,
        (Mode::Hints, HintSource::Predicted(ratios)) => Some(proportional_hints(eps, ratios)),
    }
}

/// The fraction of a client's requests that cross zones: kube-proxy's
/// choice for a client in `zone` on `node`. `None`: dropped.
fn pick(mode: Mode, eps: &[Ep], zone: ZoneId, node: Option<NodeId>) -> Option<f64> {
    let usable: Vec<&Ep> = if mode == Mode::Local {
        eps.iter()
            .filter(|e| node.is_some() && e.node == node)
            .collect()
    } else {
        let all_node = eps.iter().all(|e| e.node_hint);
        let for_node = |e: &&Ep| e.node_hint && node.is_some() && e.node == node;
        let all_zone = eps.iter().all(|e| !e.zone_hints.is_empty());
        let for_zone = |e: &&Ep| e.zone_hints.contains(&zone);
        if all_node && eps.iter().any(|e| for_node(&e)) {
            eps.iter().filter(for_node).collect()
        } else if all_zone && eps.iter().any(|e| for_zone(&e)) {
            eps.iter().filter(for_zone).collect()
        } else {
            eps.iter().collect()
        }
    };
    if usable.is_empty() {
        return None;
    }
    let away = usable.iter().filter(|e| e.zone != Some(zone)).count();
    Some(away as f64 / usable.len() as f64)
}

/// Hints as the controller's topology cache sets them for `topology-mode:
/// Auto`: each endpoint first hinted for its own zone, then endpoints moved
/// from zones with more than their CPU share to zones with less, one at a
/// time, largest surplus to largest need; no hints at all when a Ready
/// node has no zone, an endpoint has none, there are fewer endpoints than
/// zones, the minimum allocations cannot be met, or a zone would still be
/// overloaded.
fn proportional_hints(eps: &[Ep], ratios: Option<&HashMap<ZoneId, f64>>) -> Vec<Ep> {
    // The topology cache sets zone hints only.
    let none = || {
        eps.iter()
            .map(|e| Ep {
                zone_hints: Vec::new(),
                node_hint: false,
                ..e.clone()
            })
            .collect()
    };
    let Some(ratios) = ratios else {
        return none();
    };
    let n = eps.len();
    if ratios.len() > n || eps.iter().any(|e| e.zone.is_none()) {
        return none();
    }
    // Zones in a fixed order, so ties break the same way every run.
    let mut zones: Vec<ZoneId> = ratios.keys().copied().collect();
    zones.sort_unstable();
    let mut minimum_total = 0usize;
    let mut desired: HashMap<ZoneId, f64> = HashMap::new();
    let mut minimum: HashMap<ZoneId, usize> = HashMap::new();
    for z in &zones {
        let d = ratios[z] * n as f64;
        let m = (d / (1.0 + OVERLOAD_THRESHOLD)).ceil() as usize;
        minimum_total += m;
        desired.insert(*z, d.max(m as f64));
        minimum.insert(*z, m);
    }
    if minimum_total > n {
        return none();
    }
    let mut hinted: HashMap<ZoneId, usize> = HashMap::new();
    for e in eps {
        if let Some(z) = e.zone {
            *hinted.entry(z).or_default() += 1;
        }
    }
    // How many each zone gives and receives.
    let mut giving: Vec<(ZoneId, f64)> = Vec::new();
    let mut receiving: Vec<(ZoneId, f64)> = Vec::new();
    for z in &zones {
        let have = hinted.get(z).copied().unwrap_or(0) as f64;
        if have > desired[z] {
            giving.push((*z, have - desired[z]));
        } else if have < desired[z] {
            receiving.push((*z, desired[z] - have));
        }
    }
    let most = |v: &Vec<(ZoneId, f64)>| {
        v.iter()
            .enumerate()
            .filter(|(_, (_, n))| *n > 0.0)
            .max_by(|a, b| a.1.1.total_cmp(&b.1.1).then(b.0.cmp(&a.0)))
            .map(|(i, (_, n))| (i, *n))
    };
    let mut give: HashMap<ZoneId, usize> = HashMap::new();
    let mut receive: Vec<(ZoneId, usize)> = Vec::new();
    while let (Some((gi, g)), Some((ri, r))) = (most(&giving), most(&receiving)) {
        if (g < 1.0 && r < 1.0) || g < 0.5 || r < 0.5 {
            break;
        }
        giving[gi].1 -= 1.0;
        receiving[ri].1 -= 1.0;
        *give.entry(giving[gi].0).or_default() += 1;
        match receive.iter_mut().find(|(z, _)| *z == receiving[ri].0) {
            Some((_, k)) => *k += 1,
            None => receive.push((receiving[ri].0, 1)),
        }
    }
    // Move endpoints in list order, each to the first zone still short.
    let mut out: Vec<Ep> = Vec::with_capacity(n);
    for e in eps {
        let mut hint = e.zone.into_iter().collect::<Vec<_>>();
        if let Some(z) = e.zone
            && let Some(left) = give.get_mut(&z).filter(|k| **k > 0)
            && let Some((to, k)) = receive.iter_mut().find(|(_, k)| *k > 0)
        {
            *left -= 1;
            *k -= 1;
            hint = vec![*to];
        }
        out.push(Ep {
            zone_hints: hint,
            node_hint: false,
            ..e.clone()
        });
    }
    // The controller refuses hints that would still overload a zone.
    let mut per_zone: HashMap<ZoneId, usize> = HashMap::new();
    for e in &out {
        for z in &e.zone_hints {
            *per_zone.entry(*z).or_default() += 1;
        }
    }
    let overloaded = zones
        .iter()
        .any(|z| per_zone.get(z).copied().unwrap_or(0) < minimum[z]);
    if overloaded { none() } else { out }
}

/// The cross-zone share after a rollout that spreads `count` endpoints
/// evenly over `zones` (zone-spread, `maxSkew: 1`): every zone gets
/// `count / k`, and `count % k` of them one more; the share is averaged
/// over which zones those are, each equally likely.
pub fn respread_share(
    mode: Mode,
    ratios: Option<&HashMap<ZoneId, f64>>,
    count: usize,
    zones: &BTreeSet<ZoneId>,
    clients: &Clients,
) -> Option<Share> {
    let k = zones.len();
    if count == 0 || k == 0 {
        return None;
    }
    let zones: Vec<ZoneId> = zones.iter().copied().collect();
    let (base, extra) = (count / k, count % k);
    let mut sum = Share::default();
    let mut n = 0.0;
    // Each way to choose the `extra` zones that get one endpoint more.
    for chosen in (0..k).combinations(extra).take(MAX_PLACEMENTS) {
        n += 1.0;
        let mut eps = Vec::with_capacity(count);
        for (i, z) in zones.iter().enumerate() {
            let here = base + usize::from(chosen.contains(&i));
            eps.extend((0..here).map(|_| Ep {
                zone: Some(*z),
                node: None,
                zone_hints: Vec::new(),
                node_hint: false,
            }));
        }
        let s = share(mode, HintSource::Predicted(ratios), &eps, clients)?;
        sum.cross += s.cross;
        sum.dropped += s.dropped;
    }
    Some(Share {
        cross: sum.cross / n,
        dropped: sum.dropped / n,
    })
}

/// A Service in scope, as the estimate needs it.
#[derive(Debug, Clone)]
pub struct ServiceFacts {
    pub namespace: String,
    pub name: String,
    pub selector: Vec<(String, String)>,
    /// Counted in the estimate: proxied (a selector, not headless, not
    /// ExternalName), not skipped, not in an excluded namespace. Others are
    /// still used to place their pods when they are callers.
    pub counted: bool,
    /// The routing setting as it is, for the report.
    pub routing: String,
    pub today: Mode,
    /// Its routing once zonewise's rules have acted on it.
    pub after: Mode,
}

/// A Deployment or StatefulSet in scope.
#[derive(Debug, Clone)]
pub struct WorkloadFacts {
    pub namespace: String,
    /// Its pod template's labels.
    pub labels: Vec<(String, String)>,
    /// The zones zone-spread would spread it over (the zones its template
    /// may use that have Ready nodes); `None` when zone-spread would not
    /// change it.
    pub respread: Option<BTreeSet<ZoneId>>,
    /// The Services it is declared to call.
    pub callees: Vec<(String, String)>,
}

/// One Service's estimate.
#[derive(Debug, Clone)]
pub struct Estimate {
    pub namespace: String,
    pub name: String,
    pub routing: String,
    pub clients: ClientBasis,
    pub today: Share,
    pub after_routing: Share,
    pub after_rollout: Share,
}

/// What the audit listed, for the estimate.
#[derive(Debug, Default)]
pub struct Inventory {
    pub services: Vec<ServiceFacts>,
    pub workloads: Vec<WorkloadFacts>,
}

/// `(namespace, key, value)` → the items that carry that label pair,
/// borrowed from the inventory.
type Postings<'a> = HashMap<(&'a str, &'a str, &'a str), Vec<usize>>;

fn postings<'a>(items: impl Iterator<Item = (&'a str, &'a [(String, String)])>) -> Postings<'a> {
    let mut p: Postings<'a> = HashMap::new();
    for (i, (ns, labels)) in items.enumerate() {
        for (k, v) in labels {
            p.entry((ns, k, v)).or_default().push(i);
        }
    }
    p
}

/// Every pair of `selector` is among `labels`.
fn selects(selector: &[(String, String)], labels: &[(String, String)]) -> bool {
    !selector.is_empty() && selector.iter().all(|pair| labels.contains(pair))
}

impl Inventory {
    /// The estimate of every counted Service with ready endpoints, in
    /// (namespace, name) order, and how many counted Services had none.
    /// `endpoints` holds each Service's ready endpoints by (namespace, name).
    pub fn estimate(
        &self,
        nodes: &Nodes,
        endpoints: &HashMap<(String, String), Vec<Ep>>,
    ) -> (Vec<Estimate>, usize) {
        let ratios = Clients::cpu_ratios(nodes);
        let by_nodes = Clients::of_nodes(nodes);
        let no_eps: Vec<Ep> = Vec::new();
        let eps_of = |ns: &str, name: &str| {
            endpoints
                .get(&(ns.to_string(), name.to_string()))
                .unwrap_or(&no_eps)
        };
        // Which Services select a workload's pods: candidates from any of
        // the workload's label pairs, then the whole selector checked.
        let svc_pairs = postings(
            self.services
                .iter()
                .map(|s| (s.namespace.as_str(), s.selector.as_slice())),
        );
        // A caller's pods: the ready endpoints of the Service selecting it
        // that has the most of them.
        let pods_of: Vec<Option<&Vec<Ep>>> = self
            .workloads
            .iter()
            .map(|w| {
                let mut seen = HashSet::new();
                w.labels
                    .iter()
                    .filter_map(|(k, v)| {
                        svc_pairs.get(&(w.namespace.as_str(), k.as_str(), v.as_str()))
                    })
                    .flatten()
                    .filter(|i| seen.insert(**i))
                    .map(|i| &self.services[*i])
                    .filter(|s| selects(&s.selector, &w.labels))
                    .map(|s| eps_of(&s.namespace, &s.name))
                    .max_by_key(|eps| eps.len())
                    .filter(|eps| !eps.is_empty())
            })
            .collect();
        let mut callers: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, w) in self.workloads.iter().enumerate() {
            for (ns, name) in &w.callees {
                callers.entry((ns, name)).or_default().push(i);
            }
        }
        let workload_pairs = postings(
            self.workloads
                .iter()
                .map(|w| (w.namespace.as_str(), w.labels.as_slice())),
        );
        let mut out = Vec::new();
        let mut without_endpoints = 0;
        for s in self.services.iter().filter(|s| s.counted) {
            let eps = eps_of(&s.namespace, &s.name);
            let from_callers = callers
                .get(&(s.namespace.as_str(), s.name.as_str()))
                .and_then(|ws| {
                    Clients::of_callers(ws.iter().filter_map(|w| pods_of[*w]).flatten())
                });
            let clients = from_callers.as_ref().unwrap_or(&by_nodes);
            let Some(today) = share(s.today, HintSource::Slices, eps, clients) else {
                without_endpoints += 1;
                continue;
            };
            // The slices' hints stand for the annotation only where the
            // owner already set it; zonewise's is predicted.
            let hints = if s.today == Mode::Hints {
                HintSource::Slices
            } else {
                HintSource::Predicted(ratios.as_ref())
            };
            let after_routing = share(s.after, hints, eps, clients).unwrap_or(today);
            // The workload whose pods back it, if zone-spread would move
            // them. (Local Services keep their nodes: a zone spread says
            // nothing about which node a pod lands on.)
            let respread = s
                .selector
                .iter()
                .filter_map(|(k, v)| {
                    workload_pairs.get(&(s.namespace.as_str(), k.as_str(), v.as_str()))
                })
                .min_by_key(|l| l.len())
                .into_iter()
                .flatten()
                .map(|i| &self.workloads[*i])
                .filter(|w| selects(&s.selector, &w.labels))
                .find_map(|w| w.respread.as_ref());
            let after_rollout = match respread {
                Some(zones) if s.after != Mode::Local => {
                    respread_share(s.after, ratios.as_ref(), eps.len(), zones, clients)
                        .unwrap_or(after_routing)
                }
                _ => after_routing,
            };
            out.push(Estimate {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                routing: s.routing.clone(),
                clients: clients.source,
                today,
                after_routing,
                after_rollout,
            });
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        (out, without_endpoints)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::audit::checks::{Endpoints, Nodes};
    use serde_json::json;

    /// Nodes `(name, zone, cpu)`, all Ready.
    fn nodes(spec: &[(&str, &str, &str)]) -> Nodes {
        let mut n = Nodes::default();
        for (name, zone, cpu) in spec {
            n.add(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}],
                               "allocatable": {"cpu": cpu}}}))
                .unwrap(),
            );
        }
        n
    }

    fn three_zones() -> Nodes {
        nodes(&[("a1", "a", "4"), ("b1", "b", "4"), ("c1", "c", "4000m")])
    }

    /// Ready endpoints on `nodes`, with optional zone hints.
    fn eps(n: &Nodes, on: &[&str], hints: Option<&[&str]>) -> Vec<Ep> {
        let list: Vec<_> = on
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let mut e = json!({"conditions": {"ready": true}, "nodeName": node,
                                   "zone": &node[..1]});
                if let Some(h) = hints {
                    e["hints"] = json!({"forZones": [{"name": h[i]}]});
                }
                e
            })
            .collect();
        let mut e = Endpoints::default();
        e.add(
            serde_json::from_value(json!({"metadata": {"name": "s"}, "endpoints": list})).unwrap(),
            n,
        );
        e.list
    }

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn one_endpoint_per_zone_and_no_setting_crosses_two_thirds() {
        let n = three_zones();
        let c = Clients::of_nodes(&n);
        let e = eps(&n, &["a1", "b1", "c1"], None);
        let s = share(Mode::Cluster, HintSource::Slices, &e, &c).unwrap();
        assert!(approx(s.cross, 2.0 / 3.0), "{s:?}");
        assert_eq!(s.dropped, 0.0);
        for mode in [Mode::SameZone, Mode::SameNode] {
            let s = share(mode, HintSource::Slices, &e, &c).unwrap();
            assert!(approx(s.cross, 0.0), "{mode:?} {s:?}");
        }
    }

    #[test]
    fn a_zone_without_endpoints_sends_its_third_away_under_routing() {
        let n = three_zones();
        let c = Clients::of_nodes(&n);
        let e = eps(&n, &["a1", "b1"], None);
        let s = share(Mode::SameZone, HintSource::Slices, &e, &c).unwrap();
        assert!(approx(s.cross, 1.0 / 3.0), "{s:?}");
        // Without routing: a's and b's clients cross half the time, c's always.
        let s = share(Mode::Cluster, HintSource::Slices, &e, &c).unwrap();
        assert!(approx(s.cross, (0.5 + 0.5 + 1.0) / 3.0), "{s:?}");
    }

    #[test]
    fn cpu_weighs_the_zones() {
        // Zone a holds half the CPU; its clients stay, the rest cross.
        let n = nodes(&[("a1", "a", "8"), ("b1", "b", "4"), ("c1", "c", "4")]);
        let c = Clients::of_nodes(&n);
        let e = eps(&n, &["a1"], None);
        let s = share(Mode::Cluster, HintSource::Slices, &e, &c).unwrap();
        assert!(approx(s.cross, 0.5), "{s:?}");
    }

    #[test]
    fn topology_mode_uses_the_slices_hints_only_when_every_endpoint_has_one() {
        let n = three_zones();
        let c = Clients::of_nodes(&n);
        let hinted = eps(&n, &["a1", "b1", "c1"], Some(&["a", "b", "c"]));
        let s = share(Mode::Hints, HintSource::Slices, &hinted, &c).unwrap();
        assert!(approx(s.cross, 0.0), "{s:?}");
        let mut partly = hinted.clone();
        partly[2].zone_hints.clear();
        let s = share(Mode::Hints, HintSource::Slices, &partly, &c).unwrap();
        assert!(approx(s.cross, 2.0 / 3.0), "{s:?}");
        let none = eps(&n, &["a1", "b1", "c1"], None);
        let s = share(Mode::Hints, HintSource::Slices, &none, &c).unwrap();
        assert!(approx(s.cross, 2.0 / 3.0), "{s:?}");
        // An endpoint of zone a lent to zone c: c's clients use it alone.
        let lent = eps(&n, &["a1", "a1", "b1"], Some(&["a", "c", "b"]));
        let s = share(Mode::Hints, HintSource::Slices, &lent, &c).unwrap();
        assert!(approx(s.cross, 1.0 / 3.0), "{s:?}");
    }

    #[test]
    fn predicted_hints_follow_the_controller() {
        let n = three_zones();
        let c = Clients::of_nodes(&n);
        let ratios = Clients::cpu_ratios(&n);
        // Balanced: every zone keeps its own endpoints.
        let even = eps(&n, &["a1", "a1", "b1", "b1", "c1", "c1"], None);
        let s = share(
            Mode::Hints,
            HintSource::Predicted(ratios.as_ref()),
            &even,
            &c,
        )
        .unwrap();
        assert!(approx(s.cross, 0.0), "{s:?}");
        // 4/1/1: zone a lends one endpoint to each of b and c... only
        // where it is short; here a has 4 for a desired 2, b and c 1 each.
        let skewed = eps(&n, &["a1", "a1", "a1", "a1", "b1", "c1"], None);
        let s = share(
            Mode::Hints,
            HintSource::Predicted(ratios.as_ref()),
            &skewed,
            &c,
        )
        .unwrap();
        // b and c each get one of a's: half of their requests cross.
        assert!(approx(s.cross, (0.0 + 0.5 + 0.5) / 3.0), "{s:?}");
        // Too few endpoints for the zones: no hints, all endpoints.
        let two = eps(&n, &["a1", "b1"], None);
        let s = share(
            Mode::Hints,
            HintSource::Predicted(ratios.as_ref()),
            &two,
            &c,
        )
        .unwrap();
        let cluster = share(Mode::Cluster, HintSource::Slices, &two, &c).unwrap();
        assert_eq!(s, cluster);
        // No ratios (a Ready node without a zone): no hints either.
        let s = share(Mode::Hints, HintSource::Predicted(None), &even, &c).unwrap();
        assert!(approx(s.cross, 2.0 / 3.0), "{s:?}");
    }

    #[test]
    fn callers_in_one_zone_only() {
        let n = three_zones();
        let callers = eps(&n, &["a1", "a1"], None);
        let c = Clients::of_callers(&callers).unwrap();
        assert_eq!(c.source, ClientBasis::Callers);
        let e = eps(&n, &["a1", "b1", "c1"], None);
        let s = share(Mode::Cluster, HintSource::Slices, &e, &c).unwrap();
        assert!(approx(s.cross, 2.0 / 3.0), "{s:?}");
        let s = share(Mode::SameZone, HintSource::Slices, &e, &c).unwrap();
        assert!(approx(s.cross, 0.0), "{s:?}");
        // Callers in zone c, callee only in a: all cross, whatever the routing.
        let c = Clients::of_callers(&eps(&n, &["c1"], None)).unwrap();
        let s = share(
            Mode::SameZone,
            HintSource::Slices,
            &eps(&n, &["a1"], None),
            &c,
        )
        .unwrap();
        assert!(approx(s.cross, 1.0), "{s:?}");
        assert!(Clients::of_callers(&[]).is_none());
    }

    #[test]
    fn local_never_crosses_but_drops_where_no_endpoint_runs() {
        let n = nodes(&[("a1", "a", "4"), ("a2", "a", "4"), ("b1", "b", "8")]);
        let c = Clients::of_nodes(&n);
        let e = eps(&n, &["a1", "b1"], None);
        let s = share(Mode::Local, HintSource::Slices, &e, &c).unwrap();
        assert_eq!(s.cross, 0.0);
        // a2 holds a quarter of the CPU and no endpoint.
        assert!(approx(s.dropped, 0.25), "{s:?}");
    }

    #[test]
    fn same_node_falls_back_to_the_zone_then_everywhere() {
        let n = nodes(&[("a1", "a", "4"), ("a2", "a", "4"), ("b1", "b", "8")]);
        let c = Clients::of_nodes(&n);
        // a2's clients have no local endpoint: zone a's (a1) serves them.
        let s = share(
            Mode::SameNode,
            HintSource::Slices,
            &eps(&n, &["a1", "b1"], None),
            &c,
        )
        .unwrap();
        assert!(approx(s.cross, 0.0), "{s:?}");
        // Nothing in b: b's half of the CPU goes to a.
        let s = share(
            Mode::SameNode,
            HintSource::Slices,
            &eps(&n, &["a1"], None),
            &c,
        )
        .unwrap();
        assert!(approx(s.cross, 0.5), "{s:?}");
    }

    #[test]
    fn a_rollout_spreads_endpoints_over_the_allowed_zones() {
        let n = three_zones();
        let c = Clients::of_nodes(&n);
        let ratios = Clients::cpu_ratios(&n);
        let all: BTreeSet<ZoneId> = [0, 1, 2].into();
        // Three endpoints over three zones under routing: none cross.
        let s = respread_share(Mode::SameZone, ratios.as_ref(), 3, &all, &c).unwrap();
        assert!(approx(s.cross, 0.0), "{s:?}");
        // Two over three: one zone in three has none, whichever it is.
        let s = respread_share(Mode::SameZone, ratios.as_ref(), 2, &all, &c).unwrap();
        assert!(approx(s.cross, 1.0 / 3.0), "{s:?}");
        // Pinned to two zones: the third zone's clients always cross.
        let two: BTreeSet<ZoneId> = [0, 1].into();
        let s = respread_share(Mode::SameZone, ratios.as_ref(), 4, &two, &c).unwrap();
        assert!(approx(s.cross, 1.0 / 3.0), "{s:?}");
        // No routing: spreading alone still sends 2/3 away.
        let s = respread_share(Mode::Cluster, ratios.as_ref(), 3, &all, &c).unwrap();
        assert!(approx(s.cross, 2.0 / 3.0), "{s:?}");

        // Forty-five over thirty zones: C(30, 15) = 155 million ways to
        // place the remainder, of which only the first MAX_PLACEMENTS are
        // played. Every zone has an endpoint in each, so none cross.
        let names: Vec<(String, String)> = (0..30)
            .map(|i| (format!("n{i}"), format!("z{i}")))
            .collect();
        let rows: Vec<(&str, &str, &str)> = names
            .iter()
            .map(|(n, z)| (n.as_str(), z.as_str(), "4"))
            .collect();
        let n = nodes(&rows);
        let c = Clients::of_nodes(&n);
        let ratios = Clients::cpu_ratios(&n);
        let zones: BTreeSet<ZoneId> = (0..30).collect();
        let s = respread_share(Mode::SameZone, ratios.as_ref(), 45, &zones, &c).unwrap();
        assert!(approx(s.cross, 0.0), "{s:?}");
    }

    #[test]
    fn modes_from_the_service() {
        let svc = |spec: Value, ann: Value| json!({"metadata": {"annotations": ann}, "spec": spec});
        assert_eq!(Mode::of(&svc(json!({}), json!({}))), Mode::Cluster);
        assert_eq!(
            Mode::of(&svc(
                json!({"trafficDistribution": "PreferClose"}),
                json!({})
            )),
            Mode::SameZone
        );
        assert_eq!(
            Mode::of(&svc(
                json!({"trafficDistribution": "PreferSameNode"}),
                json!({})
            )),
            Mode::SameNode
        );
        assert_eq!(
            Mode::of(&svc(
                json!({"trafficDistribution": "PreferSameZone"}),
                json!({TOPOLOGY_MODE: "Auto"})
            )),
            Mode::Hints
        );
        assert_eq!(
            Mode::of(&svc(
                json!({"internalTrafficPolicy": "Local", "trafficDistribution": "PreferSameZone"}),
                json!({})
            )),
            Mode::Local
        );
        assert_eq!(
            Mode::label(&svc(
                json!({"trafficDistribution": "PreferClose"}),
                json!({})
            )),
            "PreferClose"
        );
    }
}
