//! The optional cluster cache: kube watchers keep an in-memory snapshot of
//! Services and DaemonSets, so call-affinity and local-policy answer from
//! memory, never with an API call on the admission path.
//!
//! Each watcher (re)lists into a buffer and swaps it in whole on `InitDone`,
//! so a relist (after a dropped watch or `410 Gone`) never exposes a
//! half-filled cache: lookups keep seeing the last complete state. Errors
//! restart the watch with kube's default backoff. Only the facts the rules
//! need are stored (selectors, the Local flag, template labels), not whole
//! objects, so memory stays small on large clusters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::config::ObjectRef;
use crate::lookups::{DaemonSetEntry, DaemonSetFacts, InMemory, Lookup, Lookups, ServiceFacts};
use crate::metrics::{KindLabels, Metrics, ReasonLabels};

pub const NOT_SYNCED: &str = "cluster cache not synced";
pub const NOT_WATCHED: &str = "namespace not watched by the cluster cache";
/// The namespace label that opts a namespace in (also the webhook's
/// namespaceSelector).
pub const ENABLED_LABEL: &str = "zonewise.io/enabled";

/// Which namespaces the cache watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Scope {
    /// Every namespace (callees may live anywhere).
    #[default]
    All,
    /// Only namespaces labelled `zonewise.io/enabled=true` (needs
    /// `list`/`watch` on namespaces in the ClusterRole).
    Labelled,
}

/// A kube client from `--kubeconfig`, or from the in-cluster service
/// account when running in a pod; `None` means no cluster access (the
/// laptop, tests), and the lookups fall back to config.
pub async fn connect(kubeconfig: Option<&Path>) -> anyhow::Result<Option<Client>> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("kubeconfig {}: {e}", path.display()))?
        }
        // In a pod: the service account. A broken one is not fatal; the
        // webhook works without the cache, and says so in its warnings.
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            match kube::Config::incluster() {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "in-cluster configuration unusable; running without the cluster cache");
                    return Ok(None);
                }
            }
        }
        None => return Ok(None),
    };
    Ok(Some(Client::try_from(config)?))
}

/// The API server's `major.minor`. Managed offerings report minors such as
/// `"34+"`, so only the leading digits count.
pub async fn server_version(client: &Client) -> anyhow::Result<(u32, u32)> {
    let info = client.apiserver_version().await?;
    parse_version(&info.major, &info.minor)
        .ok_or_else(|| anyhow::anyhow!("unparsable version {}.{}", info.major, info.minor))
}

pub fn parse_version(major: &str, minor: &str) -> Option<(u32, u32)> {
    let digits = |s: &str| -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    Some((digits(major)?, digits(minor)?))
}

/// The cache: a snapshot plus what is known about its freshness.
pub struct ClusterCache {
    scope: Scope,
    state: RwLock<InMemory>,
    /// `(kind, scope)` pairs whose initial list has completed.
    synced: Mutex<HashSet<(&'static str, Option<String>)>>,
    /// Labelled mode: the namespaces currently watched; `None` until the
    /// namespace list is in.
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
        Arc::new(ClusterCache {
            scope,
            state: RwLock::new(InMemory::default()),
            synced: Mutex::new(HashSet::new()),
            watched: RwLock::new(None),
            sync_changed: Notify::new(),
            metrics,
        })
    }

    /// Replaces the whole cache with `snapshot` and marks it synced: what a
    /// completed cluster-wide list does, for benchmarks and tests.
    pub fn load_snapshot(&self, snapshot: InMemory) {
        self.edit(|s| *s = snapshot);
        self.mark_synced(SERVICE, None);
        self.mark_synced(DAEMONSET, None);
    }

