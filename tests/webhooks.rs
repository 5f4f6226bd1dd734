//! Occupancy webhooks on one node, black box (SPEC §10): a real
//! `headcount serve` POSTs to a real receiver (axum on loopback, in the
//! test). Signatures, each event kind, the vacate delay and quick
//! reconnects, batches of at most 100, and retries of a failing or silent
//! receiver with the same ids.
//!
//! Bounds: an arrival is decided within one 50 ms look and delivered
//! within the 250 ms a batch may wait; on a loaded 2-core machine the tests
//! allow `LATENCY` for both. "Nothing is sent" is proven with a marker: a
//! later transition on another topic, delivered after whatever was decided
//! before it (one node delivers its events in order).

mod common;
mod webhook_support;

use common::{metrics, v2, wait_for, Client, Server, NO_LIMITS};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use webhook_support::{sign, verifies, Answer, Ev, Receiver};

const SECRET: &str = "whsec-test-1";
/// The vacate delay of these tests.
const DELAY: Duration = Duration::from_millis(800);
/// Longest a transition may take to reach the receiver (contract: a 50 ms
/// look plus at most 250 ms in a batch), with room for a loaded machine.
const LATENCY: Duration = Duration::from_millis(1500);

fn node(receiver: &Receiver, extra: &[&str]) -> Server {
    let delay = DELAY.as_millis().to_string();
    let url = receiver.url("n1");
    let mut args = vec![
        "--allow-topic",
        "rooms:*",
        "--presence-topic",
        "rooms:p:*",
        "--webhook-url",
        &url,
        "--webhook-secret",
        SECRET,
        "--webhook-vacate-delay-ms",
        &delay,
    ];
    args.extend(NO_LIMITS);
    args.extend_from_slice(extra);
    Server::start(&args)
}

async fn client(s: &Server) -> Client {
    v2(s.addr).await.with_timeout(Duration::from_secs(5))
}

/// Joins `topic` as `user` (a presence KEY), on a fresh socket.
async fn member(s: &Server, topic: &str, user: &str) -> Client {
    let mut c = client(s).await;
    c.join_ok(topic, json!({"user_id": user})).await;
    c
}

fn names(evs: &[Ev]) -> Vec<(String, String, Option<String>)> {
    evs.iter()
        .map(|e| (e.name.clone(), e.channel.clone(), e.user_id.clone()))
        .collect()
}

fn assert_unique_ids(r: &Receiver) {
    let all = r.accepted_all();
    let ids: HashSet<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), all.len(), "ids unique: {:?}", names(&all));
    assert!(
        all.iter().all(|e| !e.id.is_empty()),
        "every event has an id"
    );
}

/// Makes a transition on a fresh topic and waits for it: every event
/// decided before it has been delivered by then.
async fn marker(s: &Server, r: &Receiver, name: &str) -> Client {
    let mut c = client(s).await;
    let topic = format!("rooms:marker:{name}");
    c.join_ok(&topic, json!({})).await;
    r.wait_event(LATENCY, "channel_occupied", &topic).await;
    c
}

