//! The real server over real TLS on a loopback socket, called the way the
//! API server calls it: every fixture over HTTP/1.1 keep-alive, the API
//! server's own request line and headers, every row of the README's
//! bad-input table, stalled clients, probes, metrics, and the one-command
//! development start of the real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rt_test_limits(opts: &mut zonewise::server::ServeOptions) {
    opts.limits.max_body_bytes = 64 * 1024;
    opts.limits.request_timeout = Duration::from_millis(500);
    opts.conn.header_read_timeout = Duration::from_millis(300);
    opts.conn.idle_timeout = Duration::from_secs(30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_over_http1_keepalive() {
    // One server per policy file the fixtures use; the default one last, for
    // the metrics below.
    let mut groups = cases_by_config();
    groups.sort_by_key(|(config, _)| config.is_empty());
    for (config, cases) in groups {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, &config).unwrap();
        let server = TestServer::start_with(|o| o.config = Some(path)).await;
        // One connection: every review reuses it (keep-alive).
        let mut client = server.h1().await;
        for case in &cases {
            let body = fixture(&case.name);
            let answer = client.review(&body).await;
            if let Some(again) = check_case(case, &body, &answer) {
                check_converged(case, &client.review(&again).await);
            }
        }
        eprintln!("{} fixtures ok under {config:?}", cases.len());
        if !config.is_empty() {
            assert_eq!(server.stop().await, zonewise::server::Exit::Clean);
            continue;
        }
        check_metrics(&server).await;
        assert_eq!(server.stop().await, zonewise::server::Exit::Clean);
    }
}

