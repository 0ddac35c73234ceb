//! The admission request and its outcome, in the terms the rest of zonewise
//! uses: the kinds and rules by name, the request as decoded, the answer as
//! decided. No JSON encoding, no HTTP, no rules here: `wire` turns bytes
//! into an [`AdmissionRequest`] and an [`Outcome`] into bytes, and `review`
//! turns the one into the other, so both depend on this module and it on
//! neither.

use std::fmt;

use json_patch::Patch;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

impl GroupVersionKind {
    pub fn new(group: &str, version: &str, kind: &str) -> Self {
        GroupVersionKind {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
    Other,
}

impl Operation {
    pub fn parse(s: &str) -> Operation {
        match s {
            "CREATE" => Operation::Create,
            "UPDATE" => Operation::Update,
            "DELETE" => Operation::Delete,
            "CONNECT" => Operation::Connect,
            _ => Operation::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
            Operation::Other => "OTHER",
        }
    }
}

/// The kinds the rules act on. Everything else is allowed untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    Deployment,
    StatefulSet,
    Ingress,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Service,
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::Ingress,
    ];

    /// `(group, version, kind, resource)`: the one place a kind's API
    /// coordinates are written down.
    pub const fn api(self) -> (&'static str, &'static str, &'static str, &'static str) {
        use k8s_openapi::api::{apps, core, networking};
        // Read off the k8s-openapi types, so no coordinate is written here.
        const fn of<K: k8s_openapi::Resource>()
        -> (&'static str, &'static str, &'static str, &'static str) {
            (K::GROUP, K::VERSION, K::KIND, K::URL_PATH_SEGMENT)
        }
        match self {
            Kind::Service => of::<core::v1::Service>(),
            Kind::Deployment => of::<apps::v1::Deployment>(),
            Kind::StatefulSet => of::<apps::v1::StatefulSet>(),
            Kind::Ingress => of::<networking::v1::Ingress>(),
        }
    }

    pub fn of(gvk: &GroupVersionKind) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| {
            let (group, version, kind, _) = k.api();
            gvk.group == group && gvk.version == version && gvk.kind == kind
        })
    }

    pub fn name(self) -> &'static str {
        self.api().2
    }

    /// The plural resource name, as RBAC and API paths spell it.
    pub fn resource(self) -> &'static str {
        self.api().3
    }

    /// `apiVersion` as a manifest spells it (`v1`, `apps/v1`, ...).
    pub fn api_version(self) -> String {
        match self.api() {
            ("", version, ..) => version.to_string(),
            (group, version, ..) => format!("{group}/{version}"),
        }
    }

    /// A pod-template owner: what zone-spread and call-affinity act on.
    pub fn is_workload(self) -> bool {
        matches!(self, Kind::Deployment | Kind::StatefulSet)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The rules, by the names used in the config, `zonewise.io/skip`,
/// `zonewise.io/applied`, metrics and logs. What each one does and reads is
/// declared in [`crate::core::rules::RULES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    ZoneRouting,
    LbIpTarget,
    ZoneSpread,
    CallAffinity,
    LocalPolicy,
    AlbIpTarget,
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::ZoneRouting,
        Rule::LbIpTarget,
        Rule::ZoneSpread,
        Rule::CallAffinity,
        Rule::LocalPolicy,
        Rule::AlbIpTarget,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::ZoneRouting => "zone-routing",
            Rule::LbIpTarget => "lb-ip-target",
            Rule::ZoneSpread => "zone-spread",
            Rule::CallAffinity => "call-affinity",
            Rule::LocalPolicy => "local-policy",
            Rule::AlbIpTarget => "alb-ip-target",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == s)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The parts of an `admission.k8s.io/v1` AdmissionRequest zonewise uses.
#[derive(Debug, Clone)]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub sub_resource: Option<String>,
    pub name: String,
    pub namespace: String,
    pub operation: Operation,
    pub dry_run: bool,
    pub object: Option<Value>,
    pub old_object: Option<Value>,
    /// `object` holds the whole object; `false` when only the parts the
    /// rules read were parsed (see [`crate::core::sparse`]).
    pub complete: bool,
    /// The parts the rules read held more values than one review may
    /// build; the object was not kept and is not reviewed.
    pub oversized: bool,
}

/// What a review decided. A patch and a denial cannot both be given.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Admitted as it is.
    Allowed,
    /// Admitted with this patch; `applied` lists the rules that changed the
    /// object, in order.
    Patched { patch: Patch, applied: Vec<Rule> },
    /// Refused (HTTP-style status 403) with this message.
    Denied { rule: Rule, message: String },
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Patched { .. } => "patched",
            Verdict::Denied { .. } => "denied",
        }
    }

    pub fn is_allowed(&self) -> bool {
        !matches!(self, Verdict::Denied { .. })
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: Verdict,
    /// For the person running `kubectl`: deduplicated, most important
    /// first, within the API server's limits (see [`crate::core::warnings`]).
    pub warnings: Vec<String>,
    /// Why no rule ran, for the log line.
    pub skipped: Option<&'static str>,
}

impl Outcome {
    pub fn allowed(warnings: Vec<String>) -> Outcome {
        Outcome {
            verdict: Verdict::Allowed,
            warnings,
            skipped: None,
        }
    }

    /// Allowed as it is, without any rule having run, because of `why`.
    pub fn skip(why: &'static str, warnings: Vec<String>) -> Outcome {
        Outcome {
            skipped: Some(why),
            ..Outcome::allowed(warnings)
        }
    }

    pub fn patch(&self) -> Option<&Patch> {
        match &self.verdict {
            Verdict::Patched { patch, .. } => Some(patch),
            _ => None,
        }
    }

    /// The rules that changed the object (empty unless patched).
    pub fn applied(&self) -> &[Rule] {
        match &self.verdict {
            Verdict::Patched { applied, .. } => applied,
            _ => &[],
        }
    }

    pub fn denial(&self) -> Option<&str> {
        match &self.verdict {
            Verdict::Denied { message, .. } => Some(message),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_api_coordinates() {
        for kind in Kind::ALL {
            let (group, version, name, _) = kind.api();
            assert_eq!(
                Kind::of(&GroupVersionKind::new(group, version, name)),
                Some(kind)
            );
        }
        assert_eq!(Kind::Ingress.api_version(), "networking.k8s.io/v1");
        assert_eq!(Kind::Service.api_version(), "v1");
        assert_eq!(
            Kind::of(&GroupVersionKind::new("extensions", "v1beta1", "Ingress")),
            None
        );
    }

    #[test]
    fn rule_names_round_trip() {
        for rule in Rule::ALL {
            assert_eq!(Rule::parse(rule.name()), Some(rule));
        }
        assert_eq!(Rule::parse("zone_routing"), None);
    }
}
