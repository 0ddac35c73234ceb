//! `zonewise audit`: what zonewise would change on objects that already
//! exist, and whether zone-local routing can work today. Read-only: list
//! calls only, paginated, nothing watched, nothing written.
//!
//! Every existing Service, Deployment, StatefulSet and Ingress in scope
//! goes through the admission pipeline ([`crate::core::review`]) as if it were
//! created now, with the cluster's real Services, DaemonSets, namespace
//! labels, zones and server version as lookups. Each rule runs on its own,
//! in table order, on the object as the previous rules left it, so every
//! finding carries the patch of that rule alone and the findings' patches,
//! applied in order, give the object the webhook would admit. Then the
//! routing-health checks of [`checks`] run over Nodes and EndpointSlices.
//!
//! A list that fails (forbidden, unreachable, cut off) fails the audit: a
//! partial report is never presented as complete.

pub mod checks;
pub mod list;
pub mod report;
pub mod traffic;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use json_patch::Patch;
use serde_json::Value;

use crate::core::admission::{AdmissionRequest, GroupVersionKind, Kind, Operation, Rule, Verdict};
use crate::core::config::{Config, ObjectRef};
use crate::core::json::Exact;
use crate::core::lookups::{DaemonSetFacts, InMemory, Lookup, Lookups, ServiceFacts};
use crate::core::object;
use crate::core::policy::{Environment, Policy};
use crate::core::review::{self, Endpoint, Only};
use crate::core::rules::{self, READINESS_GATE_LABEL};
use checks::{Endpoints, Nodes, Routing, ServiceInfo};
use list::{ListError, Lister};
pub use report::{Finding, Report, Summary, TrafficOptions, parse_volumes};

pub use crate::cluster::{ENABLED_LABEL, Scope};

#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub scope: Scope,
    pub config: Config,
    pub page_size: u32,
    /// Keep the mutated manifests (`-o yaml`).
    pub keep_manifests: bool,
    /// Show a progress bar on stderr when it is a terminal.
    pub progress: bool,
    /// Monthly volumes by Service and the price per cross-zone GB, for
    /// money in the traffic estimate.
    pub traffic: report::TrafficOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    List(#[from] ListError),
}

/// A kube client from `--kubeconfig`/`--context`, the default kubeconfig,
/// or the pod's service account, and the server it talks to.
async fn client(opts: &AuditOptions) -> Result<(kube::Client, String), AuditError> {
    let src = crate::cluster::ClientSource {
        kubeconfig: opts.kubeconfig.as_deref(),
        context: opts.context.as_deref(),
        default_kubeconfig: true,
    };
    crate::cluster::client(&src)
        .await
        .map_err(|e| AuditError::Setup(e.to_string()))?
        .ok_or_else(|| AuditError::Setup("no cluster to audit; pass --kubeconfig".into()))
}

/// Runs the audit against the cluster.
pub async fn run(opts: &AuditOptions) -> Result<Report, AuditError> {
    let (client, server) = client(opts).await?;
    let mut lister = Lister::new(client, server, opts.page_size);
    let progress = report::Progress::new(opts.progress);
    let bar = progress.clone();
    lister.on_page(move |res, n| bar.tick(res.plural, n));
    let version = lister.version().await?;
    let result = collect(&mut lister, opts, version).await;
    progress.finish();
    result
}

/// What a rule row would do to one object: each finding of it.
#[derive(Debug, Clone)]
pub struct RuleFinding {
    pub rule: Rule,
    /// The rule's own patch (relative to the object as the rules before it
    /// left it).
    pub patch: Option<Patch>,
    /// The webhook would refuse the object (`message` says why).
    pub denied: bool,
    pub message: String,
}

