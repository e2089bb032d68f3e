//! The live page: `GET /` on the admin listener, one self-contained page of HTML, CSS and
//! JavaScript compiled into the binary (no CDN, no build step, works with no internet).
//!
//! The page holds no data: it reads the same endpoints as any other client (`/metrics`,
//! `/connections`, `/closed`, `/readyz`, `DELETE /connections/{id}`) once a second, with the
//! token the operator types once (kept in the tab's `sessionStorage`). So the page itself and its
//! two assets are served without the token, and everything they show needs it.
//!
//! Every answer carries a Content-Security-Policy that lets the page load and fetch from its own
//! origin only: nothing it does can reach another host, whatever a connection's peer address or
//! a close reason contains.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page's HTML.
const INDEX_HTML: &str = include_str!("assets/index.html");
/// Its script: polling, charts (plain SVG), tables, the kick dialog, the token form.
const APP_JS: &str = include_str!("assets/app.js");
/// Its styles.
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Own origin only, no inline script or style, no framing, no form posts, no referrer.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The page's routes: `/`, `/ui/app.js`, `/ui/style.css`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

/// One embedded file with the page's security headers. `no-cache`: a browser revalidates, so
/// the page of a newer binary is never mixed with the script of an older one.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}
