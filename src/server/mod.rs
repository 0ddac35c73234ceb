//! `zonewise serve`: wiring of config, TLS, listeners, reloads, metrics and
//! the phased shutdown around the admission router.
//!
//! Everything that can be wrong with the files (config, certificate, key,
//! client CA) is checked in [`Server::load`], before a socket is bound, so a
//! bad rollout fails at start instead of serving errors.

pub mod budget;
pub mod certs;
pub mod conn;
pub mod http;
pub mod live;
pub mod reload;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::{self, ClusterCache, Metered, Scope};
use crate::core::config::Config;
use crate::core::lookups::{Lookups, NoCluster};
use crate::core::policy::Environment;
use crate::core::versions::KubeVersion;
use crate::telemetry::metrics::{Metrics, ResultLabels};
pub use conn::{ConnLimits, Phase};
use live::LivePolicy;
use tls::CertStore;

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Self-signed CA and `localhost` certificate generated into (or reused
    /// from) this directory: the one-command development default.
    Dev {
        dir: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
    /// Time allowed to receive a request body.
    pub request_timeout: Duration,
    /// Request body bytes held at once, all connections together: beyond
    /// it, requests get 503 with `Retry-After`. Bodies over 256 KiB may hold
    /// half of it at most (see [`budget`]).
    pub max_inflight_bytes: usize,
    /// Large reviews run at most this many at once, off the async workers.
    pub large_reviews: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_body_bytes: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            max_inflight_bytes: 64 * 1024 * 1024,
            large_reviews: 2,
        }
    }
}

/// Defaults sized from the memory the process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub max_connections: usize,
    pub max_inflight_bytes: usize,
}

impl Sizing {
    /// Measured: an idle TLS connection costs about 47 KiB and the
    /// process about 30 MiB besides. A quarter of the limit goes to request
    /// bodies in flight, a fixed reserve to the process, the rest to
    /// connections at 64 KiB each. Without a limit, as for 1 GiB.
    pub fn for_memory(limit: Option<u64>) -> Sizing {
        const MIB: u64 = 1024 * 1024;
        let limit = limit.unwrap_or(1024 * MIB).max(64 * MIB);
        let inflight = (limit / 4).clamp(16 * MIB, 256 * MIB);
        let for_conns = limit.saturating_sub(inflight + 40 * MIB);
        let conns = (for_conns / (64 * 1024)).clamp(256, 10_000);
        Sizing {
            max_connections: usize::try_from(conns).unwrap_or(10_000),
            max_inflight_bytes: usize::try_from(inflight).unwrap_or(usize::MAX),
        }
    }

    /// This process's memory limit: the cgroup's (v2, then v1), if any. Two
    /// file reads, where a cgroup crate would bring a whole hierarchy walker.
    pub fn memory_limit() -> Option<u64> {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let v2 = read("/sys/fs/cgroup/memory.max");
        let v1 = read("/sys/fs/cgroup/memory/memory.limit_in_bytes");
        v2.or(v1)
            .and_then(|s| s.trim().parse::<u64>().ok())
            // cgroup v1 writes "no limit" as a number near i64::MAX.
            .filter(|&n| n < (1 << 50))
    }
}

/// The optional cluster cache.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Use cluster access when there is some (`--kubeconfig` or in-cluster).
    pub enabled: bool,
    pub kubeconfig: Option<PathBuf>,
    pub scope: Scope,
    /// Readiness waits at most this long for the initial lists; after that
    /// zonewise serves in degraded mode (lookups fall back to config).
    pub sync_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            enabled: true,
            kubeconfig: None,
            scope: Scope::All,
            sync_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub tls: TlsSource,
    pub client_ca: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub limits: RequestLimits,
    pub conn: ConnLimits,
    /// From the first SIGTERM to exit, at most.
    pub shutdown_grace: Duration,
    /// How long to keep serving after SIGTERM (with readiness false and
    /// `Connection: close`) so endpoints update before the listener closes.
    pub drain_delay: Duration,
    /// How often certificate and config files are checked for changes.
    pub reload_interval: Duration,
    /// The namespace zonewise runs in (never mutated).
    pub own_namespace: Option<String>,
    /// `--kube-version`: the API server version when there is no cluster
    /// to ask (the cluster's own version wins when there is).
    pub kube_version: Option<KubeVersion>,
    pub cluster: ClusterOptions,
    /// Benchmark baseline only: read each /mutate body exactly as usual,
    /// then answer a fixed `allowed: true` without reviewing it.
    pub noop_baseline: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            tls: TlsSource::Dev {
                dir: PathBuf::from("certs/dev"),
            },
            client_ca: None,
            config: None,
            limits: RequestLimits::default(),
            conn: ConnLimits::default(),
            shutdown_grace: Duration::from_secs(25),
            drain_delay: Duration::from_secs(5),
            reload_interval: Duration::from_secs(5),
            own_namespace: None,
            kube_version: None,
            cluster: ClusterOptions::default(),
            noop_baseline: false,
        }
    }
}