/// One object through the pipeline, rule by rule: the findings, and the
/// object as the webhook would admit it (`None` when nothing changes).
pub fn audit_object(
    kind: Kind,
    obj: &Value,
    policy: &Policy,
    lookups: &dyn Lookups,
) -> (Vec<RuleFinding>, Option<Value>) {
    let (group, version, kind_name, _) = kind.api();
    let namespace = object::str_at(obj, &["metadata", "namespace"])
        .unwrap_or("default")
        .to_string();
    // One request for every row: each rule sees the object as the rules
    // before it left it, patched in place.
    let mut req = AdmissionRequest {
        uid: "zonewise-audit".into(),
        kind: GroupVersionKind::new(group, version, kind_name),
        sub_resource: None,
        name: object::display_name(obj).to_string(),
        namespace,
        operation: Operation::Create,
        dry_run: true,
        object: Some(obj.clone()),
        old_object: None,
        complete: true,
        oversized: false,
    };
    let mut changed = false;
    let mut findings = Vec::new();
    let mut said: BTreeSet<String> = BTreeSet::new();
    for spec in rules::rules_for(kind) {
        let out = review::review_only(
            &req,
            policy,
            lookups,
            Endpoint::Mutate,
            Only::Rule(spec.rule),
        );
        match out.verdict {
            Verdict::Patched { patch, .. } => {
                let message = report::describe(&patch);
                // json-patch leaves the object as it was when a patch fails.
                let applied = req
                    .object
                    .as_mut()
                    .is_some_and(|current| json_patch::patch(current, &patch).is_ok());
                if applied {
                    changed = true;
                    findings.push(RuleFinding {
                        rule: spec.rule,
                        patch: Some(patch),
                        denied: false,
                        message,
                    });
                }
            }
            Verdict::Denied { message, .. } => findings.push(RuleFinding {
                rule: spec.rule,
                patch: None,
                denied: true,
                message,
            }),
            Verdict::Allowed => {}
        }
        // Warnings the pipeline gives every rule's run are said once.
        for w in out.warnings {
            if said.insert(w.clone()) {
                findings.push(RuleFinding {
                    rule: spec.rule,
                    patch: None,
                    denied: false,
                    message: w.trim_start_matches("zonewise: ").to_string(),
                });
            }
        }
    }
    (findings, if changed { req.object } else { None })
}

/// The zone-routing state of a Service as it is, and once zonewise's
/// `zone-routing` has acted on it, read the one way the traffic model
/// reads it.
fn routing_of(svc: &Value, after: Option<&Value>) -> (Routing, Routing) {
    let state = |s: &Value| match traffic::Mode::of(s) {
        traffic::Mode::Hints => Routing::Hints,
        traffic::Mode::SameZone | traffic::Mode::SameNode => Routing::Distribution,
        traffic::Mode::Cluster | traffic::Mode::Local => Routing::None,
    };
    let now = state(svc);
    (now, after.map_or(now, state))
}

