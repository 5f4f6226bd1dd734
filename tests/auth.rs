//! Who may connect and join (SPEC §8.1, §8.2, §8.3, the §1 flag rows), from
//! the outside, against a real `headcount serve`: signed tokens in the query
//! and in the phoenix.js subprotocol, every refusal reason of the upgrade
//! and its counter, HS256 and the three public-key algorithms (and the
//! algorithm confusions they must refuse), `--auth optional` and
//! `--public-topic`, the token's `topics`, `--auth off`, the 4001 close when
//! `exp` passes, `--allowed-origins`, and the refusal to expose the write
//! API. Counts are checked at the end of every test.

mod common;

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use headcount::auth::unix_now;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SECRET: &str = "auth tests: a secret of at least thirty-two bytes";

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

fn key_text(name: &str) -> Vec<u8> {
    std::fs::read(key_path(name)).unwrap()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

/// HS256 with `secret`.
fn hs(secret: &[u8], claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret).unwrap(),
        claims,
    )
}

/// HS256 with the node's `--auth-secret`.
fn token(claims: &Value) -> String {
    hs(SECRET.as_bytes(), claims)
}

/// `sub` alice, expiring in an hour, plus `extra`.
fn claims(extra: Value) -> Value {
    let now = unix_now();
    let mut c = json!({"sub": "alice", "iat": now, "exp": now + 3600});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn without(mut c: Value, key: &str) -> Value {
    c.as_object_mut().unwrap().remove(key);
    c
}

/// An unsigned token (`alg: none`, empty signature).
fn alg_none(claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        part(&json!({"alg": "none", "typ": "JWT"})),
        part(claims)
    )
}

/// The `Sec-WebSocket-Protocol` value phoenix.js 1.8 sends for `authToken`:
/// `btoa(token)` with the padding stripped.
fn bearer(token: &str) -> String {
    format!(
        "phoenix, base64url.bearer.phx.{}",
        STANDARD_NO_PAD.encode(token)
    )
}

fn with_protocols(p: String) -> ConnectOpts {
    ConnectOpts {
        protocols: Some(p),
        ..ConnectOpts::default()
    }
}

/// The status and JSON body of a refused upgrade.
async fn refused(addr: SocketAddr, query: &str, opts: ConnectOpts) -> (u16, Value) {
    let err = match try_connect(addr, query, opts).await {
        Ok(_) => panic!("upgrade {query:?} was accepted; a refusal was expected"),
        Err(e) => e,
    };
    let status =
        refusal_status(&err).unwrap_or_else(|| panic!("{query:?}: not an HTTP refusal: {err}"));
    let body = refusal_body(&err);
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{query:?}: refusal body is not JSON ({e}): {body:?}"));
    (status, json)
}

/// Asserts `query`/`opts` is refused with 403 `{"error": reason}`.
async fn assert_refused(addr: SocketAddr, query: &str, opts: ConnectOpts, reason: &str) {
    let (status, body) = refused(addr, query, opts).await;
    assert_eq!(
        (status, body),
        (403, json!({ "error": reason })),
        "upgrade {query:?}"
    );
}

/// `headcount_auth_failures_total` by reason: (missing, invalid, expired).
async fn auth_failures(addr: SocketAddr) -> (f64, f64, f64) {
    let m = metrics(addr).await;
    let v = |r| m.value("headcount_auth_failures_total", &[("reason", r)]);
    (v("missing_token"), v("invalid_token"), v("expired_token"))
}

fn join_rejections(m: &Metrics, reason: &str) -> f64 {
    m.value("headcount_join_rejections_total", &[("reason", reason)])
}

/// The node's stats, checked for shape and internal agreement, with exactly
/// `sockets` sockets and these per-topic counts.
async fn assert_counts(server: &Server, sockets: u64, topics: &[(&str, u64)]) -> Value {
    let s = stats(server.addr).await;
    assert_local_stats(&s, &server.node);
    assert_eq!(s["socket_count"], sockets, "{s}");
    let want: std::collections::BTreeMap<String, u64> =
        topics.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect();
    assert_eq!(topic_counts(&s), want, "{s}");
    s
}

