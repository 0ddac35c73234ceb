//! Cluster awareness without a cluster: a small HTTPS server in the test
//! speaks the Kubernetes list/watch protocol (real-shaped ServiceList,
//! DaemonSetList, NamespaceList and watch events, dropped watches, `410
//! Gone`), a real `kube::Client` reaches it through a kubeconfig, and
//! reviews sent to the real zonewise server show what the cache resolved.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use bytes::Bytes;
use common::*;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use zonewise::cluster::Scope;
use zonewise::server::ClusterOptions;

// ------------------------------------------------------- the fake API server

type Key = (&'static str, String, String);

struct Watch {
    resource: &'static str,
    namespace: Option<String>,
    label: Option<(String, String)>,
    tx: mpsc::UnboundedSender<Value>,
}

#[derive(Default)]
struct FakeState {
    major: String,
    minor: String,
    rv: u64,
    objects: BTreeMap<Key, Value>,
    watches: Vec<Watch>,
    /// Every request that is not a watch: lists and /version.
    requests: Vec<String>,
    hang_lists: bool,
}

impl FakeState {
    fn matches(w: &Watch, resource: &str, obj: &Value) -> bool {
        w.resource == resource
            && w.namespace
                .as_deref()
                .is_none_or(|ns| obj["metadata"]["namespace"] == ns)
            && w.label
                .as_ref()
                .is_none_or(|(k, v)| obj["metadata"]["labels"][k] == v.as_str())
    }

    fn notify(&mut self, resource: &'static str, kind: &str, obj: &Value, old: Option<&Value>) {
        self.watches.retain(|w| !w.tx.is_closed());
        for w in &self.watches {
            let now = Self::matches(w, resource, obj);
            let before = old.is_some_and(|o| Self::matches(w, resource, o));
            // A watch with a label selector sees an object that stops
            // matching as deleted, as the API server does.
            let ty = match (before, now) {
                (_, true) if kind == "DELETED" => "DELETED",
                (false, true) => "ADDED",
                (true, true) => "MODIFIED",
                (true, false) => "DELETED",
                (false, false) => continue,
            };
            let _ = w.tx.send(json!({"type": ty, "object": obj}));
        }
    }
}

struct FakeApi {
    state: Arc<Mutex<FakeState>>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

fn resource_kind(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "services" => ("v1", "Service"),
        "daemonsets" => ("apps/v1", "DaemonSet"),
        _ => ("v1", "Namespace"),
    }
}

fn static_resource(resource: &str) -> &'static str {
    match resource {
        "services" => "services",
        "daemonsets" => "daemonsets",
        _ => "namespaces",
    }
}

