//! The admin API: live and closed connections, kicks, Prometheus metrics, health and readiness.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs (never needs the token) |
//! | `GET /readyz` | 200 when listening with a working sink; 503 while starting, draining, with a failing sink or with the NATS connection down |
//! | `GET /connections` | live connections, filtered, sorted and paged ([`ConnQuery`]) |
//! | `GET /connections/{id}` | one live connection |
//! | `DELETE /connections/{id}` | closes it with reason `kicked`, answers what it was |
//! | `GET /closed` | the most recent closes, newest first ([`ClosedQuery`]) |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /` | the live page ([`page`]): served without the token, it reads the endpoints above with it |
//!
//! [`router`] gives the same routes to a program that embeds the server and mounts them on its
//! own axum application; `connwarden serve` runs them on `--admin`. Work that reads every
//! connection (`TCP_INFO` is one system call each) runs on the blocking pool, and the registry
//! is locked a bounded chunk at a time, so neither the runtime's workers nor the connections'
//! opens and closes wait behind a listing.

mod page;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use subtle::ConstantTimeEq;

pub use crate::view::listing::{
    BadParameter, ClosedQuery, ConnQuery, PeerFilter, SortKey, DEFAULT_LIMIT, MAX_LIMIT,
};

use crate::metrics::Metrics;
use crate::queue::Monitor;
use crate::record::Record;
use crate::registry::Registry;
use crate::view;

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the server takes traffic, for `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Readiness {
    /// Listening, with the sink open.
    pub fn set_ready(&self) {
        let _ = self
            .0
            .compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Shutting down: no new connections.
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    fn state(&self) -> &'static str {
        match self.0.load(Ordering::Acquire) {
            STARTING => "starting",
            READY => "ready",
            _ => "draining",
        }
    }
}

/// A bearer token the admin API requires. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read admin token file {path}")]
    /// The file cannot be read.
    Read {
        /// The file.
        path: std::path::PathBuf,
        #[source]
        /// Why.
        source: std::io::Error,
    },
    #[error("admin token file {path} is empty, or not one line of printable ASCII")]
    /// The file holds no usable token.
    Invalid {
        /// The file.
        path: std::path::PathBuf,
    },
}

impl Token {
    /// Reads the token from `path`: its one line, without surrounding whitespace. A token goes
    /// in a file, never on a command line, where `ps` would show it.
    pub fn from_file(path: &Path) -> Result<Token, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Token::new(text.trim()).ok_or_else(|| TokenError::Invalid {
            path: path.to_owned(),
        })
    }

    /// A token from its text: one line of printable ASCII (what fits in a header), not empty.
    pub fn new(text: &str) -> Option<Token> {
        let usable = !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
        usable.then(|| Token(text.into()))
    }

    /// The text, for a client that sends it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `Authorization: Bearer <token>` carries this token, compared in constant time.
    fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(given) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        given.trim().as_bytes().ct_eq(self.0.as_bytes()).into()
    }
}

/// What the admin API reads and acts on.
#[derive(Clone, Debug)]
pub struct AdminHandle {
    /// Live and closed connections.
    pub registry: Registry,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// The queue's depth and drops.
    pub queue: Monitor<Record>,
    /// Whether the server takes traffic.
    pub readiness: Arc<Readiness>,
    /// The bearer token every endpoint but `/healthz` requires, if any.
    pub token: Option<Token>,
    /// The configuration in force, for `GET /config`.
    pub reloader: crate::Reloader,
}

/// The admin routes, to serve as they are or to mount on an application of one's own.
pub fn router(handle: AdminHandle) -> Router {
    let guarded = Router::new()
        .route("/readyz", get(readyz))
        .route("/connections", get(list_connections))
        .route(
            "/connections/{id}",
            get(get_connection).delete(kick_connection),
        )
        .route("/closed", get(list_closed))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route_layer(middleware::from_fn_with_state(
            handle.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(page::routes())
        .merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(handle)
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: AdminHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(handle))
        .with_graceful_shutdown(shutdown)
        .await
}

/// An error answer: a status and the one JSON shape of [`view::ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %error, "admin request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
    }
}

