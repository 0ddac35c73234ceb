//! Load harness: the release `zonewise serve` and a no-op baseline on the
//! same stack (same binary, TLS, HTTP and body reading, answering a fixed
//! `allowed: true`), each driven over TLS from loopback, one after the other.
//!
//!     cargo bench --bench load                      # the full run (about 2 minutes)
//!     cargo bench --bench load -- --quick           # shorter phases
//!     cargo bench --bench load -- soak --minutes 10 --rotate-every 60 --reload-every 60
//!
//! Per server it prints: throughput at saturation (HTTP/1.1 keep-alive),
//! p50/p99/p99.9 at a fixed rate (2,000 reviews/s over 25 keep-alive
//! connections, the API server's idle pool per host; latency measured from
//! the scheduled send time when the previous request ran late, so a slow
//! server cannot hide its queueing), full TLS handshakes per second, CPU
//! time per 1,000 reviews, and peak RSS. Traffic goes to 127.0.0.1 only, and
//! every phase ends on its own.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio_rustls::TlsConnector;

const BODY_10K: &[u8] = include_bytes!("fixtures/deployment-10k.json");

#[derive(Debug, Clone)]
struct Opts {
    warmup: Duration,
    saturation: Duration,
    fixed: Duration,
    handshake: Duration,
    rate: u64,
    connections: usize,
    saturation_connections: usize,
    soak: Option<Soak>,
}

#[derive(Debug, Clone)]
struct Soak {
    minutes: u64,
    rotate_every: Option<Duration>,
    reload_every: Option<Duration>,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let quick = args.iter().any(|a| a == "--quick");
    let secs = |full: u64, fast: u64| Duration::from_secs(if quick { fast } else { full });
    let soak = args.iter().any(|a| a == "soak").then(|| Soak {
        minutes: value("--minutes").unwrap_or(10),
        rotate_every: value("--rotate-every").map(Duration::from_secs),
        reload_every: value("--reload-every").map(Duration::from_secs),
    });
    Opts {
        warmup: secs(3, 1),
        saturation: secs(15, 4),
        fixed: Duration::from_secs(value("--fixed-secs").unwrap_or(if quick { 5 } else { 30 })),
        handshake: secs(8, 3),
        rate: value("--rate").unwrap_or(2000),
        connections: value("--connections").unwrap_or(25) as usize,
        saturation_connections: value("--saturation-connections").unwrap_or(25) as usize,
        soak,
    }
}

/// A `zonewise serve` child process with its certificates.
struct Server {
    child: Child,
    addr: SocketAddr,
    connector: TlsConnector,
    fresh_connector: TlsConnector,
    _dir: tempfile::TempDir,
}

fn write_pair(dir: &Path, g: &zonewise::server::certs::Generated) {
    std::fs::write(dir.join("tls.crt"), &g.serving_cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &g.serving_key_pem).unwrap();
}

