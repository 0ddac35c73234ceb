//! The policy file: its YAML shape and validation.
//!
//! Parsing and validation happen once, at start-up or on reload, so the
//! admission path only ever sees a policy that is known to be good (see
//! [`crate::core::policy`], which combines it with what the cluster says). Every
//! error names the field (`deployment.zoneSpread.maxSkew: ...`) because the
//! person reading it is editing a ConfigMap, not this code. Start-up,
//! reload and `check-config` all read a file through [`Config::load`] /
//! [`Config::from_bytes`], so they accept and refuse the same files.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::core::names;
use crate::core::versions::KubeVersion;
pub use crate::core::versions::Routing;

/// The YAML document, with every field defaulted.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Namespaces no rule ever touches (the server's own namespace is added at
    /// run time).
    pub excluded_namespaces: Vec<String>,
    /// The API server version, for `routing: auto` and version-dependent
    /// messages when zonewise has no cluster access (`mutate`, laptops).
    /// With cluster access the server's own version wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// The cluster's zones, for the zone capacity warning when zonewise has
    /// no cluster access. With cluster access the Nodes' zones win.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    pub service: ServiceConfig,
    /// Deployments and StatefulSets: every pod-template owner.
    pub deployment: DeploymentConfig,
    pub ingress: IngressConfig,
    /// Declared callers and callees: `{from: ns/workload, to: [ns/service]}`.
    pub call_graph: Vec<CallGraphEntry>,
    /// Pod selectors of callee Services, used when the cluster cache cannot
    /// answer: `{"ns/service": {label: value}}`.
    pub service_selectors: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            excluded_namespaces: vec!["kube-system".into(), "zonewise-system".into()],
            kubernetes_version: None,
            zones: Vec::new(),
            service: ServiceConfig::default(),
            deployment: DeploymentConfig::default(),
            ingress: IngressConfig::default(),
            call_graph: Vec::new(),
            service_selectors: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServiceConfig {
    pub routing: Routing,
    pub local_policy: LocalPolicyMode,
    pub load_balancer: LoadBalancerConfig,
}

/// `service.localPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalPolicyMode {
    /// Deny, with the ways out.
    #[default]
    Enforce,
    /// On servers that accept it (1.34+), replace Local with
    /// `trafficDistribution: PreferSameNode`; elsewhere as `enforce`.
    Convert,
    /// Allow with a warning.
    Warn,
    Off,
}