#[tokio::test]
async fn batches_are_signed_json() {
    let r = Receiver::start().await;
    let s = node(&r, &[]);
    let mut c = client(&s).await;
    let before = unix_ms();
    c.join_ok("rooms:sig", json!({})).await;
    r.wait_event(LATENCY, "channel_occupied", "rooms:sig").await;
    let post = r.posts().remove(0);
    assert_eq!(post.content_type.as_deref(), Some("application/json"));
    let header = post.signature.clone().expect("X-Headcount-Signature");
    assert_eq!(
        header,
        sign(SECRET, &post.body),
        "hex HMAC-SHA256 of the raw body"
    );
    assert!(verifies(SECRET, &post.body, &header));
    assert!(!verifies("another-secret", &post.body, &header));
    assert!(
        !verifies(
            SECRET,
            format!("{} ", String::from_utf8_lossy(&post.body)).as_bytes(),
            &header
        ),
        "the raw body, byte for byte"
    );
    let body = &post.json;
    let obj = body.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["events", "time_ms"], "{body}");
    let t = body["time_ms"].as_u64().expect("time_ms in unix ms");
    assert!(t >= before && t <= unix_ms(), "time_ms {t} is now");
    let events = body["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{body}");
    let e = &events[0];
    assert!(e["id"].is_string(), "{e}");
    assert_eq!(
        e.as_object().unwrap().len(),
        3,
        "id, name, channel; no user_id for a channel: {e}"
    );
    assert_eq!(e["name"], "channel_occupied");
    assert_eq!(e["channel"], "rooms:sig");
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn occupied_at_the_first_join_vacated_after_the_delay() {
    let r = Receiver::start().await;
    let s = node(&r, &[]);
    let mut a = client(&s).await;
    let joined = Instant::now();
    a.join_ok("rooms:a", json!({})).await;
    let occupied = r.wait_event(LATENCY, "channel_occupied", "rooms:a").await;
    eprintln!(
        "figure: channel_occupied {:?} after the join",
        occupied.at - joined
    );
    // A second member, on another socket: the count goes 1 → 2, no event.
    let mut b = client(&s).await;
    b.join_ok("rooms:a", json!({})).await;
    b.leave("rooms:a").await.assert_ok();
    let left = Instant::now();
    a.leave("rooms:a").await.assert_ok();
    let vacated = r
        .wait_event(DELAY + LATENCY, "channel_vacated", "rooms:a")
        .await;
    let after = vacated.at - left;
    eprintln!("figure: channel_vacated {after:?} after the last leave (delay {DELAY:?})");
    assert!(
        after >= DELAY,
        "vacated {after:?} after the leave, before the delay"
    );
    assert!(
        after <= DELAY + LATENCY,
        "vacated {after:?} after the leave"
    );
    let _m = marker(&s, &r, "a").await;
    assert_eq!(
        names(&r.on("rooms:a")),
        names(&[occupied, vacated]),
        "one occupied, one vacated"
    );
    assert_unique_ids(&r);
}

#[tokio::test]
async fn a_closed_socket_vacates_too_and_occupied_comes_again() {
    let r = Receiver::start().await;
    let s = node(&r, &[]);
    let mut a = client(&s).await;
    a.join_ok("rooms:b", json!({})).await;
    r.wait_event(LATENCY, "channel_occupied", "rooms:b").await;
    let closed = Instant::now();
    a.abort();
    let vacated = r
        .wait_event(DELAY + LATENCY, "channel_vacated", "rooms:b")
        .await;
    assert!(vacated.at - closed >= DELAY, "{:?}", vacated.at - closed);
    let mut b = client(&s).await;
    b.join_ok("rooms:b", json!({})).await;
    r.wait(LATENCY, "a second channel_occupied", |r| {
        r.accepted_of("channel_occupied", "rooms:b").len() == 2
    })
    .await;
    let seq: Vec<String> = r.on("rooms:b").into_iter().map(|e| e.name).collect();
    assert_eq!(
        seq,
        ["channel_occupied", "channel_vacated", "channel_occupied"]
    );
    assert_unique_ids(&r);
}

#[tokio::test]
async fn a_quick_reconnect_sends_nothing() {
    let r = Receiver::start().await;
    let s = node(&r, &[]);
    let mut a = client(&s).await;
    a.join_ok("rooms:q", json!({})).await;
    r.wait_event(LATENCY, "channel_occupied", "rooms:q").await;
    // Gone (socket dropped) and back on a new socket well within the delay,
    // twice; then a leave and a rejoin on the same socket.
    for _ in 0..2 {
        let gone = Instant::now();
        a.abort();
        a = client(&s).await;
        a.join_ok("rooms:q", json!({})).await;
        assert!(gone.elapsed() < DELAY / 2, "back within the delay");
    }
    let gone = Instant::now();
    a.leave("rooms:q").await.assert_ok();
    a.join_ok("rooms:q", json!({})).await;
    assert!(gone.elapsed() < DELAY / 2, "back within the delay");
    // Past the delay (and a look), a marker: anything decided is delivered.
    tokio::time::sleep(DELAY + Duration::from_millis(200)).await;
    let _m = marker(&s, &r, "q").await;
    let seq: Vec<String> = r.on("rooms:q").into_iter().map(|e| e.name).collect();
    assert_eq!(seq, ["channel_occupied"], "no vacated, no second occupied");
    // Still occupied: leaving for good now vacates it once.
    a.leave("rooms:q").await.assert_ok();
    r.wait_event(DELAY + LATENCY, "channel_vacated", "rooms:q")
        .await;
    assert_unique_ids(&r);
}

