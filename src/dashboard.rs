//! The live dashboard at `GET /` and `GET /dashboard`: one HTML page with
//! its CSS and JavaScript inline, built into the binary, that talks to the
//! node over its own `/socket/websocket` like any other client. Its policy
//! header forbids loading anything from elsewhere.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page, exactly as served.
pub const PAGE: &str = include_str!("dashboard.html");

/// Scripts and styles inline only; connections to this node's socket only
/// (`ws:`/`wss:` are listed because older browsers do not let `'self'`
/// cover WebSocket URLs); nothing else may load.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self' ws: wss:; img-src data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn page_is_self_contained() {
        for external in [
            "http://",
            "https://",
            "//cdn",
            "src=\"/",
            "<link rel=\"stylesheet",
        ] {
            let allowed = "http://www.w3.org/2000/svg";
            let rest = PAGE.replace(allowed, "");
            assert!(!rest.contains(external), "page refers to {external}");
        }
        for metric in [
            "connection_count",
            "stream_count",
            "socket_count",
            "cluster_size",
        ] {
            assert!(
                PAGE.contains(&format!("data-metric=\"{metric}\"")),
                "{metric}"
            );
        }
    }
}