// ---------------------------------------------------------------------------
// §8.1 Signed tokens
// ---------------------------------------------------------------------------

#[tokio::test]
async fn hs256_token_in_the_query_or_the_phoenix_subprotocol_is_accepted() {
    let server = Server::start(&["--auth-secret", SECRET, "--allow-topic", "rooms:*"]);
    let addr = server.addr;
    let jwt = token(&claims(json!({})));

    // ?token=… (V1 and V2).
    let mut q1 = connect(addr, &format!("token={jwt}")).await;
    q1.join_ok("rooms:a", json!({})).await;
    let mut q2 = connect(addr, &format!("token={jwt}&vsn=2.0.0")).await;
    q2.join_ok("rooms:a", json!({})).await;

    // The phoenix.js subprotocol pair: the server must select `phoenix`
    // (tungstenite itself refuses a reply that selects none of the offered).
    let mut p = try_connect(addr, "vsn=2.0.0", with_protocols(bearer(&jwt)))
        .await
        .unwrap_or_else(|e| panic!("subprotocol token refused: {e}"));
    assert_eq!(
        p.response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("phoenix"),
        "the server must select `phoenix`, never the token entry"
    );
    p.join_ok("rooms:a", json!({})).await;
    p.join_ok(STATS, json!({})).await;
    // Padded and URL-safe encodings are decoded too (other clients).
    let padded = format!(
        "phoenix, base64url.bearer.phx.{}",
        base64::engine::general_purpose::STANDARD.encode(&jwt)
    );
    let mut p2 = try_connect(addr, "vsn=2.0.0", with_protocols(padded))
        .await
        .expect("padded bearer accepted");
    p2.heartbeat().await;

    assert_eq!(auth_failures(addr).await, (0.0, 0.0, 0.0));
    assert_counts(&server, 4, &[("rooms:a", 3), (STATS, 1)]).await;
}

#[tokio::test]
async fn every_bad_token_is_refused_403_with_its_reason_and_counted() {
    let server = Server::start(&["--auth-secret", SECRET, "--allow-topic", "rooms:*"]);
    let addr = server.addr;
    let now = unix_now();
    let none = ConnectOpts::default;

    // Missing: no query token, no subprotocol; an empty one counts as none.
    assert_refused(addr, "", none(), "missing token").await;
    assert_refused(addr, "vsn=2.0.0&token=", none(), "missing token").await;
    assert_refused(
        addr,
        "vsn=2.0.0",
        with_protocols("phoenix".into()),
        "missing token",
    )
    .await;

    // Invalid, in the query and in the subprotocol.
    let invalid = [
        (
            "bad signature",
            hs(
                b"another secret, also long enough......",
                &claims(json!({})),
            ),
        ),
        ("alg none", alg_none(&claims(json!({})))),
        ("garbage", "not-a-jwt".to_owned()),
        ("three garbage parts", "aaa.bbb.ccc".to_owned()),
        (
            "nbf in the future",
            token(&claims(json!({"nbf": now + 60}))),
        ),
        (
            "iat in the future",
            token(&claims(json!({"iat": now + 60}))),
        ),
        ("missing sub", token(&without(claims(json!({})), "sub"))),
        ("empty sub", token(&claims(json!({"sub": ""})))),
        (
            "missing exp (required mode)",
            token(&without(claims(json!({})), "exp")),
        ),
        (
            "topics not a list",
            token(&claims(json!({"topics": "rooms:*"}))),
        ),
        ("info not an object", token(&claims(json!({"info": "x"})))),
        (
            "info over 1 KiB",
            token(&claims(json!({"info": {"n": "x".repeat(1100)}}))),
        ),
    ];
    for (what, jwt) in &invalid {
        let (status, body) = refused(addr, &format!("token={jwt}"), none()).await;
        assert_eq!(
            (status, &body),
            (403, &json!({"error": "invalid token"})),
            "{what} (query)"
        );
        if !jwt.is_empty() {
            let (status, body) = refused(addr, "vsn=2.0.0", with_protocols(bearer(jwt))).await;
            assert_eq!(
                (status, &body),
                (403, &json!({"error": "invalid token"})),
                "{what} (subprotocol)"
            );
        }
    }
    // A bearer entry that is not base64 is invalid, not missing.
    assert_refused(
        addr,
        "vsn=2.0.0",
        with_protocols("phoenix, base64url.bearer.phx.!!!".into()),
        "invalid token",
    )
    .await;

    // Expired beyond the 5 s leeway.
    for exp in [now - 10, now - 3600] {
        let jwt = token(&claims(json!({"exp": exp})));
        assert_refused(addr, &format!("token={jwt}"), none(), "expired token").await;
        assert_refused(addr, "", with_protocols(bearer(&jwt)), "expired token").await;
    }
    // Within the 5 s leeway: accepted.
    for c in [json!({"nbf": now + 3}), json!({"iat": now + 3})] {
        let jwt = token(&claims(c.clone()));
        let mut ok = connect(addr, &format!("token={jwt}")).await;
        ok.heartbeat().await;
        ok.close().await;
    }

    let invalid_count = (invalid.len() * 2 + 1) as f64;
    assert_eq!(
        auth_failures(addr).await,
        (3.0, invalid_count, 4.0),
        "headcount_auth_failures_total{{reason}}"
    );
    // A refused upgrade is not a socket and is not a socket refusal.
    let s = wait_stats(addr, "no socket left", |s| s["socket_count"] == 0).await;
    assert_eq!(s["connection_count"], 0, "{s}");
    let m = metrics(addr).await;
    for r in ["limit", "origin", "per_ip", "draining"] {
        assert_eq!(
            m.value("headcount_sockets_refused_total", &[("reason", r)]),
            0.0,
            "{r}"
        );
    }
}