impl Server {
    fn start(noop: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let g = zonewise::server::certs::generate(&["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &g.ca_cert_pem).unwrap();
        std::fs::write(dir.path().join("ca.key"), &g.ca_key_pem).unwrap();
        write_pair(dir.path(), &g);
        let extra: &[&str] = if noop { &["--noop-baseline"] } else { &[] };
        let (child, addr) = spawn_zonewise(dir.path(), extra);
        Server {
            child,
            addr,
            connector: connector(&g.ca_cert_pem, true),
            fresh_connector: connector(&g.ca_cert_pem, false),
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Starts the release `zonewise serve` on loopback with `dir`'s `tls.crt`
/// and `tls.key`, its log in `dir/server.log`; returns it and its address.
fn spawn_zonewise(dir: &Path, extra: &[&str]) -> (Child, SocketAddr) {
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_zonewise"))
        .args([
            "serve",
            "--listen=127.0.0.1:0",
            "--metrics-listen=127.0.0.1:0",
            "--log-format=json",
        ])
        .args(["--cluster-cache=off", "--drain-delay=0s"])
        .arg(format!("--tls-cert={}", dir.join("tls.crt").display()))
        .arg(format!("--tls-key={}", dir.join("tls.key").display()))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start zonewise (cargo bench builds it)");
    (child, wait_listening(&dir.join("server.log")))
}

fn wait_listening(log: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(f) = std::fs::File::open(log) {
            for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["message"] == "listening" {
                    return v["addr"].as_str().unwrap().parse().unwrap();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "server did not start; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// TLS client config; `resume: false` disables session resumption so every
/// connection costs a full handshake.
fn connector(ca_pem: &str, resume: bool) -> TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(zonewise::server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    TlsConnector::from(Arc::new(cfg))
}

/// Peak (VmHWM) and current (VmRSS) resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// User + system CPU seconds consumed by `pid` so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name, counted from the state
    // letter; utime and stime are the 12th and 13th of those, in clock
    // ticks (100 per second on Linux). Counted by position: the state is
    // not a number and `tpgid` is -1 without a terminal, so dropping what
    // does not parse would shift the fields (it once read stime + cutime).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr, connector: &TlsConnector) -> std::io::Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(sender: &mut Sender, body: &Bytes) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let req = http::Request::post("/mutate")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap();
    match sender.send_request(req).await {
        Ok(resp) => {
            let ok = resp.status() == 200;
            ok && resp.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// Counts shared by the workers of a closed-loop phase.
#[derive(Default)]
struct Totals {
    ok: AtomicU64,
    errors: AtomicU64,
}

/// Runs `workers` copies of `work` for `dur` (each loops until `stop`), and
/// returns completions per second and errors.
async fn closed_loop<F, Fut>(workers: usize, dur: Duration, work: F) -> (f64, u64)
where
    F: Fn(Arc<Totals>, Arc<AtomicBool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(work(totals.clone(), stop.clone())))
        .collect();
    let start = Instant::now();
    tokio::time::sleep(dur).await;
    let done = totals.ok.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (
        done as f64 / elapsed.as_secs_f64(),
        totals.errors.load(Ordering::Relaxed),
    )
}

/// Saturation: every connection sends as fast as answers come back.
async fn saturate(
    addr: SocketAddr,
    connector: &TlsConnector,
    conns: usize,
    dur: Duration,
    body: &Bytes,
) -> (f64, u64) {
    closed_loop(conns, dur, |totals, stop| {
        let (body, connector) = (body.clone(), connector.clone());
        async move {
            let Ok(mut s) = connect(addr, &connector).await else {
                totals.errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            while !stop.load(Ordering::Relaxed) {
                if send(&mut s, &body).await {
                    totals.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    })
    .await
}

/// Open loop at `rate` over `conns` connections, for `dur`. Returns the
/// latency histogram (µs) and the error count.
async fn fixed_rate(
    addr: SocketAddr,
    connector: &TlsConnector,
    conns: usize,
    rate: u64,
    dur: Duration,
    body: &Bytes,
) -> (Histogram<u64>, u64) {
    let interval = Duration::from_secs_f64(conns as f64 / rate as f64);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    let end = t0 + dur;
    let mut tasks = Vec::new();
    for i in 0..conns {
        let (body, connector) = (body.clone(), connector.clone());
        let phase = interval.mul_f64(i as f64 / conns as f64);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0u64;
            let Ok(mut s) = connect(addr, &connector).await else {
                return (hist, 1);
            };
            let mut next = t0 + phase;
            let mut prev_done = tokio::time::Instant::now();
            while next < end {
                // Late because the previous answer was late: count from the
                // scheduled time (no coordinated omission). Late only because
                // of timer granularity: count from the actual send.
                let start = if prev_done > next {
                    next.into_std()
                } else {
                    tokio::time::sleep_until(next).await;
                    Instant::now()
                };
                if send(&mut s, &body).await {
                    let _ = hist.record(start.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                    match connect(addr, &connector).await {
                        Ok(n) => s = n,
                        Err(_) => return (hist, errors),
                    }
                }
                prev_done = tokio::time::Instant::now();
                next += interval;
            }
            (hist, errors)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.unwrap();
        all.add(h).unwrap();
        errors += e;
    }
    (all, errors)
}

/// Full TLS handshakes per second: `conns` clients each connect, handshake
/// without resumption, and disconnect, in a loop.
async fn handshakes(
    addr: SocketAddr,
    connector: &TlsConnector,
    conns: usize,
    dur: Duration,
) -> (f64, u64) {
    closed_loop(conns, dur, |totals, stop| {
        let connector = connector.clone();
        async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                match connector.connect(name, tcp).await {
                    Ok(_) => totals.ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => totals.errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    })
    .await
}

struct Report {
    name: &'static str,
    saturation_rps: f64,
    saturation_errors: u64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    fixed_count: u64,
    fixed_errors: u64,
    handshakes: f64,
    cpu_ms_per_1000: f64,
    rss_fixed_kib: u64,
    rss_peak_kib: u64,
    /// CPU per review at saturation: the server's, and the load
    /// generator's (this process).
    server_us: f64,
    generator_us: f64,
}

async fn measure(name: &'static str, noop: bool, o: &Opts, body: &Bytes) -> Report {
    let server = Server::start(noop);
    let pid = server.pid();
    let c = &server.connector;
    let _ = saturate(server.addr, c, o.connections, o.warmup, body).await;
    let cpu0 = cpu_secs(pid);
    let (hist, fixed_errors) =
        fixed_rate(server.addr, c, o.connections, o.rate, o.fixed, body).await;
    let cpu_fixed = cpu_secs(pid) - cpu0;
    let (rss_fixed_kib, _) = rss_kib(pid);
    let (server0, generator0) = (cpu_secs(pid), cpu_secs(std::process::id()));
    let (saturation_rps, saturation_errors) =
        saturate(server.addr, c, o.saturation_connections, o.saturation, body).await;
    let saturated = saturation_rps * o.saturation.as_secs_f64();
    let server_us = (cpu_secs(pid) - server0) * 1e6 / saturated.max(1.0);
    let generator_us = (cpu_secs(std::process::id()) - generator0) * 1e6 / saturated.max(1.0);
    let (handshakes, _) = handshakes(server.addr, &server.fresh_connector, 8, o.handshake).await;
    let (rss_peak_kib, _) = rss_kib(pid);
    server.stop();
    Report {
        name,
        saturation_rps,
        saturation_errors,
        p50: hist.value_at_quantile(0.50),
        p99: hist.value_at_quantile(0.99),
        p999: hist.value_at_quantile(0.999),
        max: hist.max(),
        fixed_count: hist.len(),
        fixed_errors,
        handshakes,
        cpu_ms_per_1000: cpu_fixed * 1000.0 / hist.len().max(1) as f64 * 1000.0,
        rss_fixed_kib,
        rss_peak_kib,
        server_us,
        generator_us,
    }
}

fn print(reports: &[Report], o: &Opts) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "\nbody: deployment-10k.json ({} bytes), HTTP/1.1 keep-alive over TLS 1.3, {cores} cores shared with the load generator",
        BODY_10K.len()
    );
    println!(
        "{:<10} {:>14} {:>28} {:>10} {:>12} {:>14} {:>12}",
        "server",
        "saturation",
        format!(
            "{} rps / {} conns: p50 p99 p99.9 max",
            o.rate, o.connections
        ),
        "errors",
        "handshakes",
        "CPU/1000 rev",
        "peak RSS"
    );
    for r in reports {
        println!(
            "{:<10} {:>10.0} r/s {:>9} {:>5} {:>6} {:>7} µs {:>10} {:>10.0}/s {:>11.0} ms {:>8.1} MiB",
            r.name,
            r.saturation_rps,
            r.p50,
            r.p99,
            r.p999,
            r.max,
            r.fixed_errors + r.saturation_errors,
            r.handshakes,
            r.cpu_ms_per_1000,
            r.rss_peak_kib as f64 / 1024.0,
        );
    }
    println!("\nat saturation, CPU per review (µs) and reviews/s per core of server CPU:");
    for r in reports {
        println!(
            "{:<10} server {:>6.1} µs   load generator {:>6.1} µs   {:>8.0} reviews/s per core",
            r.name,
            r.server_us,
            r.generator_us,
            1e6 / r.server_us.max(0.001)
        );
    }
    if let [base, zw] = reports {
        println!(
            "\nzonewise at {} r/s: p99 {} µs (target ≤ 1000), p99.9 {} µs (target ≤ 5000), {} errors in {} reviews (target 0), RSS {:.1} MiB at that rate (target ≤ 32)",
            o.rate,
            zw.p99,
            zw.p999,
            zw.fixed_errors,
            zw.fixed_count,
            zw.rss_fixed_kib as f64 / 1024.0
        );
        // Last, so the one figure this harness exists for is the last line.
        println!(
            "zonewise / baseline throughput: {:.2}× (target ≥ 0.6×, then 0.8×; ≥ 10,000 r/s if the baseline allows)",
            zw.saturation_rps / base.saturation_rps
        );
    }
}

/// Soak: zonewise alone at a steady rate for `minutes`, rotating the
/// serving certificate (kubelet-style `..data` swap) and reloading the
/// config on their own schedules; one line per 10 s.
async fn soak(o: &Opts, s: &Soak, body: &Bytes) {
    let names = ["localhost".to_string()];
    // Certificate and config laid out as volume files (symlinks through
    // `..data`), so every swap is atomic, as in a pod.
    let dir = tempfile::tempdir().unwrap();
    let ca_pem;
    {
        let g = zonewise::server::certs::generate(&names).unwrap();
        ca_pem = g.ca_cert_pem.clone();
        std::fs::write(dir.path().join("ca.crt"), &g.ca_cert_pem).unwrap();
        std::fs::write(dir.path().join("ca.key"), &g.ca_key_pem).unwrap();
        volume_swap(
            dir.path(),
            &[
                ("tls.crt", &g.serving_cert_pem),
                ("tls.key", &g.serving_key_pem),
            ],
            0,
        );
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        volume_swap(
            &dir.path().join("config"),
            &[("config.yaml", "service: {routing: PreferClose}\n")],
            0,
        );
        for (d, f) in [("", "tls.crt"), ("", "tls.key"), ("config", "config.yaml")] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.path().join(d).join(f)).unwrap();
        }
    }
    let config = format!(
        "--config={}",
        dir.path().join("config/config.yaml").display()
    );
    let (mut child, addr) = spawn_zonewise(dir.path(), &["--reload-interval=1s", &config]);
    let pid = child.id();
    let connector = connector(&ca_pem, true);
    println!(
        "soak: {} min at {} r/s over {} connections; rotate every {:?}, reload every {:?}",
        s.minutes, o.rate, o.connections, s.rotate_every, s.reload_every
    );
    println!(
        "{:>6} {:>10} {:>7} {:>8} {:>8} {:>9} {:>8}",
        "t(s)", "reviews", "errors", "p99 µs", "max µs", "RSS MiB", "rot/rel"
    );
    let start = Instant::now();
    let total = Duration::from_secs(s.minutes * 60);
    let (mut reviews, mut errors, mut rotations, mut reloads) = (0u64, 0u64, 0u32, 0u32);
    let mut last_rotate = Instant::now();
    let mut last_reload = Instant::now();
    let mut rss_series = Vec::new();
    while start.elapsed() < total {
        let (hist, e) = fixed_rate(
            addr,
            &connector,
            o.connections,
            o.rate,
            Duration::from_secs(10),
            body,
        )
        .await;
        reviews += hist.len();
        errors += e;
        if s.rotate_every.is_some_and(|d| last_rotate.elapsed() >= d) {
            let ca_cert = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
            let ca_key = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
            let g = zonewise::server::certs::issue(&names, &ca_cert, &ca_key).unwrap();
            rotations += 1;
            volume_swap(
                dir.path(),
                &[
                    ("tls.crt", &g.serving_cert_pem),
                    ("tls.key", &g.serving_key_pem),
                ],
                rotations,
            );
            last_rotate = Instant::now();
        }
        if s.reload_every.is_some_and(|d| last_reload.elapsed() >= d) {
            reloads += 1;
            let routing = if reloads % 2 == 0 {
                "PreferClose"
            } else {
                "PreferSameZone"
            };
            volume_swap(
                &dir.path().join("config"),
                &[("config.yaml", &format!("service: {{routing: {routing}}}\n"))],
                reloads,
            );
            last_reload = Instant::now();
        }
        let (_, rss) = rss_kib(pid);
        rss_series.push(rss);
        println!(
            "{:>6} {:>10} {:>7} {:>8} {:>8} {:>9.1} {:>4}/{:<3}",
            start.elapsed().as_secs(),
            reviews,
            errors,
            hist.value_at_quantile(0.99),
            hist.max(),
            rss as f64 / 1024.0,
            rotations,
            reloads
        );
    }
    // Let the server poll the files once more, so the last swap is counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (hwm, _) = rss_kib(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let metrics_note = std::fs::read_to_string(dir.path().join("server.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains("reloaded") || l.contains("rejected") || l.contains("invalid config")
        })
        .count();
    let first = rss_series.iter().take(6).max().copied().unwrap_or(0);
    let last = rss_series.iter().rev().take(6).max().copied().unwrap_or(0);
    println!(
        "\nsoak done: {reviews} reviews, {errors} errors, {rotations} certificate rotations and {reloads} config reloads \
         ({metrics_note} reload log lines), peak RSS {:.1} MiB, RSS first minute {:.1} MiB → last minute {:.1} MiB",
        hwm as f64 / 1024.0,
        first as f64 / 1024.0,
        last as f64 / 1024.0
    );
}

/// Writes `files` into a new `..<n>` directory under `root` and points
/// `root/..data` at it atomically, the way the kubelet updates volumes.
fn volume_swap(root: &Path, files: &[(&str, &str)], n: u32) {
    let dir = root.join(format!("..v{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    let tmp = root.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(PathBuf::from(format!("..v{n}")), &tmp).unwrap();
    std::fs::rename(&tmp, root.join("..data")).unwrap();
}

fn main() {
    let o = opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = Bytes::from_static(BODY_10K);
    rt.block_on(async {
        if let Some(s) = &o.soak {
            soak(&o, s, &body).await;
            return;
        }
        let base = measure("baseline", true, &o, &body).await;
        let zw = measure("zonewise", false, &o, &body).await;
        print(&[base, zw], &o);
    });
}
