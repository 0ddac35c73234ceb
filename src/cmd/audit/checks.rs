//! Whether zone-local routing can work, from what the cluster says: Nodes
//! (zone label, Ready condition) and EndpointSlices (ready endpoints, their
//! zones and nodes, hints). Pure functions of that inventory.
//!
//! - `zone-coverage`: a zone with Ready nodes has no ready endpoint of a
//!   zone-routed Service. kube-proxy (trafficDistribution) then sends that
//!   zone's clients to other zones; the EndpointSlice controller
//!   (topology-mode) drops hints altogether.
//! - `topology-hints`: `topology-mode: Auto`, but the slices carry no hints,
//!   so the annotation does nothing.
//! - `local-drop`: an `internalTrafficPolicy: Local` Service, and the Ready
//!   nodes without a ready local endpoint, where its traffic is dropped.
//! - `zone-balance`: under trafficDistribution each zone's clients use
//!   their own zone's endpoints, so a zone with a far smaller share of the
//!   endpoints than of the nodes overloads them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;

/// Node names shown in a message before "and N more".
const NAMES_SHOWN: usize = 5;

pub const ZONE_COVERAGE: &str = "zone-coverage";
pub const TOPOLOGY_HINTS: &str = "topology-hints";
pub const LOCAL_DROP: &str = "local-drop";
pub const ZONE_BALANCE: &str = "zone-balance";

/// The Nodes, as far as routing goes.
#[derive(Debug, Default)]
pub struct Nodes {
    /// Zone of every node that has one.
    zone_of: HashMap<String, String>,
    /// Ready nodes by zone (`None`: no zone label).
    ready: BTreeMap<Option<String>, BTreeSet<String>>,
    pub total: usize,
    /// The traffic model's view: zones and nodes by small ids.
    pub(super) zone_ids: HashMap<String, ZoneId>,
    pub(super) node_ids: HashMap<String, NodeId>,
    /// Per node id: zone, Ready, allocatable CPU in millicores.
    pub(super) node_facts: Vec<(Option<ZoneId>, bool, u64)>,
}

/// A zone some Node is in, by index; [`OTHER_ZONE`] for a zone no Node is
/// in (no client is there, so it is never the same zone as a client's).
pub type ZoneId = u16;
pub const OTHER_ZONE: ZoneId = ZoneId::MAX;
pub type NodeId = u32;

/// One ready endpoint, as the traffic model needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ep {
    /// `None`: the endpoint has no zone (and its node none either).
    pub zone: Option<ZoneId>,
    pub node: Option<NodeId>,
    /// The zones its `hints.forZones` name.
    pub zone_hints: Vec<ZoneId>,
    /// Hinted for its own node (`hints.forNodes`; the controller only ever
    /// hints an endpoint's own node).
    pub node_hint: bool,
}

/// The fields of a Node the checks read.
#[derive(Debug, Deserialize)]
pub struct NodeItem {
    metadata: Meta,
    #[serde(default)]
    status: Option<NodeStatus>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Meta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct NodeStatus {
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default)]
    allocatable: BTreeMap<String, String>,
    #[serde(default)]
    capacity: BTreeMap<String, String>,
}

/// A CPU quantity (`4`, `3920m`, `2.5`) in millicores; `None` when it is
/// not one (the model then counts the node as one CPU). Our own: k8s-openapi's
/// `Quantity` is a bare string, and the one parser crate targets k8s-openapi 0.14.
fn cpu_millis(q: &str) -> Option<u64> {
    let q = q.trim();
    let millis = match q.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok()?,
        None => q.parse::<f64>().ok()? * 1000.0,
    };
    (millis.is_finite() && millis >= 0.0).then_some(millis as u64)
}

#[derive(Debug, Deserialize)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