/// Lists everything, in the order the lookups need it, and audits what is
/// in scope.
async fn collect(
    lister: &mut Lister,
    opts: &AuditOptions,
    version: crate::core::versions::KubeVersion,
) -> Result<Report, AuditError> {
    let mut summary = Summary {
        server_version: version.to_string(),
        version_note: version.support_note(),
        ..Summary::default()
    };
    // Namespaces: the scope, and which carry the readiness-gate label.
    let mut labelled: BTreeSet<String> = BTreeSet::new();
    let mut all: BTreeSet<String> = BTreeSet::new();
    let mut gates: std::collections::HashSet<String> = Default::default();
    lister
        .each(&list::NAMESPACES, None, None, |raw| {
            let ns: Item = parse(raw)?;
            let l = &ns.metadata.labels;
            if l.get(ENABLED_LABEL).is_some_and(|v| v == "true") {
                labelled.insert(ns.metadata.name.clone());
            }
            if l.get(READINESS_GATE_LABEL).is_some_and(|v| v == "enabled") {
                gates.insert(ns.metadata.name.clone());
            }
            all.insert(ns.metadata.name);
            Ok(())
        })
        .await?;
    let scope: BTreeSet<String> = match &opts.scope {
        Scope::All => all,
        Scope::Labelled => labelled,
        Scope::Only(names) => names.iter().cloned().collect(),
    };
    summary.scope = match &opts.scope {
        Scope::All => "all namespaces".into(),
        Scope::Labelled => format!("namespaces labelled {ENABLED_LABEL}=true"),
        Scope::Only(n) => format!("namespaces {}", n.join(", ")),
    };
    summary.namespaces = scope.len();
    // Per-namespace lists with -n; cluster-wide lists filtered otherwise.
    let namespaces: Vec<Option<String>> = match &opts.scope {
        Scope::Only(names) => names.iter().cloned().map(Some).collect(),
        _ => vec![None],
    };
    let in_scope = |ns: &str| scope.contains(ns);

    let mut nodes = Nodes::default();
    lister
        .each(&list::NODES, None, None, |raw| {
            nodes.add(parse(raw)?);
            Ok(())
        })
        .await?;
    summary.nodes = nodes.total;
    summary.ready_nodes = nodes.ready_count();
    summary.zones = nodes.zones().into_iter().collect();
    let env = Environment {
        server_version: Some(version),
        cluster_zones: (!summary.zones.is_empty()).then(|| summary.zones.iter().cloned().collect()),
        ..Environment::default()
    };
    let policy = Policy::new(opts.config.clone(), &env);

    let mut lookups = Scoped {
        known: InMemory {
            readiness_gates: gates,
            ..InMemory::default()
        },
        // With -n only those namespaces are listed: a callee elsewhere is
        // unknown, not absent.
        listed: match &opts.scope {
            Scope::Only(_) => Some(scope.clone()),
            _ => None,
        },
    };
    for ns in &namespaces {
        lister
            .each(&list::DAEMONSETS, ns.as_deref(), None, |raw| {
                let ds: k8s_openapi::api::apps::v1::DaemonSet = parse(raw)?;
                let (ns, entry) = crate::cluster::daemonset_entry(&ds);
                lookups.known.upsert_daemonset(&ns, entry);
                Ok(())
            })
            .await?;
    }

    let mut report = Report::new(summary, opts.keep_manifests).map_err(|e| {
        AuditError::Setup(format!(
            "cannot create a temporary file for the manifests: {e}"
        ))
    })?;
    // The first error writing the report, if any (lists go on; it is
    // returned at the end).
    let mut write_error: Option<std::io::Error> = None;
    // Services: facts for the lookups, findings, and what the routing
    // checks need. Reviewed as they come: Service rules look up DaemonSets
    // and namespace labels only, which are all in by now.
    let mut services: HashMap<(String, String), ServiceInfo> = HashMap::new();
    let mut service_facts: Vec<(ObjectRef, ServiceFacts)> = Vec::new();
    let mut inventory = traffic::Inventory::default();
    for ns in &namespaces {
        lister
            .each(&list::SERVICES, ns.as_deref(), None, |raw| {
                let Exact(svc) = parse(raw)?;
                let r = ObjectRef::new(
                    object::str_at(&svc, &["metadata", "namespace"]).unwrap_or(""),
                    object::display_name(&svc),
                );
                service_facts.push((r.clone(), service_facts_of(&svc)));
                if !in_scope(&r.namespace) {
                    return Ok(());
                }
                let (findings, after) = audit_object(Kind::Service, &svc, &policy, &lookups);
                let counted =
                    !review::skips_everything(&svc) && !policy.excluded.contains(&r.namespace);
                let proxied = rules::has_selector(&svc)
                    && !rules::is_headless(&svc)
                    && rules::service_type(&svc) != "ExternalName";
                let selector: Vec<(String, String)> = rules::service_selector(&svc)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                if !selector.is_empty() {
                    inventory.services.push(traffic::ServiceFacts {
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                        selector,
                        counted: counted && proxied,
                        routing: traffic::Mode::label(&svc),
                        today: traffic::Mode::of(&svc),
                        after: traffic::Mode::of(after.as_ref().unwrap_or(&svc)),
                    });
                }
                if counted {
                    let (routing, routing_after) = routing_of(&svc, after.as_ref());
                    services.insert(
                        (r.namespace.clone(), r.name.clone()),
                        ServiceInfo {
                            namespace: r.namespace.clone(),
                            name: r.name.clone(),
                            routing,
                            routing_after,
                            local: rules::is_local(&svc),
                            proxied,
                        },
                    );
                }
                if let Err(e) = report.add_object(Kind::Service, &svc, findings, after) {
                    write_error.get_or_insert(e);
                }
                Ok(())
            })
            .await?;
    }
    lookups.known.replace_services(None, service_facts);

    // EndpointSlices of the Services in scope.
    let mut endpoints: HashMap<(String, String), Endpoints> = HashMap::new();
    for ns in &namespaces {
        lister
            .each(&list::ENDPOINT_SLICES, ns.as_deref(), None, |raw| {
                let slice: checks::SliceItem = parse(raw)?;
                let ns = slice.metadata.namespace.clone().unwrap_or_default();
                let Some(svc) = slice
                    .metadata
                    .labels
                    .get(checks::SERVICE_NAME_LABEL)
                    .cloned()
                else {
                    return Ok(());
                };
                let key = (ns, svc);
                // Kept for every Service in scope: the checks read the
                // counted ones, the estimate also those selecting callers.
                if in_scope(&key.0) {
                    endpoints.entry(key).or_default().add(slice, &nodes);
                }
                Ok(())
            })
            .await?;
    }
    let mut dropping: BTreeSet<String> = BTreeSet::new();
    let mut keys: Vec<&(String, String)> = services.keys().collect();
    keys.sort();
    let empty = Endpoints::default();
    for key in keys {
        let svc = &services[key];
        let eps = endpoints.get(key).unwrap_or(&empty);
        for (check, message) in checks::check_service(svc, eps, &nodes) {
            if check == checks::ZONE_COVERAGE {
                report.summary.zones_uncovered += nodes
                    .ready_zones()
                    .iter()
                    .filter(|z| !eps.ready_by_zone.contains_key(**z))
                    .count();
            }
            if check == checks::LOCAL_DROP {
                dropping.extend(checks::dropping_nodes(eps, &nodes).map(str::to_string));
            }
            report.push(Finding {
                kind: "Service".into(),
                api_version: "v1".into(),
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                check: check.to_string(),
                message,
                patch: None,
            });
        }
    }
    report.summary.nodes_dropping_traffic = dropping.len();

    // Workloads and Ingresses, with every lookup in place.
    let ready_zones: BTreeSet<String> = nodes.ready_zones().into_iter().map(String::from).collect();
    for (res, kind) in [
        (list::DEPLOYMENTS, Kind::Deployment),
        (list::STATEFULSETS, Kind::StatefulSet),
        (list::INGRESSES, Kind::Ingress),
    ] {
        for ns in &namespaces {
            lister
                .each(&res, ns.as_deref(), None, |raw| {
                    let Exact(obj) = parse(raw)?;
                    if !in_scope(object::str_at(&obj, &["metadata", "namespace"]).unwrap_or("")) {
                        return Ok(());
                    }
                    let (findings, after) = audit_object(kind, &obj, &policy, &lookups);
                    if kind != Kind::Ingress {
                        let spread = findings
                            .iter()
                            .any(|f| f.rule == Rule::ZoneSpread && f.patch.is_some());
                        inventory.workloads.push(workload_facts(
                            &obj,
                            spread,
                            &ready_zones,
                            &nodes,
                            &policy,
                        ));
                    }
                    if let Err(e) = report.add_object(kind, &obj, findings, after) {
                        write_error.get_or_insert(e);
                    }
                    Ok(())
                })
                .await?;
        }
    }
    // How much traffic leaves its zone, now every input is in.
    let eps: HashMap<(String, String), Vec<checks::Ep>> =
        endpoints.into_iter().map(|(k, e)| (k, e.list)).collect();
    let (estimates, without_endpoints) = inventory.estimate(&nodes, &eps);
    report.set_traffic(estimates, without_endpoints, &opts.traffic);
    if let Some(e) = write_error {
        return Err(AuditError::Setup(format!("cannot keep the report: {e}")));
    }
    report.summary.routing = policy.routing.mode.to_string();
    report.finish();
    Ok(report)
}

