//! What each supported Kubernetes version accepts, as pure functions of the
//! version.
//!
//! A patch from zonewise must never make the API server reject the object
//! or print a warning the user did not cause:
//! - `spec.trafficDistribution` is beta (on by default) from 1.31; 1.30 has
//!   it alpha and off, 1.29 not at all. Before 1.31, the topology-mode
//!   annotation is the mechanism.
//! - `PreferSameZone` and `PreferSameNode` are accepted from 1.34 (beta, on
//!   by default; GA in 1.35); 1.33 and older reject them as unsupported
//!   values.
//! - From 1.35 `PreferClose` is a deprecated alias of `PreferSameZone`, and
//!   the API server warns on every object that sets it.
//! - `matchLabelKeys` and `minDomains` in topology spread constraints are on
//!   by default in every supported version (beta from 1.27, GA in 1.30 for
//!   minDomains).
//! - 1.37 changes none of what zonewise sets or reads (its changelog and
//!   the release's list of breaking changes; KEP-3015 keeps `PreferClose`
//!   as an alias, removing it is a non-goal; the IPVS proxy mode's
//!   deprecation gate, KEP-5495, does not change routing by hints).
//!
//! A server newer than [`NEWEST`] is answered as [`NEWEST`]: Kubernetes
//! keeps the values it accepts (a GA field value is never removed within
//! v1), so the newest known answer stays valid, and the person running
//! kubectl never sees a warning or rejection just because their cluster
//! was upgraded before zonewise.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `service.routing`: how `zone-routing` keeps Service traffic in its zone.
/// What each value becomes on each Kubernetes version is
/// [`resolve_routing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum Routing {
    /// The newest mechanism the API server accepts without a warning.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// `spec.trafficDistribution: PreferClose` (1.31+; a deprecated alias of
    /// PreferSameZone from 1.35, which then warns).
    PreferClose,
    /// `spec.trafficDistribution: PreferSameZone` (1.34+).
    PreferSameZone,
    /// `service.kubernetes.io/topology-mode: Auto` (1.27+).
    #[serde(rename = "annotation")]
    Annotation,
    #[serde(rename = "off")]
    Off,
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Routing::Auto => "auto",
            Routing::PreferClose => "PreferClose",
            Routing::PreferSameZone => "PreferSameZone",
            Routing::Annotation => "annotation",
            Routing::Off => "off",
        })
    }
}

/// A Kubernetes `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubeVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        KubeVersion { major, minor }
    }

    /// `1.33`, `v1.33.2`, `1.33+` (managed offerings add suffixes).
    pub fn parse(s: &str) -> Option<KubeVersion> {
        let s = s.trim().trim_start_matches('v');
        let mut parts = s.split('.');
        let major = leading_number(parts.next()?)?;
        let minor = leading_number(parts.next()?)?;
        Some(KubeVersion::new(major, minor))
    }

    /// From the `/version` endpoint's separate `major` and `minor` strings.
    pub fn from_parts(major: &str, minor: &str) -> Option<KubeVersion> {
        Some(KubeVersion::new(
            leading_number(major)?,
            leading_number(minor)?,
        ))
    }

    fn at_least(self, minor: u32) -> bool {
        self.major > 1 || (self.major == 1 && self.minor >= minor)
    }

    pub fn is_supported(self) -> bool {
        self.support() == Support::Supported
    }

    pub fn support(self) -> Support {
        if self > NEWEST {
            Support::Newer
        } else if self < OLDEST {
            Support::Older
        } else {
            Support::Supported
        }
    }

    /// The version zonewise answers for: a newer server as the newest known.
    pub fn effective(self) -> KubeVersion {
        self.min(NEWEST)
    }

    /// A sentence for the log and `check-config` when the version is outside
    /// the supported range; `None` inside it.
    pub fn support_note(self) -> Option<String> {
        match self.support() {
            Support::Supported => None,
            Support::Newer => Some(format!(
                "Kubernetes {self} is newer than {NEWEST}, answered as {NEWEST}"
            )),
            Support::Older => Some(format!(
                "Kubernetes {self} is older than {OLDEST} and out of support; zonewise answers \
                 with conservative values (the topology-mode annotation instead of \
                 trafficDistribution, no PreferSameZone or PreferSameNode)"
            )),
        }
    }
}

/// Where a version stands against the supported range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Supported,
    /// Newer than [`NEWEST`]: answered as [`NEWEST`].
    Newer,
    /// Older than [`OLDEST`]: out of support, conservative values.
    Older,
}

fn leading_number(s: &str) -> Option<u32> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The supported range: EKS standard and extended support.
pub const OLDEST: KubeVersion = KubeVersion::new(1, 29);
pub const NEWEST: KubeVersion = KubeVersion::new(1, 37);

/// What an API server of a given version accepts. `None` (version unknown)
/// assumes the conservative answer where being wrong would break objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `spec.trafficDistribution` exists and is enabled.
    pub traffic_distribution: bool,
    /// `PreferSameZone` is an accepted value.
    pub prefer_same_zone: bool,
    /// `PreferSameNode` is an accepted value.
    pub prefer_same_node: bool,
    /// Setting `PreferClose` makes the API server warn.
    pub prefer_close_deprecated: bool,
}

