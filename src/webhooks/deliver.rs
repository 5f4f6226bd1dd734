//! Delivery of webhook batches (SPEC §10): one POST of
//! `{"time_ms", "events": [...]}` signed with HMAC-SHA256 of the raw body,
//! retried with exponential backoff while the receiver fails or times out,
//! for up to five minutes, then dropped, counted and logged.

use super::store::Event;
use crate::metrics::Metrics;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest a receiver may take to answer one POST.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a batch is retried before it is dropped.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
/// The longest pause between two tries (backoff doubles up to it); well
/// under the time after which other nodes take a batch over.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Serialize)]
struct Body<'a> {
    time_ms: u64,
    events: &'a [Event],
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The receiver's address and secret, and one HTTP client for every POST.
pub struct Sender {
    url: String,
    secret: Option<String>,
    client: reqwest::Client,
}

/// How one try went.
pub enum Outcome {
    Delivered,
    /// Not a 2xx, or no answer in time: try again later.
    Failed(String),
}

impl Sender {
    pub fn new(url: String, secret: Option<String>) -> Result<Sender, String> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            // A redirect is an answer that is not a 2xx: followed, a 301 or
            // 302 would turn the POST into a GET without the events, and a
            // 2xx there would count the batch delivered.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        Ok(Sender {
            url,
            secret,
            client,
        })
    }

    /// One POST of `events`.
    pub async fn post(&self, events: &[Event]) -> Outcome {
        let body = crate::stats::to_json(&Body {
            time_ms: unix_ms(),
            events,
        });
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(secret) = &self.secret {
            request = request.header("X-Headcount-Signature", signature(secret, body.as_bytes()));
        }
        match request.body(body).send().await {
            Ok(res) if res.status().is_success() => Outcome::Delivered,
            Ok(res) => Outcome::Failed(format!("receiver answered {}", res.status())),
            Err(e) if e.is_timeout() => {
                Outcome::Failed("receiver did not answer within 5 s".into())
            }
            Err(e) => Outcome::Failed(format!("cannot reach the receiver: {e}")),
        }
    }
}

/// Pause after failed try `n` (1-based): 1 s, 2 s, 4 s, … capped.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(10)).min(MAX_BACKOFF)
}

/// Counts a delivery outcome.
pub fn count(metrics: &Metrics, outcome: &'static str) {
    metrics.webhook_delivery(outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let sig = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(20), MAX_BACKOFF);
    }
}