impl Nodes {
    pub fn add(&mut self, node: NodeItem) {
        self.total += 1;
        let zone = crate::core::rules::node_zone(&node.metadata.labels).map(str::to_string);
        let ready = node.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.kind == "Ready" && c.status == "True")
        });
        // The EndpointSlice controller weighs zones by allocatable CPU.
        let cpu = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.get("cpu").or_else(|| s.capacity.get("cpu")))
            .and_then(|q| cpu_millis(q))
            .unwrap_or(1000);
        let zone_id = zone.as_ref().map(|z| self.intern_zone(z));
        if !self.node_ids.contains_key(&node.metadata.name) {
            let id = self.node_facts.len() as NodeId;
            self.node_ids.insert(node.metadata.name.clone(), id);
            self.node_facts.push((zone_id, ready, cpu));
        }
        if let Some(z) = &zone {
            self.zone_of.insert(node.metadata.name.clone(), z.clone());
        }
        if ready {
            self.ready
                .entry(zone)
                .or_default()
                .insert(node.metadata.name);
        }
    }

    fn intern_zone(&mut self, zone: &str) -> ZoneId {
        if let Some(id) = self.zone_ids.get(zone) {
            return *id;
        }
        // Zones beyond the id space (never in practice) count as OTHER.
        let Ok(id) = ZoneId::try_from(self.zone_ids.len()) else {
            return OTHER_ZONE;
        };
        if id == OTHER_ZONE {
            return OTHER_ZONE;
        }
        self.zone_ids.insert(zone.to_string(), id);
        id
    }

    /// A zone's id: [`OTHER_ZONE`] when no Node is in it.
    pub fn zone_id(&self, zone: &str) -> ZoneId {
        self.zone_ids.get(zone).copied().unwrap_or(OTHER_ZONE)
    }

    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        self.node_ids.get(name).copied()
    }

    /// Zones that have Ready nodes.
    pub fn ready_zones(&self) -> BTreeSet<&str> {
        self.ready.keys().filter_map(|z| z.as_deref()).collect()
    }

    /// Every zone a Node is in (Ready or not).
    pub fn zones(&self) -> BTreeSet<String> {
        self.zone_of.values().cloned().collect()
    }

    pub fn ready_count(&self) -> usize {
        self.ready.values().map(BTreeSet::len).sum()
    }

    fn ready_nodes(&self) -> impl Iterator<Item = &str> {
        self.ready.values().flatten().map(String::as_str)
    }

    fn unzoned_ready(&self) -> usize {
        self.ready.get(&None).map_or(0, BTreeSet::len)
    }
}

/// One Service's ready endpoints, from all its EndpointSlices.
#[derive(Debug, Default)]
pub struct Endpoints {
    pub ready_by_zone: BTreeMap<String, usize>,
    /// Ready endpoints whose zone is not known.
    pub ready_unzoned: usize,
    pub ready_nodes: BTreeSet<String>,
    pub with_hints: usize,
    /// Every ready endpoint, for the traffic model.
    pub list: Vec<Ep>,
}

impl Endpoints {
    pub fn ready(&self) -> usize {
        self.ready_by_zone.values().sum::<usize>() + self.ready_unzoned
    }
}

/// The fields of an EndpointSlice the checks read.
#[derive(Debug, Deserialize)]
pub struct SliceItem {
    pub metadata: Meta,
    #[serde(default)]
    endpoints: Vec<EndpointItem>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointItem {
    #[serde(default)]
    conditions: Option<EndpointConditions>,
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    hints: Option<Hints>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Hints {
    #[serde(default)]
    for_zones: Vec<Named>,
    #[serde(default)]
    for_nodes: Vec<Named>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

#[derive(Debug, Deserialize)]
struct EndpointConditions {
    #[serde(default)]
    ready: Option<bool>,
}

/// The label that ties a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl Endpoints {
    /// Adds a slice's endpoints; an endpoint without a zone gets its node's.
    pub fn add(&mut self, slice: SliceItem, nodes: &Nodes) {
        for e in slice.endpoints {
            // An unknown ready condition counts as ready (the API's rule).
            if e.conditions.and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let hints = e.hints.unwrap_or_default();
            if !hints.for_zones.is_empty() || !hints.for_nodes.is_empty() {
                self.with_hints += 1;
            }
            let zone = e.zone.or_else(|| {
                e.node_name
                    .as_ref()
                    .and_then(|n| nodes.zone_of.get(n).cloned())
            });
            let node = e.node_name.as_deref().and_then(|n| nodes.node_id(n));
            self.list.push(Ep {
                zone: zone.as_deref().map(|z| nodes.zone_id(z)),
                node,
                zone_hints: hints
                    .for_zones
                    .iter()
                    .map(|z| nodes.zone_id(&z.name))
                    .collect(),
                node_hint: hints
                    .for_nodes
                    .iter()
                    .any(|n| Some(n.name.as_str()) == e.node_name.as_deref()),
            });
            match zone {
                Some(z) => *self.ready_by_zone.entry(z).or_default() += 1,
                None => self.ready_unzoned += 1,
            }
            if let Some(n) = e.node_name {
                self.ready_nodes.insert(n);
            }
        }
    }
}

/// How a Service routes, now or once zonewise has acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Not zone-aware.
    None,
    /// `spec.trafficDistribution` keeps traffic in the zone.
    Distribution,
    /// `service.kubernetes.io/topology-mode: Auto` (or the older hints
    /// annotation): the EndpointSlice controller's proportional hints.
    Hints,
}

/// What the checks need of a Service.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// Its routing as it is now.
    pub routing: Routing,
    /// Its routing once zone-routing has acted (same as `routing` when it
    /// would not act).
    pub routing_after: Routing,
    pub local: bool,
    /// kube-proxy load-balances it over selected pods (a selector, not
    /// headless, not ExternalName).
    pub proxied: bool,
}

