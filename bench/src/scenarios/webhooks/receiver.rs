//! `bench webhooks`' receiver: a small HTTP/1.1 server (hyper) on a
//! loopback address that takes the nodes' webhook POSTs (SPEC §10). Each
//! body is read whole (at most 2 MiB), its `X-Headcount-Signature` checked
//! against `--webhook-secret` (401 and counted when it is missing or
//! wrong), parsed as `{"time_ms", "events": [...]}` (400 and counted when
//! it is not) and handed to the [`Ledger`] with the time it was read;
//! then 200. Anything but a POST gets 405.

use super::ledger::{Batch, Ledger};
use crate::webhook_sig;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

const MAX_BODY: usize = 2 << 20;
/// The path to give the nodes (any path is accepted).
pub(super) const PATH: &str = "/hook";

pub(super) fn lock(l: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// The receiver, serving until dropped.
pub(super) struct Receiver {
    pub(super) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet: every connection ends.
        self.task.abort();
    }
}

impl Receiver {
    /// Listens on `bind` (already checked to be loopback).
    pub(super) async fn start(
        bind: SocketAddr,
        secret: String,
        ledger: Arc<Mutex<Ledger>>,
    ) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let secret: Arc<[u8]> = secret.into_bytes().into();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (secret, ledger) = (secret.clone(), ledger.clone());
                conns.spawn(async move {
                    let service = service_fn(move |req| {
                        let (secret, ledger) = (secret.clone(), ledger.clone());
                        async move { Ok::<_, Infallible>(handle(req, &secret, &ledger).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Receiver { addr, task })
    }

    pub(super) fn url(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }
}

fn answer(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

async fn handle(
    req: Request<Incoming>,
    secret: &[u8],
    ledger: &Mutex<Ledger>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        lock(ledger).not_post += 1;
        return answer(StatusCode::METHOD_NOT_ALLOWED, "{\"error\":\"POST only\"}");
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let signature = header("x-headcount-signature");
    let json = header("content-type").is_some_and(|c| c.starts_with("application/json"));
    let Ok(body) = Limited::new(req.into_body(), MAX_BODY).collect().await else {
        lock(ledger).bad_bodies += 1;
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "{\"error\":\"body too large\"}",
        );
    };
    let at = Instant::now();
    let body = body.to_bytes();
    let mut l = lock(ledger);
    let signed = signature.is_some_and(|s| webhook_sig::verify(secret, &body, &s));
    if !signed {
        l.bad_signatures += 1;
        return answer(StatusCode::UNAUTHORIZED, "{\"error\":\"bad signature\"}");
    }
    if !json {
        l.wrong_content_type += 1;
    }
    match serde_json::from_slice::<Batch>(&body) {
        Ok(batch) => {
            l.receive(batch, at);
            answer(StatusCode::OK, "{\"ok\":true}")
        }
        Err(_) => {
            l.bad_bodies += 1;
            answer(StatusCode::BAD_REQUEST, "{\"error\":\"bad body\"}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Http;

    /// A POST with the given signature header (none when `None`).
    async fn post(addr: SocketAddr, body: &str, sig: Option<&str>) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let sig = sig.map_or(String::new(), |s| format!("X-Headcount-Signature: {s}\r\n"));
        let req = format!(
            "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{sig}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out[9..12].parse().unwrap()
    }

    #[tokio::test]
    async fn signed_batches_are_counted_and_bad_ones_refused() {
        let ledger = Arc::new(Mutex::new(Ledger::new("b:wh-1-")));
        let t0 = Instant::now();
        lock(&ledger).expect(super::super::ledger::OCCUPIED, "b:wh-1-0", None, t0);
        let r = Receiver::start(
            "127.0.0.1:0".parse().unwrap(),
            "s3cret".into(),
            ledger.clone(),
        )
        .await
        .unwrap();
        assert!(r.url().ends_with("/hook"));
        let body = r#"{"time_ms":1,"events":[{"id":"e1","name":"channel_occupied","channel":"b:wh-1-0"}]}"#;
        let good = webhook_sig::sign(b"s3cret", body.as_bytes());
        assert_eq!(post(r.addr, body, Some(&good)).await, 200);
        // The same batch again: a redelivery.
        assert_eq!(post(r.addr, body, Some(&good)).await, 200);
        let wrong = webhook_sig::sign(b"other", body.as_bytes());
        assert_eq!(post(r.addr, body, Some(&wrong)).await, 401);
        assert_eq!(post(r.addr, body, None).await, 401);
        let junk = "{\"events\": 5}";
        let signed_junk = webhook_sig::sign(b"s3cret", junk.as_bytes());
        assert_eq!(post(r.addr, junk, Some(&signed_junk)).await, 400);
        let (status, _) = Http::new(r.addr)
            .request("GET", "/hook", None)
            .await
            .unwrap();
        assert_eq!(status, 405);
        let rep = lock(&ledger).report();
        assert_eq!(rep["posts"], 2, "{rep}");
        assert_eq!(rep["bad_signatures"], 2);
        assert_eq!(rep["bad_bodies"], 1);
        assert_eq!(rep["not_post"], 1);
        assert_eq!(rep["redelivered"], 1);
        assert_eq!(rep["by_name"]["channel_occupied"]["delivered"], 1);
        assert_eq!(rep["exact"], true);
        drop(r);
    }
}