async fn check_metrics(server: &TestServer) {
    let metrics = server.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"zonewise_admission_requests_total{endpoint="mutate",kind="Service",operation="CREATE",decision="denied"}"#
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            r#"zonewise_rules_applied_total{rule="zone-spread"}"#
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_endpoint_runs_local_policy_only() {
    let server = TestServer::start().await;
    let mut c = server.h1().await;
    for (name, allowed) in [
        ("svc-local", false),
        ("svc-clusterip", true),
        ("deploy-plain", true),
    ] {
        let reply = c.post("/validate", fixture(name)).await;
        assert_eq!(reply.status, StatusCode::OK);
        let a = decode_answer(&reply.body);
        assert_eq!(a.allowed, allowed, "{name}");
        assert!(a.patch.is_none(), "{name}: /validate never patches");
    }
}

/// The request line and headers as the API server's webhook client writes
/// them: the configured path with `?timeout=` (client-go's REST client adds
/// the webhook's deadline, rounded up to whole seconds, as a query
/// parameter), the Service's DNS name as Host, and Go's transport asking
/// for gzip. The query must change neither the route nor the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_servers_own_request_form_is_answered_as_usual() {
    let server = TestServer::start().await;
    let mut c = server.h1().await;
    let apiserver = |path: &str, body: Vec<u8>| {
        http::Request::builder()
            .method("POST")
            .uri(path)
            .header("host", "zonewise.zonewise-system.svc:443")
            .header("user-agent", "kube-apiserver-admission")
            .header("content-length", body.len())
            .header("accept", "application/json, */*")
            .header("content-type", "application/json")
            .header("accept-encoding", "gzip")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    // (path, fixture, allowed, patched)
    for (path, name, allowed, patched) in [
        ("/mutate", "deploy-plain", true, true),
        ("/mutate", "svc-local", false, false),
        ("/validate", "svc-local", false, false),
        ("/validate", "svc-clusterip", true, false),
    ] {
        let plain = c.post(path, fixture(name)).await;
        assert_eq!(plain.status, StatusCode::OK, "{path} {name}");
        for query in ["?timeout=3s", "?timeout=30s", "?timeout=1m0s&other=x"] {
            let what = format!("{path}{query} {name}");
            let r = c
                .send(apiserver(&format!("{path}{query}"), fixture(name)))
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::OK, "{what}");
            assert_eq!(r.headers["content-type"], "application/json", "{what}");
            assert_eq!(r.body, plain.body, "{what}: the query changed the answer");
            let a = decode_answer(&r.body);
            assert_eq!(a.allowed, allowed, "{what}");
            assert_eq!(a.patch.is_some(), patched, "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_both_serve() {
    let server = TestServer::start().await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(server.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg =
            rustls::ClientConfig::builder_with_provider(zonewise::server::tls::provider())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = tls_connect(
            server.addr,
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)),
        )
        .await;
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        let mut c = Client::h1(tls).await;
        assert!(c.review(&fixture("svc-clusterip")).await.patch.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_table() {
    let server = TestServer::start_with(rt_test_limits).await;
    let mut c = server.h1().await;

    // not POST → 405 with Allow, JSON body
    let r = c.request("GET", "/mutate", None, Default::default()).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "POST");
    assert_eq!(r.json()["reason"], "method_not_allowed");
    let r = c
        .request("PUT", "/validate", Some("application/json"), "{}".into())
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // Content-Type not JSON → 415 (and missing Content-Type too)
    let r = c
        .request(
            "POST",
            "/mutate",
            Some("text/plain"),
            fixture("svc-clusterip").into(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.json()["reason"], "unsupported_media_type");
    let r = c
        .request("POST", "/mutate", None, fixture("svc-clusterip").into())
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // ...while parameters on a JSON type are fine.
    let r = c
        .request(
            "POST",
            "/mutate",
            Some("application/json; charset=utf-8"),
            fixture("svc-clusterip").into(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // 400s name the problem. Nesting past the limit where the object is
    // read (its kind known); a part no rule reads is only scanned, without
    // recursing, whatever its depth.
    let deep = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"apps","version":"v1","kind":"Deployment"}},"object":{}{}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let cases: [(&str, String, &str, &str); 6] = [
        ("malformed", "{\"apiVersion\": ".into(), "malformed_json", "malformed JSON"),
        ("nesting", deep, "malformed_json", "recursion limit"),
        ("not a review", r#"{"apiVersion":"v1","kind":"Pod"}"#.into(), "not_admission_review", "AdmissionReview"),
        (
            "wrong shape",
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":"x"}"#.into(),
            "not_admission_review",
            "invalid type",
        ),
        ("no request", r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.into(), "no_request", "no request"),
        (
            "no uid",
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}"#.into(),
            "no_uid",
            "no uid",
        ),
    ];
    for (what, body, reason, text) in cases {
        let r = c.post("/mutate", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(r.headers["content-type"], "application/json", "{what}");
        let j = r.json();
        assert_eq!(j["reason"], reason, "{what}: {j}");
        assert!(j["error"].as_str().unwrap().contains(text), "{what}: {j}");
    }

    // unknown path
    let r = c.request("GET", "/nope", None, Default::default()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The same keep-alive connection still serves good reviews after all that.
    assert!(c.review(&fixture("deploy-plain")).await.patch.is_some());
    let metrics = server.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"zonewise_bad_requests_total{reason="malformed_json"}"#
        ) >= 2.0,
        "{metrics}"
    );
}

/// Raw HTTP/1.1 over TLS, for requests a well-behaved client cannot send.
async fn raw(server: &TestServer) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    server.tls(&[b"http/1.1"]).await
}

async fn read_all_with_timeout(
    s: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> (String, Duration) {
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
    (String::from_utf8_lossy(&buf).into_owned(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_refused_without_reading_it() {
    let server = TestServer::start_with(rt_test_limits).await;

    // Declared length over the limit: 413 after sending only a few bytes.
    let mut s = raw(&server).await;
    s.write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let (text, took) = read_all_with_timeout(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("body_too_large"), "{text}");
    assert!(
        took < Duration::from_secs(2),
        "answered at once, not after a timeout: {took:?}"
    );

    // Chunked, no declared length: refused once the limit is crossed.
    let mut s = raw(&server).await;
    s.write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
    for _ in 0..5 {
        // 80 KiB in all, over the 64 KiB limit; the server may stop reading.
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let (text, _) = read_all_with_timeout(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_off_and_others_unaffected() {
    let server = TestServer::start_with(rt_test_limits).await;
    let mut good = server.h1().await;

    // Headers that never finish: closed after header_read_timeout (300 ms).
    let mut slow_headers = raw(&server).await;
    slow_headers
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-")
        .await
        .unwrap();
    // A body that never finishes: 408 after request_timeout (500 ms).
    let mut slow_body = raw(&server).await;
    slow_body
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"apiVersion\":")
        .await
        .unwrap();
    // A TLS client that connects and never speaks.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();

    // Meanwhile a good client is served promptly, repeatedly.
    for _ in 0..20 {
        let start = Instant::now();
        assert!(good.review(&fixture("svc-clusterip")).await.patch.is_some());
        assert!(start.elapsed() < Duration::from_millis(500));
    }

    let (text, took) = read_all_with_timeout(&mut slow_headers, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(3),
        "slow headers closed by the header timeout: {took:?}"
    );
    assert!(!text.contains("200 OK"), "{text}");

    let (text, took) = read_all_with_timeout(&mut slow_body, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // The silent TCP client is dropped by the TLS handshake timeout (10 s by
    // default; it must not take the server down meanwhile).
    silent.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(_)) | Ok(Err(_))),
        "plain HTTP on the TLS port is refused promptly"
    );
    assert!(good.review(&fixture("deploy-plain")).await.patch.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_outlives_the_header_timeout() {
    let server = TestServer::start_with(rt_test_limits).await;
    let mut c = server.h1().await;
    assert!(c.review(&fixture("svc-clusterip")).await.patch.is_some());
    // Idle for longer than header_read_timeout (300 ms): the API server's
    // pooled connection must still be usable.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(c.review(&fixture("svc-clusterip")).await.patch.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics() {
    let server = TestServer::start().await;
    assert_eq!(
        plain_get(server.metrics_addr, "/healthz").await,
        (200, "ok\n".into())
    );
    assert_eq!(
        plain_get(server.metrics_addr, "/readyz").await,
        (200, "ok\n".into())
    );
    let mut c = server.h1().await;
    let r = c.request("GET", "/readyz", None, Default::default()).await;
    assert_eq!(r.status, StatusCode::OK, "readiness is on the TLS port too");
    c.review(&fixture("deploy-calls")).await;
    let text = server.metrics().await;
    assert!(
        text.contains("# TYPE zonewise_admission_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"zonewise_admission_duration_seconds_bucket{le="0.0001",endpoint="mutate"}"#
        )
    );
    assert!(
        metric(
            &text,
            r#"zonewise_rules_applied_total{rule="call-affinity"}"#
        ) >= 1.0
    );
    assert!(metric(&text, "zonewise_warnings_total") >= 2.0);
    assert!(
        metric(&text, "zonewise_tls_cert_expiry_timestamp_seconds") > 1.7e9,
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
}

/// The README's first command, in a fresh directory: a development CA and
/// certificate appear under certs/dev, the server answers with them, and a
/// restart reuses them. Ports are 0 only so parallel test runs never clash.
#[test]
fn embedded_default_start_in_a_fresh_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = ServerProcess::start(dir.path(), &["--drain-delay", "0s"]);
    let ca = std::fs::read_to_string(dir.path().join("certs/dev/ca.crt")).unwrap();
    let cert = std::fs::read(dir.path().join("certs/dev/tls.crt")).unwrap();
    assert!(dir.path().join("certs/dev/tls.key").exists());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = tls_connect(first.addr, client_connector(&ca, &[b"http/1.1"], None)).await;
        let mut c = Client::h1(tls).await;
        let a = c.review(&fixture("svc-clusterip")).await;
        assert!(
            a.patch.is_some(),
            "the built-in policy applies zone-routing"
        );
    });
    assert_eq!(first.stop(), Some(0), "SIGTERM: drain and exit 0");

    let second = ServerProcess::start(dir.path(), &["--drain-delay", "0s"]);
    assert_eq!(
        std::fs::read(dir.path().join("certs/dev/tls.crt")).unwrap(),
        cert,
        "reused"
    );
    assert_eq!(second.stop(), Some(0));
}

/// The `ZONEWISE_*` environment twins of the `serve` flags, as a Deployment
/// sets them, and `POD_NAMESPACE` (downward API): the server's own
/// namespace is never mutated.
#[test]
fn serve_flags_from_the_environment_and_own_namespace_excluded() {
    let dir = tempfile::tempdir().unwrap();
    let g = zonewise::server::certs::generate(&["localhost".into()]).unwrap();
    let w = zonewise::server::certs::write(dir.path(), &g).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "service: {routing: annotation}\n").unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_zonewise"));
    cmd.arg("serve")
        .current_dir(dir.path())
        .env("ZONEWISE_LISTEN", "127.0.0.1:0")
        .env("ZONEWISE_METRICS_LISTEN", "127.0.0.1:0")
        .env("ZONEWISE_LOG_FORMAT", "json")
        .env("ZONEWISE_TLS_CERT", &w.cert)
        .env("ZONEWISE_TLS_KEY", &w.key)
        .env("ZONEWISE_CONFIG", &config)
        .env("ZONEWISE_CLUSTER_CACHE", "off")
        .env("ZONEWISE_DRAIN_DELAY", "0s")
        .env("POD_NAMESPACE", "shop");
    let server = ServerProcess::spawn(cmd);
    assert!(
        !dir.path().join("certs/dev").exists(),
        "the env certificate is used"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = tls_connect(
            server.addr,
            client_connector(&g.ca_cert_pem, &[b"http/1.1"], None),
        )
        .await;
        let mut c = Client::h1(tls).await;
        // The fixture lives in `shop`, the server's own namespace: untouched.
        assert!(c.review(&fixture("svc-clusterip")).await.patch.is_none());
        // Elsewhere, the config from ZONEWISE_CONFIG applies.
        let mut review: serde_json::Value =
            serde_json::from_slice(&fixture("svc-clusterip")).unwrap();
        review["request"]["namespace"] = "billing".into();
        review["request"]["object"]["metadata"]["namespace"] = "billing".into();
        let body = serde_json::to_vec(&review).unwrap();
        let a = c.review(&body).await;
        let mut obj = review["request"]["object"].clone();
        json_patch::patch(&mut obj, &a.patch.unwrap()).unwrap();
        assert_eq!(
            obj["metadata"]["annotations"]["service.kubernetes.io/topology-mode"],
            "Auto"
        );
    });
    assert_eq!(server.stop(), Some(0));
}

/// While draining, every answer says `Connection: close`, so the API
/// server takes its next request to a replica that stays, and new
/// connections are still served until the delay ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_connections_after_their_answer() {
    let server = TestServer::start_with(|o| o.drain_delay = Duration::from_secs(3)).await;
    let mut kept = server.h1().await;
    let r = kept.post("/mutate", fixture("svc-clusterip")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers.get("connection").is_none(),
        "kept alive while serving"
    );
    server.signal();
    let mut fresh = server.h1().await;
    let r = fresh.post("/mutate", fixture("svc-clusterip")).await;
    assert_eq!(r.status, StatusCode::OK, "still served during the drain");
    assert_eq!(r.headers["connection"], "close");
}

/// The admission port speaks HTTP/1.1 alone, as the API server does: a
/// client that offers only h2 gets a TLS alert (no protocol in common),
/// and curl with its default options (which offers h2 first) gets its
/// answer over HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_http1_is_offered_on_the_admission_port() {
    let server = TestServer::start().await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let refused = server.connector(&[b"h2"]).connect(name, tcp).await;
    let Err(err) = refused else {
        panic!("an h2-only client is not served");
    };
    assert!(
        err.to_string().contains("NoApplicationProtocol")
            || err.to_string().contains("no_application_protocol"),
        "{err}"
    );
    // A client that offers both gets HTTP/1.1.
    let tls = server.tls(&[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    let body = dir.path().join("review.json");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    std::fs::write(&body, fixture("svc-clusterip")).unwrap();
    let port = server.addr.port();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .arg("--resolve")
            .arg(format!("localhost:{port}:127.0.0.1"))
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .args(["-w", "\n%{http_version} %{http_code}"])
            .arg(format!("https://localhost:{port}/mutate"))
            .output()
            .expect("curl (see .ci/run)")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.ends_with("\n1.1 200"), "{text}");
    assert!(text.contains("\"kind\":\"AdmissionReview\""), "{text}");
}

/// The first signal drains, the second aborts: with a drain delay far
/// longer than the test, a second signal ends the server at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_aborts_the_drain() {
    let server = TestServer::start_with(|o| {
        o.drain_delay = Duration::from_secs(60);
        o.shutdown_grace = Duration::from_secs(120);
    })
    .await;
    let mut c = server.h1().await;
    assert!(c.review(&fixture("svc-clusterip")).await.patch.is_some());
    server.signal();
    // Draining: still served, connection closed after the answer.
    let mut fresh = server.h1().await;
    let r = fresh.post("/mutate", fixture("svc-clusterip")).await;
    assert_eq!(r.headers["connection"], "close");
    let started = Instant::now();
    // `stop` sends the second signal.
    assert_eq!(server.stop().await, zonewise::server::Exit::Aborted);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