/// The cluster as listed, and which namespaces were listed.
struct Scoped {
    known: InMemory,
    /// `None`: every namespace was listed.
    listed: Option<BTreeSet<String>>,
}

const NOT_LISTED: &str = "namespace outside the audit's scope";

impl Scoped {
    fn listed(&self, ns: &str) -> bool {
        self.listed.as_ref().is_none_or(|l| l.contains(ns))
    }
}

impl Lookups for Scoped {
    fn service(&self, svc: &ObjectRef) -> Lookup<ServiceFacts> {
        if !self.listed(&svc.namespace) {
            return Lookup::Unavailable(NOT_LISTED);
        }
        self.known.service(svc)
    }

    fn daemonset_matching(
        &self,
        namespace: &str,
        selector: &[(&str, &str)],
    ) -> Lookup<DaemonSetFacts> {
        if !self.listed(namespace) {
            return Lookup::Unavailable(NOT_LISTED);
        }
        self.known.daemonset_matching(namespace, selector)
    }

    fn readiness_gate(&self, namespace: &str) -> Lookup<bool> {
        self.known.readiness_gate(namespace)
    }
}

/// A namespace or similar: name and labels.
#[derive(serde::Deserialize)]
struct Item {
    metadata: checks::Meta,
}

/// An item of a list, as `T`; an item that does not parse fails the list.
fn parse<T: serde::de::DeserializeOwned>(raw: &serde_json::value::RawValue) -> Result<T, String> {
    serde_json::from_str(raw.get()).map_err(|e| format!("unreadable item: {e}"))
}

