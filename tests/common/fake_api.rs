//! A small HTTPS server that speaks the Kubernetes API's list and watch
//! protocol, for tests and benchmarks that need a cluster: real-shaped
//! lists (with `limit`/`continue` pagination and label selectors), watch
//! event streams, metadata-only answers (`PartialObjectMetadataList`) when
//! a client asks for them, `410 Gone`, `403 Forbidden` on chosen resources,
//! and an API server that dies mid-list. A real `kube::Client` reaches it
//! through the kubeconfig it writes.
//!
//! zonewise never writes to a cluster: any request that is not a GET is
//! recorded, answered 405, and fails the test when the fake is dropped.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// (resource, namespace, name)
pub type Key = (&'static str, String, String);

struct Watch {
    resource: &'static str,
    namespace: Option<String>,
    label: Option<(String, String)>,
    metadata_only: bool,
    tx: mpsc::UnboundedSender<Value>,
}

#[derive(Default)]
pub struct FakeState {
    pub major: String,
    pub minor: String,
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    watches: Vec<Watch>,
    /// Every request that is not a watch: lists and /version.
    pub requests: Vec<String>,
    /// Requests that would write (anything but GET).
    pub writes: Vec<String>,
    pub hang_lists: bool,
    /// `(resource, namespace)` pairs answered 403 (namespace `None`: the
    /// cluster-wide list).
    pub forbidden: Vec<(&'static str, Option<String>)>,
    /// After this many list pages of this resource, the server dies.
    pub die_after: Option<(&'static str, usize)>,
    pages_served: BTreeMap<&'static str, usize>,
    dead: bool,
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
            let object = if w.metadata_only {
                partial(obj)
            } else {
                obj.clone()
            };
            let _ = w.tx.send(json!({"type": ty, "object": object}));
        }
    }
}

/// The API group path, version and kind of a resource.
fn resource_info(resource: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match resource {
        "services" => ("services", "v1", "Service"),
        "namespaces" => ("namespaces", "v1", "Namespace"),
        "nodes" => ("nodes", "v1", "Node"),
        "daemonsets" => ("daemonsets", "apps/v1", "DaemonSet"),
        "deployments" => ("deployments", "apps/v1", "Deployment"),
        "statefulsets" => ("statefulsets", "apps/v1", "StatefulSet"),
        "ingresses" => ("ingresses", "networking.k8s.io/v1", "Ingress"),
        "endpointslices" => ("endpointslices", "discovery.k8s.io/v1", "EndpointSlice"),
        _ => return None,
    })
}

/// An object as `PartialObjectMetadata`: only its metadata.
fn partial(obj: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"]})
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub struct FakeApi {
    pub state: Arc<Mutex<FakeState>>,
    pub kubeconfig: PathBuf,
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
        let writes = self
            .state
            .lock()
            .map(|s| s.writes.clone())
            .unwrap_or_default();
        if !writes.is_empty() && !std::thread::panicking() {
            panic!("zonewise sent requests that would write: {writes:?}");
        }
    }
}