/// RS256, ES256 and EdDSA with `--auth-public-key`: good tokens work; a
/// token signed with another algorithm or key — HS256 keyed with the public
/// key's PEM text above all — is invalid.
#[tokio::test]
async fn public_key_algorithms_accept_their_tokens_and_refuse_confusions() {
    let now = unix_now();
    let c = json!({"sub": "bob", "exp": now + 3600, "topics": ["rooms:*"]});
    let kinds = [
        ("rsa", Algorithm::RS256),
        ("ec-p256", Algorithm::ES256),
        ("ed25519", Algorithm::EdDSA),
    ];
    let private = |kind: &str| {
        let pem = key_text(&format!("test-only-{kind}-private.pem"));
        match kind {
            "rsa" => EncodingKey::from_rsa_pem(&pem).unwrap(),
            "ec-p256" => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_ed_pem(&pem).unwrap(),
        }
    };
    for (kind, alg) in kinds {
        let public = key_path(&format!("test-only-{kind}-public.pem"));
        let server = Server::start(&[
            "--auth-public-key",
            public.to_str().unwrap(),
            "--allow-topic",
            "rooms:*",
        ]);
        let addr = server.addr;
        let good = sign(alg, &private(kind), &c);
        let mut a = connect(addr, &format!("token={good}&vsn=2.0.0")).await;
        a.join_ok("rooms:1", json!({})).await;
        let mut b = try_connect(addr, "vsn=2.0.0", with_protocols(bearer(&good)))
            .await
            .unwrap_or_else(|e| panic!("{kind}: subprotocol token refused: {e}"));
        b.join_ok("rooms:1", json!({})).await;
        // Outside the token's topics.
        assert_eq!(
            b.join(STATS, json!({})).await.assert_error(),
            &json!({"reason": "unauthorized"})
        );

        let mut bad = vec![
            (
                "HS256 keyed with the public key PEM".to_owned(),
                hs(&key_text(&format!("test-only-{kind}-public.pem")), &c),
            ),
            ("HS256 with some secret".into(), hs(SECRET.as_bytes(), &c)),
            ("alg none".into(), alg_none(&c)),
        ];
        for (other, other_alg) in kinds {
            if other != kind {
                bad.push((
                    format!("{other_alg:?} from the {other} key"),
                    sign(other_alg, &private(other), &c),
                ));
            }
        }
        // The right algorithm in the header, but the signature of another
        // algorithm's key.
        let (other, other_alg) = kinds.into_iter().find(|k| k.0 != kind).unwrap();
        let foreign = sign(other_alg, &private(other), &c);
        let header =
            URL_SAFE_NO_PAD.encode(json!({"alg": format!("{alg:?}"), "typ": "JWT"}).to_string());
        let forged = format!("{header}{}", &foreign[foreign.find('.').unwrap()..]);
        bad.push(("the right alg header, a foreign signature".into(), forged));
        for (what, jwt) in &bad {
            let refusal = refused(addr, &format!("token={jwt}"), ConnectOpts::default()).await;
            assert_eq!(
                refusal,
                (403, json!({"error": "invalid token"})),
                "{kind}: {what}"
            );
        }
        let expired = sign(alg, &private(kind), &json!({"sub": "bob", "exp": now - 60}));
        assert_refused(
            addr,
            &format!("token={expired}"),
            ConnectOpts::default(),
            "expired token",
        )
        .await;
        assert_eq!(
            auth_failures(addr).await,
            (0.0, bad.len() as f64, 1.0),
            "{kind}"
        );
        assert_counts(&server, 2, &[("rooms:1", 2)]).await;
        assert_eq!(join_rejections(&metrics(addr).await, "unauthorized"), 1.0);
    }
}