async fn list_or_watch(
    state: Arc<Mutex<FakeState>>,
    resource: &'static str,
    namespace: Option<String>,
    query: BTreeMap<String, String>,
) -> Response {
    let label = query
        .get("labelSelector")
        .and_then(|s| s.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()));
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let (tx, rx) = mpsc::unbounded_channel::<Value>();
        state.lock().unwrap().watches.push(Watch {
            resource,
            namespace,
            label,
            tx,
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let ev = rx.recv().await?;
            Some((Ok::<_, Infallible>(Bytes::from(format!("{ev}\n"))), rx))
        });
        return (
            [("content-type", "application/json")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    let hang = {
        let mut s = state.lock().unwrap();
        s.requests.push(format!("list {resource} {namespace:?}"));
        s.hang_lists
    };
    if hang {
        std::future::pending::<()>().await;
    }
    let s = state.lock().unwrap();
    let items: Vec<&Value> = s
        .objects
        .iter()
        .filter(|((r, ns, _), obj)| {
            *r == resource
                && namespace.as_deref().is_none_or(|n| n == ns)
                && label
                    .as_ref()
                    .is_none_or(|(k, v)| obj["metadata"]["labels"][k] == v.as_str())
        })
        .map(|(_, v)| v)
        .collect();
    let (api_version, kind) = resource_kind(resource);
    let body = json!({
        "apiVersion": api_version,
        "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": s.rv.to_string()},
        "items": items,
    });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

impl FakeApi {
    async fn start(major: &str, minor: &str) -> FakeApi {
        let state = Arc::new(Mutex::new(FakeState {
            major: major.into(),
            minor: minor.into(),
            rv: 100,
            ..Default::default()
        }));
        let app = Router::new()
            .route(
                "/version",
                get(|State(s): State<Arc<Mutex<FakeState>>>| async move {
                    let mut s = s.lock().unwrap();
                    s.requests.push("version".into());
                    let v = json!({"major": s.major, "minor": s.minor,
                        "gitVersion": format!("v{}.{}.3", s.major, s.minor.trim_end_matches('+')),
                        "gitCommit": "0", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                        "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"});
                    ([("content-type", "application/json")], v.to_string())
                }),
            )
            .route(
                "/api/v1/{resource}",
                get(|State(s), UrlPath(r): UrlPath<String>, Query(q)| list_or_watch(s, static_resource(&r), None, q)),
            )
            .route(
                "/api/v1/namespaces/{ns}/{resource}",
                get(|State(s), UrlPath((ns, r)): UrlPath<(String, String)>, Query(q)| {
                    list_or_watch(s, static_resource(&r), Some(ns), q)
                }),
            )
            .route(
                "/apis/apps/v1/{resource}",
                get(|State(s), UrlPath(r): UrlPath<String>, Query(q)| list_or_watch(s, static_resource(&r), None, q)),
            )
            .route(
                "/apis/apps/v1/namespaces/{ns}/{resource}",
                get(|State(s), UrlPath((ns, r)): UrlPath<(String, String)>, Query(q)| {
                    list_or_watch(s, static_resource(&r), Some(ns), q)
                }),
            )
            .with_state(state.clone());

        let dir = tempfile::tempdir().unwrap();
        let g = zonewise::certs::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let pair = zonewise::tls::parse_pair(
            g.serving_cert_pem.as_bytes(),
            g.serving_key_pem.as_bytes(),
            dir.path(),
            dir.path(),
        )
        .unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(zonewise::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(zonewise::tls::CertStore::new(pair.key));
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });

        let ca = base64::engine::general_purpose::STANDARD.encode(&g.ca_cert_pem);
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: https://{addr}\n    certificate-authority-data: {ca}\n\
                 users:\n- name: zonewise\n  user:\n    token: test-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: zonewise\n\
                 current-context: fake\n"
            ),
        )
        .unwrap();
        FakeApi {
            state,
            kubeconfig,
            _dir: dir,
        }
    }

    /// Creates or replaces an object and tells the open watches.
    fn apply(&self, resource: &'static str, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        obj["metadata"]["uid"] =
            json!(format!("uid-{}", obj["metadata"]["name"].as_str().unwrap()));
        let key = key(resource, &obj);
        let old = s.objects.insert(key, obj.clone());
        s.notify(resource, "APPLY", &obj, old.as_ref());
    }

    /// Changes the state without telling anyone: what a client misses while
    /// its watch is down, and learns only by relisting.
    fn apply_silently(&self, resource: &'static str, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        s.objects.insert(key(resource, &obj), obj);
    }

    fn delete_silently(&self, resource: &'static str, ns: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        s.objects
            .remove(&(resource, ns.to_string(), name.to_string()));
    }

    fn open_watches(&self) -> usize {
        let mut s = self.state.lock().unwrap();
        s.watches.retain(|w| !w.tx.is_closed());
        s.watches.len()
    }

    /// Ends every watch stream (a connection drop or the server's timeout).
    fn drop_watches(&self) {
        self.state.lock().unwrap().watches.clear();
    }

    /// Tells every watch its resourceVersion is too old: the client must
    /// relist.
    fn expire_watches(&self) {
        let mut s = self.state.lock().unwrap();
        for w in s.watches.drain(..) {
            let _ = w.tx.send(json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version: 1 (100)", "reason": "Expired", "code": 410}}));
        }
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn key(resource: &'static str, obj: &Value) -> Key {
    (
        resource,
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        obj["metadata"]["name"].as_str().unwrap().to_string(),
    )
}

fn service(ns: &str, name: &str, selector: Value, local: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"selector": selector, "type": "ClusterIP", "clusterIP": "10.96.0.10",
                 "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                 "internalTrafficPolicy": if local { "Local" } else { "Cluster" }},
        "status": {"loadBalancer": {}}})
}

fn daemonset(ns: &str, name: &str, labels: Value, node_selector: Option<Value>) -> Value {
    let mut pod = json!({"containers": [{"name": name, "image": "agent:1"}]});
    if let Some(sel) = node_selector {
        pod["nodeSelector"] = sel;
    }
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": pod}},
        "status": {"currentNumberScheduled": 3, "desiredNumberScheduled": 3, "numberMisscheduled": 0, "numberReady": 3}})
}

