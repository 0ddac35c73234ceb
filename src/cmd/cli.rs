//! The `zonewise` command line: `serve`, `mutate`, `certs`, `check-config`.
//!
//! Every `serve` flag has a `ZONEWISE_*` environment twin, so a Deployment
//! can configure it from a ConfigMap or the downward API.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cmd::mutate::{self, Output};
use crate::core::config::Config;
use crate::core::policy::{Environment, Policy};
use crate::core::versions::KubeVersion;
use crate::server::certs;
use crate::server::{
    self, ConnLimits, Exit, Listeners, RequestLimits, ServeOptions, Server, TlsSource,
};
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "zonewise",
    version,
    about = "Keeps Kubernetes east-west traffic inside its availability zone"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the admission webhook server.
    Serve(Box<ServeArgs>),
    /// Print manifests as the webhook would admit them (offline).
    Mutate(MutateArgs),
    /// Generate a CA and a serving certificate for a self-managed install.
    Certs(CertsArgs),
    /// Validate a config file and print the effective policy.
    CheckConfig(CheckConfigArgs),
    /// Read a cluster (read-only): what zonewise would change on existing
    /// objects, and whether zone-local routing can work there.
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the TLS admission listener.
    #[arg(long, env = "ZONEWISE_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain; without it a development certificate is used.
    #[arg(long, env = "ZONEWISE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "ZONEWISE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, env = "ZONEWISE_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Policy file (YAML); the built-in default policy without it.
    #[arg(long, env = "ZONEWISE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Plain-HTTP address for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "ZONEWISE_METRICS_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub metrics_listen: SocketAddr,
    #[arg(
        long,
        env = "ZONEWISE_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Where the development certificate is kept when no --tls-cert is given.
    #[arg(long, env = "ZONEWISE_DEV_CERT_DIR", default_value = "certs/dev")]
    pub dev_cert_dir: PathBuf,
    /// Worker threads (default: one per core).
    #[arg(long, env = "ZONEWISE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Benchmark baseline: read bodies, answer a fixed allowed:true. Only
    /// in builds with the `bench-baseline` feature (the load bench's).
    #[cfg(feature = "bench-baseline")]
    #[arg(long, hide = true)]
    pub noop_baseline: bool,
}

impl ServeArgs {
    fn noop_baseline(&self) -> bool {
        #[cfg(feature = "bench-baseline")]
        return self.noop_baseline;
        #[cfg(not(feature = "bench-baseline"))]
        false
    }
}

#[derive(Debug, Args)]
pub struct MutateArgs {
    /// Manifests (YAML or JSON, multi-document) or an AdmissionReview; `-` for stdin.
    #[arg(short = 'f', long = "filename")]
    pub file: String,
    #[arg(short, long, value_enum, default_value = "yaml")]
    pub output: OutputArg,
    /// Policy file; the built-in default without it.
    #[arg(long, env = "ZONEWISE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Namespace for manifests that do not name one.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// The API server version the output is for (e.g. 1.33); else the
    /// config's kubernetesVersion, else PreferClose routing.
    #[arg(long, value_parser = parse_kube_version)]
    pub kube_version: Option<KubeVersion>,
}

// Flag groups. Each default is the server's own (`ServeOptions::default()`
// and the limits' `Default`s), so it is declared once, there.

fn defaults() -> ServeOptions {
    ServeOptions::default()
}

fn human(d: Duration) -> humantime::Duration {
    d.into()
}

fn bytes(n: usize) -> ByteSize {
    ByteSize::b(n as u64)
}

