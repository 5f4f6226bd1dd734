//! A real webhook receiver for the §10 tests: an axum server on loopback,
//! inside the test process, that records every POST it gets (when, on which
//! path, its headers and raw body) and answers as the test tells it to
//! (accept, fail the next N, fail everything, or hang past the sender's 5 s
//! timeout). Each node of a cluster test is given its own path
//! (`/hook/<node>`), so the receiver knows which node delivered a batch.
//!
//! The receiver's "accepted" view is what a real receiver would keep: the
//! events of batches it answered 2xx, deduplicated by `id` (a redelivery of
//! an accepted id is still recorded, so tests can count doubles).

#![allow(dead_code)]

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the receiver answers the next POST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200.
    Accept,
    /// 500.
    Fail,
    /// No answer for 30 s (the sender gives up after 5 s).
    Hang,
    /// 302 to `/landing`, which answers a GET (or anything) with 200 and
    /// is counted in `landings`.
    Redirect,
}

/// One POST as the receiver got it.
#[derive(Clone, Debug)]
pub struct Post {
    pub at: Instant,
    /// The last path segment: the node the test gave this URL to.
    pub path: String,
    pub content_type: Option<String>,
    pub signature: Option<String>,
    pub body: Vec<u8>,
    pub json: Value,
    pub answered: Answer,
}

impl Post {
    pub fn events(&self) -> Vec<Ev> {
        self.json["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| Ev::from_json(e, self.at, &self.path))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn ids(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.id).collect()
    }
}

/// One event of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ev {
    pub id: String,
    pub name: String,
    pub channel: String,
    pub user_id: Option<String>,
    /// When the POST that carried it arrived.
    pub at: Instant,
    /// The path (node) of that POST.
    pub path: String,
    /// The event's JSON as sent.
    pub raw: String,
}

impl Ev {
    fn from_json(e: &Value, at: Instant, path: &str) -> Ev {
        let s = |k: &str| e[k].as_str().map(str::to_owned);
        Ev {
            id: s("id").unwrap_or_default(),
            name: s("name").unwrap_or_default(),
            channel: s("channel").unwrap_or_default(),
            user_id: s("user_id"),
            at,
            path: path.to_owned(),
            raw: e.to_string(),
        }
    }
}

#[derive(Default)]
struct State {
    posts: Vec<Post>,
    /// Answers queued for the next POSTs, then `default`.
    script: VecDeque<Answer>,
    default: Option<Answer>,
    /// Requests that followed a redirect to `/landing`: (method, body).
    landings: Vec<(String, Vec<u8>)>,
}

/// The receiver; its server stops when the test's runtime ends.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

type Shared = Arc<Mutex<State>>;

async fn hook(
    axum::extract::State(state): axum::extract::State<Shared>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let answered = {
        let mut s = state.lock().unwrap();
        let answer = s.script.pop_front().or(s.default).unwrap_or(Answer::Accept);
        s.posts.push(Post {
            at: Instant::now(),
            path,
            content_type: header("content-type"),
            signature: header("x-headcount-signature"),
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
            body: body.to_vec(),
            answered: answer,
        });
        answer
    };
    match answered {
        Answer::Accept => (axum::http::StatusCode::OK, "ok").into_response(),
        Answer::Fail => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "failing").into_response(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            (axum::http::StatusCode::OK, "too late").into_response()
        }
        Answer::Redirect => (
            axum::http::StatusCode::FOUND,
            [(axum::http::header::LOCATION, "/landing")],
            "moved",
        )
            .into_response(),
    }
}

async fn landing(
    axum::extract::State(state): axum::extract::State<Shared>,
    method: axum::http::Method,
    body: axum::body::Bytes,
) -> &'static str {
    state
        .lock()
        .unwrap()
        .landings
        .push((method.to_string(), body.to_vec()));
    "landed"
}

