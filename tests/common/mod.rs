//! Shared test support: the fixture table, AdmissionReview response
//! decoding, and a real zonewise server on a pre-bound loopback port with
//! certificates generated for the test, plus an HTTPS client (HTTP/1.1, as the API server speaks).
#![allow(dead_code)]

pub mod fake_api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use zonewise::server::certs;
use zonewise::server::{
    AppState, Exit, Listeners, ServeOptions, Server, ShutdownTrigger, TlsSource, shutdown_channel,
};

// ---------------------------------------------------------------- fixtures

#[derive(Debug, Clone)]
pub enum Expect {
    /// Patched, with this `zonewise.io/applied` value; the patched object
    /// must equal `<name>.expected.json`.
    Patched(String),
    /// Allowed, no patch.
    Unchanged,
    /// Denied with status 403 and a message containing this.
    Denied(String),
}

/// One fixture, as `tests/fixtures/generate.py` (the oracle) lists it in
/// `cases.json`.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub expect: Expect,
    /// A warning containing this must be returned; `None`: no warnings.
    pub warning: Option<String>,
    /// The policy file the case runs under (empty: the built-in policy).
    pub config: String,
}

impl Case {
    pub fn policy(&self) -> zonewise::core::policy::Policy {
        zonewise::core::policy::Policy::new(
            zonewise::core::config::Config::from_yaml(&self.config)
                .unwrap_or_else(|e| panic!("{}: config: {e}", self.name)),
            &zonewise::core::policy::Environment::default(),
        )
    }
}

pub static CASES: std::sync::LazyLock<Vec<Case>> = std::sync::LazyLock::new(|| {
    let text = std::fs::read(fixtures_dir().join("cases.json")).expect("cases.json");
    let table: Vec<Value> = serde_json::from_slice(&text).expect("cases.json is JSON");
    table
        .into_iter()
        .map(|c| {
            let expect = c["expect"].as_array().expect("expect");
            let arg = || expect[1].as_str().unwrap().to_string();
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                expect: match expect[0].as_str().unwrap() {
                    "patched" => Expect::Patched(arg()),
                    "denied" => Expect::Denied(arg()),
                    _ => Expect::Unchanged,
                },
                warning: c["warning"].as_str().map(str::to_string),
                config: c["config"].as_str().unwrap_or("").to_string(),
            }
        })
        .collect()
});

