//! What the rules may ask about the cluster, behind one small trait.
//!
//! Production answers from the reflector cache (`cluster` module); the
//! laptop, tests and `zonewise mutate` answer from [`NoCluster`] or an
//! [`InMemory`] map. Every answer is from memory: nothing here may block or
//! call the API server, because it runs on the admission path.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::core::config::ObjectRef;

/// The outcome of one lookup. `Unavailable` is distinct from `NotFound` so a
/// rule can say *why* it fell back ("no cluster access" vs "not found").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    Found(T),
    NotFound,
    Unavailable(&'static str),
}

/// What the rules need to know about a Service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceFacts {
    /// `spec.selector`; `None` when the Service has no (or an empty) selector.
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.internalTrafficPolicy: Local`.
    pub local: bool,
}

impl ServiceFacts {
    /// The facts from a Service's `spec.selector` and
    /// `spec.internalTrafficPolicy`, however the Service was read (typed by
    /// the cache's watch, raw JSON by the audit): an empty selector is no
    /// selector.
    pub fn new(
        selector: Option<BTreeMap<String, String>>,
        internal_traffic_policy: Option<&str>,
    ) -> ServiceFacts {
        ServiceFacts {
            selector: selector.filter(|s| !s.is_empty()),
            local: internal_traffic_policy == Some("Local"),
        }
    }
}

/// What the rules need to know about a DaemonSet that backs a Service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DaemonSetFacts {
    pub name: String,
    /// The pod template has a nodeSelector or required node affinity, so some
    /// nodes run no pod of it (and have no local endpoint).
    pub restricted: bool,
}

pub trait Lookups: Send + Sync {
    /// The Service `svc`.
    fn service(&self, svc: &ObjectRef) -> Lookup<ServiceFacts>;

    /// A DaemonSet in `namespace` whose pod template labels match every
    /// `key=value` of `selector` (a Service selector).
    fn daemonset_matching(
        &self,
        namespace: &str,
        selector: &[(&str, &str)],
    ) -> Lookup<DaemonSetFacts>;

    /// Whether `namespace` carries the AWS Load Balancer Controller's
    /// readiness-gate label (`elbv2.k8s.aws/pod-readiness-gate-inject:
    /// enabled`).
    fn readiness_gate(&self, namespace: &str) -> Lookup<bool>;
}

/// No cluster access: every lookup is unavailable.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCluster;

pub const NO_CLUSTER: &str = "no cluster access";

impl Lookups for NoCluster {
    fn service(&self, _: &ObjectRef) -> Lookup<ServiceFacts> {
        Lookup::Unavailable(NO_CLUSTER)
    }

    fn daemonset_matching(&self, _: &str, _: &[(&str, &str)]) -> Lookup<DaemonSetFacts> {
        Lookup::Unavailable(NO_CLUSTER)
    }

    fn readiness_gate(&self, _: &str) -> Lookup<bool> {
        Lookup::Unavailable(NO_CLUSTER)
    }
}

/// A DaemonSet's pod template labels and facts, as stored in [`InMemory`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DaemonSetEntry {
    pub labels: BTreeMap<String, String>,
    pub facts: DaemonSetFacts,
}

/// Lookups answered from plain maps: the unit tests' double, and the
/// snapshot the cluster cache keeps up to date from its watches.
#[derive(Debug, Clone, Default)]
pub struct InMemory {
    pub services: HashMap<ObjectRef, ServiceFacts>,
    /// DaemonSets by namespace, then name.
    pub daemonsets: HashMap<String, BTreeMap<String, DaemonSetEntry>>,
    /// Namespaces with the readiness-gate label (every other one lacks it).
    pub readiness_gates: HashSet<String>,
}

impl InMemory {
    pub fn with_service(mut self, ns: &str, name: &str, facts: ServiceFacts) -> Self {
        self.services.insert(ObjectRef::new(ns, name), facts);
        self
    }

    pub fn with_readiness_gate(mut self, ns: &str) -> Self {
        self.readiness_gates.insert(ns.to_string());
        self
    }

    pub fn with_daemonset(mut self, ns: &str, entry: DaemonSetEntry) -> Self {
        self.daemonsets
            .entry(ns.to_string())
            .or_default()
            .insert(entry.facts.name.clone(), entry);
        self
    }
}

/// Updates, as the cluster cache applies watch events. A `scope` of `None`
/// is the whole cluster, `Some(ns)` one namespace.
impl InMemory {
    pub fn replace_services(
        &mut self,
        scope: Option<&str>,
        entries: Vec<(ObjectRef, ServiceFacts)>,
    ) {
        match scope {
            None => self.services.clear(),
            Some(ns) => self.services.retain(|k, _| k.namespace != ns),
        }
        self.services.extend(entries);
    }

    pub fn upsert_service(&mut self, svc: ObjectRef, facts: ServiceFacts) {
        self.services.insert(svc, facts);
    }

    pub fn remove_service(&mut self, svc: &ObjectRef) {
        self.services.remove(svc);
    }