/// Cluster access for the cache.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Kubeconfig for the cluster cache (in-cluster config is detected).
    #[arg(long, env = "ZONEWISE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server version (e.g. 1.33) when there is no cluster access;
    /// the cluster's own version wins when there is.
    #[arg(long, env = "ZONEWISE_KUBE_VERSION", value_parser = parse_kube_version)]
    pub kube_version: Option<KubeVersion>,
    /// Use the cluster cache when there is cluster access (`auto`), or never.
    #[arg(
        long,
        env = "ZONEWISE_CLUSTER_CACHE",
        value_enum,
        default_value = "auto"
    )]
    pub cluster_cache: CacheMode,
    /// Namespaces the cache watches: `all`, or `labelled`
    /// (zonewise.io/enabled=true; needs list/watch on namespaces).
    #[arg(
        long,
        env = "ZONEWISE_CACHE_NAMESPACES",
        value_enum,
        default_value = "all"
    )]
    pub cache_namespaces: CacheNamespaces,
    /// Longest wait for the cache's initial lists before serving degraded.
    #[arg(long, env = "ZONEWISE_CACHE_SYNC_TIMEOUT", value_parser = parse_duration,
          default_value_t = human(defaults().cluster.sync_timeout))]
    pub cache_sync_timeout: humantime::Duration,
}

/// Start, reload and stop.
#[derive(Debug, Args)]
pub struct LifecycleArgs {
    /// Longest time from SIGTERM to exit.
    #[arg(long, env = "ZONEWISE_SHUTDOWN_GRACE", value_parser = parse_duration,
          default_value_t = human(defaults().shutdown_grace))]
    pub shutdown_grace: humantime::Duration,
    /// Time to keep serving after SIGTERM, with readiness false.
    #[arg(long, env = "ZONEWISE_DRAIN_DELAY", value_parser = parse_duration,
          default_value_t = human(defaults().drain_delay))]
    pub drain_delay: humantime::Duration,
    /// How often the certificate and config files are checked for changes.
    #[arg(long, env = "ZONEWISE_RELOAD_INTERVAL", value_parser = parse_duration,
          default_value_t = human(defaults().reload_interval))]
    pub reload_interval: humantime::Duration,
}

/// What one client may cost: sizes, timeouts, connections.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Largest request body accepted (e.g. 8MiB).
    #[arg(long, env = "ZONEWISE_MAX_BODY_BYTES", value_parser = parse_size,
          default_value_t = bytes(defaults().limits.max_body_bytes))]
    pub max_body_bytes: ByteSize,
    /// Time allowed to receive a request body.
    #[arg(long, env = "ZONEWISE_REQUEST_TIMEOUT", value_parser = parse_duration,
          default_value_t = human(defaults().limits.request_timeout))]
    pub request_timeout: humantime::Duration,
    /// Time allowed for request headers once the first byte arrived.
    #[arg(long, env = "ZONEWISE_HEADER_READ_TIMEOUT", value_parser = parse_duration,
          default_value_t = human(defaults().conn.header_read_timeout))]
    pub header_read_timeout: humantime::Duration,
    /// How long an idle keep-alive connection is kept (longer than the API
    /// server's 90 s, so the client closes first).
    #[arg(long, env = "ZONEWISE_IDLE_TIMEOUT", value_parser = parse_duration,
          default_value_t = human(defaults().conn.idle_timeout))]
    pub idle_timeout: humantime::Duration,
    /// Time allowed for the TLS handshake.
    #[arg(long, env = "ZONEWISE_TLS_HANDSHAKE_TIMEOUT", value_parser = parse_duration,
          default_value_t = human(defaults().conn.tls_handshake_timeout))]
    pub tls_handshake_timeout: humantime::Duration,
    /// A client that stops reading its responses is cut off after this.
    #[arg(long, env = "ZONEWISE_WRITE_TIMEOUT", value_parser = parse_duration,
          default_value_t = human(defaults().conn.write_timeout))]
    pub write_timeout: humantime::Duration,
    /// Open TLS connections at most; further ones are closed on accept.
    /// Default: sized from the memory limit (about 900 at 128 MiB).
    #[arg(long, env = "ZONEWISE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// The memory this process may use, which sizes the defaults of
    /// --max-connections and --max-inflight-bytes. Default: the cgroup's
    /// limit, if any (set it from the pod's limits.memory otherwise).
    #[arg(long, env = "ZONEWISE_MEMORY_LIMIT", value_parser = parse_size)]
    pub memory_limit: Option<ByteSize>,
    /// Request body bytes held at once over all connections; beyond it, 503
    /// with Retry-After. Default: a quarter of the memory limit.
    #[arg(long, env = "ZONEWISE_MAX_INFLIGHT_BYTES", value_parser = parse_size)]
    pub max_inflight_bytes: Option<ByteSize>,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Kubeconfig file (default: $KUBECONFIG or ~/.kube/config; in a pod,
    /// its service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
    /// Audit this namespace (repeatable). Default: the namespaces labelled
    /// zonewise.io/enabled=true.
    #[arg(short = 'n', long = "namespace")]
    pub namespaces: Vec<String>,
    /// Audit every namespace.
    #[arg(short = 'A', long = "all-namespaces", conflicts_with = "namespaces")]
    pub all_namespaces: bool,
    /// Policy file, as `serve` reads it; the built-in policy without it.
    #[arg(long, env = "ZONEWISE_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: AuditOutput,
    /// Exit 1 when there are findings (for CI).
    #[arg(long)]
    pub exit_code: bool,
    /// Objects per list request.
    #[arg(long, default_value_t = 500)]
    pub page_size: u32,
    /// Monthly traffic by Service, for money in the cross-zone estimate:
    /// CSV lines `namespace,service,gb_per_month`, or JSON lines with
    /// those keys.
    #[arg(long, value_name = "FILE")]
    pub traffic: Option<PathBuf>,
    /// Dollars per GB that crosses zones (AWS: $0.01 out plus $0.01 in).
    #[arg(long, default_value_t = 0.02, value_parser = parse_price)]
    pub price_per_gb: f64,
    /// The table lists Services whose modeled cross-zone share today is
    /// above this fraction.
    #[arg(long, default_value_t = 0.1, value_parser = parse_fraction)]
    pub cross_zone_threshold: f64,
}

