//! The policy file: its YAML shape, validation, and the effective policy the
//! rules read.
//!
//! Parsing and validation happen once, at start-up or on reload, so the
//! admission path only ever sees a [`Policy`] that is known to be good. Every
//! error names the field (`deployment.zoneSpread.maxSkew: ...`) because the
//! person reading it is editing a ConfigMap, not this code.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::names;

/// The YAML document, with every field defaulted.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Namespaces no rule ever touches (the server's own namespace is added at
    /// run time).
    pub excluded_namespaces: Vec<String>,
    pub service: ServiceConfig,
    pub deployment: DeploymentConfig,
    /// Declared callers and callees: `{from: ns/deployment, to: [ns/service]}`.
    pub call_graph: Vec<CallGraphEntry>,
    /// Pod selectors of callee Services, used when the cluster cache cannot
    /// answer: `{"ns/service": {label: value}}`.
    pub service_selectors: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            excluded_namespaces: vec!["kube-system".into(), "zonewise-system".into()],
            service: ServiceConfig::default(),
            deployment: DeploymentConfig::default(),
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

/// `service.routing`: how `zone-routing` keeps Service traffic in its zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum Routing {
    /// `spec.trafficDistribution: PreferClose` (GA in 1.33; a deprecated
    /// alias of PreferSameZone from 1.35, still accepted).
    #[default]
    PreferClose,
    /// `spec.trafficDistribution: PreferSameZone` (1.34+).
    PreferSameZone,
    /// `service.kubernetes.io/topology-mode: Auto` (1.27+).
    #[serde(rename = "annotation")]
    Annotation,
    /// Chosen from the API server version at start-up.
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "off")]
    Off,
}

/// `service.localPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalPolicyMode {
    #[default]
    Enforce,
    Warn,
    Off,
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
    fn parse_slash(s: &str) -> Option<Self> {
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

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_yaml(&text)
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

/// How `zone-routing` acts, after `auto` has been resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// Set `spec.trafficDistribution` to this value.
    Field(&'static str),
    /// Set `service.kubernetes.io/topology-mode: Auto`.
    Annotation,
    Off,
}

impl fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoutingMode::Field(v) => write!(f, "trafficDistribution: {v}"),
            RoutingMode::Annotation => f.write_str("service.kubernetes.io/topology-mode: Auto"),
            RoutingMode::Off => f.write_str("off"),
        }
    }
}

/// Facts about where zonewise runs that shape the effective policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    /// API server `major.minor`, when a cluster was reachable at start-up.
    pub server_version: Option<(u32, u32)>,
    /// The namespace zonewise itself runs in; never mutated.
    pub own_namespace: Option<String>,
}

/// The validated config plus what was derived from it and the environment,
/// indexed for the admission path.
#[derive(Debug, Clone)]
pub struct Policy {
    pub config: Config,
    pub routing: RoutingMode,
    pub excluded: BTreeSet<String>,
    call_graph: HashMap<ObjectRef, Vec<ObjectRef>>,
    service_selectors: HashMap<ObjectRef, BTreeMap<String, String>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(Config::default(), &Environment::default())
    }
}

impl Policy {
    /// Builds the effective policy. `config` must have passed
    /// [`Config::validate`]; invalid references are dropped, not panicked on.
    pub fn new(config: Config, env: &Environment) -> Policy {
        let routing = resolve_routing(config.service.routing, env.server_version);
        let mut excluded: BTreeSet<String> = config.excluded_namespaces.iter().cloned().collect();
        if let Some(ns) = &env.own_namespace {
            excluded.insert(ns.clone());
        }
        let mut call_graph: HashMap<ObjectRef, Vec<ObjectRef>> = HashMap::new();
        for entry in &config.call_graph {
            let Some(from) = ObjectRef::parse_slash(&entry.from) else {
                continue;
            };
            let callees = call_graph.entry(from).or_default();
            for to in entry.to.iter().filter_map(|t| ObjectRef::parse_slash(t)) {
                if !callees.contains(&to) {
                    callees.push(to);
                }
            }
        }
        let service_selectors = config
            .service_selectors
            .iter()
            .filter_map(|(k, v)| Some((ObjectRef::parse_slash(k)?, v.clone())))
            .collect();
        Policy {
            config,
            routing,
            excluded,
            call_graph,
            service_selectors,
        }
    }

    /// Services the Deployment `from` is declared to call in the config.
    pub fn callees_of(&self, from: &ObjectRef) -> &[ObjectRef] {
        self.call_graph.get(from).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn declared_selector(&self, service: &ObjectRef) -> Option<&BTreeMap<String, String>> {
        self.service_selectors.get(service)
    }

    /// The effective policy as YAML, for `check-config` and the start-up log.
    pub fn describe(&self) -> String {
        let mut out = self.config.to_yaml();
        out.push_str(&format!(
            "# effective:\n#   zone-routing: {}\n#   excluded namespaces: {}\n",
            self.routing,
            self.excluded.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        out
    }
}

/// `auto` picks the newest mechanism the API server is known to accept:
/// `PreferSameZone` from 1.34, `PreferClose` from 1.31 (beta, on by default),
/// the topology annotation before that. An unknown version gets
/// `PreferClose`: older servers drop an unknown field rather than reject it.
pub fn resolve_routing(routing: Routing, version: Option<(u32, u32)>) -> RoutingMode {
    match routing {
        Routing::PreferClose => RoutingMode::Field("PreferClose"),
        Routing::PreferSameZone => RoutingMode::Field("PreferSameZone"),
        Routing::Annotation => RoutingMode::Annotation,
        Routing::Off => RoutingMode::Off,
        Routing::Auto => match version {
            Some((1, minor)) if minor >= 34 => RoutingMode::Field("PreferSameZone"),
            Some((1, minor)) if minor >= 31 => RoutingMode::Field("PreferClose"),
            Some((1, _)) => RoutingMode::Annotation,
            Some((major, _)) if major > 1 => RoutingMode::Field("PreferSameZone"),
            _ => RoutingMode::Field("PreferClose"),
        },
    }
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
        let policy = Policy::new(c, &Environment::default());
        assert_eq!(
            policy.callees_of(&ObjectRef::new("ecommerce", "graphql")),
            &[ObjectRef::new("ecommerce", "orders")]
        );
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
    fn auto_routing_by_version() {
        let r = |v| resolve_routing(Routing::Auto, v);
        assert_eq!(r(Some((1, 35))), RoutingMode::Field("PreferSameZone"));
        assert_eq!(r(Some((1, 34))), RoutingMode::Field("PreferSameZone"));
        assert_eq!(r(Some((1, 33))), RoutingMode::Field("PreferClose"));
        assert_eq!(r(Some((1, 31))), RoutingMode::Field("PreferClose"));
        assert_eq!(r(Some((1, 30))), RoutingMode::Annotation);
        assert_eq!(r(Some((1, 27))), RoutingMode::Annotation);
        assert_eq!(r(None), RoutingMode::Field("PreferClose"));
        assert_eq!(
            resolve_routing(Routing::Off, Some((1, 35))),
            RoutingMode::Off
        );
    }

    #[test]
    fn own_namespace_is_excluded() {
        let env = Environment {
            server_version: None,
            own_namespace: Some("platform".into()),
        };
        let p = Policy::new(Config::default(), &env);
        assert!(p.excluded.contains("platform"));
        assert!(p.excluded.contains("kube-system"));
    }

    #[test]
    fn default_config_round_trips_through_yaml() {
        let text = Config::default().to_yaml();
        assert_eq!(Config::from_yaml(&text).unwrap(), Config::default());
    }
}