    pub fn replace_daemonsets(
        &mut self,
        scope: Option<&str>,
        entries: Vec<(String, DaemonSetEntry)>,
    ) {
        match scope {
            None => self.daemonsets.clear(),
            Some(ns) => {
                self.daemonsets.remove(ns);
            }
        }
        for (ns, entry) in entries {
            self.daemonsets
                .entry(ns)
                .or_default()
                .insert(entry.facts.name.clone(), entry);
        }
    }

    pub fn upsert_daemonset(&mut self, ns: &str, entry: DaemonSetEntry) {
        self.daemonsets
            .entry(ns.to_string())
            .or_default()
            .insert(entry.facts.name.clone(), entry);
    }

    pub fn remove_daemonset(&mut self, ns: &str, name: &str) {
        if let Some(by_name) = self.daemonsets.get_mut(ns) {
            by_name.remove(name);
            if by_name.is_empty() {
                self.daemonsets.remove(ns);
            }
        }
    }

    /// Drops everything known about `ns` (it is no longer watched).
    pub fn forget_namespace(&mut self, ns: &str) {
        self.services.retain(|k, _| k.namespace != ns);
        self.daemonsets.remove(ns);
    }

    pub fn daemonset_count(&self) -> usize {
        self.daemonsets.values().map(BTreeMap::len).sum()
    }
}

impl Lookups for InMemory {
    fn service(&self, svc: &ObjectRef) -> Lookup<ServiceFacts> {
        match self.services.get(svc) {
            Some(f) => Lookup::Found(f.clone()),
            None => Lookup::NotFound,
        }
    }

    fn daemonset_matching(
        &self,
        namespace: &str,
        selector: &[(&str, &str)],
    ) -> Lookup<DaemonSetFacts> {
        if selector.is_empty() {
            return Lookup::NotFound;
        }
        let found = self.daemonsets.get(namespace).and_then(|by_name| {
            // Prefer a DaemonSet that covers every node when several match.
            let mut matching = by_name.values().filter(|ds| {
                selector
                    .iter()
                    .all(|(k, v)| ds.labels.get(*k).map(String::as_str) == Some(*v))
            });
            let first = matching.next()?;
            if !first.facts.restricted {
                return Some(first);
            }
            Some(matching.find(|ds| !ds.facts.restricted).unwrap_or(first))
        });
        match found {
            Some(ds) => Lookup::Found(ds.facts.clone()),
            None => Lookup::NotFound,
        }
    }

    fn readiness_gate(&self, namespace: &str) -> Lookup<bool> {
        Lookup::Found(self.readiness_gates.contains(namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn daemonset_matching_needs_every_selector_label() {
        let m = InMemory::default().with_daemonset(
            "mon",
            DaemonSetEntry {
                labels: labels(&[("app", "agent"), ("tier", "node")]),
                facts: DaemonSetFacts {
                    name: "agent".into(),
                    restricted: false,
                },
            },
        );
        assert!(matches!(
            m.daemonset_matching("mon", &[("app", "agent")]),
            Lookup::Found(_)
        ));
        assert_eq!(
            m.daemonset_matching("mon", &[("app", "agent"), ("v", "2")]),
            Lookup::NotFound
        );
        assert_eq!(
            m.daemonset_matching("other", &[("app", "agent")]),
            Lookup::NotFound
        );
        assert_eq!(m.daemonset_matching("mon", &[]), Lookup::NotFound);
    }

    #[test]
    fn unrestricted_daemonset_preferred() {
        let entry = |name: &str, restricted| DaemonSetEntry {
            labels: labels(&[("app", "agent")]),
            facts: DaemonSetFacts {
                name: name.into(),
                restricted,
            },
        };
        let m = InMemory::default()
            .with_daemonset("mon", entry("a-gpu-only", true))
            .with_daemonset("mon", entry("b-all", false));
        assert_eq!(
            m.daemonset_matching("mon", &[("app", "agent")]),
            Lookup::Found(DaemonSetFacts {
                name: "b-all".into(),
                restricted: false
            })
        );
    }

    #[test]
    fn scoped_replace_keeps_other_namespaces() {
        let mut m = InMemory::default()
            .with_service("a", "x", ServiceFacts::default())
            .with_service("b", "y", ServiceFacts::default());
        m.replace_services(
            Some("a"),
            vec![(ObjectRef::new("a", "z"), ServiceFacts::default())],
        );
        assert_eq!(m.service(&ObjectRef::new("a", "x")), Lookup::NotFound);
        assert!(matches!(
            m.service(&ObjectRef::new("a", "z")),
            Lookup::Found(_)
        ));
        assert!(matches!(
            m.service(&ObjectRef::new("b", "y")),
            Lookup::Found(_)
        ));
        m.replace_services(None, Vec::new());
        assert!(m.services.is_empty());
        m.upsert_daemonset(
            "a",
            DaemonSetEntry {
                labels: labels(&[("k", "v")]),
                facts: DaemonSetFacts {
                    name: "d".into(),
                    restricted: false,
                },
            },
        );
        assert_eq!(m.daemonset_count(), 1);
        m.remove_daemonset("a", "d");
        assert_eq!(m.daemonset_count(), 0);
    }

    #[test]
    fn no_cluster_is_unavailable() {
        assert_eq!(
            NoCluster.service(&ObjectRef::new("a", "b")),
            Lookup::Unavailable(NO_CLUSTER)
        );
    }
}