fn parse_price(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|p| p.is_finite() && *p >= 0.0)
        .ok_or_else(|| format!("{s:?} is not a price (a number, 0 or more)"))
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| format!("{s:?} is not a fraction between 0 and 1"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditOutput {
    /// Findings grouped by namespace, and a summary line.
    Table,
    /// `{"findings": [...], "summary": {...}}`.
    Json,
    /// The manifests as the webhook would admit them, without server-set
    /// fields, ready for Git.
    Yaml,
    /// One JSON line per object that would change, with its JSON Patch.
    Patch,
}

/// `--cache-namespaces`: the two scopes a server watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum CacheNamespaces {
    /// Every namespace (callees may live anywhere).
    #[default]
    All,
    /// Only namespaces labelled zonewise.io/enabled=true.
    Labelled,
}

impl From<CacheNamespaces> for crate::cluster::Scope {
    fn from(c: CacheNamespaces) -> Self {
        match c {
            CacheNamespaces::All => crate::cluster::Scope::All,
            CacheNamespaces::Labelled => crate::cluster::Scope::Labelled,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    Auto,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputArg {
    Yaml,
    Json,
    Patch,
    Review,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, ca.key, tls.crt, tls.key into.
    #[arg(long)]
    pub out: PathBuf,
    /// DNS names (or IPs) for the serving certificate; default: the
    /// in-cluster names of --service in --namespace.
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    #[arg(long, default_value = "zonewise")]
    pub service: String,
    #[arg(long, default_value = "zonewise-system")]
    pub namespace: String,
    /// Generate a new CA even when --out already holds ca.crt and ca.key
    /// (the caBundle then changes).
    #[arg(long)]
    pub new_ca: bool,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    pub file: PathBuf,
    /// Show the effective policy for an API server of this version.
    #[arg(long, value_parser = parse_kube_version)]
    pub kube_version: Option<KubeVersion>,
}

/// Entry point: parse, dispatch, map errors to exit codes (1: an object
/// was denied or the server aborted; 2: bad input or setup).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Mutate(args) => mutate_cmd(args),
        Command::Certs(args) => certs_cmd(args),
        Command::CheckConfig(args) => check_config(args),
        Command::Audit(args) => audit_cmd(args),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

fn serve(args: ServeArgs) -> ExitCode {
    let _log = telemetry::init(args.log_format);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.worker_threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    match rt.block_on(serve_async(args)) {
        Ok(Exit::Clean) => ExitCode::SUCCESS,
        Ok(Exit::Aborted) => {
            tracing::warn!("second signal: exiting immediately");
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot serve");
            ExitCode::from(2)
        }
    }
}

pub fn serve_options(args: &ServeArgs) -> ServeOptions {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => TlsSource::Dev {
            dir: args.dev_cert_dir.clone(),
        },
    };
    let (l, c) = (&args.limits, &args.cluster);
    let limit = l
        .memory_limit
        .map(|n| n.as_u64())
        .or_else(server::Sizing::memory_limit);
    let sizing = server::Sizing::for_memory(limit);
    let max_body_bytes = as_bytes(l.max_body_bytes);
    ServeOptions {
        tls,
        client_ca: args.client_ca.clone(),
        config: args.config.clone(),
        limits: RequestLimits {
            max_body_bytes,
            request_timeout: *l.request_timeout,
            max_inflight_bytes: l
                .max_inflight_bytes
                .map_or(sizing.max_inflight_bytes, as_bytes)
                .max(max_body_bytes),
            large_reviews: args.worker_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
            }),
        },
        conn: ConnLimits {
            tls_handshake_timeout: *l.tls_handshake_timeout,
            header_read_timeout: *l.header_read_timeout,
            idle_timeout: *l.idle_timeout,
            write_timeout: *l.write_timeout,
            max_connections: l.max_connections.unwrap_or(sizing.max_connections),
            // One connection may hold one body of the largest size.
            max_conn_inflight_bytes: max_body_bytes,
            ..ConnLimits::default()
        },
        shutdown_grace: *args.lifecycle.shutdown_grace,
        drain_delay: *args.lifecycle.drain_delay,
        reload_interval: *args.lifecycle.reload_interval,
        own_namespace: server::own_namespace(),
        kube_version: c.kube_version,
        cluster: server::ClusterOptions {
            enabled: c.cluster_cache == CacheMode::Auto,
            kubeconfig: c.kubeconfig.clone(),
            scope: c.cache_namespaces.into(),
            sync_timeout: *c.cache_sync_timeout,
        },
        noop_baseline: args.noop_baseline(),
    }
}