async fn list_or_watch(
    state: Arc<Mutex<FakeState>>,
    resource: String,
    namespace: Option<String>,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
) -> Response {
    let Some((resource, api_version, kind)) = resource_info(&resource) else {
        return status(
            404,
            "NotFound",
            format!("the server could not find resource {resource}"),
        );
    };
    let metadata_only = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let label = query
        .get("labelSelector")
        .and_then(|s| s.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()));
    {
        let s = state.lock().unwrap();
        if s.forbidden
            .iter()
            .any(|(r, ns)| *r == resource && *ns == namespace)
        {
            let scope = namespace.as_deref().map_or_else(
                || "at the cluster scope".to_string(),
                |n| format!("in the namespace \"{n}\""),
            );
            return status(
                403,
                "Forbidden",
                format!(
                    "{resource} is forbidden: User \"system:serviceaccount:ci:auditor\" cannot list resource \"{resource}\" in API group \"{}\" {scope}",
                    api_version.rsplit_once('/').map_or("", |(g, _)| g)
                ),
            );
        }
    }
    if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let (tx, rx) = mpsc::unbounded_channel::<Value>();
        state.lock().unwrap().watches.push(Watch {
            resource,
            namespace,
            label,
            metadata_only,
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
        let label = label
            .as_ref()
            .map(|(k, v)| format!(" {k}={v}"))
            .unwrap_or_default();
        let meta = if metadata_only { " metadata" } else { "" };
        s.requests
            .push(format!("list {resource} {namespace:?}{label}{meta}"));
        s.hang_lists
    };
    if hang {
        std::future::pending::<()>().await;
    }
    let mut s = state.lock().unwrap();
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
    // Pagination: `continue` is the index of the next item.
    let start: usize = query
        .get("continue")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let end = start.saturating_add(limit).min(items.len());
    let page: Vec<Value> = items[start.min(end)..end]
        .iter()
        .map(|o| {
            if metadata_only {
                partial(o)
            } else {
                // A real API server leaves the type out of list items.
                let mut item = (*o).clone();
                if let Some(m) = item.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                item
            }
        })
        .collect();
    let mut metadata = json!({"resourceVersion": s.rv.to_string()});
    if end < items.len() {
        metadata["continue"] = json!(end.to_string());
        metadata["remainingItemCount"] = json!(items.len() - end);
    }
    let (api_version, kind) = if metadata_only {
        ("meta.k8s.io/v1", "PartialObjectMetadataList".to_string())
    } else {
        (api_version, format!("{kind}List"))
    };
    let body =
        json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": page});
    let served = {
        let n = s.pages_served.entry(resource).or_default();
        *n += 1;
        *n
    };
    if s.die_after
        .is_some_and(|(r, pages)| r == resource && served > pages)
    {
        s.dead = true;
        // The connection drops mid-answer: headers, then a truncated body.
        let text = body.to_string();
        let cut = Bytes::from(text[..text.len() / 2].to_string());
        let stream = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(cut),
            Err(std::io::Error::other("API server went away")),
        ]);
        return (
            [("content-type", "application/json")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    ([("content-type", "application/json")], body.to_string()).into_response()
}

async fn version(State(s): State<Arc<Mutex<FakeState>>>) -> Response {
    let mut s = s.lock().unwrap();
    s.requests.push("version".into());
    let v = json!({"major": s.major, "minor": s.minor,
        "gitVersion": format!("v{}.{}.3", s.major, s.minor.trim_end_matches('+')),
        "gitCommit": "0", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"});
    ([("content-type", "application/json")], v.to_string()).into_response()
}

type St = State<Arc<Mutex<FakeState>>>;
type Q = Query<BTreeMap<String, String>>;

impl FakeApi {
    pub async fn start(major: &str, minor: &str) -> FakeApi {
        let state = Arc::new(Mutex::new(FakeState {
            major: major.into(),
            minor: minor.into(),
            rv: 100,
            ..Default::default()
        }));
        let cluster = |State(s): St, UrlPath(r): UrlPath<String>, Query(q): Q, h: HeaderMap| {
            list_or_watch(s, r, None, q, h)
        };
        let namespaced =
            |State(s): St,
             UrlPath((ns, r)): UrlPath<(String, String)>,
             Query(q): Q,
             h: HeaderMap| { list_or_watch(s, r, Some(ns), q, h) };
        let grouped = |State(s): St,
                       UrlPath((_, _, r)): UrlPath<(String, String, String)>,
                       Query(q): Q,
                       h: HeaderMap| { list_or_watch(s, r, None, q, h) };
        let grouped_ns =
            |State(s): St,
             UrlPath((_, _, ns, r)): UrlPath<(String, String, String, String)>,
             Query(q): Q,
             h: HeaderMap| { list_or_watch(s, r, Some(ns), q, h) };
        let app = Router::new()
            .route("/version", get(version))
            .route("/api/v1/{resource}", get(cluster))
            .route("/api/v1/namespaces/{ns}/{resource}", get(namespaced))
            .route("/apis/{group}/{version}/{resource}", get(grouped))
            .route(
                "/apis/{group}/{version}/namespaces/{ns}/{resource}",
                get(grouped_ns),
            )
            .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
            .with_state(state.clone());

        let dir = tempfile::tempdir().unwrap();
        let g =
            zonewise::server::certs::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let pair = zonewise::server::tls::parse_pair(
            g.serving_cert_pem.as_bytes(),
            g.serving_key_pem.as_bytes(),
            dir.path(),
            dir.path(),
        )
        .unwrap();
        let mut tls =
            rustls::ServerConfig::builder_with_provider(zonewise::server::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(zonewise::server::tls::CertStore::new(pair.key));
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let st = state.clone();
        let server = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                if st.lock().unwrap().dead {
                    // Dead: every open connection goes too, new ones are cut.
                    conns.abort_all();
                    drop(tcp);
                    continue;
                }
                let (acceptor, app) = (acceptor.clone(), app.clone());
                conns.spawn(async move {
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
                 - name: other\n  context:\n    cluster: fake\n    user: zonewise\n    namespace: shop\n\
                 current-context: fake\n"
            ),
        )
        .unwrap();
        FakeApi {
            state,
            kubeconfig,
            addr,
            server,
            _dir: dir,
        }
    }

    /// Creates or replaces an object and tells the open watches.
    pub fn apply(&self, resource: &'static str, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        obj["metadata"]["uid"] =
            json!(format!("uid-{}", obj["metadata"]["name"].as_str().unwrap()));
        let key = key(resource, &obj);
        let old = s.objects.insert(key, obj.clone());
        s.notify(resource, "APPLY", &obj, old.as_ref());
    }

    /// Many objects at once, without watch events (set-up before a client
    /// connects).
    pub fn load(&self, resource: &'static str, objs: impl IntoIterator<Item = Value>) {
        let mut s = self.state.lock().unwrap();
        for mut obj in objs {
            s.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            s.objects.insert(key(resource, &obj), obj);
        }
    }

    /// Changes the state without telling anyone: what a client misses while
    /// its watch is down, and learns only by relisting.
    pub fn apply_silently(&self, resource: &'static str, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        s.objects.insert(key(resource, &obj), obj);
    }

    pub fn delete_silently(&self, resource: &'static str, ns: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        s.objects
            .remove(&(resource, ns.to_string(), name.to_string()));
    }

    pub fn open_watches(&self) -> usize {
        let mut s = self.state.lock().unwrap();
        s.watches.retain(|w| !w.tx.is_closed());
        s.watches.len()
    }

    /// Open watches of one resource.
    pub fn open_watches_of(&self, resource: &str) -> usize {
        let mut s = self.state.lock().unwrap();
        s.watches.retain(|w| !w.tx.is_closed());
        s.watches.iter().filter(|w| w.resource == resource).count()
    }

    /// Ends every watch stream (a connection drop or the server's timeout).
    pub fn drop_watches(&self) {
        self.state.lock().unwrap().watches.clear();
    }

    /// Tells every watch its resourceVersion is too old: the client must
    /// relist.
    pub fn expire_watches(&self) {
        let mut s = self.state.lock().unwrap();
        for w in s.watches.drain(..) {
            let _ = w.tx.send(json!({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version: 1 (100)", "reason": "Expired", "code": 410}}));
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn forbid(&self, resource: &'static str, namespace: Option<&str>) {
        self.state
            .lock()
            .unwrap()
            .forbidden
            .push((resource, namespace.map(str::to_string)));
    }

    pub fn die_after_pages(&self, resource: &'static str, pages: usize) {
        self.state.lock().unwrap().die_after = Some((resource, pages));
    }
}

/// Records and refuses anything that is not a GET.
async fn guard(State(s): St, req: Request, next: axum::middleware::Next) -> Response {
    if req.method() != Method::GET {
        s.lock()
            .unwrap()
            .writes
            .push(format!("{} {}", req.method(), req.uri()));
        return status(
            405,
            "MethodNotAllowed",
            "the fake API server is read-only".into(),
        );
    }
    next.run(req).await
}

pub fn key(resource: &'static str, obj: &Value) -> Key {
    (
        resource,
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        obj["metadata"]["name"].as_str().unwrap().to_string(),
    )
}

// ----------------------------------------------------------- object builders

pub fn service(ns: &str, name: &str, selector: Value, local: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"selector": selector, "type": "ClusterIP", "clusterIP": "10.96.0.10",
                 "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
                 "internalTrafficPolicy": if local { "Local" } else { "Cluster" }},
        "status": {"loadBalancer": {}}})
}

pub fn daemonset(ns: &str, name: &str, labels: Value, node_selector: Option<Value>) -> Value {
    let mut pod = json!({"containers": [{"name": name, "image": "agent:1"}]});
    if let Some(sel) = node_selector {
        pod["nodeSelector"] = sel;
    }
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": pod}},
        "status": {"currentNumberScheduled": 3, "desiredNumberScheduled": 3, "numberMisscheduled": 0, "numberReady": 3}})
}

pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut l = json!({"kubernetes.io/metadata.name": name});
    for (k, v) in labels {
        l[*k] = json!(v);
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": l},
           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

/// A Node in `zone` (none: no zone label), Ready or not, with the bulky
/// status a real one has.
pub fn node(name: &str, zone: Option<&str>, ready: bool) -> Value {
    let mut labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"});
    if let Some(z) = zone {
        labels["topology.kubernetes.io/zone"] = json!(z);
    }
    let images: Vec<Value> = (0..20)
        .map(|i| json!({"names": [format!("registry.example.com/image-{i}@sha256:{}", "0".repeat(64))], "sizeBytes": 1_000_000 + i}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"providerID": format!("aws:///{}/i-{name}", zone.unwrap_or("none"))},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                                   "reason": "KubeletReady", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}],
                   "images": images, "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                   "allocatable": {"cpu": "3920m", "memory": "15Gi", "pods": "110"}}})
}

pub fn deployment(ns: &str, name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": "1",
                     "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z",
                     "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "apps/v1",
                                        "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": name, "image": format!("{name}:1")}]}},
                 "strategy": {"type": "RollingUpdate"}},
        "status": {"replicas": replicas, "readyReplicas": replicas}})
}

/// An EndpointSlice of Service `svc` with `(node, zone, ready)` endpoints.
pub fn endpoint_slice(
    ns: &str,
    svc: &str,
    n: usize,
    endpoints: &[(&str, &str, bool)],
    hints: bool,
) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .enumerate()
        .map(|(i, (node, zone, ready))| {
            let mut e = json!({"addresses": [format!("10.0.{n}.{i}")],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": node, "zone": zone,
                "targetRef": {"kind": "Pod", "name": format!("{svc}-{i}"), "namespace": ns}});
            if hints {
                e["hints"] = json!({"forZones": [{"name": zone}]});
            }
            e
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-{n}"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}