#[tokio::test]
async fn members_added_and_removed_per_user_on_presence_topics() {
    let r = Receiver::start().await;
    let s = node(&r, &[]);
    let t = "rooms:p:1";
    let mut tab1 = member(&s, t, "alice").await;
    let mut tab2 = member(&s, t, "alice").await;
    let bob = member(&s, t, "bob").await;
    let mut anon = client(&s).await;
    anon.join_ok(t, json!({})).await;
    r.wait(LATENCY, "three member_added", |r| {
        r.accepted()
            .iter()
            .filter(|e| e.name == "member_added")
            .count()
            >= 3
    })
    .await;
    let m0 = marker(&s, &r, "p0").await;
    let added = r.accepted_of("member_added", t);
    let mut users: Vec<String> = added.iter().filter_map(|e| e.user_id.clone()).collect();
    users.sort();
    assert_eq!(users.len(), 3, "{:?}", names(&added));
    assert_eq!(users[0], "alice", "two tabs, one member_added");
    assert!(users[1].starts_with("anon:"), "an anonymous KEY: {users:?}");
    assert_eq!(users[2], "bob");
    let anon_key = users[1].clone();
    for e in &added {
        let v: Value = serde_json::from_str(&e.raw).unwrap();
        assert_eq!(
            v.as_object().unwrap().len(),
            4,
            "id, name, channel, user_id: {v}"
        );
    }
    assert_eq!(r.accepted_of("channel_occupied", t).len(), 1);

    // One of alice's tabs goes: she is still here. bob goes for good (his
    // socket dropped).
    tab1.leave(t).await.assert_ok();
    let bob_left = Instant::now();
    bob.abort();
    // alice's last tab goes and comes back quickly: nothing.
    tab2.leave(t).await.assert_ok();
    tab2.join_ok(t, json!({"user_id": "alice"})).await;
    let removed = r.wait_event(DELAY + LATENCY, "member_removed", t).await;
    assert_eq!(removed.user_id.as_deref(), Some("bob"), "{}", removed.raw);
    assert!(
        removed.at - bob_left >= DELAY,
        "{:?}",
        removed.at - bob_left
    );
    tokio::time::sleep(DELAY).await;
    let m1 = marker(&s, &r, "p1").await;
    let seq = names(&r.on(t));
    let user = |u: &str| Some(u.to_owned());
    assert_eq!(
        seq.iter().filter(|e| e.2 == user("alice")).count(),
        1,
        "alice: one member_added, no removal while a tab stays or comes back: {seq:?}"
    );
    // Everyone leaves: alice and the anonymous member are removed, and the
    // channel is vacated, once each.
    let left = Instant::now();
    tab2.leave(t).await.assert_ok();
    anon.leave(t).await.assert_ok();
    r.wait(DELAY + LATENCY, "the last removals and the vacated", |r| {
        r.accepted_of("member_removed", t).len() == 3
            && r.accepted_of("channel_vacated", t).len() == 1
    })
    .await;
    for e in r
        .on(t)
        .iter()
        .filter(|e| e.name != "member_added" && e.at > left)
    {
        assert!(e.at - left >= DELAY, "{} after {:?}", e.raw, e.at - left);
    }
    let _m2 = marker(&s, &r, "p2").await;
    let mut seq = names(&r.on(t));
    seq.sort();
    let c = |n: &str, u: Option<&str>| (n.to_owned(), t.to_owned(), u.map(str::to_owned));
    let mut want = vec![
        c("channel_occupied", None),
        c("member_added", Some("alice")),
        c("member_added", Some("bob")),
        c("member_added", Some(&anon_key)),
        c("member_removed", Some("bob")),
        c("member_removed", Some("alice")),
        c("member_removed", Some(&anon_key)),
        c("channel_vacated", None),
    ];
    want.sort();
    assert_eq!(seq, want);
    assert_unique_ids(&r);
    drop((m0, m1));
}

