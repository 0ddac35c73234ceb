//! Paginated, read-only lists from the API server, one item at a time.
//!
//! Each page is read as text and its items as raw JSON slices of it, so at
//! most one page (`--page-size` objects) and one parsed item are held at
//! once, however large the cluster. Only `GET` list requests are made.
//! Errors name what was being listed, where, and what to do.

use std::fmt::Write as _;

use http::StatusCode;
use k8s_openapi::api::{apps, core, discovery, networking};
use kube::Client;
use kube::core::Request;
use kube::core::params::ListParams;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A listable resource: its API coordinates, all read off its k8s-openapi
/// type, so no group, version or plural is written twice.
#[derive(Debug, Clone, Copy)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// The collection's path, in a namespace or everywhere.
    path: fn(Option<&str>) -> String,
}

/// Whether a k8s-openapi scope type is namespaced.
trait Scoped {
    const NAMESPACED: bool;
}

impl Scoped for k8s_openapi::NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scoped for k8s_openapi::ClusterResourceScope {
    const NAMESPACED: bool = false;
}

const fn of<K>() -> Resource
where
    K: k8s_openapi::Resource + kube::Resource<DynamicType = ()>,
    <K as k8s_openapi::Resource>::Scope: Scoped,
{
    Resource {
        group: <K as k8s_openapi::Resource>::GROUP,
        version: <K as k8s_openapi::Resource>::VERSION,
        plural: <K as k8s_openapi::Resource>::URL_PATH_SEGMENT,
        namespaced: <<K as k8s_openapi::Resource>::Scope as Scoped>::NAMESPACED,
        path: path_of::<K>,
    }
}

fn path_of<K: kube::Resource<DynamicType = ()>>(namespace: Option<&str>) -> String {
    K::url_path(&(), namespace)
}

pub const NAMESPACES: Resource = of::<core::v1::Namespace>();
pub const NODES: Resource = of::<core::v1::Node>();
pub const SERVICES: Resource = of::<core::v1::Service>();
pub const DAEMONSETS: Resource = of::<apps::v1::DaemonSet>();
pub const DEPLOYMENTS: Resource = of::<apps::v1::Deployment>();
pub const STATEFULSETS: Resource = of::<apps::v1::StatefulSet>();
pub const INGRESSES: Resource = of::<networking::v1::Ingress>();
pub const ENDPOINT_SLICES: Resource = of::<discovery::v1::EndpointSlice>();

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
        (self.path)(namespace.filter(|_| self.namespaced))
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
        let collection = Request::new(res.path(namespace));
        let mut params = ListParams {
            label_selector: label_selector.map(str::to_string),
            limit: Some(self.page_size),
            ..ListParams::default()
        };
        let (mut pages, mut count) = (0, 0);
        loop {
            let request = collection
                .list(&params)
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
                Some(t) => params.continue_token = Some(t),
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
        const { assert!(!NODES.namespaced && SERVICES.namespaced) };
        assert_eq!(
            ENDPOINT_SLICES.qualified(),
            "endpointslices.discovery.k8s.io"
        );
        assert_eq!(INGRESSES.qualified(), "ingresses.networking.k8s.io");
    }

    #[test]
    fn list_urls_carry_paging_and_selectors_escaped() {
        let params = ListParams {
            label_selector: Some("zonewise.io/enabled=true".into()),
            limit: Some(500),
            continue_token: Some("eyJ2Ijoi+/=".into()),
            ..ListParams::default()
        };
        let req = Request::new(NAMESPACES.path(None)).list(&params).unwrap();
        let uri = req.uri().to_string();
        assert!(uri.starts_with("/api/v1/namespaces?"), "{uri}");
        assert!(uri.contains("limit=500"), "{uri}");
        assert!(
            uri.contains("labelSelector=zonewise.io%2Fenabled%3Dtrue"),
            "{uri}"
        );
        assert!(uri.contains("continue=eyJ2Ijoi%2B%2F%3D"), "{uri}");
        assert_eq!(req.method(), http::Method::GET);
    }
}