/// `ingress`: the `alb-ip-target` rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IngressConfig {
    pub target_type: TargetType,
    /// IngressClass names (and legacy `kubernetes.io/ingress.class` values)
    /// served by the AWS Load Balancer Controller.
    pub alb_classes: Vec<String>,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            target_type: TargetType::Ip,
            alb_classes: vec!["alb".into()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LoadBalancerConfig {
    pub target_type: TargetType,
    /// Also add `service.beta.kubernetes.io/aws-load-balancer-type: external`
    /// so the AWS Load Balancer Controller, not the in-tree provider, owns it.
    pub set_type: bool,
    pub cross_zone: CrossZone,
    /// `spec.loadBalancerClass` values that mean "AWS"; any other class is
    /// somebody else's load balancer and left alone.
    pub aws_classes: Vec<String>,
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        LoadBalancerConfig {
            target_type: TargetType::Ip,
            set_type: false,
            cross_zone: CrossZone::Unchanged,
            aws_classes: vec!["service.k8s.aws/nlb".into(), "eks.amazonaws.com/nlb".into()],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetType {
    #[default]
    Ip,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CrossZone {
    #[default]
    Unchanged,
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DeploymentConfig {
    pub zone_spread: ZoneSpreadConfig,
    pub call_affinity: CallAffinityConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ZoneSpreadConfig {
    pub enabled: bool,
    pub max_skew: i32,
    pub when_unsatisfiable: WhenUnsatisfiable,
    /// Only with `DoNotSchedule` (the API server rejects it otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_domains: Option<i32>,
    pub match_label_keys: Vec<String>,
    /// Add the `kubernetes.io/hostname` twin.
    pub node_spread: bool,
}

impl Default for ZoneSpreadConfig {
    fn default() -> Self {
        ZoneSpreadConfig {
            enabled: true,
            max_skew: 1,
            when_unsatisfiable: WhenUnsatisfiable::ScheduleAnyway,
            min_domains: None,
            match_label_keys: vec!["pod-template-hash".into()],
            node_spread: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum WhenUnsatisfiable {
    #[default]
    ScheduleAnyway,
    DoNotSchedule,
}

impl WhenUnsatisfiable {
    pub fn as_str(self) -> &'static str {
        match self {
            WhenUnsatisfiable::ScheduleAnyway => "ScheduleAnyway",
            WhenUnsatisfiable::DoNotSchedule => "DoNotSchedule",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CallAffinityConfig {
    pub enabled: bool,
    pub weight: i32,
    /// Label key of the last-resort selector `{<fallbackLabel>: <service>}`.
    pub fallback_label: String,
}

impl Default for CallAffinityConfig {
    fn default() -> Self {
        CallAffinityConfig {
            enabled: true,
            weight: 100,
            fallback_label: "app".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallGraphEntry {
    pub from: String,
    pub to: Vec<String>,
}

/// A namespaced object name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `ns/name`, the config's spelling. Both halves must be DNS labels.
    pub fn parse_slash(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (names::is_dns1123_label(ns) && names::is_dns1123_label(name)).then(|| Self::new(ns, name))
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One or more problems in a config file, each naming its field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl Config {
    /// Parses YAML (JSON is YAML) and validates it. An empty document is the
    /// default config.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let config = if text.trim().is_empty() {
            Config::default()
        } else {
            parse_yaml_with_path(text)?
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a config file: what start-up, reload and
    /// `check-config` all do.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_bytes(&bytes)
    }

    /// A file's contents: UTF-8 YAML (a ConfigMap's data is UTF-8; a file
    /// that is not was not written as one, and guessing at it would apply a
    /// policy nobody wrote).
    pub fn from_bytes(bytes: &[u8]) -> Result<Config, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            ConfigError::Syntax(format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ))
        })?;
        Config::from_yaml(text)
    }

    /// Checks what serde cannot: ranges, name syntax, combinations the API
    /// server would reject inside a patch. Collects every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        for (i, ns) in self.excluded_namespaces.iter().enumerate() {
            if !names::is_dns1123_label(ns) {
                errs.push(format!(
                    "excludedNamespaces[{i}]: {ns:?} is not a valid namespace name"
                ));
            }
        }
        if let Some(v) = &self.kubernetes_version
            && KubeVersion::parse(v).is_none()
        {
            errs.push(format!(
                "kubernetesVersion: {v:?} is not a Kubernetes version such as \"1.33\""
            ));
        }
        for (i, zone) in self.zones.iter().enumerate() {
            if !names::is_label_value(zone) || zone.is_empty() {
                errs.push(format!(
                    "zones[{i}]: {zone:?} is not a valid zone label value"
                ));
            }
        }
        for (i, class) in self.ingress.alb_classes.iter().enumerate() {
            if class.is_empty() {
                errs.push(format!("ingress.albClasses[{i}]: must not be empty"));
            }
        }
        for (i, class) in self.service.load_balancer.aws_classes.iter().enumerate() {
            if class.is_empty() {
                errs.push(format!(
                    "service.loadBalancer.awsClasses[{i}]: must not be empty"
                ));
            }
        }
        let zs = &self.deployment.zone_spread;
        if zs.max_skew < 1 {
            errs.push(format!(
                "deployment.zoneSpread.maxSkew: must be at least 1, got {}",
                zs.max_skew
            ));
        }
        if let Some(min) = zs.min_domains {
            if zs.when_unsatisfiable != WhenUnsatisfiable::DoNotSchedule {
                errs.push(
                    "deployment.zoneSpread.minDomains: only allowed with whenUnsatisfiable: DoNotSchedule"
                        .into(),
                );
            }
            if min < 1 {
                errs.push(format!(
                    "deployment.zoneSpread.minDomains: must be at least 1, got {min}"
                ));
            }
        }
        for (i, key) in zs.match_label_keys.iter().enumerate() {
            if !names::is_label_key(key) {
                errs.push(format!(
                    "deployment.zoneSpread.matchLabelKeys[{i}]: {key:?} is not a valid label key"
                ));
            }
        }
        let ca = &self.deployment.call_affinity;
        if !(1..=100).contains(&ca.weight) {
            errs.push(format!(
                "deployment.callAffinity.weight: must be between 1 and 100, got {}",
                ca.weight
            ));
        }
        if !names::is_label_key(&ca.fallback_label) {
            errs.push(format!(
                "deployment.callAffinity.fallbackLabel: {:?} is not a valid label key",
                ca.fallback_label
            ));
        }
        for (i, entry) in self.call_graph.iter().enumerate() {
            if ObjectRef::parse_slash(&entry.from).is_none() {
                errs.push(format!(
                    "callGraph[{i}].from: {:?} must be namespace/deployment",
                    entry.from
                ));
            }
            if entry.to.is_empty() {
                errs.push(format!("callGraph[{i}].to: must list at least one Service"));
            }
            for (j, to) in entry.to.iter().enumerate() {
                if !ObjectRef::parse_slash(to).is_some_and(|r| names::is_dns1035_label(&r.name)) {
                    errs.push(format!(
                        "callGraph[{i}].to[{j}]: {to:?} must be namespace/service"
                    ));
                }
            }
        }
        for (svc, selector) in &self.service_selectors {
            if !ObjectRef::parse_slash(svc).is_some_and(|r| names::is_dns1035_label(&r.name)) {
                errs.push(format!(
                    "serviceSelectors.{svc}: key must be namespace/service"
                ));
            }
            if selector.is_empty() {
                errs.push(format!(
                    "serviceSelectors.{svc}: an empty selector would match every pod"
                ));
            }
            for (k, v) in selector {
                if !names::is_label_key(k) {
                    errs.push(format!("serviceSelectors.{svc}.{k}: not a valid label key"));
                }
                if !names::is_label_value(v) {
                    errs.push(format!(
                        "serviceSelectors.{svc}.{k}: {v:?} is not a valid label value"
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }

    pub fn to_yaml(&self) -> String {
        // Serializing plain structs of strings, numbers and maps cannot fail;
        // fall back to Debug rather than panic if it ever does.
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n{self:#?}"))
    }
}

/// Deserializes, and on failure names the field path, e.g.
/// `deployment.zoneSpread.maxSkew: invalid type: string "x", expected i32`.
/// The message comes from a plain parse (it carries line and column); the
/// path from a second, path-tracking pass, run only when there is an error.
fn parse_yaml_with_path(text: &str) -> Result<Config, ConfigError> {
    let err = match serde_saphyr::from_str::<Config>(text) {
        Ok(config) => return Ok(config),
        Err(e) => e,
    };
    let mut path = String::new();
    // The streaming pass reports the rest of the input as unread once the
    // closure stops early; only the path it recorded matters here.
    let _ = serde_saphyr::with_deserializer_from_str(text, |de| {
        if let Err(e) = serde_path_to_error::deserialize::<_, Config>(de) {
            path = e.path().to_string();
        }
        Ok(())
    });
    Err(ConfigError::Syntax(if path.is_empty() || path == "." {
        err.to_string()
    } else {
        format!("{path}: {err}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> String {
        match Config::from_yaml(yaml) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::from_yaml("").unwrap(), Config::default());
        assert_eq!(Config::from_yaml("# nothing\n").unwrap(), Config::default());
    }

    #[test]
    fn design_sketch_parses() {
        let c = Config::from_yaml(
            r#"
excludedNamespaces: [kube-system, zonewise-system]
service:
  routing: PreferClose
  localPolicy: enforce
  loadBalancer: {targetType: ip, setType: false, crossZone: unchanged}
deployment:
  zoneSpread: {enabled: true, maxSkew: 1, whenUnsatisfiable: ScheduleAnyway, matchLabelKeys: [pod-template-hash], nodeSpread: true}
  callAffinity: {enabled: true, weight: 100, fallbackLabel: app}
callGraph:
  - {from: ecommerce/graphql, to: [ecommerce/orders]}
"#,
        )
        .unwrap();
        assert_eq!(c.call_graph[0].to, ["ecommerce/orders"]);
        assert_eq!(c.service.routing, Routing::PreferClose);
    }

    #[test]
    fn type_errors_name_the_field() {
        let e = errors("deployment:\n  zoneSpread:\n    maxSkew: lots\n");
        assert!(e.contains("deployment.zoneSpread.maxSkew"), "{e}");
        let e = errors("service:\n  routing: Nearby\n");
        assert!(e.contains("service.routing"), "{e}");
        let e = errors("service:\n  rooting: off\n");
        assert!(e.contains("rooting"), "{e}");
    }

    #[test]
    fn semantic_errors_name_every_field() {
        let e = errors(
            r#"
excludedNamespaces: [Kube_System]
deployment:
  zoneSpread: {maxSkew: 0, minDomains: 3, matchLabelKeys: ["bad key"]}
  callAffinity: {weight: 101, fallbackLabel: ""}
callGraph:
  - {from: graphql, to: []}
  - {from: shop/web, to: [orders]}
serviceSelectors:
  shop/orders: {}
"#,
        );
        for needle in [
            "excludedNamespaces[0]",
            "deployment.zoneSpread.maxSkew",
            "deployment.zoneSpread.minDomains: only allowed",
            "deployment.zoneSpread.matchLabelKeys[0]",
            "deployment.callAffinity.weight",
            "deployment.callAffinity.fallbackLabel",
            "callGraph[0].from",
            "callGraph[0].to",
            "callGraph[1].to[0]",
            "serviceSelectors.shop/orders",
        ] {
            assert!(e.contains(needle), "missing {needle} in:\n{e}");
        }
    }

    #[test]
    fn min_domains_with_do_not_schedule_is_fine() {
        let c = Config::from_yaml(
            "deployment:\n  zoneSpread: {whenUnsatisfiable: DoNotSchedule, minDomains: 3}\n",
        )
        .unwrap();
        assert_eq!(c.deployment.zone_spread.min_domains, Some(3));
    }

    #[test]
    fn versions_zones_and_ingress() {
        let c = Config::from_yaml(
            "kubernetesVersion: \"1.33\"\nzones: [eu-west-1a, eu-west-1b]\ningress: {albClasses: [alb, internal-alb]}\nservice: {localPolicy: convert}\n",
        )
        .unwrap();
        assert_eq!(c.kubernetes_version.as_deref(), Some("1.33"));
        assert_eq!(c.zones.len(), 2);
        assert_eq!(c.ingress.alb_classes, ["alb", "internal-alb"]);
        assert_eq!(c.service.local_policy, LocalPolicyMode::Convert);
        assert_eq!(Config::default().service.routing, Routing::Auto);
        let e = errors(
            "kubernetesVersion: latest\nzones: [\"eu west\"]\ningress: {albClasses: [\"\"]}\n",
        );
        for needle in ["kubernetesVersion", "zones[0]", "ingress.albClasses[0]"] {
            assert!(e.contains(needle), "missing {needle} in:\n{e}");
        }
    }

    #[test]
    fn one_way_to_read_a_file() {
        let e = Config::from_bytes(b"service: {routing: auto}\n# caf\xe9\n").unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, b"zones: [a, \xff]\n").unwrap();
        assert!(
            Config::load(&p)
                .unwrap_err()
                .to_string()
                .contains("not UTF-8")
        );
        std::fs::write(&p, "zones: [a, b]\n").unwrap();
        assert_eq!(Config::load(&p).unwrap().zones, ["a", "b"]);
    }

    #[test]
    fn default_config_round_trips_through_yaml() {
        let text = Config::default().to_yaml();
        assert_eq!(Config::from_yaml(&text).unwrap(), Config::default());
    }
}