fn namespace(name: &str, enabled: bool) -> Value {
    let mut labels = json!({"kubernetes.io/metadata.name": name});
    if enabled {
        labels["zonewise.io/enabled"] = json!("true");
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

// ------------------------------------------------------------------ helpers

async fn zonewise_with(
    fake: &FakeApi,
    scope: Scope,
    config: &str,
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    let kubeconfig = fake.kubeconfig.clone();
    let server = TestServer::start_with(move |o| {
        o.config = Some(config_path);
        o.cluster = ClusterOptions {
            enabled: true,
            kubeconfig: Some(kubeconfig),
            scope,
            sync_timeout: Duration::from_secs(10),
        };
    })
    .await;
    let addr = server.metrics_addr;
    eventually(
        "readiness after the initial lists",
        Duration::from_secs(10),
        async || plain_get(addr, "/readyz").await.0 == 200,
    )
    .await;
    (server, dir)
}

fn review(kind: &str, object: Value, ns: &str) -> Vec<u8> {
    let (group, version) = if kind == "Deployment" {
        ("apps", "v1")
    } else {
        ("", "v1")
    };
    serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "e911857d-c318-11e8-bbad-025000000001",
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": format!("{}s", kind.to_lowercase())},
        "namespace": ns, "name": object["metadata"]["name"], "operation": "CREATE",
        "userInfo": {"username": "admin"}, "object": object, "oldObject": null, "dryRun": false}}))
    .unwrap()
}

fn caller(calls: &str) -> Vec<u8> {
    review(
        "Deployment",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "annotations": {"zonewise.io/calls": calls}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}}),
        "shop",
    )
}

/// The patched object for a review.
fn patched(request: &[u8], answer: &Answer) -> Value {
    let req: Value = serde_json::from_slice(request).unwrap();
    let mut obj = req["request"]["object"].clone();
    if let Some(p) = &answer.patch {
        json_patch::patch(&mut obj, p).unwrap();
    }
    obj
}

fn affinity(obj: &Value) -> &Value {
    &obj["spec"]["template"]["spec"]["affinity"]["podAffinity"]
}

fn preferred_selector(obj: &Value, i: usize) -> &Value {
    &affinity(obj)["preferredDuringSchedulingIgnoredDuringExecution"][i]["podAffinityTerm"]["labelSelector"]
        ["matchLabels"]
}