async fn serve_async(args: ServeArgs) -> anyhow::Result<Exit> {
    let server = Server::load(serve_options(&args)).await?;
    let listeners = Listeners::bind(args.listen, args.metrics_listen).await?;
    let (trigger, signal) = server::shutdown_channel();
    spawn_signal_handlers(trigger, server.reload_handle())?;
    server.run(listeners, signal).await
}

#[cfg(unix)]
fn spawn_signal_handlers(
    trigger: server::ShutdownTrigger,
    reload: std::sync::Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => trigger.trigger(),
                _ = int.recv() => trigger.trigger(),
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                    reload.notify_one();
                }
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn spawn_signal_handlers(
    trigger: server::ShutdownTrigger,
    _reload: std::sync::Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    tokio::spawn(async move {
        loop {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            trigger.trigger();
        }
    });
    Ok(())
}

/// The policy for the offline commands: the file read exactly as `serve`
/// reads it, for the given version.
fn load_policy(path: Option<&Path>, version: Option<KubeVersion>) -> Result<Policy, String> {
    let config = match path {
        Some(p) => Config::load(p).map_err(|e| format!("invalid config {}:\n{e}", p.display()))?,
        None => Config::default(),
    };
    let env = Environment {
        version_flag: version,
        ..Environment::default()
    };
    Ok(Policy::new(config, &env))
}