/// The cases grouped by the policy file they run under.
pub fn cases_by_config() -> Vec<(String, Vec<&'static Case>)> {
    let mut groups: Vec<(String, Vec<&'static Case>)> = Vec::new();
    for case in CASES.iter() {
        match groups.iter_mut().find(|(c, _)| *c == case.config) {
            Some((_, cases)) => cases.push(case),
            None => groups.push((case.config.clone(), vec![case])),
        }
    }
    groups
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture(name: &str) -> Vec<u8> {
    let p = fixtures_dir().join(format!("{name}.review.json"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn expected(name: &str) -> Value {
    let p = fixtures_dir().join(format!("{name}.expected.json"));
    let text = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&text).unwrap()
}

pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// An AdmissionReview response, checked against the wire contract while
/// decoding: apiVersion/kind, `patch` a base64 string, `patchType:
/// JSONPatch` exactly when there is a patch.
#[derive(Debug)]
pub struct Answer {
    pub uid: String,
    pub allowed: bool,
    pub patch: Option<json_patch::Patch>,
    pub warnings: Vec<String>,
    pub code: Option<u64>,
    pub message: Option<String>,
}

pub fn decode_answer(body: &[u8]) -> Answer {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "response is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1", "{v}");
    assert_eq!(v["kind"], "AdmissionReview", "{v}");
    let r = &v["response"];
    let patch = r.get("patch").map(|p| {
        let b64 = p
            .as_str()
            .unwrap_or_else(|| panic!("patch must be a base64 string: {p}"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        serde_json::from_slice::<json_patch::Patch>(&bytes).unwrap()
    });
    match &patch {
        Some(_) => assert_eq!(r["patchType"], "JSONPatch", "{v}"),
        None => assert!(r.get("patchType").is_none(), "patchType without patch: {v}"),
    }
    Answer {
        uid: r["uid"].as_str().unwrap().to_string(),
        allowed: r["allowed"].as_bool().unwrap(),
        patch,
        warnings: r
            .get("warnings")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|w| w.as_str().unwrap().to_string()).collect())
            .unwrap_or_default(),
        code: r.pointer("/status/code").and_then(Value::as_u64),
        message: r
            .pointer("/status/message")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// Checks one answer against its case. For a patched object, returns the
/// same review with the patched object in it: the caller sends it through
/// the same path and passes the answer to [`check_converged`].
#[must_use]
pub fn check_case(case: &Case, request: &[u8], answer: &Answer) -> Option<Vec<u8>> {
    let name = &case.name;
    let req: Value = serde_json::from_slice(request).unwrap();
    assert_eq!(
        answer.uid,
        req["request"]["uid"].as_str().unwrap(),
        "{name}: uid echoed"
    );
    match &case.warning {
        Some(w) => assert!(
            answer.warnings.iter().any(|x| x.contains(w)),
            "{name}: expected a warning containing {w:?}, got {:?}",
            answer.warnings
        ),
        None => assert!(
            answer.warnings.is_empty(),
            "{name}: unexpected warnings {:?}",
            answer.warnings
        ),
    }
    match &case.expect {
        Expect::Unchanged => {
            assert!(answer.allowed, "{name}: must be allowed");
            assert!(
                answer.patch.is_none(),
                "{name}: no patch expected, got {:?}",
                answer.patch
            );
            None
        }
        Expect::Denied(text) => {
            assert!(!answer.allowed, "{name}: must be denied");
            assert_eq!(answer.code, Some(403), "{name}");
            let msg = answer.message.as_deref().unwrap_or("");
            assert!(
                msg.contains(text.as_str()),
                "{name}: message {msg:?} lacks {text:?}"
            );
            assert!(answer.patch.is_none(), "{name}: a denial carries no patch");
            None
        }
        Expect::Patched(applied) => {
            assert!(answer.allowed, "{name}: must be allowed");
            let patch = answer
                .patch
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: no patch"));
            let mut obj = req["request"]["object"].clone();
            json_patch::patch(&mut obj, patch)
                .unwrap_or_else(|e| panic!("{name}: patch does not apply: {e}"));
            assert_eq!(
                obj,
                expected(name),
                "{name}: patched object differs from {name}.expected.json"
            );
            assert_eq!(
                obj["metadata"]["annotations"]["zonewise.io/applied"],
                applied.as_str(),
                "{name}"
            );
            typed(
                name,
                req["request"]["kind"]["kind"].as_str().unwrap_or(""),
                &obj,
            );
            let mut again = req.clone();
            again["request"]["object"] = obj;
            Some(serde_json::to_vec(&again).unwrap())
        }
    }
}

/// `obj` deserializes into the k8s-openapi type of `kind`.
pub fn typed(name: &str, kind: &str, obj: &Value) {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, networking::v1 as net};
    let r = match kind {
        "Service" => serde_json::from_value::<core::Service>(obj.clone()).map(drop),
        "Deployment" => serde_json::from_value::<apps::Deployment>(obj.clone()).map(drop),
        "StatefulSet" => serde_json::from_value::<apps::StatefulSet>(obj.clone()).map(drop),
        "Ingress" => serde_json::from_value::<net::Ingress>(obj.clone()).map(drop),
        other => panic!("{name}: unexpected kind {other:?}"),
    };
    r.unwrap_or_else(|e| panic!("{name}: patched {kind} does not deserialize: {e}"));
}

/// The second review of a patched object: allowed, no patch.
pub fn check_converged(case: &Case, second: &Answer) {
    assert!(second.allowed, "{}: second review allowed", case.name);
    assert!(
        second.patch.is_none(),
        "{}: second review must not patch: {:?}",
        case.name,
        second.patch
    );
}

// ------------------------------------------------------------------ server

pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub ca_pem: String,
    pub dir: tempfile::TempDir,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub state: Arc<AppState>,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<anyhow::Result<Exit>>,
}

/// Options a test server starts from: certificates written into `dir`, no
/// drain delay, fast reloads.
pub fn test_options(dir: &Path) -> (ServeOptions, String, PathBuf, PathBuf) {
    let g = certs::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let w = certs::write(dir, &g).unwrap();
    let opts = ServeOptions {
        tls: TlsSource::Files {
            cert: w.cert.clone(),
            key: w.key.clone(),
        },
        drain_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(5),
        reload_interval: Duration::from_millis(100),
        // Never pick up a cluster from the environment the tests run in.
        cluster: zonewise::server::ClusterOptions {
            enabled: false,
            ..Default::default()
        },
        ..ServeOptions::default()
    };
    (opts, g.ca_cert_pem, w.cert, w.key)
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(customize: impl FnOnce(&mut ServeOptions)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let (mut opts, ca_pem, cert_path, key_path) = test_options(dir.path());
        customize(&mut opts);
        let server = Server::load(opts).await.unwrap();
        let state = server.state();
        let listeners = Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let addr = listeners.tls.local_addr().unwrap();
        let metrics_addr = listeners.metrics.local_addr().unwrap();
        let (trigger, signal) = shutdown_channel();
        let task = tokio::spawn(server.run(listeners, signal));
        TestServer {
            addr,
            metrics_addr,
            ca_pem,
            dir,
            cert_path,
            key_path,
            state,
            trigger,
            task,
        }
    }

    pub fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        client_connector(&self.ca_pem, alpn, None)
    }

    pub async fn tls(&self, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        tls_connect(self.addr, self.connector(alpn)).await
    }

    pub async fn h1(&self) -> Client {
        Client::h1(self.tls(&[b"http/1.1"]).await).await
    }

    pub fn signal(&self) {
        self.trigger.trigger();
    }

    pub async fn stop(self) -> Exit {
        self.trigger.trigger();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        plain_get(self.metrics_addr, "/metrics").await.1
    }

    /// Waits until the counter or gauge `series` is at least `at_least`.
    pub async fn wait_for_metric(&self, series: &str, at_least: f64) {
        eventually(series, Duration::from_secs(5), async || {
            metric(&self.metrics().await, series) >= at_least
        })
        .await;
    }
}

pub fn client_connector(
    ca_pem: &str,
    alpn: &[&[u8]],
    client_cert: Option<(&str, &str)>,
) -> TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(zonewise::server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

pub async fn tls_connect(addr: SocketAddr, connector: TlsConnector) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Client {
    pub async fn h1(io: TlsStream<TcpStream>) -> Client {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client::H1(sender)
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> hyper::Result<Reply> {
        let resp = match self {
            Client::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.request("POST", path, Some("application/json"), body.into())
            .await
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("https://localhost{path}"));
        if matches!(self, Client::H1(_)) {
            b = b.uri(path).header("host", "localhost");
        }
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        self.send(b.body(Full::new(body)).unwrap()).await.unwrap()
    }

    pub async fn review(&mut self, body: &[u8]) -> Answer {
        let reply = self.post("/mutate", body.to_vec()).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        decode_answer(&reply.body)
    }
}

/// GET over plain HTTP/1.0 on the metrics port: (status, body).
pub async fn plain_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `f` until it returns true or the deadline passes (no fixed sleeps).
pub async fn eventually(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A counter's value from OpenMetrics text (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

// ------------------------------------------------------ the real binary

/// `zonewise serve` as a child process on loopback ports chosen by the OS,
/// logging JSON; the addresses are read from its "listening" line.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Every log line the server has written so far.
    pub logs: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServerProcess {
    pub fn start(dir: &Path, extra: &[&str]) -> ServerProcess {
        // ZONEWISE_TEST_BIN runs the tests against another build (the
        // release binary, for the figures in BENCHMARKS.md). A relative
        // path is taken from the package root (the test's working
        // directory), since the server itself starts in `dir`.
        let bin = match std::env::var("ZONEWISE_TEST_BIN") {
            Ok(bin) => std::path::absolute(bin).expect("ZONEWISE_TEST_BIN is a usable path"),
            Err(_) => env!("CARGO_BIN_EXE_zonewise").into(),
        };
        let mut cmd = std::process::Command::new(bin);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
        if !extra.iter().any(|a| a.starts_with("--log-format")) {
            cmd.arg("--log-format=json");
        }
        cmd
            // Never pick up a cluster from the environment the tests run in.
            .args(["--cluster-cache", "off"])
            .args(extra)
            .current_dir(dir);
        ServerProcess::spawn(cmd)
    }

    /// Runs `cmd` (a `zonewise serve` that logs JSON to stderr) and waits
    /// for its "listening" line.
    pub fn spawn(mut cmd: std::process::Command) -> ServerProcess {
        use std::io::BufRead;
        let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let logs: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let (addr, metrics_addr) = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            logs.lock().unwrap().push(line.clone());
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "listening" {
                break (
                    v["addr"].as_str().unwrap().parse().unwrap(),
                    v["metrics_addr"].as_str().unwrap().parse().unwrap(),
                );
            }
            // The pretty format: `... INFO listening addr=... metrics_addr=...`.
            if line.contains(" listening ") {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .and_then(|a| a.parse().ok())
                };
                if let (Some(a), Some(m)) = (field("addr="), field("metrics_addr=")) {
                    break (a, m);
                }
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        ServerProcess {
            child,
            addr,
            metrics_addr,
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open file descriptors of the server.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident memory of the server, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory the server has had, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits up to `limit` for the exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        self.wait(Duration::from_secs(10))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
