//! The HTTP edge: routes, request checks, status codes. Reviews themselves
//! happen in [`crate::review`]; this module only turns bytes into a request
//! and an outcome into bytes, and never answers 5xx for a client's mistake.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tracing::{info, warn};

use super::AppState;
use crate::admission::{AdmissionRequest, Kind, Outcome, Rule, Verdict};
use crate::metrics::{EndpointLabels, ReasonLabels, RequestLabels, RuleLabels};
use crate::policy::Policy;
use crate::review::{self, Endpoint};
use crate::wire;

/// The admission router served over TLS (health endpoints included, so a
/// probe can also check the TLS side).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate).fallback(method_not_allowed))
        .route("/validate", post(validate).fallback(method_not_allowed))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

/// The plain-HTTP metrics and probe router.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

/// A request refused before review. Always a JSON body naming the problem.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    reason: &'static str,
    message: String,
    /// The request body may be left unread: the connection cannot be reused.
    /// (The connection layer turns this into `Connection: close` on
    /// HTTP/1.1; h2 has no such header.)
    close: bool,
}

impl HttpError {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            reason,
            message: message.into(),
            close: false,
        }
    }

    fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.message, "reason": self.reason});
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

async fn mutate(State(state): State<Arc<AppState>>, req: Request) -> Response {
    admit(&state, req, Endpoint::Mutate).await
}

async fn validate(State(state): State<Arc<AppState>>, req: Request) -> Response {
    admit(&state, req, Endpoint::Validate).await
}

async fn admit(state: &AppState, req: Request, endpoint: Endpoint) -> Response {
    let start = Instant::now();
    let endpoint_name = endpoint.as_str();
    let (parts, body) = req.into_parts();
    let body = match read_body(state, &parts.headers, body).await {
        Ok(b) => b,
        Err(e) => return refuse(state, e),
    };
    if state.noop_baseline {
        return ([(header::CONTENT_TYPE, "application/json")], NOOP_ANSWER).into_response();
    }
    let request = match wire::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                state,
                HttpError::new(StatusCode::BAD_REQUEST, e.reason(), e.to_string()),
            );
        }
    };
    let policy = state.policy.load_full();
    let outcome = review::review(&request, &policy, state.lookups.as_ref(), endpoint);
    let bytes = wire::encode(&request.uid, &outcome);
    let elapsed = start.elapsed();
    record(
        state,
        endpoint_name,
        &request,
        &outcome,
        &policy,
        elapsed.as_secs_f64(),
    );
    log_review(endpoint_name, &request, &outcome, elapsed.as_micros());
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

const NOOP_ANSWER: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}"#;

/// Checks the media type and size, then reads the body within the limits.
/// A declared length over the limit is refused before reading any of it.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<bytes::Bytes, HttpError> {
    if !is_json(headers) {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ));
    }
    let limit = state.limits.max_body_bytes;
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds {limit} bytes"),
        )
        .closing()
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(
        state.limits.request_timeout,
        Limited::new(body, limit).collect(),
    );
    match read.await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        // A body that failed mid-way leaves the stream unusable.
        Ok(Err(e)) => Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            format!("cannot read body: {e}"),
        )
        .closing()),
        Err(_) => Err(HttpError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "request body not received within {:?}",
                state.limits.request_timeout
            ),
        )
        .closing()),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn refuse(state: &AppState, e: HttpError) -> Response {
    state
        .metrics
        .bad_requests
        .get_or_create(&ReasonLabels { reason: e.reason })
        .inc();
    warn!(status = e.status.as_u16(), reason = e.reason, error = %redact_quoted(&e.message), "refused request");
    e.into_response()
}

/// serde_json errors quote the offending input (`invalid type: string
/// "…"`); the client gets the whole message, the log only its shape, so no
/// request content reaches the logs.
fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_quotes = false;
    for c in msg.chars() {
        match (c, in_quotes) {
            ('"', false) => {
                in_quotes = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                in_quotes = false;
                out.push('"');
            }
            (c, false) => out.push(c),
            (_, true) => {}
        }
    }
    out
}

fn record(
    state: &AppState,
    endpoint: &'static str,
    req: &AdmissionRequest,
    out: &Outcome,
    policy: &Policy,
    seconds: f64,
) {
    let m = &state.metrics;
    let kind = Kind::of(&req.kind).map_or("other", Kind::name);
    m.requests
        .get_or_create(&RequestLabels {
            endpoint,
            kind,
            operation: req.operation.as_str(),
            decision: out.verdict.label(),
        })
        .inc();
    m.duration
        .get_or_create(&EndpointLabels { endpoint })
        .observe(seconds);
    for rule in out.applied() {
        m.rules_applied
            .get_or_create(&RuleLabels { rule: rule.name() })
            .inc();
        if *rule == Rule::ZoneRouting && policy.routing.substituted {
            m.routing_substitutions.inc();
        }
    }
    if let Verdict::Denied { rule, .. } = &out.verdict {
        m.denials
            .get_or_create(&RuleLabels { rule: rule.name() })
            .inc();
    }
    if !out.warnings.is_empty() {
        m.warnings.inc_by(out.warnings.len() as u64);
    }
}

/// One line per review. Names and decisions only: never the object.
fn log_review(endpoint: &'static str, req: &AdmissionRequest, out: &Outcome, micros: u128) {
    let rules = out
        .applied()
        .iter()
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join(",");
    info!(
        endpoint,
        uid = %req.uid,
        kind = %req.kind.kind,
        namespace = %req.namespace,
        name = %req.name,
        operation = req.operation.as_str(),
        dry_run = req.dry_run,
        rules = %rules,
        decision = out.verdict.label(),
        skipped = out.skipped.unwrap_or(""),
        warnings = out.warnings.len(),
        micros = micros as u64,
        "review"
    );
}

async fn method_not_allowed() -> Response {
    let mut resp = HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "use POST with an AdmissionReview",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    resp
}

async fn not_found() -> Response {
    HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint").into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.health.not_ready_reason() {
        None => "ok\n".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_input_is_redacted() {
        assert_eq!(
            super::redact_quoted(
                r#"invalid type: string "s3cr3t", expected u64 at line 1 column 9"#
            ),
            r#"invalid type: string "…", expected u64 at line 1 column 9"#
        );
        assert_eq!(super::redact_quoted("no quotes"), "no quotes");
    }
}
