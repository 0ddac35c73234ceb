//! Paginated, read-only lists from the API server, one item at a time.
//!
//! Each page is read as text and its items as raw JSON slices of it, so at
//! most one page (`--page-size` objects) and one parsed item are held at
//! once, however large the cluster. Only `GET` list requests are made.
//! Errors name what was being listed, where, and what to do.

use std::fmt::Write as _;

use http::{Request, StatusCode};
use kube::Client;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A listable resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

pub const NAMESPACES: Resource = core("namespaces", false);
pub const NODES: Resource = core("nodes", false);
pub const SERVICES: Resource = core("services", true);
pub const DAEMONSETS: Resource = apps("daemonsets");
pub const DEPLOYMENTS: Resource = apps("deployments");
pub const STATEFULSETS: Resource = apps("statefulsets");
pub const INGRESSES: Resource = Resource {
    group: "networking.k8s.io",
    version: "v1",
    plural: "ingresses",
    namespaced: true,
};
pub const ENDPOINT_SLICES: Resource = Resource {
    group: "discovery.k8s.io",
    version: "v1",
    plural: "endpointslices",
    namespaced: true,
};

/// Everything the audit lists (and the ClusterRole in
/// `deploy/components/audit-reader` grants, checked by a test).
pub const RESOURCES: [Resource; 8] = [
    NAMESPACES,
    NODES,
    DAEMONSETS,
    SERVICES,
    ENDPOINT_SLICES,
    DEPLOYMENTS,
    STATEFULSETS,
    INGRESSES,
];

const fn core(plural: &'static str, namespaced: bool) -> Resource {
    Resource {
        group: "",
        version: "v1",
        plural,
        namespaced,
    }
}

const fn apps(plural: &'static str) -> Resource {
    Resource {
        group: "apps",
        version: "v1",
        plural,
        namespaced: true,
    }
}

impl Resource {
    /// `deployments.apps`, as RBAC and kubectl name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn path(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{base}/namespaces/{ns}/{}", self.plural),
            _ => format!("{base}/{}", self.plural),
        }
    }
}

/// Why the audit could not read the cluster. No report is produced then.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error(
        "forbidden: the identity running the audit may not `list {resource}` {scope} \
         ({detail}). Grant it the read-only ClusterRole zonewise-audit \
         (kubectl apply -k deploy/overlays/audit; kubectl create clusterrolebinding \
         zonewise-audit --clusterrole=zonewise-audit --user=<you> or --serviceaccount=<ns>:<name>)"
    )]
    Forbidden {
        resource: String,
        scope: String,
        detail: String,
    },
    #[error("cannot reach the API server at {server}: {detail}")]
    Unreachable { server: String, detail: String },
    #[error(
        "listing {resource} {scope} failed after {pages} page(s): {detail}; no report was \
         produced, since it would be incomplete"
    )]
    Failed {
        resource: String,
        scope: String,
        pages: usize,
        detail: String,
    },
}

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow, default)]
    items: Vec<&'a RawValue>,
    #[serde(default)]
    metadata: ListMeta,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(rename = "continue", default)]
    continue_token: Option<String>,
}

/// Told, after every page, the resource and how many of it were read.
type OnPage = Box<dyn FnMut(&Resource, usize) + Send>;

pub struct Lister {
    client: Client,
    server: String,
    page_size: u32,
    on_page: OnPage,
}

impl Lister {
    pub fn new(client: Client, server: String, page_size: u32) -> Self {
        Lister {
            client,
            server,
            page_size: page_size.max(1),
            on_page: Box::new(|_, _| {}),
        }
    }

    /// Called after every page with the items read so far of a resource.
    pub fn on_page(&mut self, f: impl FnMut(&Resource, usize) + Send + 'static) {
        self.on_page = Box::new(f);
    }

