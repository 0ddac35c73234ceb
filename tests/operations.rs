//! Running zonewise in production: certificate rotation under load (the
//! Secret volume's `..data` symlink swap), mTLS, config reloads (ConfigMap
//! swap and SIGHUP), and the SIGTERM drain under load.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use zonewise::server::TlsSource;
use zonewise::server::certs;

/// A directory laid out the way the kubelet writes Secret and ConfigMap
/// volumes: files are symlinks through `..data`, which is swapped
/// atomically to a new timestamped directory on every update.
struct VolumeDir {
    root: PathBuf,
    version: u32,
}

impl VolumeDir {
    fn new(root: &Path, files: &[(&str, &str)]) -> VolumeDir {
        let mut v = VolumeDir {
            root: root.to_path_buf(),
            version: 0,
        };
        v.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
        v
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn swap(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let dir = format!("..2026_11_22_{:02}", self.version);
        std::fs::create_dir_all(self.root.join(&dir)).unwrap();
        for (name, content) in files {
            std::fs::write(self.root.join(&dir).join(name), content).unwrap();
        }
        let tmp = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&dir, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
    }
}

fn leaf_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Keep-alive load: `n` HTTP/1.1 connections sending reviews until `stop`.
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    closes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `reconnect_until`: after a `Connection: close` answer, open a new
    /// connection if this returns true, else finish (as the API server does
    /// once endpoints no longer list the pod).
    fn start(
        n: usize,
        addr: std::net::SocketAddr,
        connector: tokio_rustls::TlsConnector,
        reconnect_until: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let closes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let body = fixture("deploy-plain");
        let tasks = (0..n)
            .map(|_| {
                let (ok, failed, closes, stop) =
                    (ok.clone(), failed.clone(), closes.clone(), stop.clone());
                let (connector, body, reconnect) =
                    (connector.clone(), body.clone(), reconnect_until.clone());
                tokio::spawn(async move {
                    'connections: while !stop.load(Ordering::Relaxed) {
                        let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                        let Ok(tls) = connector.connect(name, tcp).await else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        let mut c = Client::h1(tls).await;
                        while !stop.load(Ordering::Relaxed) {
                            let req = http::Request::post("/mutate")
                                .header("host", "localhost")
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
                                .unwrap();
                            match c.send(req).await {
                                Ok(r)
                                    if r.status == 200
                                        && decode_answer(&r.body).patch.is_some() =>
                                {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                    if r.headers.get("connection").is_some_and(|v| v == "close") {
                                        closes.fetch_add(1, Ordering::Relaxed);
                                        if reconnect() {
                                            continue 'connections;
                                        }
                                        return;
                                    }
                                }
                                _ => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    return;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            ok,
            failed,
            closes,
            stop,
            tasks,
        }
    }

    async fn until_ok(&self, n: u64) {
        let ok = self.ok.clone();
        eventually(
            "load to make progress",
            Duration::from_secs(10),
            async || ok.load(Ordering::Relaxed) >= n,
        )
        .await;
    }

    async fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.closes.load(Ordering::Relaxed),
        )
    }
}

async fn peer_leaf(addr: std::net::SocketAddr, connector: tokio_rustls::TlsConnector) -> Vec<u8> {
    let tls = tls_connect(addr, connector).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_by_symlink_swap() {
    let names = ["localhost".to_string()];
    let first = certs::generate(&names).unwrap();
    let second = certs::issue(&names, &first.ca_cert_pem, &first.ca_key_pem).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut vol = VolumeDir::new(
        tmp.path(),
        &[
            ("tls.crt", &first.serving_cert_pem),
            ("tls.key", &first.serving_key_pem),
        ],
    );
    let (cert, key) = (vol.path("tls.crt"), vol.path("tls.key"));
    let server = TestServer::start_with(|o| o.tls = TlsSource::Files { cert, key }).await;
    let connector = client_connector(&first.ca_cert_pem, &[b"http/1.1"], None);
    assert_eq!(
        peer_leaf(server.addr, connector.clone()).await,
        leaf_der(&first.serving_cert_pem)
    );

    let load = Load::start(4, server.addr, connector.clone(), Arc::new(|| true));
    load.until_ok(200).await;

    // cert-manager renews: new pair, same CA, swapped in by the kubelet.
    vol.swap(&[
        ("tls.crt", &second.serving_cert_pem),
        ("tls.key", &second.serving_key_pem),
    ]);
    let want = leaf_der(&second.serving_cert_pem);
    eventually(
        "new connections to get the new certificate",
        Duration::from_secs(5),
        async || peer_leaf(server.addr, connector.clone()).await == want,
    )
    .await;
    let before = load.ok.load(Ordering::Relaxed);
    load.until_ok(before + 200).await;

    // A broken pair (key of another certificate) keeps the good one serving.
    vol.swap(&[
        ("tls.crt", &first.serving_cert_pem),
        ("tls.key", &second.serving_key_pem),
    ]);
    server
        .wait_for_metric(r#"zonewise_tls_reloads_total{result="error"}"#, 1.0)
        .await;
    assert_eq!(peer_leaf(server.addr, connector.clone()).await, want);
    let before = load.ok.load(Ordering::Relaxed);
    load.until_ok(before + 100).await;

    let (ok, failed, _) = load.finish().await;
    assert_eq!(
        failed, 0,
        "no request failed across two swaps ({ok} succeeded)"
    );
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, r#"zonewise_tls_reloads_total{result="success"}"#),
        1.0,
        "{m}"
    );
    let (_, parsed) = x509_parser::pem::parse_x509_pem(second.serving_cert_pem.as_bytes()).unwrap();
    let not_after = parsed
        .parse_x509()
        .unwrap()
        .validity()
        .not_after
        .timestamp() as f64;
    assert_eq!(
        metric(&m, "zonewise_tls_cert_expiry_timestamp_seconds"),
        not_after
    );
}

/// A client CA and a client certificate it signed, as PEM.
fn client_identity() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut leaf = CertificateParams::new(vec!["kube-apiserver".to_string()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &Issuer::new(ca, &ca_key)).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let (client_ca, client_cert, client_key) = client_identity();
    let (_, other_cert, other_key) = client_identity();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &client_ca).unwrap();
    let ca_path = ca_file.path().to_path_buf();
    let server = TestServer::start_with(|o| o.client_ca = Some(ca_path)).await;

    async fn attempt(server: &TestServer, identity: Option<(&str, &str)>) -> bool {
        let connector = client_connector(&server.ca_pem, &[b"http/1.1"], identity);
        let Ok(tcp) = tokio::net::TcpStream::connect(server.addr).await else {
            return false;
        };
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        // With TLS 1.3 the server rejects the client's certificate after the
        // client considers the handshake done, so the failure may only show
        // on the first request.
        let Ok(tls) = connector.connect(name, tcp).await else {
            return false;
        };
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await
        else {
            return false;
        };
        tokio::spawn(conn);
        let req = http::Request::post("/mutate")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(fixture(
                "svc-clusterip",
            ))))
            .unwrap();
        matches!(sender.send_request(req).await, Ok(r) if r.status() == 200)
    }

    assert!(
        !attempt(&server, None).await,
        "no client certificate: refused"
    );
    assert!(
        !attempt(&server, Some((&other_cert, &other_key))).await,
        "another CA: refused"
    );
    assert!(
        attempt(&server, Some((&client_cert, &client_key))).await,
        "trusted client: served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_by_configmap_swap() {
    let tmp = tempfile::tempdir().unwrap();
    let mut vol = VolumeDir::new(
        tmp.path(),
        &[("config.yaml", "service: {routing: PreferClose}\n")],
    );
    let path = vol.path("config.yaml");
    let server = TestServer::start_with(|o| o.config = Some(path)).await;
    let mut c = server.h1().await;
    let routing = async |c: &mut Client| {
        let a = c.review(&fixture("svc-clusterip")).await;
        let mut obj: serde_json::Value = serde_json::from_slice(&fixture("svc-clusterip")).unwrap();
        obj = obj["request"]["object"].take();
        json_patch::patch(&mut obj, a.patch.as_ref().unwrap()).unwrap();
        obj
    };
    assert_eq!(
        routing(&mut c).await["spec"]["trafficDistribution"],
        "PreferClose"
    );

    vol.swap(&[("config.yaml", "service: {routing: annotation}\n")]);
    eventually(
        "the new policy to apply",
        Duration::from_secs(5),
        async || {
            routing(&mut c).await["metadata"]["annotations"]["service.kubernetes.io/topology-mode"]
                == "Auto"
        },
    )
    .await;

    vol.swap(&[("config.yaml", "service: {routing: sideways}\n")]);
    server
        .wait_for_metric(r#"zonewise_config_reloads_total{result="error"}"#, 1.0)
        .await;
    let obj = routing(&mut c).await;
    assert_eq!(
        obj["metadata"]["annotations"]["service.kubernetes.io/topology-mode"], "Auto",
        "old policy kept"
    );
    assert!(obj["spec"].get("trafficDistribution").is_none());
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, r#"zonewise_config_reloads_total{result="success"}"#),
        1.0,
        "{m}"
    );
}

/// Files for a subprocess server: a serving pair and a config.
fn process_files(dir: &Path, config: &str) -> (String, Vec<String>) {
    let g = certs::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let w = certs::write(dir, &g).unwrap();
    std::fs::write(dir.join("config.yaml"), config).unwrap();
    let args = vec![
        format!("--tls-cert={}", w.cert.display()),
        format!("--tls-key={}", w.key.display()),
        format!("--config={}", dir.join("config.yaml").display()),
    ];
    (g.ca_cert_pem, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_now() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, mut args) = process_files(tmp.path(), "service: {routing: PreferClose}\n");
    // A reload interval so long that only SIGHUP can explain the change.
    args.push("--reload-interval=1h".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServerProcess::start(tmp.path(), &argv);
    let connector = client_connector(&ca, &[b"http/1.1"], None);
    let mut c = Client::h1(tls_connect(server.addr, connector).await).await;
    let first = c.review(&fixture("svc-clusterip")).await;
    assert_eq!(
        first.patch.unwrap().0.len(),
        3,
        "trafficDistribution + annotations + applied"
    );

    std::fs::write(tmp.path().join("config.yaml"), "service: {routing: off}\n").unwrap();
    server.signal("HUP");
    eventually(
        "SIGHUP to apply routing: off",
        Duration::from_secs(5),
        async || c.review(&fixture("svc-clusterip")).await.patch.is_none(),
    )
    .await;
    assert_eq!(server.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_under_load_and_exits_zero_within_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, mut args) = process_files(tmp.path(), "");
    args.extend([
        "--drain-delay=1500ms".to_string(),
        "--shutdown-grace=5s".to_string(),
    ]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = ServerProcess::start(tmp.path(), &argv);
    let connector = client_connector(&ca, &[b"http/1.1"], None);

    // Clients reconnect after `Connection: close` during the first half of
    // the drain delay; later they go elsewhere, as the API server does once
    // the endpoints have dropped this pod.
    let signalled: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let s = signalled.clone();
    let reconnect = Arc::new(move || {
        s.lock()
            .unwrap()
            .is_none_or(|t| t.elapsed() < Duration::from_millis(750))
    });
    let load = Load::start(4, server.addr, connector.clone(), reconnect);
    load.until_ok(300).await;

    let t0 = Instant::now();
    *signalled.lock().unwrap() = Some(t0);
    server.signal("TERM");
    eventually(
        "readiness to turn false",
        Duration::from_secs(1),
        async || plain_get(server.metrics_addr, "/readyz").await.0 == 503,
    )
    .await;
    // A new connection during the drain is still served, told to close.
    let mut late = Client::h1(tls_connect(server.addr, connector.clone()).await).await;
    let reply = late.post("/mutate", fixture("svc-clusterip")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["connection"], "close");

    let code = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    let took = t0.elapsed();
    let (ok, failed, closes) = load.finish().await;
    assert_eq!(code, Some(0), "exit 0");
    assert!(
        took < Duration::from_secs(5),
        "within --shutdown-grace: {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1500),
        "served through the drain delay: {took:?}"
    );
    assert_eq!(
        failed, 0,
        "no request failed ({ok} served, {closes} told to close)"
    );
    assert!(closes >= 4, "every keep-alive connection was told to close");
}

#[test]
fn second_sigterm_exits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, mut args) = process_files(tmp.path(), "");
    args.extend([
        "--drain-delay=20s".to_string(),
        "--shutdown-grace=25s".to_string(),
    ]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = ServerProcess::start(tmp.path(), &argv);
    server.signal("TERM");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(eventually("draining", Duration::from_secs(2), async || {
        plain_get(server.metrics_addr, "/readyz").await.0 == 503
    }));
    let t0 = Instant::now();
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(5)), Some(1));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}