#[tokio::test]
async fn batches_hold_at_most_100_events() {
    let r = Receiver::start().await;
    // The first batch fails once: the 150 events decided during its 1 s
    // backoff wait together, and must go in batches of 100 at most.
    r.script(&[Answer::Fail]);
    let s = node(&r, &[]);
    let _first = marker_unwaited(&s, "batch").await;
    r.wait_posts(LATENCY, 1).await;
    // 150 topics occupied at once: two sockets (100 channels each at most)
    // each send their 75 joins in one write.
    let mut sockets = [client(&s).await, client(&s).await];
    let topic = |n: usize| format!("rooms:many:{n}");
    for (part, c) in sockets.iter_mut().enumerate() {
        let frames: Vec<String> = (part * 75..part * 75 + 75)
            .map(|n| json!([n.to_string(), n.to_string(), topic(n), "phx_join", {}]).to_string())
            .collect();
        c.send_batch(&frames).await;
    }
    for (part, c) in sockets.iter_mut().enumerate() {
        for n in part * 75..part * 75 + 75 {
            let reply = c.reply_to(&topic(n), &json!(n.to_string())).await;
            assert_eq!(reply.status, "ok", "{}", reply.msg.raw);
        }
    }
    r.wait(Duration::from_secs(5), "150 channel_occupied", |r| {
        r.accepted().len() >= 151
    })
    .await;
    let posts = r.posts();
    let sizes: Vec<usize> = posts.iter().map(|p| p.events().len()).collect();
    eprintln!("figure: 1 + 150 events in batches of {sizes:?}");
    assert!(
        sizes.iter().all(|&n| (1..=100).contains(&n)),
        "batch sizes {sizes:?}"
    );
    assert!(sizes.contains(&100), "a full batch: {sizes:?}");
    let many: Vec<Ev> = r
        .accepted_all()
        .into_iter()
        .filter(|e| e.channel.starts_with("rooms:many:"))
        .collect();
    assert_eq!(many.len(), 150, "each exactly once");
    let channels: HashSet<&str> = many.iter().map(|e| e.channel.as_str()).collect();
    assert_eq!(channels.len(), 150);
    assert!(many.iter().all(|e| e.name == "channel_occupied"));
    assert_unique_ids(&r);
}