    /// `/version`: the first request, so an unreachable API server is said
    /// to be that, once, with no retries.
    pub async fn version(&self) -> Result<crate::core::versions::KubeVersion, ListError> {
        let info = self
            .client
            .apiserver_version()
            .await
            .map_err(|e| ListError::Unreachable {
                server: self.server.clone(),
                detail: short(&e),
            })?;
        crate::core::versions::KubeVersion::from_parts(&info.major, &info.minor).ok_or_else(|| {
            ListError::Unreachable {
                server: self.server.clone(),
                detail: format!("unreadable version {}.{}", info.major, info.minor),
            }
        })
    }

    /// Lists `res` (in `namespace`, or everywhere), optionally with a label
    /// selector, calling `each` with every item's raw JSON. An item `each`
    /// cannot read fails the list: a report without it would be partial.
    pub async fn each(
        &mut self,
        res: &Resource,
        namespace: Option<&str>,
        label_selector: Option<&str>,
        mut each: impl FnMut(&RawValue) -> Result<(), String>,
    ) -> Result<usize, ListError> {
        let scope = match namespace {
            Some(ns) if res.namespaced => format!("in namespace {ns}"),
            _ if res.namespaced => "in all namespaces (cluster-wide)".to_string(),
            _ => "(cluster-scoped)".to_string(),
        };
        let mut continue_token: Option<String> = None;
        let (mut pages, mut count) = (0, 0);
        loop {
            let mut uri = format!("{}?limit={}", res.path(namespace), self.page_size);
            if let Some(sel) = label_selector {
                let _ = write!(uri, "&labelSelector={}", encode(sel));
            }
            if let Some(token) = &continue_token {
                let _ = write!(uri, "&continue={}", encode(token));
            }
            let request = Request::get(uri)
                .body(Vec::new())
                .map_err(|e| self.failed(res, &scope, pages, e.to_string()))?;
            let text = match self.client.request_text(request).await {
                Ok(t) => t,
                Err(kube::Error::Api(status)) if status.code == StatusCode::FORBIDDEN.as_u16() => {
                    return Err(ListError::Forbidden {
                        resource: res.qualified(),
                        scope,
                        detail: status.message.clone(),
                    });
                }
                Err(e) => return Err(self.failed(res, &scope, pages, short(&e))),
            };
            let page: Page<'_> = serde_json::from_str(&text)
                .map_err(|e| self.failed(res, &scope, pages, format!("unreadable list: {e}")))?;
            pages += 1;
            for item in &page.items {
                each(item).map_err(|e| self.failed(res, &scope, pages, e))?;
            }
            count += page.items.len();
            (self.on_page)(res, count);
            match page.metadata.continue_token.filter(|t| !t.is_empty()) {
                Some(t) => continue_token = Some(t),
                None => return Ok(count),
            }
        }
    }

    fn failed(&self, res: &Resource, scope: &str, pages: usize, detail: String) -> ListError {
        ListError::Failed {
            resource: res.qualified(),
            scope: scope.to_string(),
            pages,
            detail,
        }
    }
}

/// An error's message and its causes, on one line.
fn short(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(out, ": {s}");
        source = s.source();
    }
    out
}

/// Percent-encodes a query value (label selectors, continue tokens).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_names() {
        assert_eq!(
            DEPLOYMENTS.path(Some("shop")),
            "/apis/apps/v1/namespaces/shop/deployments"
        );
        assert_eq!(SERVICES.path(None), "/api/v1/services");
        assert_eq!(NODES.path(Some("shop")), "/api/v1/nodes", "cluster-scoped");
        assert_eq!(
            ENDPOINT_SLICES.qualified(),
            "endpointslices.discovery.k8s.io"
        );
        assert_eq!(
            encode("zonewise.io/enabled=true"),
            "zonewise.io%2Fenabled%3Dtrue"
        );
        assert_eq!(encode("eyJ2Ijoi+/="), "eyJ2Ijoi%2B%2F%3D");
    }
}