/// What the traffic model needs of a Deployment or StatefulSet.
fn workload_facts(
    obj: &Value,
    spread: bool,
    ready_zones: &BTreeSet<String>,
    nodes: &Nodes,
    policy: &Policy,
) -> traffic::WorkloadFacts {
    use crate::core::rules::zone_spread::{Zones, allowed_zones};
    let namespace = object::str_at(obj, &["metadata", "namespace"])
        .unwrap_or("")
        .to_string();
    let respread = spread.then(|| {
        let allowed = allowed_zones(obj);
        ready_zones
            .iter()
            .filter(|z| match &allowed {
                Zones::Any => true,
                Zones::Only(only) => only.contains(*z),
                Zones::Except(except) => !except.contains(*z),
                Zones::None => false,
            })
            .map(|z| nodes.zone_id(z))
            .collect()
    });
    let (callees, _) =
        crate::core::rules::call_affinity::declared_callees(obj, &namespace, policy, |_| {});
    traffic::WorkloadFacts {
        labels: object::string_map(obj, &["spec", "template", "metadata", "labels"])
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        respread,
        callees: callees.into_iter().map(|r| (r.namespace, r.name)).collect(),
        namespace,
    }
}

fn service_facts_of(svc: &Value) -> ServiceFacts {
    ServiceFacts::new(
        Some(
            object::string_map(svc, &["spec", "selector"])
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        object::str_at(svc, &["spec", "internalTrafficPolicy"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lookups::NoCluster;
    use crate::core::rules::test_support::{deployment, service, with};
    use serde_json::json;

    #[test]
    fn each_rule_is_a_finding_and_their_patches_make_the_admitted_object() {
        let lb = with(
            with(service(), &["spec", "type"], json!("LoadBalancer")),
            &["metadata", "namespace"],
            json!("shop"),
        );
        let policy = Policy::default();
        let (findings, after) = audit_object(Kind::Service, &lb, &policy, &NoCluster);
        let rules: Vec<Rule> = findings
            .iter()
            .filter(|f| f.patch.is_some())
            .map(|f| f.rule)
            .collect();
        assert_eq!(rules, [Rule::ZoneRouting, Rule::LbIpTarget]);
        // Applying them in order gives what one whole review admits.
        let mut obj = lb.clone();
        for f in findings.iter().filter_map(|f| f.patch.as_ref()) {
            json_patch::patch(&mut obj, f).unwrap();
        }
        assert_eq!(Some(&obj), after.as_ref());
        let (g, v, k, _) = Kind::Service.api();
        let req = AdmissionRequest {
            uid: "u".into(),
            kind: GroupVersionKind::new(g, v, k),
            sub_resource: None,
            name: "orders".into(),
            namespace: "shop".into(),
            operation: Operation::Create,
            dry_run: false,
            object: Some(lb.clone()),
            old_object: None,
            complete: true,
            oversized: false,
        };
        let whole = review::review(&req, &policy, &NoCluster, Endpoint::Mutate);
        let mut once = lb;
        json_patch::patch(&mut once, whole.patch().unwrap()).unwrap();
        assert_eq!(once, obj);
        // The readiness-gate warning is a finding of its own.
        assert!(
            findings
                .iter()
                .any(|f| f.patch.is_none() && f.message.contains("readiness"))
        );
    }

    #[test]
    fn a_compliant_object_has_no_findings() {
        let dep = with(deployment(), &["metadata", "namespace"], json!("shop"));
        let (_, after) = audit_object(Kind::Deployment, &dep, &Policy::default(), &NoCluster);
        let (findings, again) = audit_object(
            Kind::Deployment,
            &after.unwrap(),
            &Policy::default(),
            &NoCluster,
        );
        assert!(findings.is_empty() && again.is_none(), "{findings:?}");
    }

    #[test]
    fn with_some_namespaces_listed_the_others_are_unknown_not_absent() {
        let scoped = Scoped {
            known: InMemory::default(),
            listed: Some(BTreeSet::from(["shop".to_string()])),
        };
        // Listed and not there: absent.
        assert!(matches!(
            scoped.service(&ObjectRef::new("shop", "orders")),
            Lookup::NotFound
        ));
        // Never listed: the rules must not act as if it were absent.
        assert!(matches!(
            scoped.service(&ObjectRef::new("billing", "orders")),
            Lookup::Unavailable(NOT_LISTED)
        ));
        assert!(matches!(
            scoped.daemonset_matching("billing", &[("app", "agent")]),
            Lookup::Unavailable(NOT_LISTED)
        ));
        let everywhere = Scoped {
            known: InMemory::default(),
            listed: None,
        };
        assert!(matches!(
            everywhere.service(&ObjectRef::new("billing", "orders")),
            Lookup::NotFound
        ));
    }

    #[test]
    fn routing_now_and_after() {
        let routed = with(
            service(),
            &["spec", "trafficDistribution"],
            json!("PreferSameZone"),
        );
        assert_eq!(
            routing_of(&routed, None),
            (Routing::Distribution, Routing::Distribution)
        );
        let hinted = crate::core::rules::test_support::annotated(
            service(),
            crate::core::rules::TOPOLOGY_MODE,
            "Auto",
        );
        assert_eq!(routing_of(&hinted, None).0, Routing::Hints);
        assert_eq!(
            routing_of(&service(), Some(&routed)),
            (Routing::None, Routing::Distribution)
        );
    }
}