/// Joins `rooms:marker:<name>` on a fresh socket without waiting for its
/// event.
async fn marker_unwaited(s: &Server, name: &str) -> Client {
    let mut c = client(s).await;
    c.join_ok(&format!("rooms:marker:{name}"), json!({})).await;
    c
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_batch_again() {
    let r = Receiver::start().await;
    r.script(&[Answer::Fail, Answer::Fail]);
    let s = node(&r, &[]);
    let mut c = client(&s).await;
    c.join_ok("rooms:retry", json!({})).await;
    let posts = r
        .wait_posts(LATENCY + Duration::from_secs(3) + LATENCY, 3)
        .await;
    let delivered = r
        .wait_event(LATENCY, "channel_occupied", "rooms:retry")
        .await;
    let answers: Vec<Answer> = posts.iter().map(|p| p.answered).collect();
    assert_eq!(answers, [Answer::Fail, Answer::Fail, Answer::Accept]);
    let ids: Vec<Vec<String>> = posts.iter().map(|p| p.ids()).collect();
    assert_eq!(ids[0].len(), 1);
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "the same batch, the same ids: {ids:?}"
    );
    for p in &posts {
        assert!(verifies(SECRET, &p.body, p.signature.as_deref().unwrap()));
    }
    // Exponential backoff: 1 s, then 2 s.
    let gaps: Vec<Duration> = posts.windows(2).map(|w| w[1].at - w[0].at).collect();
    eprintln!("figure: retries after {gaps:?}");
    assert!(
        gaps[0] >= Duration::from_millis(900) && gaps[0] < Duration::from_millis(2500),
        "{gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(1900) && gaps[1] < Duration::from_millis(3500),
        "{gaps:?}"
    );
    let m = metrics(s.addr).await;
    let failed = m.value(
        "headcount_webhook_deliveries_total",
        &[("outcome", "failed")],
    );
    assert!(failed >= 2.0, "failed = {failed}");
    wait_for(LATENCY, "delivered counted", || async {
        metrics(s.addr).await.value(
            "headcount_webhook_deliveries_total",
            &[("outcome", "delivered")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        m.get(
            "headcount_webhook_deliveries_total",
            &[("outcome", "dropped")]
        )
        .unwrap_or(0.0),
        0.0
    );
    // Nothing lost or doubled, and later events still flow.
    let _m = marker(&s, &r, "retry").await;
    assert_eq!(
        r.accepted_of("channel_occupied", "rooms:retry"),
        vec![delivered]
    );
    assert!(r.doubles().is_empty(), "{:?}", r.doubles());
    wait_for(LATENCY, "nothing pending", || async {
        metrics(s.addr)
            .await
            .unlabelled("headcount_webhook_pending")
            == 0.0
    })
    .await;
}

#[tokio::test]
async fn pending_shows_a_batch_that_keeps_failing() {
    let r = Receiver::start().await;
    r.answer(Answer::Fail);
    let s = node(&r, &[]);
    let mut c = client(&s).await;
    c.join_ok("rooms:stuck", json!({})).await;
    r.wait_posts(LATENCY, 1).await;
    wait_for(LATENCY, "pending 1, failed 1", || async {
        let m = metrics(s.addr).await;
        m.unlabelled("headcount_webhook_pending") >= 1.0
            && m.value(
                "headcount_webhook_deliveries_total",
                &[("outcome", "failed")],
            ) >= 1.0
    })
    .await;
    // Events decided meanwhile wait behind it and are counted too.
    c.join_ok("rooms:stuck2", json!({})).await;
    wait_for(LATENCY, "pending 2", || async {
        metrics(s.addr)
            .await
            .unlabelled("headcount_webhook_pending")
            >= 2.0
    })
    .await;
    r.answer(Answer::Accept);
    r.wait_event(Duration::from_secs(4), "channel_occupied", "rooms:stuck2")
        .await;
    wait_for(LATENCY, "nothing pending", || async {
        metrics(s.addr)
            .await
            .unlabelled("headcount_webhook_pending")
            == 0.0
    })
    .await;
    assert!(r.doubles().is_empty());
}

#[tokio::test]
async fn a_receiver_that_does_not_answer_gets_the_batch_again_after_5_s() {
    let r = Receiver::start().await;
    r.script(&[Answer::Hang]);
    let s = node(&r, &[]);
    let mut c = client(&s).await;
    c.join_ok("rooms:slow", json!({})).await;
    let posts = r
        .wait_posts(
            LATENCY + Duration::from_secs(5) + Duration::from_secs(1) + LATENCY,
            2,
        )
        .await;
    let gap = posts[1].at - posts[0].at;
    eprintln!("figure: a silent receiver is tried again {gap:?} later");
    assert!(
        gap >= Duration::from_millis(5900) && gap < Duration::from_millis(6000) + LATENCY,
        "5 s timeout + 1 s backoff, got {gap:?}"
    );
    assert_eq!(posts[0].ids(), posts[1].ids());
    r.wait_event(LATENCY, "channel_occupied", "rooms:slow")
        .await;
    assert!(
        metrics(s.addr).await.value(
            "headcount_webhook_deliveries_total",
            &[("outcome", "failed")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_members_user_id_is_the_token_sub_else_the_join_param() {
    let r = Receiver::start().await;
    let s = node(
        &r,
        &[
            "--auth-secret",
            "auth-secret",
            "--auth",
            "optional",
            "--public-topic",
            "rooms:*",
        ],
    );
    let now = unix_ms() / 1000;
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "carol", "iat": now, "exp": now + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(b"auth-secret").unwrap(),
    )
    .unwrap();
    let t = "rooms:p:tok";
    let mut signed = common::connect(s.addr, &format!("token={jwt}&vsn=2.0.0")).await;
    // The token's sub is the KEY, whatever the join param says.
    signed.join_ok(t, json!({"user_id": "mallory"})).await;
    let _anon = member(&s, t, "dave").await;
    r.wait(LATENCY, "two member_added", |r| {
        r.accepted_of("member_added", t).len() >= 2
    })
    .await;
    let _m = marker(&s, &r, "tok").await;
    let mut users: Vec<String> = r
        .accepted_of("member_added", t)
        .into_iter()
        .filter_map(|e| e.user_id)
        .collect();
    users.sort();
    assert_eq!(users, ["carol", "dave"]);
}

#[tokio::test]
async fn a_redirect_is_not_a_delivery() {
    // A 302 is not a 2xx: the batch is tried again. (Were the redirect
    // followed, the POST would turn into a GET without the events, and
    // a 200 there would count as delivered.)
    let r = Receiver::start().await;
    r.script(&[Answer::Redirect]);
    let s = node(&r, &[]);
    let mut c = client(&s).await;
    c.join_ok("rooms:moved", json!({})).await;
    let posts = r
        .wait_posts(LATENCY + Duration::from_secs(1) + LATENCY, 2)
        .await;
    assert_eq!(posts[0].ids(), posts[1].ids(), "the same batch again");
    r.wait_event(LATENCY, "channel_occupied", "rooms:moved")
        .await;
    assert!(
        r.landings().is_empty(),
        "followed the redirect: {:?}",
        r.landings()
    );
    assert!(
        metrics(s.addr).await.value(
            "headcount_webhook_deliveries_total",
            &[("outcome", "failed")]
        ) >= 1.0
    );
}