impl From<BadParameter> for ApiError {
    fn from(error: BadParameter) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", error.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = view::ErrorBody {
            error: view::ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

async fn require_token(
    State(handle): State<AdminHandle>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &handle.token {
        if !token.admits(request.headers().get(header::AUTHORIZATION)) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this endpoint needs the header Authorization: Bearer <token> (the token in admin_token_file)",
            ));
        }
    }
    Ok(next.run(request).await)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see / (the live page), /connections, /closed, /metrics, /healthz, /readyz",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(handle): State<AdminHandle>) -> Response {
    let state = handle.readiness.state();
    let sink_healthy = handle.metrics.sink_healthy();
    let nats_connected = handle.metrics.nats_ready();
    let ready = state == "ready" && sink_healthy && nats_connected;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": ready,
        "state": state,
        "sink_healthy": sink_healthy,
        "nats_connected": nats_connected,
    });
    (status, Json(body)).into_response()
}

/// Runs `work` on the blocking pool: it reads every connection or formats a large answer.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)
}

/// JSON made on the blocking pool, so a page of 10,000 entries is not formatted on a worker.
fn json_response(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn to_json(value: &impl serde::Serialize) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(ApiError::internal)
}

async fn list_connections(
    State(handle): State<AdminHandle>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let query = ConnQuery::parse(pairs)?;
    let registry = handle.registry.clone();
    let bytes = off_the_runtime(move || to_json(&query.run(&registry))).await??;
    Ok(json_response(bytes))
}

async fn list_closed(
    State(handle): State<AdminHandle>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let query = ClosedQuery::parse(pairs)?;
    let registry = handle.registry.clone();
    let bytes = off_the_runtime(move || to_json(&query.run(&registry))).await??;
    Ok(json_response(bytes))
}

fn parse_id(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("connection id {text:?}: expected a whole number"),
        )
    })
}

fn no_such_connection(id: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no live connection {id} (see GET /closed for closed ones)"),
    )
}

async fn get_connection(
    State(handle): State<AdminHandle>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<view::Connection>, ApiError> {
    let id = parse_id(&id)?;
    view::connection(&handle.registry, id)
        .map(Json)
        .ok_or_else(|| no_such_connection(id))
}

/// 200 with what the connection was once its close is recorded; 202 if it had not closed
/// within the wait.
async fn kick_connection(
    State(handle): State<AdminHandle>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let kicked = view::kick(&handle.registry, id, "admin API")
        .await
        .ok_or_else(|| no_such_connection(id))?;
    let status = if kicked.closed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(kicked.view)).into_response())
}

async fn metrics(State(handle): State<AdminHandle>) -> Result<Response, ApiError> {
    let text = off_the_runtime(move || {
        let now = handle
            .registry
            .scrape(handle.metrics.keepalive_idle(), handle.queue.stats());
        handle.metrics.render(&now)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response())
}

/// The configuration in force (after any reload), as the TOML file writes it.
async fn config(State(handle): State<AdminHandle>) -> Response {
    let text = handle.reloader.config().to_toml();
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

/// Where the admin API listens and the live page's address, for logs.
pub fn describe(addr: SocketAddr, token: &Option<Token>) {
    if token.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(addr = %addr, "admin API listens beyond loopback without a token (admin_token_file): anyone who reaches it can list and kick connections");
    }
    tracing::info!(addr = %addr, token_required = token.is_some(), "admin listening");
    let url = page_url(addr);
    tracing::info!(url = %url, "live page at {url}");
}

/// The live page's address: on a wildcard listener, the loopback address of its family, which
/// reaches it from the machine itself.
pub fn page_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}/", SocketAddr::new(ip, addr.port()))
}