/// `--auth optional`: a tokenless socket is anonymous and may join only the
/// `--public-topic` globs; a bad token is still refused; a good token (even
/// without `exp`) gets its own rights.
#[tokio::test]
async fn optional_auth_lets_anonymous_sockets_join_public_topics_only() {
    let server = Server::start(&[
        "--auth-secret",
        SECRET,
        "--auth",
        "optional",
        "--public-topic",
        "lobby:*",
        "--allow-topic",
        "lobby:*,rooms:*",
    ]);
    let addr = server.addr;
    let mut anon = v2(addr).await;
    anon.join_ok("lobby:main", json!({})).await;
    for topic in ["rooms:1", STATS, STREAM] {
        assert_eq!(
            anon.join(topic, json!({})).await.assert_error(),
            &json!({"reason": "unauthorized"}),
            "{topic}"
        );
    }
    // The refusals left the socket and its membership as they were.
    anon.heartbeat().await;
    assert_counts(&server, 1, &[("lobby:main", 1)]).await;
    // phoenix.js sends `token=undefined` for an unset token param.
    let mut undef = connect(addr, "token=undefined&vsn=2.0.0").await;
    undef.join_ok("lobby:main", json!({})).await;

    // A bad token is refused even though none is needed.
    let now = unix_now();
    assert_refused(
        addr,
        "token=garbage",
        ConnectOpts::default(),
        "invalid token",
    )
    .await;
    let bad_sig = hs(
        b"not the node's secret, but long enough!!",
        &claims(json!({})),
    );
    assert_refused(addr, "", with_protocols(bearer(&bad_sig)), "invalid token").await;
    let expired = token(&claims(json!({"exp": now - 60})));
    assert_refused(
        addr,
        &format!("token={expired}"),
        ConnectOpts::default(),
        "expired token",
    )
    .await;

    // A good token: every allowed topic (no `topics` claim), but not the
    // public ones by virtue of being public: the token decides.
    let no_exp = token(&without(claims(json!({})), "exp"));
    let mut user = connect(addr, &format!("token={no_exp}&vsn=2.0.0")).await;
    user.join_ok("rooms:1", json!({})).await;
    user.join_ok(STATS, json!({})).await;
    user.join_ok("lobby:main", json!({})).await;
    let limited = token(&claims(json!({"topics": ["rooms:1"]})));
    let mut lim = connect(addr, &format!("token={limited}")).await;
    lim.join_ok("rooms:1", json!({})).await;
    assert_eq!(
        lim.join("lobby:main", json!({})).await.assert_error(),
        &json!({"reason": "unauthorized"}),
        "public topics are for anonymous sockets; the token's topics rule"
    );

    assert_eq!(auth_failures(addr).await, (0.0, 2.0, 1.0));
    assert_eq!(join_rejections(&metrics(addr).await, "unauthorized"), 4.0);
    assert_counts(&server, 4, &[("lobby:main", 3), ("rooms:1", 2), (STATS, 1)]).await;
}