fn mutate_cmd(args: MutateArgs) -> ExitCode {
    let policy = match load_policy(args.config.as_deref(), args.kube_version) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if let Some(note) = policy.version_note() {
        eprintln!("zonewise: {note}");
    }
    let read = if args.file == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(&args.file)
    };
    let input = match read {
        Ok(text) => text,
        Err(e) => return fail(format!("cannot read {}: {e}", args.file)),
    };
    let format = match args.output {
        OutputArg::Yaml => Output::Yaml,
        OutputArg::Json => Output::Json,
        OutputArg::Patch => Output::Patch,
        OutputArg::Review => Output::Review,
    };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    match mutate::run(&input, format, &policy, &args.namespace, &mut out, &mut err) {
        Ok(summary) if summary.denied > 0 => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn certs_cmd(args: CertsArgs) -> ExitCode {
    let names = if args.dns.is_empty() {
        certs::service_names(&args.service, &args.namespace)
    } else {
        args.dns.clone()
    };
    let existing_ca = (
        std::fs::read_to_string(args.out.join("ca.crt")),
        std::fs::read_to_string(args.out.join("ca.key")),
    );
    let generated = match existing_ca {
        (Ok(ca_cert), Ok(ca_key)) if !args.new_ca => {
            eprintln!(
                "reusing the CA in {} (--new-ca to replace it)",
                args.out.display()
            );
            certs::issue(&names, &ca_cert, &ca_key)
        }
        _ => certs::generate(&names),
    };
    let generated = match generated {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    let written = match certs::write(&args.out, &generated) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let bundle = base64::engine::general_purpose::STANDARD.encode(&generated.ca_cert_pem);
    let bundle_path = args.out.join("ca.bundle.b64");
    // No trailing newline: kustomize copies the file verbatim into caBundle.
    if let Err(e) = std::fs::write(&bundle_path, &bundle) {
        return fail(format!("{}: {e}", bundle_path.display()));
    }
    eprintln!(
        "wrote {} (CA), {} and {} (serving, for {}); keep {} private",
        written.ca_cert.display(),
        written.cert.display(),
        written.key.display(),
        names.join(", "),
        written.ca_key.display()
    );
    eprintln!(
        "caBundle for the webhook configurations ({}):",
        bundle_path.display()
    );
    let _ = writeln!(std::io::stdout(), "{bundle}");
    ExitCode::SUCCESS
}

fn check_config(args: CheckConfigArgs) -> ExitCode {
    match load_policy(Some(&args.file), args.kube_version) {
        Ok(policy) => {
            print!("{}", policy.describe());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn audit_cmd(args: AuditArgs) -> ExitCode {
    use crate::cmd::audit::{self, AuditOptions, Scope};
    let config = match &args.config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => return fail(format!("invalid config {}:\n{e}", p.display())),
        },
        None => Config::default(),
    };
    if let Some(bad) = args
        .namespaces
        .iter()
        .find(|n| !crate::core::names::is_dns1123_label(n))
    {
        return fail(format!("{bad:?} is not a namespace name"));
    }
    let scope = if args.all_namespaces {
        Scope::All
    } else if args.namespaces.is_empty() {
        Scope::Labelled
    } else {
        Scope::Only(args.namespaces.clone())
    };
    let volumes = match &args.traffic {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => match audit::parse_volumes(&text) {
                Ok(v) => Some(v),
                Err(e) => return fail(format!("--traffic {}: {e}", path.display())),
            },
            Err(e) => return fail(format!("--traffic {}: {e}", path.display())),
        },
        None => None,
    };
    let opts = AuditOptions {
        traffic: audit::TrafficOptions {
            volumes,
            price_per_gb: args.price_per_gb,
            threshold: args.cross_zone_threshold,
        },
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        scope,
        config,
        page_size: args.page_size,
        keep_manifests: args.output == AuditOutput::Yaml,
        progress: true,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    let mut report = match rt.block_on(audit::run(&opts)) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match args.output {
        AuditOutput::Table => report.write_table(&mut out),
        AuditOutput::Json => report.write_json(&mut out),
        AuditOutput::Yaml => report.write_yaml(&mut out),
        AuditOutput::Patch => report.write_patches(&mut out),
    };
    if let Err(e) = written.and_then(|()| out.flush()) {
        return fail(format!("cannot write the report: {e}"));
    }
    if args.output != AuditOutput::Table {
        eprintln!("{}", report.summary_line());
    }
    if args.exit_code && !report.findings.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `1.33`, `v1.33.2`, `1.33+`.
pub fn parse_kube_version(s: &str) -> Result<KubeVersion, String> {
    KubeVersion::parse(s).ok_or_else(|| format!("{s:?} is not a Kubernetes version such as 1.33"))
}

/// A duration with its unit: `10s`, `250ms`, `2m`, `1h 30m` (humantime). A
/// bare number is refused: seconds or milliseconds is a guess not worth
/// making in a timeout.
pub fn parse_duration(s: &str) -> Result<humantime::Duration, String> {
    humantime::parse_duration(s.trim())
        .map(Into::into)
        .map_err(|e| format!("invalid duration {s:?}: {e} (for example 10s, 250ms, 2m)"))
}

/// A size in bytes: `8MiB`, `512KiB`, `1MB`, `128Mi` (as Kubernetes writes
/// it), or a plain number of bytes (as the downward API gives a limit).
pub fn parse_size(s: &str) -> Result<ByteSize, String> {
    let size: ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("invalid size {s:?}: {e} (for example 8MiB, 512KiB)"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("size {s:?} too large"))?;
    Ok(size)
}

/// A size flag as bytes (parse_size has checked it fits).
fn as_bytes(size: ByteSize) -> usize {
    usize::try_from(size.as_u64()).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        let d = |s| *parse_duration(s).unwrap();
        assert_eq!(d("10s"), Duration::from_secs(10));
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d("2m"), Duration::from_secs(120));
        assert_eq!(d("1h 30m"), Duration::from_secs(5400));
        // A bare number has no unit: refused, not guessed.
        assert!(
            parse_duration("10")
                .unwrap_err()
                .contains("invalid duration")
        );
        assert!(parse_duration("soon").is_err());
        let b = |s| as_bytes(parse_size(s).unwrap());
        assert_eq!(b("8MiB"), 8 * 1024 * 1024);
        assert_eq!(b("128Mi"), 128 * 1024 * 1024);
        assert_eq!(b("134217728"), 128 * 1024 * 1024);
        assert_eq!(b("1000"), 1000);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn serve_defaults_are_the_documented_ones() {
        let cli = Cli::try_parse_from(["zonewise", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(args.metrics_listen, "127.0.0.1:9090".parse().unwrap());
        let opts = serve_options(&args);
        // Every default is the server's own.
        let d = ServeOptions::default();
        assert_eq!(opts.limits.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(opts.limits.request_timeout, d.limits.request_timeout);
        assert_eq!(
            (opts.conn.idle_timeout, opts.conn.header_read_timeout),
            (d.conn.idle_timeout, d.conn.header_read_timeout)
        );
        assert_eq!(
            (opts.conn.write_timeout, opts.conn.tls_handshake_timeout),
            (d.conn.write_timeout, d.conn.tls_handshake_timeout)
        );
        assert_eq!(
            (opts.shutdown_grace, opts.drain_delay, opts.reload_interval),
            (d.shutdown_grace, d.drain_delay, d.reload_interval)
        );
        assert_eq!(opts.cluster.sync_timeout, d.cluster.sync_timeout);
        // And the help says them as a person writes them.
        let help = <Cli as clap::CommandFactory>::command()
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("[default: 2m]"), "idle timeout: {help}");
        assert!(help.contains("[default: \"8.0 MiB\"]"), "{help}");
        assert!(matches!(opts.tls, TlsSource::Dev { ref dir } if dir == Path::new("certs/dev")));
        assert!(opts.config.is_none());
    }

    #[test]
    fn defaults_sized_from_the_memory_limit() {
        const MIB: u64 = 1024 * 1024;
        let pod = server::Sizing::for_memory(Some(128 * MIB));
        assert_eq!(pod.max_inflight_bytes, 32 * 1024 * 1024);
        // 128 MiB at ~47 KiB an idle connection fits ~2,700; leave room.
        assert!((800..1_000).contains(&pod.max_connections), "{pod:?}");
        let laptop = server::Sizing::for_memory(None);
        assert_eq!(laptop.max_connections, 10_000);
        assert_eq!(laptop.max_inflight_bytes, 256 * 1024 * 1024);
    }

    #[test]
    fn tls_flags_come_in_pairs() {
        assert!(Cli::try_parse_from(["zonewise", "serve", "--tls-cert", "a.crt"]).is_err());
        assert!(
            Cli::try_parse_from(["zonewise", "serve", "--tls-cert", "a", "--tls-key", "b"]).is_ok()
        );
    }
}
