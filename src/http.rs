//! Everything served over plain HTTP on the node's port: the WebSocket
//! upgrade, the stats and events API, metrics and health checks.

use crate::auth;
use crate::bus::{Event, MAX_BATCH, MAX_BODY};
use crate::context::Ctx;
use crate::metrics::SocketRefusal;
use crate::protocol::Vsn;
use crate::registry::SlotRefusal;
use crate::stats::Filter;
use crate::transport::handshake;
use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;

pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/", get(crate::dashboard::page))
        .route("/dashboard", get(crate::dashboard::page))
        .route("/socket/websocket", get(upgrade))
        .route("/api/stats", get(local_stats))
        .route("/api/stats/cluster", get(cluster_stats))
        .route("/api/occupancy", get(occupancy))
        .route("/api/presence", get(presence_state))
        .route("/api/presence/stats", get(presence_stats))
        .route("/api/events", post(events))
        .route("/api/broadcast", post(broadcast))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .with_state(ctx)
}

/// JSON answers may be read from any page: the figures are public (the
/// write routes are guarded by the API key, not by the browser's origin).
fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }).to_string())
}

/// The client's address, put into every request by the server.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// A WebSocket upgrade the node has accepted: what the 101 response says
/// and what the session starts with.
pub struct Admitted {
    pub accept: handshake::Accept,
    pub opening: crate::session::Opening,
}

/// Why an upgrade is refused: the status, the error body's message and the
/// metric it counts in (counted only when the refusal is answered).
pub struct Refusal {
    status: StatusCode,
    message: &'static str,
    counts: Option<Counted>,
}

enum Counted {
    Socket(SocketRefusal),
    Auth(&'static str),
}

impl Refusal {
    fn new(status: StatusCode, message: &'static str) -> Refusal {
        Refusal {
            status,
            message,
            counts: None,
        }
    }

    fn socket(status: StatusCode, message: &'static str, why: SocketRefusal) -> Refusal {
        Refusal {
            counts: Some(Counted::Socket(why)),
            ..Refusal::new(status, message)
        }
    }

    fn answer(self, ctx: &Ctx) -> Response {
        match self.counts {
            Some(Counted::Socket(why)) => ctx.metrics.socket_refused(why),
            Some(Counted::Auth(label)) => ctx.metrics.auth_failed(label),
            None => {}
        }
        error(self.status, self.message)
    }
}

/// Decides a WebSocket upgrade (`GET /socket/websocket`): the `vsn`, the
/// handshake, the origin, the token and capacity. Counts nothing: the
/// caller answers a refusal (the router does, see `upgrade`). On success
/// the socket's slot is taken.
pub fn admit(
    ctx: &Ctx,
    query: Option<&str>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<Admitted, Refusal> {
    let vsn_param = crate::query::param(query, "vsn");
    let Some(vsn) = Vsn::from_param(vsn_param.as_deref()) else {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "unsupported vsn (use 1.x or 2.x)",
        ));
    };
    if ctx.draining() {
        return Err(Refusal::socket(
            StatusCode::SERVICE_UNAVAILABLE,
            "server shutting down",
            SocketRefusal::Draining,
        ));
    }
    let accept =
        handshake::accept(headers).map_err(|why| Refusal::new(StatusCode::BAD_REQUEST, why))?;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = ctx.origins.as_ref().is_none_or(|globs| {
            origin
                .to_str()
                .is_ok_and(|o| globs.matches(o.trim_end_matches('/')))
        });
        if !allowed {
            return Err(Refusal::socket(
                StatusCode::FORBIDDEN,
                "origin not allowed",
                SocketRefusal::Origin,
            ));
        }
    }
    let identity = match &ctx.auth {
        None => None,
        Some(verifier) => {
            let token = auth::request_token(query, headers);
            match auth::authenticate(
                verifier,
                ctx.config.auth,
                token.as_deref(),
                auth::unix_now(),
            ) {
                Ok(identity) => identity.map(Box::new),
                Err(failure) => {
                    return Err(Refusal {
                        counts: Some(Counted::Auth(failure.metric_label())),
                        ..Refusal::new(StatusCode::FORBIDDEN, failure.reason())
                    })
                }
            }
        }
    };
    let per_ip = match (ctx.config.max_connections_per_ip, peer) {
        (0, _) | (_, None) => None,
        (max, Some(peer)) => Some((peer.ip(), max)),
    };
    let slot = match ctx.registry.try_open_socket(ctx.max_connections, per_ip) {
        Ok(slot) => slot,
        Err(SlotRefusal::Limit) => {
            return Err(Refusal::socket(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections",
                SocketRefusal::Limit,
            ))
        }
        Err(SlotRefusal::PerIp) => {
            return Err(Refusal::socket(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
                SocketRefusal::PerIp,
            ))
        }
    };
    Ok(Admitted {
        accept,
        opening: crate::session::Opening {
            vsn,
            slot,
            identity,
        },
    })
}