/// Readiness inputs.
#[derive(Debug)]
pub struct Health {
    pub draining: AtomicBool,
    pub cache_synced: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            draining: AtomicBool::new(false),
            cache_synced: AtomicBool::new(true),
        }
    }
}

impl Health {
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining")
        } else if !self.cache_synced.load(Ordering::Relaxed) {
            Some("cluster cache not synced")
        } else {
            None
        }
    }
}

/// What the HTTP handlers share.
pub struct AppState {
    pub policy: Arc<LivePolicy>,
    pub lookups: Arc<dyn Lookups>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub limits: RequestLimits,
    /// The in-flight request byte budget, one permit a byte.
    pub budget: budget::Budget,
    pub review_slots: Arc<tokio::sync::Semaphore>,
    pub noop_baseline: bool,
}

impl AppState {
    pub fn new(
        policy: Arc<LivePolicy>,
        lookups: Arc<dyn Lookups>,
        limits: RequestLimits,
        metrics: Arc<Metrics>,
        noop_baseline: bool,
    ) -> Arc<AppState> {
        Arc::new(AppState {
            policy,
            lookups,
            metrics,
            health: Arc::new(Health::default()),
            budget: budget::Budget::new(limits.max_inflight_bytes),
            review_slots: Arc::new(tokio::sync::Semaphore::new(limits.large_reviews.max(1))),
            limits,
            noop_baseline,
        })
    }
}

/// Sends shutdown signals to a running server: the first drains, the
/// second aborts (as kubert does).
#[derive(Clone, Debug)]
pub struct ShutdownTrigger {
    drain: CancellationToken,
    abort: CancellationToken,
    /// Set by the first signal, so the second knows it is the second.
    signalled: Arc<AtomicBool>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        if self.signalled.swap(true, Ordering::SeqCst) {
            self.abort.cancel();
        } else {
            self.drain.cancel();
        }
    }
}

/// What the server waits on: the drain and abort tokens.
pub struct ShutdownSignal {
    drain: CancellationToken,
    abort: CancellationToken,
}