/// The token's `topics` globs: inside → ok, outside → `unauthorized` and
/// nothing counted; an existing membership survives a refused join.
#[tokio::test]
async fn token_topics_globs_decide_which_joins_are_authorized() {
    let server = Server::start(&["--auth-secret", SECRET, "--allow-topic", "rooms:*,dm:*"]);
    let addr = server.addr;
    let jwt = token(&claims(json!({"topics": ["rooms:*", "dm:alice:?"]})));
    let mut c = connect(addr, &format!("token={jwt}&vsn=2.0.0")).await;
    c.join_ok("rooms:lobby", json!({})).await;
    c.join_ok("dm:alice:1", json!({})).await;
    for topic in ["dm:alice:12", "dm:bob:1", STATS, STREAM] {
        let reply = c.join(topic, json!({})).await;
        assert_eq!(
            reply.assert_error(),
            &json!({"reason": "unauthorized"}),
            "{topic}"
        );
    }
    // Still joined where it was: a push on rooms:lobby is answered.
    c.request("rooms:lobby", "get_connection_stats", json!({}))
        .await
        .assert_ok();
    // An empty list allows nothing.
    let nothing = token(&claims(json!({"topics": []})));
    let mut n = connect(addr, &format!("token={nothing}")).await;
    assert_eq!(
        n.join("rooms:lobby", json!({})).await.assert_error(),
        &json!({"reason": "unauthorized"})
    );
    n.heartbeat().await;
    let m = metrics(addr).await;
    assert_eq!(join_rejections(&m, "unauthorized"), 5.0, "{}", m.text);
    assert_counts(&server, 2, &[("rooms:lobby", 1), ("dm:alice:1", 1)]).await;
}

/// `--auth off` with a secret set: tokens are not looked at, good, bad or
/// expired, and no socket is ever closed for its `exp`.
#[tokio::test]
async fn auth_off_ignores_tokens_even_with_a_secret() {
    let server = Server::start(&[
        "--auth-secret",
        SECRET,
        "--auth",
        "off",
        "--allow-topic",
        "rooms:*",
    ]);
    let addr = server.addr;
    let now = unix_now();
    let soon = token(&claims(json!({"exp": now + 1, "topics": ["other:*"]})));
    let mut clients = vec![v2(addr).await];
    for q in [
        "token=garbage".to_owned(),
        format!("token={}", token(&claims(json!({"exp": now - 3600})))),
        format!("token={soon}&vsn=2.0.0"),
    ] {
        clients.push(connect(addr, &q).await);
    }
    clients.push(
        try_connect(addr, "vsn=2.0.0", with_protocols(bearer("garbage")))
            .await
            .expect("the subprotocol is still answered"),
    );
    for c in &mut clients {
        // The token's `topics` do not apply either.
        c.join_ok("rooms:1", json!({})).await;
    }
    // Past the `exp` of `soon` (plus a margin): nobody is closed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for c in &mut clients {
        c.heartbeat().await;
    }
    assert_eq!(auth_failures(addr).await, (0.0, 0.0, 0.0));
    let m = metrics(addr).await;
    assert_eq!(m.value("headcount_token_expiry_closes_total", &[]), 0.0);
    assert_counts(&server, 5, &[("rooms:1", 5)]).await;
}