/// A routing-health finding: (check, message).
pub type Health = (&'static str, String);

/// The routing-health findings of one Service.
pub fn check_service(svc: &ServiceInfo, eps: &Endpoints, nodes: &Nodes) -> Vec<Health> {
    let mut out = Vec::new();
    if !svc.proxied {
        return out;
    }
    if svc.local {
        local_drop(eps, nodes, &mut out);
        // Local makes kube-proxy ignore zone routing: nothing more to check.
        return out;
    }
    let ready_zones = nodes.ready_zones();
    let later = if svc.routing == Routing::None && svc.routing_after != Routing::None {
        " once zone-routing applies"
    } else {
        ""
    };
    if svc.routing_after != Routing::None && eps.ready() > 0 {
        let uncovered: Vec<&str> = ready_zones
            .iter()
            .copied()
            .filter(|z| !eps.ready_by_zone.contains_key(*z))
            .collect();
        if !uncovered.is_empty() {
            out.push((
                ZONE_COVERAGE,
                format!(
                    "{} Ready nodes but no ready endpoint{later}: clients there send every request \
                     to another zone; run replicas in every zone (zone-spread) or more of them",
                    zones_have(&uncovered)
                ),
            ));
        }
    }
    if svc.routing == Routing::Hints && eps.ready() > 0 && eps.with_hints == 0 {
        out.push((
            TOPOLOGY_HINTS,
            format!(
                "topology-mode is Auto but the EndpointSlices carry no hints, so it does nothing: {}",
                why_no_hints(eps, nodes)
            ),
        ));
    }
    if svc.routing_after == Routing::Distribution {
        zone_balance(eps, nodes, later, &mut out);
    }
    out
}

/// `zone c has` / `zones b, c have`.
fn zones_have(zones: &[&str]) -> String {
    match zones {
        [one] => format!("zone {one} has"),
        many => format!("zones {} have", many.join(", ")),
    }
}

/// Why the EndpointSlice controller would set no hints: the first of its
/// reasons that holds (it wants endpoints in every zone, enough of them,
/// and zone labels on the nodes); else its allocation rule.
fn why_no_hints(eps: &Endpoints, nodes: &Nodes) -> String {
    let zones = nodes.ready_zones();
    let missing: Vec<&str> = zones
        .iter()
        .copied()
        .filter(|z| !eps.ready_by_zone.contains_key(*z))
        .collect();
    if nodes.unzoned_ready() > 0 {
        format!(
            "{} Ready node(s) have no zone label, and the controller needs every node's zone",
            nodes.unzoned_ready()
        )
    } else if eps.ready() < zones.len() {
        format!(
            "{} ready endpoint(s) for {} zones; it needs at least one per zone, and more to \
             allocate in proportion",
            eps.ready(),
            zones.len()
        )
    } else if !missing.is_empty() {
        format!("{} Ready nodes but no endpoint", zones_have(&missing))
    } else {
        "the endpoints are not spread in proportion to each zone's allocatable CPU, so the \
         controller cannot allocate them (see the Service's TopologyAwareHintsDisabled events); \
         spread replicas evenly, or use trafficDistribution (routing: auto)"
            .to_string()
    }
}

fn local_drop(eps: &Endpoints, nodes: &Nodes, out: &mut Vec<Health>) {
    let dropping: Vec<&str> = nodes
        .ready_nodes()
        .filter(|n| !eps.ready_nodes.contains(*n))
        .collect();
    if dropping.is_empty() {
        return;
    }
    let shown: Vec<&str> = dropping.iter().copied().take(NAMES_SHOWN).collect();
    let more = dropping.len() - shown.len();
    out.push((
        LOCAL_DROP,
        format!(
            "internalTrafficPolicy: Local, and {} of {} Ready nodes have no ready local endpoint, \
             so traffic from pods there is dropped: {}{}; back it with a DaemonSet, or use \
             trafficDistribution: PreferSameNode (1.34+)",
            dropping.len(),
            nodes.ready_count(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
    ));
}

/// The nodes dropping a Local Service's traffic (for the summary).
pub fn dropping_nodes<'a>(eps: &'a Endpoints, nodes: &'a Nodes) -> impl Iterator<Item = &'a str> {
    nodes
        .ready_nodes()
        .filter(move |n| !eps.ready_nodes.contains(*n))
}

fn zone_balance(eps: &Endpoints, nodes: &Nodes, later: &str, out: &mut Vec<Health>) {
    let total_nodes = nodes.ready_count() - nodes.unzoned_ready();
    let total_eps: usize = eps.ready_by_zone.values().sum();
    if total_nodes == 0 || total_eps < 2 {
        return;
    }
    for (zone, ready_nodes) in &nodes.ready {
        let Some(zone) = zone else { continue };
        let node_share = ready_nodes.len() as f64 / total_nodes as f64;
        let here = eps.ready_by_zone.get(zone).copied().unwrap_or(0);
        let ep_share = here as f64 / total_eps as f64;
        // An empty zone is zone-coverage's; "far below" is under half.
        if here > 0 && ep_share < node_share / 2.0 {
            out.push((
                ZONE_BALANCE,
                format!(
                    "zone {zone} has {:.0}% of the ready endpoints ({here} of {total_eps}) for \
                     {:.0}% of the Ready nodes{later}: under trafficDistribution its clients load \
                     each of them {:.1}x as much as the average; spread replicas evenly (zone-spread)",
                    ep_share * 100.0,
                    node_share * 100.0,
                    node_share / ep_share
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nodes(spec: &[(&str, Option<&str>, bool)]) -> Nodes {
        let mut n = Nodes::default();
        for (name, zone, ready) in spec {
            let mut labels = json!({});
            if let Some(z) = zone {
                labels[crate::core::rules::ZONE_KEY] = json!(z);
            }
            n.add(
                serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
                    "status": {"conditions": [{"type": "Ready", "status": if *ready {"True"} else {"False"}}]}}))
                .unwrap(),
            );
        }
        n
    }

    fn eps(n: &Nodes, spec: &[(&str, Option<&str>, bool)], hints: bool) -> Endpoints {
        let endpoints: Vec<_> = spec
            .iter()
            .map(|(node, zone, ready)| {
                let mut e = json!({"conditions": {"ready": ready}, "nodeName": node});
                if let Some(z) = zone {
                    e["zone"] = json!(z);
                }
                if hints {
                    e["hints"] = json!({"forZones": [{"name": zone}]});
                }
                e
            })
            .collect();
        let mut e = Endpoints::default();
        e.add(
            serde_json::from_value(json!({"metadata": {"name": "s"}, "endpoints": endpoints}))
                .unwrap(),
            n,
        );
        e
    }

    fn svc(routing: Routing, after: Routing, local: bool) -> ServiceInfo {
        ServiceInfo {
            namespace: "shop".into(),
            name: "orders".into(),
            routing,
            routing_after: after,
            local,
            proxied: true,
        }
    }

    fn three_zones() -> Nodes {
        nodes(&[
            ("a1", Some("a"), true),
            ("a2", Some("a"), true),
            ("b1", Some("b"), true),
            ("b2", Some("b"), true),
            ("c1", Some("c"), true),
            ("c2", Some("c"), false),
        ])
    }

    #[test]
    fn a_zone_without_endpoints_is_named() {
        let n = three_zones();
        let e = eps(
            &n,
            &[
                ("a1", Some("a"), true),
                ("b1", Some("b"), true),
                ("c1", Some("c"), false),
            ],
            false,
        );
        let found = check_service(
            &svc(Routing::Distribution, Routing::Distribution, false),
            &e,
            &n,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, ZONE_COVERAGE);
        assert!(
            found[0]
                .1
                .starts_with("zone c has Ready nodes but no ready endpoint"),
            "{found:?}"
        );
        // Covered everywhere: nothing to say.
        let e = eps(
            &n,
            &[
                ("a1", Some("a"), true),
                ("b1", Some("b"), true),
                ("c1", Some("c"), true),
            ],
            false,
        );
        assert!(
            check_service(
                &svc(Routing::Distribution, Routing::Distribution, false),
                &e,
                &n
            )
            .is_empty()
        );
        // Not zone-routed, and zonewise would not make it so: not our business.
        let e = eps(&n, &[("a1", Some("a"), true)], false);
        assert!(check_service(&svc(Routing::None, Routing::None, false), &e, &n).is_empty());
        // Would be routed: said so.
        let found = check_service(&svc(Routing::None, Routing::Distribution, false), &e, &n);
        assert!(
            found[0].1.contains("once zone-routing applies"),
            "{found:?}"
        );
    }

    #[test]
    fn an_endpoint_without_a_zone_takes_its_nodes() {
        let n = three_zones();
        let e = eps(
            &n,
            &[("a1", None, true), ("b1", None, true), ("c1", None, true)],
            false,
        );
        assert_eq!(e.ready_by_zone.len(), 3);
    }

    #[test]
    fn hints_missing_under_topology_mode_say_why() {
        let n = three_zones();
        let e = eps(
            &n,
            &[("a1", Some("a"), true), ("b1", Some("b"), true)],
            false,
        );
        let found = check_service(&svc(Routing::Hints, Routing::Hints, false), &e, &n);
        let hints = found.iter().find(|(c, _)| *c == TOPOLOGY_HINTS).unwrap();
        assert!(
            hints.1.contains("2 ready endpoint(s) for 3 zones"),
            "{hints:?}"
        );
        let e = eps(
            &n,
            &[
                ("a1", Some("a"), true),
                ("b1", Some("b"), true),
                ("c1", Some("c"), true),
            ],
            true,
        );
        assert!(check_service(&svc(Routing::Hints, Routing::Hints, false), &e, &n).is_empty());
        let e = eps(
            &n,
            &[
                ("a1", Some("a"), true),
                ("b1", Some("b"), true),
                ("c1", Some("c"), true),
            ],
            false,
        );
        let found = check_service(&svc(Routing::Hints, Routing::Hints, false), &e, &n);
        assert!(found[0].1.contains("allocatable CPU"), "{found:?}");
    }

    #[test]
    fn local_services_drop_traffic_on_nodes_without_an_endpoint() {
        let n = nodes(&[
            ("n1", Some("a"), true),
            ("n2", Some("a"), true),
            ("n3", Some("b"), true),
            ("n4", Some("b"), true),
            ("n5", Some("c"), true),
            ("n6", Some("c"), true),
            ("n7", Some("c"), false),
        ]);
        let e = eps(
            &n,
            &[
                ("n1", Some("a"), true),
                ("n3", Some("b"), true),
                ("n5", Some("c"), false),
            ],
            false,
        );
        let found = check_service(&svc(Routing::None, Routing::None, true), &e, &n);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, LOCAL_DROP);
        assert!(found[0].1.contains("4 of 6 Ready nodes"), "{found:?}");
        assert!(found[0].1.contains("n2, n4, n5, n6"), "{found:?}");
        assert_eq!(dropping_nodes(&e, &n).count(), 4);
    }

    #[test]
    fn many_dropping_nodes_are_capped_with_a_count() {
        let spec: Vec<(String, Option<&str>, bool)> = (0..40)
            .map(|i| (format!("node-{i:02}"), Some("a"), true))
            .collect();
        let spec: Vec<(&str, Option<&str>, bool)> =
            spec.iter().map(|(n, z, r)| (n.as_str(), *z, *r)).collect();
        let n = nodes(&spec);
        let e = eps(&n, &[("node-00", Some("a"), true)], false);
        let found = check_service(&svc(Routing::None, Routing::None, true), &e, &n);
        assert!(found[0].1.contains("node-05 and 34 more"), "{found:?}");
    }

    #[test]
    fn a_zone_with_few_endpoints_for_its_nodes_is_overloaded() {
        let n = three_zones();
        // 1 of 12 endpoints in zone c, which has 1 of 5 Ready nodes (20%).
        let mut spec = vec![("c1", Some("c"), true)];
        spec.extend(std::iter::repeat_n(("a1", Some("a"), true), 6));
        spec.extend(std::iter::repeat_n(("b1", Some("b"), true), 5));
        let e = eps(&n, &spec, false);
        let found = check_service(
            &svc(Routing::Distribution, Routing::Distribution, false),
            &e,
            &n,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, ZONE_BALANCE);
        assert!(
            found[0]
                .1
                .starts_with("zone c has 8% of the ready endpoints (1 of 12) for 20%"),
            "{found:?}"
        );
        // Under hints the controller allocates in proportion: no finding.
        assert!(
            check_service(&svc(Routing::Hints, Routing::Hints, false), &e, &n)
                .iter()
                .all(|(c, _)| *c != ZONE_BALANCE)
        );
    }
}
