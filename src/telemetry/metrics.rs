//! Prometheus metrics, served as OpenMetrics text on the metrics port.
//!
//! Label values are closed sets (endpoint, kind, operation, decision, rule,
//! reason), never namespaces or names, so cardinality stays fixed however
//! many objects pass through.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub kind: &'static str,
    pub operation: &'static str,
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Review latency buckets, in seconds: mostly sub-millisecond, up to the
/// API server's own webhook timeout range.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    pub rules_applied: Family<RuleLabels, Counter>,
    pub denials: Family<RuleLabels, Counter>,
    pub warnings: Counter,
    pub routing_substitutions: Counter,
    pub version_beyond_newest: Counter,
    pub bad_requests: Family<ReasonLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub tls_reloads: Family<ResultLabels, Counter>,
    pub cert_expiry: Gauge,
    pub connections_open: Gauge,
    pub connections_rejected: Counter,
    pub inflight_rejections: Counter,
    pub tls_handshake_failures: Counter,
    pub lookup_fallbacks: Family<ReasonLabels, Counter>,
    pub cache_objects: Family<KindLabels, Gauge>,
    pub cache_watch_restarts: Family<KindLabels, Counter>,
    pub cache_last_sync: Arc<LastSync>,
}

/// When each cluster watch last proved itself alive (a completed list or an
/// event), exported as an age computed at scrape time.
#[derive(Debug, Default)]
pub struct LastSync {
    at: Mutex<BTreeMap<&'static str, Instant>>,
}

impl LastSync {
    pub fn touch(&self, kind: &'static str) {
        self.at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind, Instant::now());
    }
}

impl Collector for LastSync {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let at = self.at.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if at.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "cache_last_sync_age_seconds",
            "Seconds since the cluster cache last listed or received an event, by kind",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (kind, t) in at {
            let gauge = ConstGauge::new(t.elapsed().as_secs_f64());
            gauge.encode(family.encode_family(&KindLabels { kind })?)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    /// Registers every metric.
    fn default() -> Self {
        let mut registry = Registry::with_prefix("zonewise");
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            rules_applied: Family::default(),
            denials: Family::default(),
            warnings: Counter::default(),
            routing_substitutions: Counter::default(),
            version_beyond_newest: Counter::default(),
            bad_requests: Family::default(),
            config_reloads: Family::default(),
            tls_reloads: Family::default(),
            cert_expiry: Gauge::default(),
            connections_open: Gauge::default(),
            connections_rejected: Counter::default(),
            inflight_rejections: Counter::default(),
            tls_handshake_failures: Counter::default(),
            lookup_fallbacks: Family::default(),
            cache_objects: Family::default(),
            cache_watch_restarts: Family::default(),
            cache_last_sync: Arc::default(),
            registry: Registry::default(),
        };
        registry.register(
            "admission_requests",
            "Admission reviews answered, by endpoint, kind, operation and decision",
            m.requests.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time from request received to response built",
            m.duration.clone(),
        );
        registry.register(
            "rules_applied",
            "Objects changed, by rule",
            m.rules_applied.clone(),
        );
        registry.register("denials", "Objects denied, by rule", m.denials.clone());
        registry.register(
            "warnings",
            "Warnings returned to API clients",
            m.warnings.clone(),
        );
        registry.register(
            "routing_substitutions",
            "Services given a routing value other than the configured one, which their API server version would not accept",
            m.routing_substitutions.clone(),
        );
        registry.register(
            "version_beyond_newest",
            "Reviews for an API server newer than the newest Kubernetes version zonewise knows, answered as that version",
            m.version_beyond_newest.clone(),
        );
        registry.register(
            "inflight_rejections",
            "Requests answered 503 because the budget for request bytes in flight was spent",
            m.inflight_rejections.clone(),
        );
        registry.register(
            "bad_requests",
            "Requests answered with a 4xx before review, by reason",
            m.bad_requests.clone(),
        );
        registry.register(
            "config_reloads",
            "Config file reloads, by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "tls_reloads",
            "Serving certificate reloads, by result",
            m.tls_reloads.clone(),
        );
        registry.register(
            "tls_cert_expiry_timestamp_seconds",
            "notAfter of the serving certificate in use",
            m.cert_expiry.clone(),
        );
        registry.register(
            "connections_open",
            "TLS connections currently open",
            m.connections_open.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections refused because the connection limit was reached",
            m.connections_rejected.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "lookup_fallbacks",
            "Cluster lookups answered without the cluster cache, by reason",
            m.lookup_fallbacks.clone(),
        );
        registry.register(
            "cache_objects",
            "Objects in the cluster cache, by kind",
            m.cache_objects.clone(),
        );
        registry.register(
            "cache_watch_restarts",
            "Cluster watches restarted after an error, by kind",
            m.cache_watch_restarts.clone(),
        );
        // Computed at scrape time: the age of the cache's last sync.
        registry.register_collector(Box::new(m.cache_last_sync.clone()));
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::default();
        m.requests
            .get_or_create(&RequestLabels {
                endpoint: "mutate",
                kind: "Service",
                operation: "CREATE",
                decision: "patched",
            })
            .inc();
        m.duration
            .get_or_create(&EndpointLabels { endpoint: "mutate" })
            .observe(0.00004);
        let text = m.render();
        assert!(text.contains(
            r#"zonewise_admission_requests_total{endpoint="mutate",kind="Service",operation="CREATE",decision="patched"} 1"#
        ), "{text}");
        assert!(
            text.contains(
                r#"zonewise_admission_duration_seconds_bucket{le="0.00005",endpoint="mutate"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("# EOF"));
    }
}
