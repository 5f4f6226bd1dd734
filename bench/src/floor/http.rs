//! The floor server's HTTP side, on hyper: `POST /api/broadcast`
//! `{"topic","event","payload"}` → 202 and a push to the topic's members,
//! `GET /healthz` → 200 `ok`, anything else 404 (so the bench sees that
//! there is no `/api/stats` and skips its count checks).

use super::hub::Hub;
use super::wire::{self, Broadcast};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpStream;

/// Largest request body read.
const MAX_BODY: usize = 1 << 20;

pub(super) async fn serve(stream: TcpStream, hub: Arc<Hub>) {
    let service = service_fn(move |req| {
        let hub = hub.clone();
        async move { Ok::<_, Infallible>(route(req, &hub).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn answer(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

async fn route(req: Request<Incoming>, hub: &Hub) -> Response<Full<Bytes>> {
    hub.tally.http_requests.fetch_add(1, Ordering::Relaxed);
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => answer(StatusCode::OK, "ok"),
        (&Method::POST, "/api/broadcast") => {
            let Ok(body) = Limited::new(req.into_body(), MAX_BODY).collect().await else {
                return answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "{\"error\":\"body too large\"}",
                );
            };
            let body = body.to_bytes();
            match serde_json::from_slice::<Broadcast>(&body) {
                Ok(b) => {
                    hub.broadcast(&b.topic, wire::push(&b.topic, &b.event, b.payload.get()));
                    answer(StatusCode::ACCEPTED, "{\"accepted\":1}")
                }
                Err(_) => answer(
                    StatusCode::BAD_REQUEST,
                    "{\"error\":\"want {\\\"topic\\\",\\\"event\\\",\\\"payload\\\"}\"}",
                ),
            }
        }
        _ => answer(StatusCode::NOT_FOUND, "{\"error\":\"not found\"}"),
    }
}