/// `GET /socket/websocket` through hyper (what the direct path in
/// `upgrade` passes on): answers 101 and hands the raw TCP
/// stream to a new session task, or answers the refusal.
async fn upgrade(State(ctx): State<Arc<Ctx>>, mut req: Request) -> Response {
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let admitted = match admit(&ctx, req.uri().query(), req.headers(), peer) {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.answer(&ctx),
    };
    let Admitted { accept, opening } = admitted;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let owner = ctx.clone();
    ctx.tasks.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        match upgraded.downcast::<TokioIo<crate::transport::prefixed::Prefixed>>() {
            Ok(parts) => {
                // What hyper read past the head, after whatever it had not
                // yet taken of the bytes read before it.
                let (stream, unread) = parts.io.into_inner().into_parts();
                let mut prelude = unread.to_vec();
                prelude.extend_from_slice(&parts.read_buf);
                drop(parts.read_buf);
                // A fresh task, so the session's future carries nothing of
                // the handshake.
                owner
                    .tasks
                    .spawn(crate::session::run(owner.clone(), stream, prelude, opening));
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept.accept_key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = accept.protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    res
}

/// A stats answer under the `prefix`/`limit` query parameters (§7.3).
fn filtered(query: Option<&str>, answer: impl FnOnce(&Filter) -> String) -> Response {
    match Filter::from_query(query) {
        Ok(filter) => json(StatusCode::OK, answer(&filter)),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn local_stats(State(ctx): State<Arc<Ctx>>, uri: Uri) -> Response {
    filtered(uri.query(), |f| ctx.reporter.local(f))
}

async fn cluster_stats(State(ctx): State<Arc<Ctx>>, uri: Uri) -> Response {
    filtered(uri.query(), |f| ctx.cluster.stats(f))
}

/// The presence topic a `?topic=T` query names: 400 without one, 404 when
/// it is not a presence topic.
fn presence_answer(ctx: &Ctx, uri: &Uri, answer: impl FnOnce(&str) -> String) -> Response {
    match crate::query::param(uri.query(), "topic") {
        None => error(StatusCode::BAD_REQUEST, "give a topic as ?topic=T"),
        Some(t) if !ctx.presence.covers(&t) => error(StatusCode::NOT_FOUND, "not a presence topic"),
        Some(t) => json(StatusCode::OK, answer(&t)),
    }
}

/// `GET /api/presence?topic=T` (§9.2): what a joiner gets as `presence_state`.
async fn presence_state(State(ctx): State<Arc<Ctx>>, uri: Uri) -> Response {
    presence_answer(&ctx, &uri, |t| ctx.presence.state(t))
}

/// `GET /api/presence/stats?topic=T` (§9.2).
async fn presence_stats(State(ctx): State<Arc<Ctx>>, uri: Uri) -> Response {
    presence_answer(&ctx, &uri, |t| {
        crate::stats::to_json(&crate::channels::presence::counts(&ctx, t))
    })
}

/// `GET /api/occupancy?topic=T&topic=U` (§7.2).
async fn occupancy(State(ctx): State<Arc<Ctx>>, uri: Uri) -> Response {
    let asked: Vec<serde_json::Value> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .filter(|(k, _)| k == "topic")
            .map(|(_, v)| serde_json::Value::String(v.into_owned()))
            .collect();
    match crate::channels::occupancy_topics(&serde_json::Value::Array(asked)) {
        Some(topics) => json(StatusCode::OK, ctx.cluster.occupancy(&topics)),
        None => error(
            StatusCode::BAD_REQUEST,
            "give 1 to 100 topics as ?topic=T&topic=U",
        ),
    }
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(&ctx.registry, &ctx.presence),
    )
        .into_response()
}

async fn readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    if ctx.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

/// Compares in time that depends only on the lengths.
fn same_key(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ e);
    }
    diff == 0
}

/// Auth, content type and size checks shared by the write routes; returns
/// the parsed JSON body.
async fn write_body(ctx: &Ctx, headers: &HeaderMap, body: Body) -> Result<Value, Response> {
    if let Some(key) = &ctx.config.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_key(given.as_bytes(), key.as_bytes()) {
            return Err(error(StatusCode::UNAUTHORIZED, "missing or wrong API key"));
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        ));
    }
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 1 MiB");
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let bytes = to_bytes(body, MAX_BODY).await.map_err(|_| too_large())?;
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")))
}

/// `POST /api/events`: one event or up to 1000, all or nothing.
async fn events(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: Body) -> Response {
    let value = match write_body(&ctx, &headers, body).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    match Event::batch_from_json(value, MAX_BATCH) {
        Ok(events) => {
            ctx.bus.publish_all(&events);
            json(
                StatusCode::ACCEPTED,
                serde_json::json!({ "accepted": events.len() }).to_string(),
            )
        }
        Err(e) => {
            ctx.metrics.events_rejected.increment(1);
            error(StatusCode::BAD_REQUEST, &e.0)
        }
    }
}

/// `POST /api/broadcast`: a raw push to any topic.
async fn broadcast(State(ctx): State<Arc<Ctx>>, headers: HeaderMap, body: Body) -> Response {
    let value = match write_body(&ctx, &headers, body).await {
        Ok(v) => v,
        Err(res) => return res,
    };
    let field = |name: &str| match value.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
        _ => Err(format!("field \"{name}\" must be a non-empty string")),
    };
    let (topic, event) = match (field("topic"), field("event")) {
        (Ok(t), Ok(e)) => (t, e),
        (Err(why), _) | (_, Err(why)) => return error(StatusCode::BAD_REQUEST, &why),
    };
    if crate::bus::reserved(event) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("event {event:?} is reserved: the protocol gives it a meaning"),
        );
    }
    let payload = match value.get("payload") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(p) => p.to_string(),
    };
    ctx.bus.broadcast(topic, event, &payload);
    json(
        StatusCode::ACCEPTED,
        serde_json::json!({ "accepted": 1 }).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_compared_whole() {
        assert!(same_key(b"secret", b"secret"));
        assert!(!same_key(b"secre", b"secret"));
        assert!(!same_key(b"secrets", b"secret"));
    }
}