impl Features {
    pub fn of(version: Option<KubeVersion>) -> Features {
        match version.map(KubeVersion::effective) {
            Some(v) => Features {
                traffic_distribution: v.at_least(31),
                prefer_same_zone: v.at_least(34),
                prefer_same_node: v.at_least(34),
                prefer_close_deprecated: v.at_least(35),
            },
            // Unknown: PreferClose is the one value every server with the
            // field accepts (and older ones drop an unknown field); the
            // 1.34 values would be rejected by 1.31–1.33.
            None => Features {
                traffic_distribution: true,
                prefer_same_zone: false,
                prefer_same_node: false,
                prefer_close_deprecated: false,
            },
        }
    }
}

/// How `zone-routing` acts once the configured value has met the version.
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

pub const PREFER_CLOSE: &str = "PreferClose";
pub const PREFER_SAME_ZONE: &str = "PreferSameZone";
pub const PREFER_SAME_NODE: &str = "PreferSameNode";

/// The effective routing: the mode, and why it differs from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingChoice {
    pub configured: Routing,
    pub version: Option<KubeVersion>,
    pub mode: RoutingMode,
    /// The configured value is not accepted by this server and `mode` is the
    /// closest one that is.
    pub substituted: bool,
    /// The configured value is kept but the API server warns about it.
    pub deprecated: bool,
}

impl RoutingChoice {
    /// A sentence for logs, warnings and `check-config` when the configured
    /// value was replaced or is deprecated; `None` otherwise.
    pub fn note(&self) -> Option<String> {
        let v = self.version.map_or_else(
            || "this API server".to_string(),
            |v| format!("Kubernetes {v}"),
        );
        if self.substituted {
            Some(format!(
                "service.routing: {} is not accepted by {v}; zonewise sets {} instead",
                self.configured, self.mode
            ))
        } else if self.deprecated {
            Some(format!(
                "service.routing: {} is deprecated on {v} (the API server warns on every \
                 Service that sets it); PreferSameZone means the same without the warning",
                self.configured
            ))
        } else {
            None
        }
    }
}

/// `service.routing` for an API server of `version`.
pub fn resolve_routing(configured: Routing, version: Option<KubeVersion>) -> RoutingChoice {
    let f = Features::of(version);
    let newest_zone_value = || {
        if f.prefer_same_zone {
            RoutingMode::Field(PREFER_SAME_ZONE)
        } else if f.traffic_distribution {
            RoutingMode::Field(PREFER_CLOSE)
        } else {
            RoutingMode::Annotation
        }
    };
    let (mode, substituted) = match configured {
        Routing::Off => (RoutingMode::Off, false),
        Routing::Annotation => (RoutingMode::Annotation, false),
        Routing::Auto => (newest_zone_value(), false),
        // Unknown version: kept as configured; the operator knows the
        // cluster it is meant for better than zonewise does.
        Routing::PreferSameZone if version.is_none() || f.prefer_same_zone => {
            (RoutingMode::Field(PREFER_SAME_ZONE), false)
        }
        Routing::PreferSameZone => (newest_zone_value(), true),
        Routing::PreferClose if f.traffic_distribution => (RoutingMode::Field(PREFER_CLOSE), false),
        Routing::PreferClose => (RoutingMode::Annotation, true),
    };
    RoutingChoice {
        configured,
        version,
        mode,
        substituted,
        deprecated: mode == RoutingMode::Field(PREFER_CLOSE) && f.prefer_close_deprecated,
    }
}