/// A socket whose token's `exp` passes is closed 4001 `token expired` (not
/// before `exp`, and promptly after), its memberships counted down; a
/// socket with a longer token on the same node is untouched.
#[tokio::test]
async fn an_open_socket_is_closed_4001_when_its_token_expires() {
    let server = Server::start(&["--auth-secret", SECRET, "--allow-topic", "rooms:*"]);
    let addr = server.addr;
    let start = Instant::now();
    let exp = unix_now() + 3;
    let short = token(&claims(json!({"exp": exp})));
    let long = token(&claims(json!({})));
    let mut by_query = connect(addr, &format!("token={short}")).await;
    let mut by_protocol = try_connect(addr, "vsn=2.0.0", with_protocols(bearer(&short)))
        .await
        .expect("connect");
    let mut stays = connect(addr, &format!("token={long}&vsn=2.0.0")).await;
    for c in [&mut by_query, &mut by_protocol, &mut stays] {
        c.join_ok("rooms:1", json!({})).await;
        c.join_ok(STATS, json!({})).await;
    }
    assert_counts(&server, 3, &[("rooms:1", 3), (STATS, 3)]).await;

    for c in [&mut by_query, &mut by_protocol] {
        let closed = c.expect_closed().await;
        let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let elapsed = start.elapsed();
        assert_eq!(closed, Closed::Frame(4001, "token expired".into()));
        // Not before exp (100 ms for clocks read in different processes)...
        assert!(
            at.as_secs_f64() >= exp as f64 - 0.1,
            "closed at {at:?}, before exp {exp}"
        );
        // ...and within a few seconds of it (exp is 2–3 s after `start`).
        assert!(
            elapsed >= Duration::from_secs(2) && elapsed <= Duration::from_secs(6),
            "closed {elapsed:?} after connecting with exp in ≤3 s"
        );
    }
    stays.heartbeat().await;
    let s = wait_stats(addr, "expired sockets counted down", |s| {
        s["socket_count"] == 1
    })
    .await;
    assert_eq!(s["connection_count"], 2, "{s}");
    assert_counts(&server, 1, &[("rooms:1", 1), (STATS, 1)]).await;
    let m = metrics(addr).await;
    assert_eq!(m.value("headcount_token_expiry_closes_total", &[]), 2.0);
}

/// A token already past its `exp` but within the 5 s leeway is accepted at
/// the upgrade. Its socket must not be closed 4001 at once: phoenix.js
/// reconnects 10 ms after any close, with the same token if the app has no
/// new one yet, and would be let in and closed again in a loop until the
/// leeway ran out (hundreds of sockets and joins a second per client). It
/// is closed when the node stops accepting the token, so that coming back
/// with it is refused 403 `expired token` (and phoenix.js backs off).
#[tokio::test]
async fn a_token_within_the_leeway_after_exp_gets_no_reconnect_loop() {
    let server = Server::start(&["--auth-secret", SECRET, "--allow-topic", "rooms:*"]);
    let addr = server.addr;
    let exp = unix_now() - 2;
    let jwt = token(&claims(json!({"exp": exp})));
    let mut c = connect(addr, &format!("token={jwt}&vsn=2.0.0")).await;
    c.join_ok("rooms:1", json!({})).await;
    // Not closed at once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.heartbeat().await;
    assert_counts(&server, 1, &[("rooms:1", 1)]).await;
    let closed = c.expect_closed().await;
    let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(closed, Closed::Frame(4001, "token expired".into()));
    let after_exp = at.as_secs_f64() - exp as f64;
    assert!(
        (5.0..=9.0).contains(&after_exp),
        "closed {after_exp:.3} s after exp: the leeway is 5 s"
    );
    // The same token again: refused, not let in to be closed again.
    assert_refused(
        addr,
        &format!("token={jwt}&vsn=2.0.0"),
        ConnectOpts::default(),
        "expired token",
    )
    .await;
    let s = wait_stats(addr, "the socket counted down", |s| s["socket_count"] == 0).await;
    assert_eq!(s["connection_count"], 0, "{s}");
    let m = metrics(addr).await;
    assert_eq!(m.value("headcount_token_expiry_closes_total", &[]), 1.0);
    assert_eq!(auth_failures(addr).await, (0.0, 0.0, 1.0));
}

// ---------------------------------------------------------------------------
// §8.2 Origins
// ---------------------------------------------------------------------------

async fn with_origin(
    addr: SocketAddr,
    origin: &str,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let opts = ConnectOpts {
        headers: vec![("Origin".into(), origin.into())],
        ..ConnectOpts::default()
    };
    try_connect(addr, "vsn=2.0.0", opts).await
}