impl Receiver {
    /// Starts listening on 127.0.0.1 (a free port), answering 200.
    pub async fn start() -> Receiver {
        let state: Shared = Arc::default();
        let app = axum::Router::new()
            .route("/hook/{path}", axum::routing::post(hook))
            .route("/landing", axum::routing::any(landing))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state }
    }

    /// The URL to give node `path` (`--webhook-url`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/hook/{path}", self.addr)
    }

    /// From now on, answer every POST with `a` (after any scripted ones).
    pub fn answer(&self, a: Answer) {
        self.state.lock().unwrap().default = Some(a);
    }

    /// Answer the next POSTs with these, in order.
    pub fn script(&self, answers: &[Answer]) {
        self.state.lock().unwrap().script.extend(answers);
    }

    /// Requests that followed a redirect: (method, body).
    pub fn landings(&self) -> Vec<(String, Vec<u8>)> {
        self.state.lock().unwrap().landings.clone()
    }

    pub fn posts(&self) -> Vec<Post> {
        self.state.lock().unwrap().posts.clone()
    }

    /// Every event of every POST, in arrival order (redeliveries included).
    pub fn all(&self) -> Vec<Ev> {
        self.posts().iter().flat_map(Post::events).collect()
    }

    /// The events of POSTs answered 2xx, in arrival order (a redelivered
    /// accepted id appears twice: see `doubles`).
    pub fn accepted_all(&self) -> Vec<Ev> {
        self.posts()
            .iter()
            .filter(|p| p.answered == Answer::Accept)
            .flat_map(Post::events)
            .collect()
    }

    /// The accepted events, each id once (its first delivery), in order.
    pub fn accepted(&self) -> Vec<Ev> {
        let mut seen = std::collections::HashSet::new();
        self.accepted_all()
            .into_iter()
            .filter(|e| seen.insert(e.id.clone()))
            .collect()
    }

    /// Ids accepted more than once.
    pub fn doubles(&self) -> BTreeMap<String, usize> {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for e in self.accepted_all() {
            *n.entry(e.id).or_default() += 1;
        }
        n.retain(|_, c| *c > 1);
        n
    }

    /// Accepted events named `name` on `channel`.
    pub fn accepted_of(&self, name: &str, channel: &str) -> Vec<Ev> {
        self.accepted()
            .into_iter()
            .filter(|e| e.name == name && e.channel == channel)
            .collect()
    }

    /// Every event (accepted or not) on `channel`.
    pub fn on(&self, channel: &str) -> Vec<Ev> {
        self.all()
            .into_iter()
            .filter(|e| e.channel == channel)
            .collect()
    }

    /// Waits (at most `within`) until `check` holds; on timeout, fails
    /// naming `what` and listing every POST heard.
    pub async fn wait(&self, within: Duration, what: &str, check: impl Fn(&Receiver) -> bool) {
        let start = Instant::now();
        while !check(self) {
            if start.elapsed() > within {
                panic!(
                    "not within {within:?}: {what}; heard:\n{}",
                    self.history(start)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every POST heard, one a line: when (relative to `since`), from
    /// which path, how it was answered, its events.
    pub fn history(&self, since: Instant) -> String {
        self.posts()
            .iter()
            .map(|p| {
                let at = if p.at >= since {
                    format!("+{:?}", p.at - since)
                } else {
                    format!("-{:?}", since - p.at)
                };
                let evs: Vec<String> = p.events().iter().map(|e| e.raw.clone()).collect();
                format!("{at} {} {:?} {}", p.path, p.answered, evs.join(" "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits (at most `within`) until an event `name` on `channel` has been
    /// accepted; returns the first.
    pub async fn wait_event(&self, within: Duration, name: &str, channel: &str) -> Ev {
        self.wait(within, &format!("{name} of {channel} delivered"), |r| {
            !r.accepted_of(name, channel).is_empty()
        })
        .await;
        self.accepted_of(name, channel).remove(0)
    }

    /// Waits (at most `within`) until `n` POSTs have arrived.
    pub async fn wait_posts(&self, within: Duration, n: usize) -> Vec<Post> {
        self.wait(within, &format!("{n} POSTs"), |r| r.posts().len() >= n)
            .await;
        self.posts()
    }

    /// Waits until the receiver hears nothing for `quiet` (bounded by
    /// `within`): the events after it are all that come.
    pub async fn quiet(&self, quiet: Duration, within: Duration) {
        let start = Instant::now();
        loop {
            let last = self.posts().last().map(|p| p.at);
            let idle = last.map_or(start.elapsed(), |t| t.elapsed());
            if idle >= quiet {
                return;
            }
            assert!(
                start.elapsed() < within,
                "the receiver still hears POSTs after {within:?}: {:?}",
                self.all().iter().map(|e| &e.raw).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`, as the receiver checks it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Whether `header` is `body`'s signature with `secret`, checked the way a
/// receiver should: in constant time, on the raw body.
pub fn verifies(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(bytes) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}