    /// Every watch has completed its initial list.
    pub fn all_synced(&self) -> bool {
        let synced = lock(&self.synced);
        match self.scope {
            Scope::All => synced.contains(&(SERVICE, None)) && synced.contains(&(DAEMONSET, None)),
            Scope::Labelled => match &*read(&self.watched) {
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
            Scope::All => None,
            Scope::Labelled => {
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
    }

    fn edit(&self, f: impl FnOnce(&mut InMemory)) {
        let mut state = write(&self.state);
        f(&mut state);
        self.update_counts(&state);
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

    fn daemonset_matching(
        &self,
        namespace: &str,
        selector: &[(&str, &str)],
    ) -> Lookup<DaemonSetFacts> {
        let r = self.inner.daemonset_matching(namespace, selector);
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
}

const SERVICE: &str = "Service";
const DAEMONSET: &str = "DaemonSet";
const NAMESPACE: &str = "Namespace";

/// A watched kind: how one object becomes the facts the rules need.
trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: &'static str;
    type Entry: Send + 'static;
    fn entry(&self) -> Self::Entry;
    fn replace(state: &mut InMemory, scope: Option<&str>, entries: Vec<Self::Entry>);
    fn upsert(state: &mut InMemory, entry: Self::Entry);
    fn remove(state: &mut InMemory, obj: &Self);
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
        let selector = spec
            .and_then(|s| s.selector.clone())
            .filter(|s| !s.is_empty());
        let local = spec.and_then(|s| s.internal_traffic_policy.as_deref()) == Some("Local");
        (object_ref(self), ServiceFacts { selector, local })
    }

    fn replace(state: &mut InMemory, scope: Option<&str>, entries: Vec<Self::Entry>) {
        state.replace_services(scope, entries);
    }

    fn upsert(state: &mut InMemory, (key, facts): Self::Entry) {
        state.upsert_service(key, facts);
    }

    fn remove(state: &mut InMemory, obj: &Self) {
        state.remove_service(&object_ref(obj));
    }
}

impl Watched for DaemonSet {
    const KIND: &'static str = DAEMONSET;
    type Entry = (String, DaemonSetEntry);

    fn entry(&self) -> Self::Entry {
        let template = self.spec.as_ref().map(|s| &s.template);
        let labels: BTreeMap<String, String> = template
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let pod = template.and_then(|t| t.spec.as_ref());
        // A node selector or required node affinity leaves some nodes
        // without a pod, hence without a local endpoint.
        let restricted = pod.is_some_and(|p| {
            p.node_selector.as_ref().is_some_and(|n| !n.is_empty())
                || p.affinity
                    .as_ref()
                    .and_then(|a| a.node_affinity.as_ref())
                    .and_then(|n| {
                        n.required_during_scheduling_ignored_during_execution
                            .as_ref()
                    })
                    .is_some()
        });
        let r = object_ref(self);
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

    fn replace(state: &mut InMemory, scope: Option<&str>, entries: Vec<Self::Entry>) {
        state.replace_daemonsets(scope, entries);
    }

    fn upsert(state: &mut InMemory, (ns, entry): Self::Entry) {
        state.upsert_daemonset(&ns, entry);
    }

    fn remove(state: &mut InMemory, obj: &Self) {
        let r = object_ref(obj);
        state.remove_daemonset(&r.namespace, &r.name);
    }
}

/// Runs one watch (a kind, cluster-wide or in one namespace) forever.
/// `reconnected` is notified when a list completes after an error, so the
/// API server version is read again.
async fn watch<K: Watched>(
    api: Api<K>,
    scope: Option<String>,
    cache: Arc<ClusterCache>,
    reconnected: Arc<Notify>,
) {
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
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
                cache.edit(|s| K::replace(s, scope.as_deref(), entries));
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
                debug!(kind, name = %obj.name_any(), "cache apply");
                cache.edit(|s| K::upsert(s, obj.entry()));
                cache.metrics.cache_last_sync.touch(kind);
            }
            Some(Ok(Event::Delete(obj))) => {
                cache.edit(|s| K::remove(s, &obj));
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

/// Starts the watches. They run until the returned handles are dropped,
/// which stops every watch, the per-namespace ones included.
pub fn start(
    client: Client,
    cache: Arc<ClusterCache>,
    reconnected: Arc<Notify>,
) -> Vec<AbortOnDropHandle<()>> {
    let tasks = match cache.scope {
        Scope::All => vec![
            tokio::spawn(watch::<Service>(
                Api::all(client.clone()),
                None,
                cache.clone(),
                reconnected.clone(),
            )),
            tokio::spawn(watch::<DaemonSet>(
                Api::all(client),
                None,
                cache,
                reconnected,
            )),
        ],
        Scope::Labelled => vec![tokio::spawn(watch_namespaces(client, cache, reconnected))],
    };
    tasks.into_iter().map(AbortOnDropHandle::new).collect()
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
                [
                    AbortOnDropHandle::new(tokio::spawn(watch::<Service>(
                        Api::namespaced(client.clone(), ns),
                        Some(ns.clone()),
                        cache.clone(),
                        reconnected.clone(),
                    ))),
                    AbortOnDropHandle::new(tokio::spawn(watch::<DaemonSet>(
                        Api::namespaced(client.clone(), ns),
                        Some(ns.clone()),
                        cache.clone(),
                        reconnected.clone(),
                    ))),
                ]
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
    mut known: Option<(u32, u32)>,
    reconnected: Arc<Notify>,
    mut on_change: impl FnMut((u32, u32)) + Send,
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
                info!(major = v.0, minor = v.1, "API server version changed");
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
    fn versions() {
        assert_eq!(parse_version("1", "34"), Some((1, 34)));
        assert_eq!(parse_version("1", "33+"), Some((1, 33)));
        assert_eq!(parse_version("", "33"), None);
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
        cache.edit(|s| Service::replace(s, None, entries));
        cache.mark_synced(SERVICE, None);
        assert!(matches!(cache.service(&orders), Lookup::Found(f) if !f.local));
        assert!(!cache.all_synced(), "DaemonSets not listed yet");
        assert_eq!(
            cache.daemonset_matching("shop", &[("a", "b")]),
            Lookup::Unavailable(NOT_SYNCED)
        );
        cache.mark_synced(DAEMONSET, None);
        assert!(cache.all_synced());
        assert_eq!(
            cache.daemonset_matching("shop", &[("a", "b")]),
            Lookup::NotFound
        );
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
        assert!(cache.all_synced());
    }

    #[test]
    fn metered_counts_fallbacks_by_reason() {
        let metrics = Arc::new(Metrics::default());
        let m = Metered {
            inner: crate::lookups::NoCluster,
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