// -------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callees_daemonsets_and_version_resolve_from_the_cache() {
    let fake = FakeApi::start("1", "34").await;
    fake.apply(
        "services",
        service(
            "shop",
            "orders",
            json!({"app.kubernetes.io/name": "orders"}),
            false,
        ),
    );
    fake.apply(
        "services",
        service("shop", "cache", json!({"app": "node-cache"}), true),
    );
    fake.apply(
        "services",
        service("billing", "payments", json!({"app": "pay"}), false),
    );
    fake.apply("services", service("shop", "external-db", json!({}), false));
    fake.apply(
        "daemonsets",
        daemonset("shop", "node-cache", json!({"app": "node-cache"}), None),
    );
    fake.apply(
        "daemonsets",
        daemonset(
            "shop",
            "gpu-cache",
            json!({"app": "gpu-cache"}),
            Some(json!({"gpu": "true"})),
        ),
    );
    let (server, _dir) = zonewise_with(&fake, Scope::All, "service: {routing: auto}\n").await;
    let requests_after_sync = fake.requests().len();
    let mut c = server.h1().await;

    // call-affinity: selectors from the cluster; the Local callee is
    // required on the node; cross-namespace callee gets `namespaces`.
    let req = caller("orders, cache, payments.billing");
    let a = c.review(&req).await;
    let obj = patched(&req, &a);
    assert_eq!(
        *preferred_selector(&obj, 0),
        json!({"app.kubernetes.io/name": "orders"})
    );
    assert_eq!(*preferred_selector(&obj, 1), json!({"app": "pay"}));
    assert_eq!(
        affinity(&obj)["preferredDuringSchedulingIgnoredDuringExecution"][1]["podAffinityTerm"]["namespaces"],
        json!(["billing"])
    );
    assert_eq!(
        affinity(&obj)["requiredDuringSchedulingIgnoredDuringExecution"],
        json!([{"labelSelector": {"matchLabels": {"app": "node-cache"}}, "topologyKey": "kubernetes.io/hostname"}])
    );
    assert_eq!(
        a.warnings.len(),
        1,
        "only the Local explanation: {:?}",
        a.warnings
    );
    assert!(a.warnings[0].contains("shop/cache") && a.warnings[0].contains("Local"));

    // A callee without a selector is skipped with a warning.
    let a = c.review(&caller("external-db")).await;
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("external-db") && w.contains("no selector")),
        "{:?}",
        a.warnings
    );

    // local-policy: DaemonSet-backed Local Services are allowed.
    let local = |name: &str, app: &str| {
        review(
            "Service",
            service("shop", name, json!({"app": app}), true),
            "shop",
        )
    };
    let a = c.review(&local("node-cache", "node-cache")).await;
    assert!(a.allowed && a.warnings.is_empty(), "{a:?}");
    let a = c.review(&local("gpu-cache", "gpu-cache")).await;
    assert!(a.allowed);
    assert!(
        a.warnings.iter().any(|w| w.contains("DaemonSet gpu-cache")),
        "{:?}",
        a.warnings
    );
    let a = c.review(&local("redis", "redis")).await;
    assert!(!a.allowed);
    assert!(
        !a.message.unwrap().contains("not possible"),
        "the DaemonSet check ran"
    );

    // routing: auto on 1.34 → PreferSameZone.
    let req = fixture("svc-clusterip");
    let obj = patched(&req, &c.review(&req).await);
    assert_eq!(obj["spec"]["trafficDistribution"], "PreferSameZone");

    // None of this called the API server.
    assert_eq!(
        fake.requests().len(),
        requests_after_sync,
        "{:?}",
        fake.requests()
    );
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, r#"zonewise_cache_objects{kind="Service"}"#),
        4.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"zonewise_cache_objects{kind="DaemonSet"}"#),
        2.0
    );
    assert!(
        m.contains(r#"zonewise_cache_last_sync_age_seconds{kind="Service"}"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_drops_and_410_relists_keep_the_cache_current() {
    let fake = FakeApi::start("1", "33").await;
    fake.apply(
        "services",
        service("shop", "orders", json!({"app": "orders-v1"}), false),
    );
    let (server, _dir) = zonewise_with(&fake, Scope::All, "").await;
    let mut c = server.h1().await;
    eventually("both watches open", Duration::from_secs(5), async || {
        fake.open_watches() == 2
    })
    .await;
    let selector_of_orders = async |c: &mut Client| {
        let req = caller("orders");
        let a = c.review(&req).await;
        preferred_selector(&patched(&req, &a), 0).clone()
    };
    assert_eq!(
        selector_of_orders(&mut c).await,
        json!({"app": "orders-v1"})
    );

    // A watch event.
    fake.apply(
        "services",
        service("shop", "orders", json!({"app": "orders-v2"}), false),
    );
    eventually(
        "the MODIFIED event to apply",
        Duration::from_secs(5),
        async || selector_of_orders(&mut c).await == json!({"app": "orders-v2"}),
    )
    .await;

    // The watch drops: the last known state keeps serving, the client
    // re-watches, and later events arrive.
    fake.drop_watches();
    assert_eq!(
        selector_of_orders(&mut c).await,
        json!({"app": "orders-v2"})
    );
    eventually(
        "the watches to reconnect",
        Duration::from_secs(10),
        async || fake.open_watches() == 2,
    )
    .await;
    fake.apply(
        "services",
        service("shop", "stock", json!({"app": "stock"}), false),
    );
    eventually(
        "the ADDED event after reconnect",
        Duration::from_secs(5),
        async || {
            let a = c.review(&caller("stock")).await;
            a.warnings.is_empty()
        },
    )
    .await;

    // Changes missed while disconnected, then 410 Gone: the client relists
    // and the cache is replaced whole (stock deleted, orders changed).
    fake.apply_silently(
        "services",
        service("shop", "orders", json!({"app": "orders-v3"}), false),
    );
    fake.delete_silently("services", "shop", "stock");
    fake.expire_watches();
    eventually(
        "the relist after 410",
        Duration::from_secs(10),
        async || selector_of_orders(&mut c).await == json!({"app": "orders-v3"}),
    )
    .await;
    let a = c.review(&caller("stock")).await;
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("shop/stock") && w.contains("not found")),
        "{:?}",
        a.warnings
    );
    let m = server.metrics().await;
    assert!(
        metric(&m, r#"zonewise_cache_watch_restarts_total{kind="Service"}"#) >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, r#"zonewise_cache_objects{kind="Service"}"#), 1.0);
    assert!(metric(&m, r#"zonewise_lookup_fallbacks_total{reason="not found"}"#) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_auto_follows_the_server_version() {
    for (minor, field, annotation) in [
        ("34", Some("PreferSameZone"), None),
        ("32+", Some("PreferClose"), None),
        ("29", None, Some("Auto")),
    ] {
        let fake = FakeApi::start("1", minor).await;
        let (server, _dir) = zonewise_with(&fake, Scope::All, "service: {routing: auto}\n").await;
        let mut c = server.h1().await;
        let req = fixture("svc-clusterip");
        let obj = patched(&req, &c.review(&req).await);
        assert_eq!(
            obj["spec"]["trafficDistribution"].as_str(),
            field,
            "1.{minor}"
        );
        assert_eq!(
            obj["metadata"]["annotations"]["service.kubernetes.io/topology-mode"].as_str(),
            annotation,
            "1.{minor}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_api_server_means_degraded_not_stuck() {
    let fake = FakeApi::start("1", "34").await;
    fake.state.lock().unwrap().hang_lists = true;
    let kubeconfig = fake.kubeconfig.clone();
    let server = TestServer::start_with(move |o| {
        o.cluster = ClusterOptions {
            enabled: true,
            kubeconfig: Some(kubeconfig),
            scope: Scope::All,
            sync_timeout: Duration::from_millis(500),
        };
    })
    .await;
    let (status, body) = plain_get(server.metrics_addr, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: cluster cache not synced\n")
    );
    let addr = server.metrics_addr;
    eventually(
        "degraded readiness after the bounded wait",
        Duration::from_secs(3),
        async || plain_get(addr, "/readyz").await.0 == 200,
    )
    .await;
    let a = server.h1().await.review(&caller("orders")).await;
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("cluster cache not synced")),
        "{:?}",
        a.warnings
    );
    let m = server.metrics().await;
    assert!(
        metric(
            &m,
            r#"zonewise_lookup_fallbacks_total{reason="cluster cache not synced"}"#
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_scope_watches_only_opted_in_namespaces() {
    let fake = FakeApi::start("1", "34").await;
    fake.apply("namespaces", namespace("shop", true));
    fake.apply("namespaces", namespace("billing", false));
    fake.apply(
        "services",
        service("shop", "orders", json!({"app": "orders"}), false),
    );
    fake.apply(
        "services",
        service("billing", "payments", json!({"app": "pay"}), false),
    );
    let (server, _dir) = zonewise_with(&fake, Scope::Labelled, "").await;
    let mut c = server.h1().await;

    let req = caller("orders, payments.billing");
    let a = c.review(&req).await;
    assert_eq!(
        *preferred_selector(&patched(&req, &a), 1),
        json!({"app": "payments"}),
        "fallback label"
    );
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("billing/payments") && w.contains("not watched")),
        "{:?}",
        a.warnings
    );
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.contains("Some(\"billing\")")),
        "billing not listed"
    );

    // Opting billing in starts its watches.
    fake.apply("namespaces", namespace("billing", true));
    eventually(
        "billing to be watched",
        Duration::from_secs(10),
        async || {
            let a = c.review(&req).await;
            *preferred_selector(&patched(&req, &a), 1) == json!({"app": "pay"})
        },
    )
    .await;

    // Opting out forgets it again.
    fake.apply("namespaces", namespace("billing", false));
    eventually(
        "billing to be forgotten",
        Duration::from_secs(10),
        async || {
            let a = c.review(&req).await;
            a.warnings.iter().any(|w| w.contains("not watched"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_is_read_again_when_a_watch_reconnects() {
    let fake = FakeApi::start("1", "33").await;
    let (server, _dir) = zonewise_with(&fake, Scope::All, "service: {routing: auto}\n").await;
    let mut c = server.h1().await;
    let routing = async |c: &mut Client| {
        let req = fixture("svc-clusterip");
        patched(&req, &c.review(&req).await)["spec"]["trafficDistribution"].clone()
    };
    assert_eq!(routing(&mut c).await, "PreferClose");
    eventually("both watches open", Duration::from_secs(5), async || {
        fake.open_watches() == 2
    })
    .await;

    // The control plane is upgraded; the watches break and reconnect.
    fake.state.lock().unwrap().minor = "34".into();
    fake.expire_watches();
    eventually(
        "routing: auto to follow the new version",
        Duration::from_secs(10),
        async || routing(&mut c).await == "PreferSameZone",
    )
    .await;
}