pub fn shutdown_channel() -> (ShutdownTrigger, ShutdownSignal) {
    let (drain, abort) = (CancellationToken::new(), CancellationToken::new());
    (
        ShutdownTrigger {
            drain: drain.clone(),
            abort: abort.clone(),
            signalled: Arc::new(AtomicBool::new(false)),
        },
        ShutdownSignal { drain, abort },
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Drained and stopped within the grace period (or cut at its end).
    Clean,
    /// A second signal asked to stop at once.
    Aborted,
}

pub struct Listeners {
    pub tls: TcpListener,
    pub metrics: TcpListener,
}

impl Listeners {
    pub async fn bind(tls: SocketAddr, metrics: SocketAddr) -> anyhow::Result<Listeners> {
        Ok(Listeners {
            tls: TcpListener::bind(tls)
                .await
                .with_context(|| format!("cannot listen on {tls}"))?,
            metrics: TcpListener::bind(metrics)
                .await
                .with_context(|| format!("cannot listen on {metrics} (metrics)"))?,
        })
    }
}

/// A server whose files have been loaded and checked, ready to run.
pub struct Server {
    opts: ServeOptions,
    state: Arc<AppState>,
    certs: Arc<CertStore>,
    tls: Arc<rustls::ServerConfig>,
    cert_paths: (PathBuf, PathBuf),
    cert_bytes: Vec<Vec<u8>>,
    config_bytes: Option<Vec<u8>>,
    reload: Arc<Notify>,
    cluster: Option<(kube::Client, Arc<ClusterCache>)>,
}

impl Server {
    pub async fn load(opts: ServeOptions) -> anyhow::Result<Server> {
        let metrics = Arc::new(Metrics::default());
        let client = if opts.cluster.enabled {
            cluster::connect(opts.cluster.kubeconfig.as_deref()).await?
        } else {
            None
        };
        // routing: auto needs the version; a slow API server must not hold
        // start-up, so it is bounded and retried in the background.
        let server_version = match &client {
            Some(c) => {
                match tokio::time::timeout(Duration::from_secs(5), cluster::server_version(c)).await
                {
                    Ok(Ok(v)) => Some(v),
                    Ok(Err(e)) => {
                        warn!(error = %e, "cannot read the API server version; will retry");
                        None
                    }
                    Err(_) => {
                        warn!("API server version not read within 5s; will retry");
                        None
                    }
                }
            }
            None => None,
        };
        let env = Environment {
            server_version,
            version_flag: opts.kube_version,
            cluster_zones: None,
            own_namespace: opts.own_namespace.clone(),
        };
        let (config, config_bytes) = match &opts.config {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read config {}", path.display()))?;
                // The same reading as reload and check-config.
                let config = Config::from_bytes(&bytes)
                    .map_err(|e| anyhow::anyhow!("invalid config {}:\n{e}", path.display()))?;
                (config, Some(bytes))
            }
            None => (Config::default(), None),
        };
        let policy = Arc::new(LivePolicy::new(config, env));

        let (cert, key) = match &opts.tls {
            TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
            TlsSource::Dev { dir } => {
                let (w, generated) = certs::ensure_dev(dir).context("development certificate")?;
                if generated {
                    info!(dir = %dir.display(), ca = %w.ca_cert.display(), "generated a self-signed development certificate for localhost");
                } else {
                    info!(dir = %dir.display(), "reusing development certificate");
                }
                (w.cert, w.key)
            }
        };
        let cert_bytes = vec![
            std::fs::read(&cert).with_context(|| format!("cannot read {}", cert.display()))?,
            std::fs::read(&key).with_context(|| format!("cannot read {}", key.display()))?,
        ];
        let pair = tls::parse_pair(&cert_bytes[0], &cert_bytes[1], &cert, &key)?;
        let certs = CertStore::new(pair.key);
        let tls = Arc::new(tls::server_config(
            certs.clone(),
            opts.client_ca.as_deref(),
        )?);

        let (lookups, cluster): (Arc<dyn Lookups>, _) = match client {
            Some(client) => {
                let cache = ClusterCache::new(opts.cluster.scope.clone(), metrics.clone());
                let lookups = Arc::new(Metered {
                    inner: cache.clone(),
                    metrics: metrics.clone(),
                });
                info!(scope = ?opts.cluster.scope, version = ?server_version.map(|v| v.to_string()), "cluster access: starting the cache");
                (lookups, Some((client, cache)))
            }
            None => {
                info!("no cluster access: lookups fall back to the config");
                let lookups = Arc::new(Metered {
                    inner: NoCluster,
                    metrics: metrics.clone(),
                });
                (lookups, None)
            }
        };
        let state = AppState::new(
            policy,
            lookups,
            opts.limits.clone(),
            metrics,
            opts.noop_baseline,
        );
        state
            .health
            .cache_synced
            .store(cluster.is_none(), Ordering::Relaxed);
        state.metrics.cert_expiry.set(pair.not_after);
        Ok(Server {
            opts,
            state,
            certs,
            tls,
            cert_paths: (cert, key),
            cert_bytes,
            config_bytes,
            reload: Arc::new(Notify::new()),
            cluster,
        })
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Notify to re-read the config now (SIGHUP).
    pub fn reload_handle(&self) -> Arc<Notify> {
        self.reload.clone()
    }

    pub async fn run(self, listeners: Listeners, shutdown: ShutdownSignal) -> anyhow::Result<Exit> {
        let state = self.state.clone();
        let health = state.health.clone();
        let metrics = state.metrics.clone();
        let addr = listeners.tls.local_addr()?;
        let metrics_addr = listeners.metrics.local_addr()?;
        let (phase_tx, phase_rx) = watch::channel(Phase::Serving);

        let mut background = tokio::task::JoinSet::new();
        background.spawn(self.watch_certificate());
        if let Some(fut) = self.watch_config() {
            background.spawn(fut);
        }
        // The cache's watches stop when these handles drop, on every return.
        let mut _cluster_tasks = Vec::new();
        if let Some((client, cache)) = self.cluster.clone() {
            let reconnected = Arc::new(Notify::new());
            _cluster_tasks = cluster::start(
                client.clone(),
                cache.clone(),
                reconnected.clone(),
                state.policy.clone(),
            );
            background.spawn(wait_for_cache(
                cache,
                health.clone(),
                self.opts.cluster.sync_timeout,
            ));
            let live = state.policy.clone();
            let known = live.load().version.filter(|_| {
                live.load().version_source == crate::core::policy::VersionSource::Cluster
            });
            background.spawn(cluster::track_version(client, known, reconnected, move |v| {
                let policy = live.set_server_version(v);
                info!(version = %v, routing = %policy.routing.mode, "policy re-resolved for the API server version");
            }));
        }
        let metrics_app = http::metrics_router(state.clone());
        background.spawn(async move {
            if let Err(e) = axum::serve(listeners.metrics, metrics_app).await {
                warn!(error = %e, "metrics listener stopped");
            }
        });

        let accept = tokio::spawn(conn::accept_loop(
            listeners.tls,
            TlsAcceptor::from(self.tls.clone()),
            http::router(state.clone()),
            self.opts.conn.clone(),
            phase_rx,
            health.clone(),
            metrics.clone(),
        ));
        info!(%addr, %metrics_addr, routing = %state.policy.load().routing.mode, "listening");

        shutdown.drain.cancelled().await;
        let grace = self.opts.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        info!(drain_delay = ?self.opts.drain_delay, ?grace, "shutdown signal: draining");
        health.draining.store(true, Ordering::Relaxed);
        phase_tx.send_replace(Phase::Draining);
        tokio::select! {
            _ = tokio::time::sleep(self.opts.drain_delay.min(grace)) => {}
            _ = shutdown.abort.cancelled() => return Ok(Exit::Aborted),
        }
        phase_tx.send_replace(Phase::Stopping);
        let tracker = accept.await.context("accept loop")?;
        tokio::select! {
            _ = tracker.wait() => info!("all connections closed"),
            _ = tokio::time::sleep_until(deadline) => {
                warn!(open = tracker.len(), "grace period over; closing remaining connections");
            }
            _ = shutdown.abort.cancelled() => return Ok(Exit::Aborted),
        }
        background.abort_all();
        Ok(Exit::Clean)
    }

    fn watch_certificate(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (cert, key) = self.cert_paths.clone();
        let store = self.certs.clone();
        let metrics = self.state.metrics.clone();
        reload::watch_files(
            vec![cert.clone(), key.clone()],
            self.cert_bytes.clone(),
            self.opts.reload_interval,
            None,
            move |files, _| match tls::parse_pair(&files[0], &files[1], &cert, &key) {
                Ok(pair) => {
                    store.store(pair.key);
                    metrics.cert_expiry.set(pair.not_after);
                    metrics
                        .tls_reloads
                        .get_or_create(&ResultLabels { result: "success" })
                        .inc();
                    info!(cert = %cert.display(), not_after = pair.not_after, "serving certificate reloaded");
                }
                Err(e) => {
                    metrics
                        .tls_reloads
                        .get_or_create(&ResultLabels { result: "error" })
                        .inc();
                    warn!(error = %e, "new certificate rejected; still serving the previous one");
                }
            },
        )
    }

    fn watch_config(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let path = self.opts.config.clone()?;
        let state = self.state.clone();
        Some(reload::watch_files(
            vec![path.clone()],
            vec![self.config_bytes.clone().unwrap_or_default()],
            self.opts.reload_interval,
            Some(self.reload.clone()),
            move |files, forced| match Config::from_bytes(&files[0]) {
                Ok(config) => {
                    let policy = state.policy.set_config(config);
                    info!(path = %path.display(), forced, routing = %policy.routing.mode, "config reloaded");
                    state
                        .metrics
                        .config_reloads
                        .get_or_create(&ResultLabels { result: "success" })
                        .inc();
                }
                Err(e) => {
                    state
                        .metrics
                        .config_reloads
                        .get_or_create(&ResultLabels { result: "error" })
                        .inc();
                    warn!(path = %path.display(), error = %e, "invalid config; keeping the running one");
                }
            },
        ))
    }
}

/// Readiness waits for the cache's initial lists, but only so long: a slow
/// or unreachable API server must not keep the webhook out of service, since
/// every rule has a fallback.
async fn wait_for_cache(cache: Arc<ClusterCache>, health: Arc<Health>, limit: Duration) {
    if tokio::time::timeout(limit, cache.wait_synced())
        .await
        .is_ok()
    {
        info!("cluster cache synced");
        health.cache_synced.store(true, Ordering::Relaxed);
        return;
    }
    warn!(
        ?limit,
        "cluster cache not synced in time: ready in degraded mode, lookups fall back until it syncs"
    );
    health.cache_synced.store(true, Ordering::Relaxed);
    cache.wait_synced().await;
    info!("cluster cache synced; leaving degraded mode");
}

/// The namespace this pod runs in: `POD_NAMESPACE` (downward API) or the
/// service account's namespace file.
pub fn own_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
}
