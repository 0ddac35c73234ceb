//! The optional cluster cache: kube watchers keep an in-memory snapshot of
//! Services and DaemonSets, so call-affinity and local-policy answer from
//! memory, never with an API call on the admission path; and of the zones
//! of the cluster's Nodes and the namespaces labelled for the AWS Load
//! Balancer Controller's readiness gate.
//!
//! Each watcher (re)lists into a buffer and swaps it in whole on `InitDone`,
//! so a relist (after a dropped watch or `410 Gone`) never exposes a
//! half-filled cache: lookups keep seeing the last complete state. Errors
//! restart the watch with kube's default backoff. Only the facts the rules
//! need are stored (selectors, the Local flag, template labels, a node's
//! zone), not whole objects, so memory stays small on large clusters. Nodes
//! and Namespaces are watched as metadata only (`PartialObjectMetadata`):
//! a Node's status is most of its size and none of it is needed here.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::Stream;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::core::config::ObjectRef;
use crate::core::lookups::{
    DaemonSetEntry, DaemonSetFacts, InMemory, Lookup, Lookups, ServiceFacts,
};
use crate::core::rules::READINESS_GATE_LABEL;
use crate::core::versions::KubeVersion;
use crate::server::live::LivePolicy;
use crate::telemetry::metrics::{KindLabels, Metrics, ReasonLabels};

pub const NOT_SYNCED: &str = "cluster cache not synced";
pub const NOT_WATCHED: &str = "namespace not watched by the cluster cache";
/// The namespace label that opts a namespace in (also the webhook's
/// namespaceSelector).
pub const ENABLED_LABEL: &str = "zonewise.io/enabled";

/// Which namespaces zonewise reads: what the cache watches, and what the
/// audit lists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every namespace (callees may live anywhere).
    #[default]
    All,
    /// Only namespaces labelled `zonewise.io/enabled=true` (needs
    /// `list`/`watch` on namespaces in the ClusterRole).
    Labelled,
    /// These namespaces.
    Only(Vec<String>),
}

/// Where a kube client comes from: `--kubeconfig` and `--context` when
/// given, else the default kubeconfig (`$KUBECONFIG`, `~/.kube/config`),
/// else the pod's service account. The one builder for every command.
#[derive(Debug, Clone, Default)]
pub struct ClientSource<'a> {
    pub kubeconfig: Option<&'a Path>,
    pub context: Option<&'a str>,
    /// Try the default kubeconfig when no file is named (the audit, run by
    /// a person). The server does not: without `--kubeconfig` it uses its
    /// service account or runs without the cache.
    pub default_kubeconfig: bool,
}

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

/// A client and the server URL it talks to; `None` when nothing says where
/// a cluster is (no file named, no default one wanted, not in a pod).
pub async fn client(src: &ClientSource<'_>) -> Result<Option<(Client, String)>, ClientError> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions {
        context: src.context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let config = match src.kubeconfig {
        Some(path) => {
            let err = |e: &dyn std::fmt::Display| {
                ClientError(format!("kubeconfig {}: {e}", path.display()))
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| err(&e))?
        }
        None if src.default_kubeconfig => match kube::Config::from_kubeconfig(&options).await {
            Ok(c) => c,
            Err(kubeconfig) if src.context.is_none() => kube::Config::incluster().map_err(|e| {
                ClientError(format!(
                    "no usable kubeconfig ({kubeconfig}) and not in a cluster ({e}); pass \
                     --kubeconfig"
                ))
            })?,
            Err(e) => return Err(ClientError(format!("kubeconfig: {e}"))),
        },
        None if in_pod => kube::Config::incluster()
            .map_err(|e| ClientError(format!("in-cluster configuration: {e}")))?,
        None => return Ok(None),
    };
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| ClientError(format!("cannot build a client for {server}: {e}")))?;
    Ok(Some((client, server)))
}