#[tokio::test]
async fn allowed_origins_refuse_other_origins_403_and_let_non_browsers_in() {
    let server = Server::start(&["--allowed-origins", "https://app.example.com,*.example.org"]);
    let addr = server.addr;
    let mut accepted = Vec::new();
    for origin in [
        "https://app.example.com",
        "https://app.example.com/",
        "https://a.example.org",
        "http://deep.sub.example.org",
    ] {
        let mut c = with_origin(addr, origin)
            .await
            .unwrap_or_else(|e| panic!("{origin} refused: {e}"));
        c.join_ok(STATS, json!({})).await;
        accepted.push(c);
    }
    let refused_origins = [
        "https://evil.com",
        "http://app.example.com",
        "https://app.example.com.evil.com",
        "https://evil.com/?https://app.example.com",
        "null",
    ];
    for origin in refused_origins {
        let err = with_origin(addr, origin)
            .await
            .err()
            .unwrap_or_else(|| panic!("{origin} was accepted"));
        assert_eq!(refusal_status(&err), Some(403), "{origin}: {err}");
        let body: Value = serde_json::from_str(&refusal_body(&err)).unwrap();
        assert_eq!(body, json!({"error": "origin not allowed"}), "{origin}");
    }
    // No Origin header: not a browser, not refused for it.
    let mut plain = v2(addr).await;
    plain.join_ok(STATS, json!({})).await;
    let m = metrics(addr).await;
    assert_eq!(
        m.value("headcount_sockets_refused_total", &[("reason", "origin")]),
        refused_origins.len() as f64
    );
    assert_counts(&server, 5, &[(STATS, 5)]).await;
}

/// The origin is checked before the token: a browser on a foreign page is
/// told `origin not allowed` and no auth failure is counted.
#[tokio::test]
async fn origin_is_checked_before_the_token() {
    let server = Server::start(&[
        "--auth-secret",
        SECRET,
        "--allowed-origins",
        "https://app.example.com",
    ]);
    let addr = server.addr;
    let err = with_origin(addr, "https://evil.com").await.err().unwrap();
    assert_eq!(refusal_status(&err), Some(403));
    assert_eq!(
        serde_json::from_str::<Value>(&refusal_body(&err)).unwrap(),
        json!({"error": "origin not allowed"})
    );
    let err = with_origin(addr, "https://app.example.com")
        .await
        .err()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&refusal_body(&err)).unwrap(),
        json!({"error": "missing token"})
    );
    assert_eq!(auth_failures(addr).await, (1.0, 0.0, 0.0));
    let m = metrics(addr).await;
    assert_eq!(
        m.value("headcount_sockets_refused_total", &[("reason", "origin")]),
        1.0
    );
    assert_counts(&server, 0, &[]).await;
}

// ---------------------------------------------------------------------------
// §8.3 The HTTP write API
// ---------------------------------------------------------------------------

/// The server's port as reached over loopback (it may listen on 0.0.0.0).
fn loopback(addr: SocketAddr) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], addr.port()))
}

#[tokio::test]
async fn a_non_loopback_bind_without_an_api_key_refuses_to_start() {
    let out = bare_command()
        .args(["serve", "--bind", "0.0.0.0:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--api-key") && stderr.contains("--insecure-api"),
        "the message names both ways out: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no start line");
    // The same from the environment.
    let out = bare_command()
        .arg("serve")
        .env("HEADCOUNT_BIND", "0.0.0.0:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // --insecure-api: starts, and the write API answers without a key.
    let insecure = Server::builder()
        .no_bind()
        .args(["--bind", "0.0.0.0:0", "--insecure-api"])
        .start();
    let addr = loopback(insecure.addr);
    let res = post_json(
        addr,
        "/api/broadcast",
        &json!({"topic": "rooms:x", "event": "e", "payload": {}}),
    )
    .await;
    assert_eq!(res.status, 202, "{}", res.text());
    let mut c = v2(addr).await;
    c.join_ok(STATS, json!({})).await;

    // --api-key: starts, and the write API demands the key.
    let keyed = Server::builder()
        .no_bind()
        .args(["--bind", "0.0.0.0:0", "--api-key", "k3y"])
        .start();
    let addr = loopback(keyed.addr);
    let body = json!({"topic": "rooms:x", "event": "e", "payload": {}}).to_string();
    let res = post(addr, "/api/broadcast", &[], body.as_bytes()).await;
    assert_eq!(res.status, 401, "{}", res.text());
    let res = post(
        addr,
        "/api/broadcast",
        &[("Authorization", "Bearer k3y")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(res.status, 202, "{}", res.text());
    assert_eq!(stats(addr).await["socket_count"], 0);
}