/// The in-zone routing a person should set on this server: what `auto`
/// picks, for messages that recommend one.
pub fn recommended_routing(version: Option<KubeVersion>) -> RoutingMode {
    resolve_routing(Routing::Auto, version).mode
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(minor: u32) -> Option<KubeVersion> {
        Some(KubeVersion::new(1, minor))
    }

    #[test]
    fn parsing() {
        assert_eq!(KubeVersion::parse("1.33"), v(33));
        assert_eq!(KubeVersion::parse("v1.34.2"), v(34));
        assert_eq!(KubeVersion::parse("1.35+"), v(35));
        assert_eq!(KubeVersion::from_parts("1", "33+"), v(33));
        assert_eq!(KubeVersion::parse("1"), None);
        assert_eq!(KubeVersion::parse("one.two"), None);
        assert_eq!(KubeVersion::from_parts("", "33"), None);
    }

    /// Every row of the README's version table, as `resolve_routing` sees it:
    /// (minor, auto, PreferClose, PreferSameZone, annotation).
    #[test]
    fn every_supported_version() {
        use RoutingMode::{Annotation as A, Field};
        const CLOSE: RoutingMode = Field(PREFER_CLOSE);
        const ZONE: RoutingMode = Field(PREFER_SAME_ZONE);
        let rows = [
            (29, A, A, A),
            (30, A, A, A),
            (31, CLOSE, CLOSE, CLOSE),
            (32, CLOSE, CLOSE, CLOSE),
            (33, CLOSE, CLOSE, CLOSE),
            (34, ZONE, CLOSE, ZONE),
            (35, ZONE, CLOSE, ZONE),
            (36, ZONE, CLOSE, ZONE),
            (37, ZONE, CLOSE, ZONE),
        ];
        for (minor, auto, close, same_zone) in rows {
            let r = |c| resolve_routing(c, v(minor));
            assert_eq!(r(Routing::Auto).mode, auto, "1.{minor} auto");
            assert_eq!(r(Routing::PreferClose).mode, close, "1.{minor} PreferClose");
            assert_eq!(
                r(Routing::PreferSameZone).mode,
                same_zone,
                "1.{minor} PreferSameZone"
            );
            assert_eq!(r(Routing::Annotation).mode, A, "1.{minor} annotation");
            assert_eq!(r(Routing::Off).mode, RoutingMode::Off);
            // auto never substitutes and never lands on a deprecated value.
            assert!(!r(Routing::Auto).substituted && !r(Routing::Auto).deprecated);
            assert_eq!(
                r(Routing::PreferSameZone).substituted,
                minor < 34,
                "1.{minor}"
            );
            assert_eq!(r(Routing::PreferClose).substituted, minor < 31, "1.{minor}");
            assert_eq!(r(Routing::PreferClose).deprecated, minor >= 35, "1.{minor}");
            let f = Features::of(v(minor));
            assert_eq!(f.prefer_same_node, minor >= 34);
            assert!(KubeVersion::new(1, minor).is_supported());
        }
        assert!(!KubeVersion::new(1, 28).is_supported());
        assert!(!KubeVersion::new(1, 38).is_supported());
    }

    /// Newer than the newest known: every answer is the newest known
    /// version's, said in a note; older: conservative values, said too.
    #[test]
    fn newer_and_older_than_the_supported_range() {
        for newer in [
            KubeVersion::new(1, 38),
            KubeVersion::new(1, 45),
            KubeVersion::new(2, 0),
        ] {
            assert_eq!(newer.support(), Support::Newer);
            assert_eq!(newer.effective(), NEWEST);
            assert_eq!(Features::of(Some(newer)), Features::of(Some(NEWEST)));
            for c in [
                Routing::Auto,
                Routing::PreferClose,
                Routing::PreferSameZone,
                Routing::Annotation,
            ] {
                let (r, newest) = (
                    resolve_routing(c, Some(newer)),
                    resolve_routing(c, Some(NEWEST)),
                );
                assert_eq!(
                    (r.mode, r.substituted, r.deprecated),
                    (newest.mode, newest.substituted, newest.deprecated)
                );
            }
            let note = newer.support_note().unwrap();
            assert_eq!(
                note,
                format!("Kubernetes {newer} is newer than 1.37, answered as 1.37")
            );
        }
        assert_eq!(KubeVersion::new(1, 37).support_note(), None);
        let old = KubeVersion::new(1, 27);
        assert_eq!(old.support(), Support::Older);
        assert_eq!(old.effective(), old);
        assert_eq!(
            resolve_routing(Routing::Auto, Some(old)).mode,
            RoutingMode::Annotation
        );
        let note = old.support_note().unwrap();
        assert!(
            note.contains("older than 1.29 and out of support") && note.contains("conservative"),
            "{note}"
        );
    }

    #[test]
    fn unknown_and_future_versions() {
        let r = |c| resolve_routing(c, None);
        assert_eq!(r(Routing::Auto).mode, RoutingMode::Field(PREFER_CLOSE));
        assert_eq!(
            r(Routing::PreferSameZone).mode,
            RoutingMode::Field(PREFER_SAME_ZONE)
        );
        assert!(!r(Routing::PreferSameZone).substituted);
        assert!(!Features::of(None).prefer_same_node);
        let future = Some(KubeVersion::new(2, 0));
        assert_eq!(
            resolve_routing(Routing::PreferClose, future)
                .note()
                .unwrap(),
            "service.routing: PreferClose is deprecated on Kubernetes 2.0 (the API server warns \
             on every Service that sets it); PreferSameZone means the same without the warning"
        );
        assert_eq!(
            resolve_routing(Routing::Auto, future).mode,
            RoutingMode::Field(PREFER_SAME_ZONE)
        );
    }

    #[test]
    fn notes_say_what_was_replaced_or_deprecated() {
        let sub = resolve_routing(Routing::PreferSameZone, v(33))
            .note()
            .unwrap();
        assert!(
            sub.contains("PreferSameZone is not accepted by Kubernetes 1.33"),
            "{sub}"
        );
        assert!(sub.contains("trafficDistribution: PreferClose"), "{sub}");
        let dep = resolve_routing(Routing::PreferClose, v(36)).note().unwrap();
        assert!(dep.contains("deprecated on Kubernetes 1.36"), "{dep}");
        assert_eq!(resolve_routing(Routing::Auto, v(36)).note(), None);
        assert_eq!(recommended_routing(v(30)), RoutingMode::Annotation);
    }
}