/// The server's client: from `--kubeconfig`, or from the in-cluster service
/// account when running in a pod; `None` means no cluster access (the
/// laptop, tests), and the lookups fall back to config. A broken service
/// account is not fatal: the webhook works without the cache, and says so
/// in its warnings.
pub async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<Option<Client>> {
    let src = ClientSource {
        kubeconfig,
        ..ClientSource::default()
    };
    match client(&src).await {
        Ok(c) => Ok(c.map(|(client, _)| client)),
        Err(e) if kubeconfig.is_none() => {
            warn!(error = %e, "in-cluster configuration unusable; running without the cluster cache");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The API server's `major.minor`. Managed offerings report minors such as
/// `"34+"`, so only the leading digits count.
pub async fn server_version(client: &Client) -> anyhow::Result<KubeVersion> {
    let info = client.apiserver_version().await?;
    KubeVersion::from_parts(&info.major, &info.minor)
        .ok_or_else(|| anyhow::anyhow!("unparsable version {}.{}", info.major, info.minor))
}

/// Each Node's zone, and how many Nodes each zone has: enough to know the
/// cluster's zones as Nodes come and go, at a few dozen bytes a Node.
#[derive(Debug, Default)]
pub struct NodeZones {
    zone_of: HashMap<Box<str>, Box<str>>,
    nodes_in: BTreeMap<Box<str>, usize>,
}

impl NodeZones {
    fn replace(&mut self, entries: Vec<(Box<str>, Option<Box<str>>)>) {
        *self = NodeZones::default();
        for (node, zone) in entries {
            self.upsert(node, zone);
        }
    }

    fn upsert(&mut self, node: Box<str>, zone: Option<Box<str>>) {
        self.remove(&node);
        if let Some(zone) = zone {
            *self.nodes_in.entry(zone.clone()).or_default() += 1;
            self.zone_of.insert(node, zone);
        }
    }

    fn remove(&mut self, node: &str) {
        if let Some(zone) = self.zone_of.remove(node)
            && let Some(n) = self.nodes_in.get_mut(&zone)
        {
            *n -= 1;
            if *n == 0 {
                self.nodes_in.remove(&zone);
            }
        }
    }

    /// The zones that have at least one Node.
    pub fn zones(&self) -> BTreeSet<String> {
        self.nodes_in.keys().map(|z| z.to_string()).collect()
    }

    pub fn nodes(&self) -> usize {
        self.zone_of.len()
    }
}

/// A Node's zone, kept as a small boxed string.
fn node_zone(labels: Option<&BTreeMap<String, String>>) -> Option<Box<str>> {
    crate::core::rules::node_zone(labels?).map(Into::into)
}

/// The cache: a snapshot plus what is known about its freshness.
pub struct ClusterCache {
    scope: Scope,
    state: RwLock<InMemory>,
    nodes: RwLock<NodeZones>,
    /// Told the cluster's zones whenever they change.
    policy: Mutex<Option<Arc<LivePolicy>>>,
    /// `(kind, scope)` pairs whose initial list has completed.
    synced: Mutex<HashSet<(&'static str, Option<String>)>>,
    /// Labelled and Only: the namespaces currently watched; `None` until
    /// the namespace list is in.
    watched: RwLock<Option<HashSet<String>>>,
    sync_changed: Notify,
    metrics: Arc<Metrics>,
}

impl Debug for ClusterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCache")
            .field("scope", &self.scope)
            .finish()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Writers never panic while holding these locks; recover regardless.
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClusterCache {
    pub fn new(scope: Scope, metrics: Arc<Metrics>) -> Arc<ClusterCache> {
        let watched = match &scope {
            Scope::Only(nss) => Some(nss.iter().cloned().collect()),
            Scope::All | Scope::Labelled => None,
        };
        Arc::new(ClusterCache {
            scope,
            state: RwLock::new(InMemory::default()),
            nodes: RwLock::new(NodeZones::default()),
            policy: Mutex::new(None),
            synced: Mutex::new(HashSet::new()),
            watched: RwLock::new(watched),
            sync_changed: Notify::new(),
            metrics,
        })
    }

    /// Replaces the whole cache with `snapshot` and marks it synced: what a
    /// completed cluster-wide list does, for benchmarks and tests.
    pub fn load_snapshot(&self, snapshot: InMemory) {
        self.edit(|s| *s = snapshot);
        for kind in [SERVICE, DAEMONSET, NODE, GATE] {
            self.mark_synced(kind, None);
        }
    }

    /// The cluster's zones go to `policy` from now on.
    pub fn publish_zones_to(&self, policy: Arc<LivePolicy>) {
        *lock(&self.policy) = Some(policy);
    }

    /// Nodes known, and their zones (for metrics, tests and benchmarks).
    pub fn node_zones(&self) -> (usize, BTreeSet<String>) {
        let n = read(&self.nodes);
        (n.nodes(), n.zones())
    }

    /// Every watch has completed its initial list.
    pub fn all_synced(&self) -> bool {
        let synced = lock(&self.synced);
        let global = synced.contains(&(NODE, None)) && synced.contains(&(GATE, None));
        global
            && match self.scope {
                Scope::All => {
                    synced.contains(&(SERVICE, None)) && synced.contains(&(DAEMONSET, None))
                }
                Scope::Labelled | Scope::Only(_) => match &*read(&self.watched) {
                    None => false,
                    Some(nss) => nss.iter().all(|ns| {
                        synced.contains(&(SERVICE, Some(ns.clone())))
                            && synced.contains(&(DAEMONSET, Some(ns.clone())))
                    }),
                },
            }
    }

    /// Resolves once every watch has listed.
    pub async fn wait_synced(&self) {
        loop {
            let changed = self.sync_changed.notified();
            if self.all_synced() {
                return;
            }
            changed.await;
        }
    }

    /// Can `kind` in `ns` be answered from the cache, and if not, why.
    fn usable(&self, kind: &'static str, ns: &str) -> Result<(), &'static str> {
        let scope = match self.scope {
            _ if kind == GATE => None,
            Scope::All => None,
            Scope::Labelled | Scope::Only(_) => {
                match &*read(&self.watched) {
                    None => return Err(NOT_SYNCED),
                    Some(nss) if !nss.contains(ns) => return Err(NOT_WATCHED),
                    Some(_) => {}
                }
                Some(ns.to_string())
            }
        };
        if lock(&self.synced).contains(&(kind, scope)) {
            Ok(())
        } else {
            Err(NOT_SYNCED)
        }
    }

    fn mark_synced(&self, kind: &'static str, scope: Option<String>) {
        lock(&self.synced).insert((kind, scope));
        self.metrics.cache_last_sync.touch(kind);
        self.sync_changed.notify_waiters();
    }

    fn update_counts(&self, state: &InMemory) {
        let set = |kind, n: usize| {
            self.metrics
                .cache_objects
                .get_or_create(&KindLabels { kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX))
        };
        set(SERVICE, state.services.len());
        set(DAEMONSET, state.daemonset_count());
        set(GATE, state.readiness_gates.len());
    }

    fn edit(&self, f: impl FnOnce(&mut InMemory)) {
        let mut state = write(&self.state);
        f(&mut state);
        self.update_counts(&state);
    }

    /// Applies a change to the Nodes' zones, and tells the policy when the
    /// set of zones changed.
    fn edit_nodes(&self, f: impl FnOnce(&mut NodeZones)) {
        let (before, after, count) = {
            let mut nodes = write(&self.nodes);
            let before = nodes.zones();
            f(&mut nodes);
            (before, nodes.zones(), nodes.nodes())
        };
        self.metrics
            .cache_objects
            .get_or_create(&KindLabels { kind: NODE })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        if before != after
            && let Some(policy) = lock(&self.policy).as_ref()
        {
            info!(zones = ?after, "cluster zones changed");
            policy.set_cluster_zones((!after.is_empty()).then_some(after));
        }
    }
}

impl Lookups for ClusterCache {
    fn service(&self, svc: &ObjectRef) -> Lookup<ServiceFacts> {
        match self.usable(SERVICE, &svc.namespace) {
            Ok(()) => read(&self.state).service(svc),
            Err(why) => Lookup::Unavailable(why),
        }
    }

    fn daemonset_matching(
        &self,
        namespace: &str,
        selector: &[(&str, &str)],
    ) -> Lookup<DaemonSetFacts> {
        match self.usable(DAEMONSET, namespace) {
            Ok(()) => read(&self.state).daemonset_matching(namespace, selector),
            Err(why) => Lookup::Unavailable(why),
        }
    }

    fn readiness_gate(&self, namespace: &str) -> Lookup<bool> {
        match self.usable(GATE, namespace) {
            Ok(()) => read(&self.state).readiness_gate(namespace),
            Err(why) => Lookup::Unavailable(why),
        }
    }
}

/// Counts every lookup that did not find its answer in the cluster, by
/// reason, for `zonewise_lookup_fallbacks_total`.
pub struct Metered<L> {
    pub inner: L,
    pub metrics: Arc<Metrics>,
}

impl<L> Metered<L> {
    fn count<T>(&self, r: &Lookup<T>) {
        let reason = match r {
            Lookup::Found(_) => return,
            Lookup::NotFound => "not found",
            Lookup::Unavailable(why) => why,
        };
        self.metrics
            .lookup_fallbacks
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

impl<L: Lookups> Lookups for Metered<L> {
    fn service(&self, svc: &ObjectRef) -> Lookup<ServiceFacts> {
        let r = self.inner.service(svc);
        self.count(&r);
        r
    }

    // A DaemonSet not found is an answer (it decides a denial), not a
    // fallback; only an unavailable cache is counted.
    fn daemonset_matching(
        &self,
        namespace: &str,
        selector: &[(&str, &str)],
    ) -> Lookup<DaemonSetFacts> {
        let r = self.inner.daemonset_matching(namespace, selector);
        if matches!(r, Lookup::Unavailable(_)) {
            self.count(&r);
        }
        r
    }

    fn readiness_gate(&self, namespace: &str) -> Lookup<bool> {
        let r = self.inner.readiness_gate(namespace);
        self.count(&r);
        r
    }
}

impl<L: Lookups> Lookups for Arc<L> {
    fn service(&self, svc: &ObjectRef) -> Lookup<ServiceFacts> {
        self.as_ref().service(svc)
    }

    fn daemonset_matching(
        &self,
        namespace: &str,
        selector: &[(&str, &str)],
    ) -> Lookup<DaemonSetFacts> {
        self.as_ref().daemonset_matching(namespace, selector)
    }

    fn readiness_gate(&self, namespace: &str) -> Lookup<bool> {
        self.as_ref().readiness_gate(namespace)
    }
}

const SERVICE: &str = "Service";
const DAEMONSET: &str = "DaemonSet";
const NAMESPACE: &str = "Namespace";
const NODE: &str = "Node";
/// Namespaces with the readiness-gate label.
const GATE: &str = "ReadinessGateNamespace";

/// A watched kind: how one object becomes the facts kept, and where.
trait Watched: Debug + Send + Sync + 'static {
    const KIND: &'static str;
    type Entry: Send + 'static;
    fn entry(&self) -> Self::Entry;
    fn replace(cache: &ClusterCache, scope: Option<&str>, entries: Vec<Self::Entry>);
    fn upsert(cache: &ClusterCache, entry: Self::Entry);
    fn remove(cache: &ClusterCache, obj: &Self);
}

fn object_ref<K: Resource>(obj: &K) -> ObjectRef {
    ObjectRef::new(
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

impl Watched for Service {
    const KIND: &'static str = SERVICE;
    type Entry = (ObjectRef, ServiceFacts);

    fn entry(&self) -> Self::Entry {
        let spec = self.spec.as_ref();
        let facts = ServiceFacts::new(
            spec.and_then(|s| s.selector.clone()),
            spec.and_then(|s| s.internal_traffic_policy.as_deref()),
        );
        (object_ref(self), facts)
    }

    fn replace(cache: &ClusterCache, scope: Option<&str>, entries: Vec<Self::Entry>) {
        cache.edit(|s| s.replace_services(scope, entries));
    }

    fn upsert(cache: &ClusterCache, (key, facts): Self::Entry) {
        cache.edit(|s| s.upsert_service(key, facts));
    }

    fn remove(cache: &ClusterCache, obj: &Self) {
        cache.edit(|s| s.remove_service(&object_ref(obj)));
    }
}

impl Watched for DaemonSet {
    const KIND: &'static str = DAEMONSET;
    type Entry = (String, DaemonSetEntry);

    fn entry(&self) -> Self::Entry {
        daemonset_entry(self)
    }

    fn replace(cache: &ClusterCache, scope: Option<&str>, entries: Vec<Self::Entry>) {
        cache.edit(|s| s.replace_daemonsets(scope, entries));
    }

    fn upsert(cache: &ClusterCache, (ns, entry): Self::Entry) {
        cache.edit(|s| s.upsert_daemonset(&ns, entry));
    }

    fn remove(cache: &ClusterCache, obj: &Self) {
        let r = object_ref(obj);
        cache.edit(|s| s.remove_daemonset(&r.namespace, &r.name));
    }
}

impl Watched for PartialObjectMeta<Node> {
    const KIND: &'static str = NODE;
    type Entry = (Box<str>, Option<Box<str>>);

    fn entry(&self) -> Self::Entry {
        (
            self.name_any().into(),
            node_zone(self.metadata.labels.as_ref()),
        )
    }

    fn replace(cache: &ClusterCache, _: Option<&str>, entries: Vec<Self::Entry>) {
        cache.edit_nodes(|n| n.replace(entries));
    }

    fn upsert(cache: &ClusterCache, (node, zone): Self::Entry) {
        cache.edit_nodes(|n| n.upsert(node, zone));
    }

    fn remove(cache: &ClusterCache, obj: &Self) {
        cache.edit_nodes(|n| n.remove(&obj.name_any()));
    }
}

/// Only labelled namespaces are listed (a label selector), and one that
/// loses the label arrives as deleted.
impl Watched for PartialObjectMeta<Namespace> {
    const KIND: &'static str = GATE;
    type Entry = String;

    fn entry(&self) -> Self::Entry {
        self.name_any()
    }

    fn replace(cache: &ClusterCache, _: Option<&str>, entries: Vec<Self::Entry>) {
        cache.edit(|s| s.readiness_gates = entries.into_iter().collect());
    }

    fn upsert(cache: &ClusterCache, ns: Self::Entry) {
        cache.edit(|s| {
            s.readiness_gates.insert(ns);
        });
    }

    fn remove(cache: &ClusterCache, obj: &Self) {
        cache.edit(|s| {
            s.readiness_gates.remove(&obj.name_any());
        });
    }
}

/// A kube watcher for `K` (cluster-wide or in one namespace).
fn watch_all<K>(api: Api<K>) -> impl Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

/// What the rules need of a DaemonSet: its namespace, pod template labels,
/// and whether its node selection leaves nodes out. (The cache and the
/// audit both read DaemonSets this way.)
pub fn daemonset_entry(ds: &DaemonSet) -> (String, DaemonSetEntry) {
    let template = ds.spec.as_ref().map(|s| &s.template);
    let labels: BTreeMap<String, String> = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    // A node selector or required node affinity leaves some nodes without
    // a pod, hence without a local endpoint.
    let restricted = template.and_then(|t| t.spec.as_ref()).is_some_and(|p| {
        p.node_selector.as_ref().is_some_and(|n| !n.is_empty())
            || p.affinity
                .as_ref()
                .and_then(|a| a.node_affinity.as_ref())
                .is_some_and(|n| {
                    n.required_during_scheduling_ignored_during_execution
                        .is_some()
                })
    });
    let r = object_ref(ds);
    (
        r.namespace,
        DaemonSetEntry {
            labels,
            facts: DaemonSetFacts {
                name: r.name,
                restricted,
            },
        },
    )
}

/// Runs one watch (a kind, cluster-wide or in one namespace) forever.
/// `reconnected` is notified when a list completes after an error, so the
/// API server version is read again.
async fn watch<K: Watched>(
    stream: impl Stream<Item = watcher::Result<Event<K>>> + Send,
    scope: Option<String>,
    cache: Arc<ClusterCache>,
    reconnected: Arc<Notify>,
) {
    futures_util::pin_mut!(stream);
    let mut buffer: Vec<K::Entry> = Vec::new();
    let mut had_error = false;
    let kind = K::KIND;
    loop {
        match stream.next().await {
            None => return,
            Some(Ok(Event::Init)) => buffer.clear(),
            Some(Ok(Event::InitApply(obj))) => buffer.push(obj.entry()),
            Some(Ok(Event::InitDone)) => {
                let entries = std::mem::take(&mut buffer);
                let n = entries.len();
                K::replace(&cache, scope.as_deref(), entries);
                cache.mark_synced(kind, scope.clone());
                info!(
                    kind,
                    namespace = scope.as_deref().unwrap_or("*"),
                    objects = n,
                    "cluster cache listed"
                );
                if std::mem::take(&mut had_error) {
                    reconnected.notify_one();
                }
            }
            Some(Ok(Event::Apply(obj))) => {
                debug!(kind, "cache apply");
                K::upsert(&cache, obj.entry());
                cache.metrics.cache_last_sync.touch(kind);
            }
            Some(Ok(Event::Delete(obj))) => {
                K::remove(&cache, &obj);
                cache.metrics.cache_last_sync.touch(kind);
            }
            Some(Err(e)) => {
                // The stream backs off and resumes; the cache keeps serving
                // the last known state meanwhile.
                had_error = true;
                cache
                    .metrics
                    .cache_watch_restarts
                    .get_or_create(&KindLabels { kind })
                    .inc();
                warn!(kind, error = %e, "cluster watch failed; retrying with backoff");
            }
        }
    }
}

/// Starts the watches; the cluster's zones go to `policy`. They run until
/// the returned handles are dropped, which stops every watch, the
/// per-namespace ones included.
pub fn start(
    client: Client,
    cache: Arc<ClusterCache>,
    reconnected: Arc<Notify>,
    policy: Arc<LivePolicy>,
) -> Vec<AbortOnDropHandle<()>> {
    cache.publish_zones_to(policy);
    // An Api of PartialObjectMeta asks for metadata only.
    let nodes = watch_all(Api::<PartialObjectMeta<Node>>::all(client.clone()));
    let gates = watcher::watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default().labels(&format!("{READINESS_GATE_LABEL}=enabled")),
    )
    .default_backoff();
    let mut tasks = vec![
        tokio::spawn(watch(nodes, None, cache.clone(), reconnected.clone())),
        tokio::spawn(watch(gates, None, cache.clone(), reconnected.clone())),
    ];
    match cache.scope {
        Scope::All => {
            tasks.push(tokio::spawn(watch(
                watch_all(Api::<Service>::all(client.clone())),
                None,
                cache.clone(),
                reconnected.clone(),
            )));
            tasks.push(tokio::spawn(watch(
                watch_all(Api::<DaemonSet>::all(client)),
                None,
                cache,
                reconnected,
            )));
        }
        Scope::Labelled => tasks.push(tokio::spawn(watch_namespaces(client, cache, reconnected))),
        Scope::Only(ref nss) => {
            let mut handles: Vec<AbortOnDropHandle<()>> =
                tasks.into_iter().map(AbortOnDropHandle::new).collect();
            for ns in nss {
                handles.extend(watch_namespace(&client, ns, &cache, &reconnected));
            }
            return handles;
        }
    }
    tasks.into_iter().map(AbortOnDropHandle::new).collect()
}

/// A Service and a DaemonSet watch in one namespace.
fn watch_namespace(
    client: &Client,
    ns: &str,
    cache: &Arc<ClusterCache>,
    reconnected: &Arc<Notify>,
) -> [AbortOnDropHandle<()>; 2] {
    [
        AbortOnDropHandle::new(tokio::spawn(watch(
            watch_all(Api::<Service>::namespaced(client.clone(), ns)),
            Some(ns.to_string()),
            cache.clone(),
            reconnected.clone(),
        ))),
        AbortOnDropHandle::new(tokio::spawn(watch(
            watch_all(Api::<DaemonSet>::namespaced(client.clone(), ns)),
            Some(ns.to_string()),
            cache.clone(),
            reconnected.clone(),
        ))),
    ]
}

/// Labelled mode: follows the set of opted-in namespaces and runs a Service
/// and a DaemonSet watch in each.
async fn watch_namespaces(client: Client, cache: Arc<ClusterCache>, reconnected: Arc<Notify>) {
    let api: Api<Namespace> = Api::all(client.clone());
    let config = watcher::Config::default().labels(&format!("{ENABLED_LABEL}=true"));
    let stream = watcher::watcher(api, config).default_backoff();
    futures_util::pin_mut!(stream);
    // Dropping a handle stops its watch: when a namespace opts out, and when
    // this task itself is stopped.
    let mut running: HashMap<String, [AbortOnDropHandle<()>; 2]> = HashMap::new();
    let mut listing: HashSet<String> = HashSet::new();
    let mut current: HashSet<String> = HashSet::new();
    let mut listed = false;
    loop {
        let changed = match stream.try_next().await {
            Ok(None) => return,
            Ok(Some(Event::Init)) => {
                listing.clear();
                false
            }
            Ok(Some(Event::InitApply(ns))) => {
                listing.insert(ns.name_any());
                false
            }
            Ok(Some(Event::InitDone)) => {
                current = std::mem::take(&mut listing);
                listed = true;
                cache.metrics.cache_last_sync.touch(NAMESPACE);
                true
            }
            Ok(Some(Event::Apply(ns))) => current.insert(ns.name_any()),
            Ok(Some(Event::Delete(ns))) => current.remove(&ns.name_any()),
            Err(e) => {
                cache
                    .metrics
                    .cache_watch_restarts
                    .get_or_create(&KindLabels { kind: NAMESPACE })
                    .inc();
                warn!(error = %e, "namespace watch failed; retrying with backoff");
                false
            }
        };
        if !changed || !listed {
            continue;
        }
        for ns in &current {
            running.entry(ns.clone()).or_insert_with(|| {
                info!(namespace = %ns, "watching opted-in namespace");
                watch_namespace(&client, ns, &cache, &reconnected)
            });
        }
        let gone: Vec<String> = running
            .keys()
            .filter(|ns| !current.contains(*ns))
            .cloned()
            .collect();
        for ns in gone {
            running.remove(&ns);
            info!(namespace = %ns, "namespace opted out; forgetting it");
            cache.edit(|s| s.forget_namespace(&ns));
            lock(&cache.synced).retain(|(_, scope)| scope.as_deref() != Some(ns.as_str()));
        }
        *write(&cache.watched) = Some(current.clone());
        cache.sync_changed.notify_waiters();
    }
}

/// Re-reads the API server version whenever a watch reconnects, and calls
/// `on_change` when it differs from `known`.
pub async fn track_version(
    client: Client,
    mut known: Option<KubeVersion>,
    reconnected: Arc<Notify>,
    mut on_change: impl FnMut(KubeVersion) + Send,
) {
    // Until a first version is known (start-up could not read it), retry on
    // a timer as well.
    loop {
        if known.is_some() {
            reconnected.notified().await;
        } else {
            tokio::select! {
                _ = reconnected.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
        match server_version(&client).await {
            Ok(v) if Some(v) != known => {
                info!(version = %v, "API server version changed");
                known = Some(v);
                on_change(v);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the API server version"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_zones_follow_nodes_coming_and_going() {
        let mut z = NodeZones::default();
        z.replace(vec![
            ("n1".into(), Some("a".into())),
            ("n2".into(), Some("b".into())),
            ("n3".into(), None),
        ]);
        assert_eq!(z.zones(), ["a".to_string(), "b".to_string()].into());
        z.upsert("n4".into(), Some("c".into()));
        z.remove("n2");
        assert_eq!(z.zones(), ["a".to_string(), "c".to_string()].into());
        z.upsert("n1".into(), Some("c".into()));
        assert_eq!(z.zones(), ["c".to_string()].into());
        assert_eq!(z.nodes(), 2);
        let labels = BTreeMap::from([(
            crate::core::rules::LEGACY_ZONE_KEY.to_string(),
            "old".to_string(),
        )]);
        assert_eq!(node_zone(Some(&labels)).as_deref(), Some("old"));
    }

    fn svc(ns: &str, name: &str, selector: &[(&str, &str)], local: bool) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
                     "internalTrafficPolicy": if local { "Local" } else { "Cluster" }}
        }))
        .unwrap()
    }

    #[test]
    fn unsynced_then_synced_lookups() {
        let cache = ClusterCache::new(Scope::All, Arc::new(Metrics::default()));
        let orders = ObjectRef::new("shop", "orders");
        assert_eq!(cache.service(&orders), Lookup::Unavailable(NOT_SYNCED));
        let entries = vec![svc("shop", "orders", &[("app", "orders")], false).entry()];
        Service::replace(&cache, None, entries);
        cache.mark_synced(SERVICE, None);
        assert!(matches!(cache.service(&orders), Lookup::Found(f) if !f.local));
        assert!(!cache.all_synced(), "DaemonSets not listed yet");
        assert_eq!(
            cache.daemonset_matching("shop", &[("a", "b")]),
            Lookup::Unavailable(NOT_SYNCED)
        );
        cache.mark_synced(DAEMONSET, None);
        assert!(
            !cache.all_synced(),
            "Nodes and gate namespaces not listed yet"
        );
        cache.mark_synced(NODE, None);
        cache.mark_synced(GATE, None);
        assert!(cache.all_synced());
        assert_eq!(
            cache.daemonset_matching("shop", &[("a", "b")]),
            Lookup::NotFound
        );
        assert_eq!(cache.readiness_gate("shop"), Lookup::Found(false));
    }

    #[test]
    fn empty_selector_is_no_selector_and_daemonset_restriction() {
        let (_, facts) = svc("a", "b", &[], true).entry();
        assert_eq!(
            facts,
            ServiceFacts {
                selector: None,
                local: true
            }
        );
        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "mon"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"nodeSelector": {"gpu": "true"}, "containers": []}}}
        }))
        .unwrap();
        let (ns, entry) = ds.entry();
        assert_eq!(ns, "mon");
        assert!(entry.facts.restricted);
        assert_eq!(entry.labels.get("app").map(String::as_str), Some("agent"));
    }

    #[test]
    fn labelled_scope_distinguishes_unwatched_namespaces() {
        let cache = ClusterCache::new(Scope::Labelled, Arc::new(Metrics::default()));
        let r = ObjectRef::new("billing", "payments");
        assert_eq!(cache.service(&r), Lookup::Unavailable(NOT_SYNCED));
        *write(&cache.watched) = Some(HashSet::from(["shop".to_string()]));
        assert_eq!(cache.service(&r), Lookup::Unavailable(NOT_WATCHED));
        assert_eq!(
            cache.service(&ObjectRef::new("shop", "x")),
            Lookup::Unavailable(NOT_SYNCED)
        );
        cache.mark_synced(SERVICE, Some("shop".into()));
        assert_eq!(
            cache.service(&ObjectRef::new("shop", "x")),
            Lookup::NotFound
        );
        assert!(!cache.all_synced());
        cache.mark_synced(DAEMONSET, Some("shop".into()));
        cache.mark_synced(NODE, None);
        cache.mark_synced(GATE, None);
        assert!(cache.all_synced());
        // The gate namespaces are known cluster-wide, watched or not.
        assert_eq!(cache.readiness_gate("billing"), Lookup::Found(false));
    }

    /// A fixed list of namespaces: known from the start, the others
    /// unwatched, synced once each listed namespace's watches have listed.
    #[test]
    fn only_scope_watches_exactly_its_namespaces() {
        let cache = ClusterCache::new(
            Scope::Only(vec!["shop".into(), "billing".into()]),
            Arc::new(Metrics::default()),
        );
        assert_eq!(
            cache.service(&ObjectRef::new("other", "x")),
            Lookup::Unavailable(NOT_WATCHED)
        );
        assert_eq!(
            cache.service(&ObjectRef::new("shop", "x")),
            Lookup::Unavailable(NOT_SYNCED)
        );
        cache.mark_synced(NODE, None);
        cache.mark_synced(GATE, None);
        for ns in ["shop", "billing"] {
            assert!(!cache.all_synced(), "{ns}");
            cache.mark_synced(SERVICE, Some(ns.into()));
            cache.mark_synced(DAEMONSET, Some(ns.into()));
        }
        assert!(cache.all_synced());
        assert_eq!(
            cache.service(&ObjectRef::new("billing", "x")),
            Lookup::NotFound
        );
    }

    #[test]
    fn metered_counts_fallbacks_by_reason() {
        let metrics = Arc::new(Metrics::default());
        let m = Metered {
            inner: crate::core::lookups::NoCluster,
            metrics: metrics.clone(),
        };
        let _ = m.service(&ObjectRef::new("a", "b"));
        let _ = m.daemonset_matching("a", &[("k", "v")]);
        assert!(
            metrics
                .render()
                .contains(r#"zonewise_lookup_fallbacks_total{reason="no cluster access"} 2"#)
        );
    }
}
