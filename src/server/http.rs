//! The HTTP edge: routes, request checks, status codes. Reviews themselves
//! happen in [`crate::core::review`]; this module only turns bytes into a request
//! and an outcome into bytes, and never answers 5xx for a client's mistake.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::BodyExt;
use tracing::{info, warn};

use super::budget::{ConnBudget, Reserved};

use super::AppState;
use crate::core::admission::{AdmissionRequest, Kind, Outcome, Rule, Verdict};
use crate::core::policy::Policy;
use crate::core::review::{self, Endpoint};
use crate::core::wire;
use crate::telemetry::metrics::{EndpointLabels, ReasonLabels, RequestLabels, RuleLabels};

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
    /// The request body may be left unread: the connection cannot be
    /// reused, and the response says `Connection: close`.
    close: bool,
    retry_after: Option<u32>,
}

impl HttpError {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            reason,
            message: message.into(),
            close: false,
            retry_after: None,
        }
    }

    fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
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
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
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
    let conn = parts.extensions.get::<ConnBudget>().cloned();
    let (body, _reserved) = match read_body(state, conn.as_ref(), &parts.headers, body).await {
        Ok(b) => b,
        Err(e) => return refuse(state, e),
    };
    #[cfg(feature = "bench-baseline")]
    if state.noop_baseline {
        return ([(header::CONTENT_TYPE, "application/json")], NOOP_ANSWER).into_response();
    }
    let policy = state.policy.load_full();
    let reviewed = if body.len() <= INLINE_REVIEW_BYTES {
        review_body(&body, &policy, state.lookups.as_ref(), endpoint)
    } else {
        // A large body takes milliseconds to parse: off the async workers,
        // so other connections keep being served, and a few at a time.
        let Ok(_slot) = state.review_slots.clone().acquire_owned().await else {
            return refuse(state, busy());
        };
        let (policy, lookups) = (policy.clone(), state.lookups.clone());
        match tokio::task::spawn_blocking(move || {
            review_body(&body, &policy, lookups.as_ref(), endpoint)
        })
        .await
        {
            Ok(r) => r,
            Err(_) => return refuse(state, busy()),
        }
    };
    let (request, outcome, bytes) = match reviewed {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                state,
                HttpError::new(StatusCode::BAD_REQUEST, e.reason(), e.to_string()),
            );
        }
    };
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

/// Bodies up to this size are reviewed on the async worker that read them
/// (the common case: a review is tens of microseconds); larger ones on the
/// blocking pool.
const INLINE_REVIEW_BYTES: usize = super::budget::LARGE_BODY;

type Reviewed = (AdmissionRequest, Outcome, Vec<u8>);

fn review_body(
    body: &[u8],
    policy: &Policy,
    lookups: &dyn crate::core::lookups::Lookups,
    endpoint: Endpoint,
) -> Result<Reviewed, wire::DecodeError> {
    let request = wire::decode(body)?;
    let outcome = review::review(&request, policy, lookups, endpoint);
    let bytes = wire::encode(&request.uid, &outcome);
    Ok((request, outcome, bytes))
}

#[cfg(feature = "bench-baseline")]
const NOOP_ANSWER: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}"#;

fn busy() -> HttpError {
    HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_busy",
        "too many request bytes in flight; retry shortly",
    )
    .closing()
    .retry_after(1)
}

/// Checks the media type and size, then reads the body within the limits
/// and the process-wide budget for request bytes in flight, which it
/// returns reserved until the review is done. A declared length over the
/// limit (or the budget) is refused before reading any of it.
async fn read_body(
    state: &AppState,
    conn: Option<&ConnBudget>,
    headers: &HeaderMap,
    mut body: Body,
) -> Result<(Bytes, Reserved), HttpError> {
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
    // Reserve what is declared now; what is not declared, as it arrives.
    let mut reserved = match reserve(state, conn, declared.unwrap_or(0) as usize) {
        Some(p) => p,
        None => return Err(busy()),
    };
    let read = async {
        // Grown as bytes arrive, not sized from the declaration: a client
        // that declares 8 MiB and sends a byte a second holds a byte.
        let mut buf =
            bytes::BytesMut::with_capacity((declared.unwrap_or(0) as usize).min(8 * 1024));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "body_unreadable",
                    format!("cannot read body: {e}"),
                )
                .closing()
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            if !state
                .budget
                .grow(&mut reserved, conn, buf.len() + data.len())
            {
                state.metrics.inflight_rejections.inc();
                return Err(busy());
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf.freeze())
    };
    let read = tokio::time::timeout(state.limits.request_timeout, read).await;
    match read {
        Ok(Ok(bytes)) => Ok((bytes, reserved)),
        Ok(Err(e)) => Err(e),
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

/// Reserves `n` body bytes (see [`budget`]), counting refusals: fail fast
/// with 503, never queue a body in memory.
fn reserve(state: &AppState, conn: Option<&ConnBudget>, n: usize) -> Option<Reserved> {
    let reserved = state.budget.reserve(conn, n);
    if reserved.is_none() {
        state.metrics.inflight_rejections.inc();
    }
    reserved
}

/// Requests with more header fields than `max_headers`.
pub fn too_many_headers(max: usize) -> HttpError {
    HttpError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "too_many_headers",
        format!("more than {max} header fields"),
    )
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
    if policy.version_beyond_newest() {
        m.version_beyond_newest.inc();
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
    let rules = RuleNames(out.applied());
    info!(
        endpoint,
        uid = %Clean(&req.uid),
        kind = %Clean(&req.kind.kind),
        namespace = %Clean(&req.namespace),
        name = %Clean(&req.name),
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

/// Rule names, comma-separated, written straight into the log line.
struct RuleNames<'a>(&'a [Rule]);

impl fmt::Display for RuleNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(rule.name())?;
        }
        Ok(())
    }
}

/// An identifier as logged: control characters escaped (a newline cannot
/// forge a log line, an ANSI escape cannot reach a terminal), at most 253
/// characters. The decoder already refuses such identifiers; this holds
/// whatever reaches a log line.
struct Clean<'a>(&'a str);

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The usual identifier (short printable ASCII, as the decoder
        // requires of what it accepts) in one write.
        if self.0.len() <= wire::MAX_NAME && self.0.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return f.write_str(self.0);
        }
        for (i, c) in self.0.chars().enumerate() {
            if i == wire::MAX_NAME {
                return f.write_str("…");
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
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
    fn logged_identifiers_are_escaped_and_bounded() {
        let forged = "web\n{\"level\":\"ERROR\"} \u{1b}[31mred";
        let shown = super::Clean(forged).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(
            shown.contains("\\n") && shown.contains("\\u{1b}"),
            "{shown}"
        );
        let long = "n".repeat(10_000);
        assert_eq!(super::Clean(&long).to_string().chars().count(), 254);
    }

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
