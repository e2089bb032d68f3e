//! The admin API over HTTP (the `admin` feature): the routes of [`super`]'s table on axum, their
//! one JSON error shape, and the bearer-token check.

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use subtle::ConstantTimeEq;

use super::{page, AdminHandle, ClosedQuery, ConnQuery, Token};
use crate::rebalance::{DrainError, DrainPlan};
use crate::registry::Registry;
use crate::view::{self, listing::BadParameter};

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Token {
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
        .route("/flapping", get(list_flapping))
        .route(
            "/drain",
            get(drain_status).post(start_drain).delete(cancel_drain),
        )
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
        "no such endpoint; see / (the live page), /connections, /closed, /flapping, /drain, /metrics, /healthz, /readyz",
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
    listing(handle.registry, move |registry| query.run(registry)).await
}

async fn list_closed(
    State(handle): State<AdminHandle>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let query = ClosedQuery::parse(pairs)?;
    listing(handle.registry, move |registry| query.run(registry)).await
}

async fn list_flapping(State(handle): State<AdminHandle>) -> Result<Response, ApiError> {
    listing(handle.registry, view::flapping).await
}

/// What `run` reads from the registry, as JSON, read and formatted on the blocking pool.
async fn listing<T: serde::Serialize>(
    registry: Registry,
    run: impl FnOnce(&Registry) -> T + Send + 'static,
) -> Result<Response, ApiError> {
    let bytes = off_the_runtime(move || to_json(&run(&registry))).await??;
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

/// `POST /drain?fraction=F&over=DURATION`: starts a paced drain; 202 with what it chose.
async fn start_drain(
    State(handle): State<AdminHandle>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
    let (mut fraction, mut over) = (None, None);
    for (name, value) in pairs {
        match name.as_str() {
            "fraction" => {
                let parsed = value.parse::<f64>().map_err(|_| {
                    bad(format!(
                        "fraction {value:?}: expected a number such as 0.25"
                    ))
                })?;
                fraction = Some(parsed);
            }
            "over" => {
                let parsed = crate::config::parse_duration(&value)
                    .map_err(|reason| bad(format!("over {value:?}: {reason}")))?;
                over = Some(parsed);
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter {other:?}: fraction and over are known"
                )))
            }
        }
    }
    let (Some(fraction), Some(over)) = (fraction, over) else {
        return Err(bad(
            "fraction and over are both needed: POST /drain?fraction=0.25&over=2m".into(),
        ));
    };
    let config = handle.reloader.config();
    let plan = DrainPlan {
        fraction,
        over,
        reconnect_within: config.goaway_window,
        grace: config.shutdown_grace,
    };
    match handle.rebalancer.start(plan) {
        Ok(status) => Ok((StatusCode::ACCEPTED, Json(status)).into_response()),
        Err(error @ DrainError::Fraction(_)) => Err(bad(error.to_string())),
        Err(error @ DrainError::UnderWay { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "drain_under_way",
            error.to_string(),
        )),
    }
}

fn no_drain() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no drain has run (POST /drain?fraction=0.25&over=2m starts one)",
    )
}

/// `GET /drain`: the running or last drain.
async fn drain_status(State(handle): State<AdminHandle>) -> Result<Response, ApiError> {
    let status = handle.rebalancer.status().ok_or_else(no_drain)?;
    Ok(Json(status).into_response())
}

/// `DELETE /drain`: tells no more connections.
async fn cancel_drain(State(handle): State<AdminHandle>) -> Result<Response, ApiError> {
    let status = handle.rebalancer.cancel().ok_or_else(no_drain)?;
    Ok(Json(status).into_response())
}
