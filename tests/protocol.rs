//! The Phoenix Channels wire protocol of SPEC §2 over real sockets: vsn
//! selection, the `phoenix` subprotocol, V1 objects and V2 arrays with refs
//! echoed in their JSON type, V2 binary pushes, heartbeat, join / leave /
//! phx_close, duplicate joins, stale join refs, unmatched topics, unknown
//! events and malformed frames.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn vsn_absent_or_1x_selects_v1_and_2x_selects_v2() {
    let server = Server::start(&[]);
    for query in ["", "vsn=1.0.0", "vsn=1", "token=abc&vsn=1.0.0"] {
        let mut c = connect(server.addr, query).await;
        c.send_text(r#"{"topic":"patterns:stats","event":"phx_join","payload":{},"ref":"1"}"#)
            .await;
        let m = c.next_msg().await;
        let v: Value = serde_json::from_str(&m.raw).unwrap();
        assert!(
            v.is_object(),
            "{query:?}: V1 reply must be an object: {}",
            m.raw
        );
        assert_eq!(v["event"], "phx_reply");
        assert_eq!(v["ref"], "1");
        assert_eq!(v["payload"], json!({"status": "ok", "response": {}}));
    }
    for query in ["vsn=2.0.0", "vsn=2", "token=abc&vsn=2.0.0"] {
        let mut c = connect(server.addr, query).await;
        c.send_text(r#"["1","1","patterns:stats","phx_join",{}]"#)
            .await;
        let m = c.next_msg().await;
        let v: Value = serde_json::from_str(&m.raw).unwrap();
        assert_eq!(
            v,
            json!(["1", "1", "patterns:stats", "phx_reply", {"status": "ok", "response": {}}]),
            "{query:?}"
        );
    }
}

#[tokio::test]
async fn other_vsn_values_are_refused_with_403() {
    let server = Server::start(&[]);
    for query in ["vsn=3.0.0", "vsn=abc", "vsn=", "vsn=10.0", "vsn=0.9"] {
        let err = try_connect(server.addr, query, ConnectOpts::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("{query:?} was accepted"));
        assert_eq!(refusal_status(&err), Some(403), "{query:?}: {err}");
    }
    // Nothing was counted for the refused attempts.
    let s = stats(server.addr).await;
    assert_eq!(s["socket_count"], 0, "{s}");
}

#[tokio::test]
async fn phoenix_subprotocol_is_selected_when_offered() {
    let server = Server::start(&[]);
    // What the JS client sends with an auth token.
    let opts = ConnectOpts {
        protocols: Some("phoenix, base64url.bearer.phx.c2VjcmV0".into()),
        ..ConnectOpts::default()
    };
    let mut c = try_connect(server.addr, "vsn=2.0.0", opts)
        .await
        .expect("connect with the phoenix subprotocol");
    assert_eq!(
        c.response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("phoenix")
    );
    c.heartbeat().await;
    let plain = v2(server.addr).await;
    assert!(
        plain
            .response
            .headers()
            .get("sec-websocket-protocol")
            .is_none(),
        "no subprotocol is selected when none is offered"
    );
}

/// The exact frames of the seed example, with number refs.
#[tokio::test]
async fn seed_example_frames_work_with_number_refs() {
    let server = Server::start(&[]);
    let mut c = v1(server.addr).await;
    c.send_text(r#"{"topic":"patterns:stats","event":"phx_join","payload":{},"ref":1}"#)
        .await;
    let join = c.next_msg().await;
    let v: Value = serde_json::from_str(&join.raw).unwrap();
    assert_eq!(
        v,
        json!({"topic": "patterns:stats", "event": "phx_reply",
               "payload": {"status": "ok", "response": {}}, "ref": 1}),
        "join reply {}",
        join.raw
    );
    assert!(v["ref"].is_u64(), "ref echoed as a number: {}", join.raw);
    c.send_text(r#"{"topic":"patterns:stats","event":"get_local_stats","payload":{},"ref":2}"#)
        .await;
    let reply = c
        .expect("reply to ref 2", |m| {
            m.is_reply() && m.reference == json!(2)
        })
        .await;
    assert!(reply.raw.contains(r#""ref":2"#), "{}", reply.raw);
    assert_eq!(reply.status(), "ok");
    let local = reply.response().clone();
    assert_local_stats(&local, &server.node);
    assert_eq!(local["connection_count"], 1);
    assert_eq!(local["socket_count"], 1);
    assert_eq!(topic_count(&local, STATS), 1);
    let pushed = c.expect_event(STATS, "local_stats").await;
    assert_eq!(pushed.payload, local, "local_stats push equals the reply");
    assert_eq!(pushed.reference, Value::Null, "a push has a null ref");
    // V1 outbound frames carry exactly topic, event, payload, ref.
    for m in [&join, &reply, &pushed] {
        let o: Value = serde_json::from_str(&m.raw).unwrap();
        let mut keys: Vec<_> = o.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["event", "payload", "ref", "topic"], "{}", m.raw);
    }
}

#[tokio::test]
async fn v1_refs_and_join_refs_are_echoed_with_the_same_json_type() {
    let server = Server::start(&["--allow-topic", "rooms:*"]);
    let mut c = v1(server.addr).await;
    let cases = [
        json!("abc"),
        json!(7),
        json!(-3),
        json!(2.5),
        json!(12345678901234u64),
        json!("12"),
        Value::Null,
    ];
    for (i, r) in cases.iter().enumerate() {
        let topic = format!("rooms:{i}");
        let frame = json!({"topic": topic, "event": "phx_join", "payload": {}, "ref": r});
        c.send_text(&frame.to_string()).await;
        let m = c.next_msg().await;
        assert_eq!(m.event, "phx_reply", "{}", m.raw);
        assert_eq!(m.topic, topic);
        assert_eq!(&m.reference, r, "ref {r} echoed unchanged: {}", m.raw);
        assert_eq!(m.status(), "ok", "{}", m.raw);
        // The raw text holds the ref exactly as sent.
        assert!(m.raw.ends_with(&format!(",\"ref\":{r}}}")), "{}", m.raw);
    }
    // Explicit join_ref of each type, then a push carrying it.
    for (i, jr) in [json!("j1"), json!(42), json!(null)].iter().enumerate() {
        let topic = format!("rooms:jr{i}");
        let join = json!({"topic": topic, "event": "phx_join", "payload": {}, "ref": 100 + i, "join_ref": jr});
        c.send_text(&join.to_string()).await;
        let m = c.next_msg().await;
        assert_eq!(m.reference, json!(100 + i), "{}", m.raw);
        assert_eq!(m.status(), "ok", "{}", m.raw);
        let push = json!({"topic": topic, "event": "get_connection_stats", "payload": {}, "ref": format!("p{i}"), "join_ref": jr});
        c.send_text(&push.to_string()).await;
        let m = c.next_msg().await;
        assert_eq!(m.reference, json!(format!("p{i}")), "{}", m.raw);
        assert_eq!(m.status(), "ok", "{}", m.raw);
    }
}

#[tokio::test]
async fn v2_array_frames_echo_refs_with_the_same_json_type() {
    let server = Server::start(&["--allow-topic", "rooms:*"]);
    let mut c = v2(server.addr).await;
    let cases = [
        (json!("1"), json!("1")),
        (json!(5), json!(6)),
        (json!(null), json!("x")),
        (json!("j"), json!(-1)),
    ];
    for (i, (jr, r)) in cases.iter().enumerate() {
        let topic = format!("rooms:{i}");
        c.send(jr.clone(), r.clone(), &topic, "phx_join", json!({}))
            .await;
        let m = c.next_msg().await;
        let v: Value = serde_json::from_str(&m.raw).unwrap();
        assert_eq!(
            v,
            json!([jr, r, topic, "phx_reply", {"status": "ok", "response": {}}]),
            "refs echoed unchanged"
        );
    }
    // A push with the join_ref of its membership is answered with both refs.
    c.send(
        json!(5),
        json!(77),
        "rooms:1",
        "get_connection_stats",
        json!({}),
    )
    .await;
    let m = c.next_msg().await;
    assert_eq!(m.join_ref, json!(5), "{}", m.raw);
    assert_eq!(m.reference, json!(77), "{}", m.raw);
    assert_eq!(m.status(), "ok");
    assert_local_stats(m.response(), &server.node);
}

#[tokio::test]
async fn v2_binary_push_frames_are_decoded() {
    let server = Server::start(&["--allow-topic", "rooms:*", "--client-broadcast"]);
    let mut c = v2(server.addr).await;
    c.send(json!("1"), json!("1"), STATS, "phx_join", json!({}))
        .await;
    c.reply_to(STATS, &json!("1")).await.assert_ok();
    // A binary push of an event that ignores its payload is answered.
    c.send_binary(binary_push(
        "1",
        "9",
        STATS,
        "get_connection_stats",
        b"\x00\x01\x02",
    ))
    .await;
    let reply = c.reply_to(STATS, &json!("9")).await;
    assert_eq!(reply.msg.join_ref, json!("1"), "{}", reply.msg.raw);
    assert_local_stats(reply.assert_ok(), &server.node);
    // A binary heartbeat is a heartbeat.
    c.send_binary(binary_push("", "10", "phoenix", "heartbeat", b""))
        .await;
    let hb = c.reply_to("phoenix", &json!("10")).await;
    assert_eq!(hb.assert_ok(), &json!({}));
    // A channel that needs a JSON payload answers an error for that ref,
    // and the socket stays usable.
    c.send(json!("2"), json!("2"), "rooms:a", "phx_join", json!({}))
        .await;
    c.reply_to("rooms:a", &json!("2")).await.assert_ok();
    c.send_binary(binary_push(
        "2",
        "11",
        "rooms:a",
        "broadcast",
        &[0xde, 0xad, 0xbe, 0xef],
    ))
    .await;
    c.reply_to("rooms:a", &json!("11")).await.assert_error();
    // A binary join carries no JSON params: refused, not counted.
    c.send_binary(binary_push("12", "12", "rooms:b", "phx_join", b"\x01"))
        .await;
    c.reply_to("rooms:b", &json!("12")).await.assert_error();
    c.heartbeat().await;
    let s = stats(server.addr).await;
    assert_eq!(topic_count(&s, "rooms:b"), 0, "{s}");
    assert_eq!(topic_count(&s, "rooms:a"), 1, "{s}");
}

#[tokio::test]
async fn heartbeat_replies_ok_with_empty_response_in_v1_and_v2() {
    let server = Server::start(&[]);
    let mut a = v1(server.addr).await;
    a.send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"hb1"}"#)
        .await;
    let m = a.next_msg().await;
    assert_eq!(
        serde_json::from_str::<Value>(&m.raw).unwrap(),
        json!({"topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": "hb1"})
    );
    let mut b = v2(server.addr).await;
    b.send_text(r#"[null,"5","phoenix","heartbeat",{}]"#).await;
    let m = b.next_msg().await;
    assert_eq!(
        serde_json::from_str::<Value>(&m.raw).unwrap(),
        json!([null, "5", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    // A heartbeat changes no count.
    let s = stats(server.addr).await;
    assert_eq!(s["connection_count"], 0, "{s}");
    assert_eq!(s["socket_count"], 2, "{s}");
}

#[tokio::test]
async fn leave_replies_ok_then_pushes_phx_close_with_the_join_ref() {
    let server = Server::start(&[]);
    let mut c = v2(server.addr).await;
    c.send(json!("3"), json!("3"), STREAM, "phx_join", json!({}))
        .await;
    c.reply_to(STREAM, &json!("3")).await.assert_ok();
    assert_eq!(topic_count(&stats(server.addr).await, STREAM), 1);
    c.send(json!("3"), json!("4"), STREAM, "phx_leave", json!({}))
        .await;
    let reply = c.reply_to(STREAM, &json!("4")).await;
    assert_eq!(reply.assert_ok(), &json!({}));
    // The reply comes before phx_close.
    assert!(
        c.take_stash().iter().all(|m| m.event != "phx_close"),
        "phx_close arrived before the leave reply"
    );
    let close = c.expect_event(STREAM, "phx_close").await;
    assert_eq!(close.event, "phx_close", "{}", close.raw);
    assert_eq!(close.topic, STREAM);
    assert_eq!(close.join_ref, json!("3"), "{}", close.raw);
    assert_eq!(close.payload, json!({}));
    // Counted down before the reply was sent.
    let s = stats(server.addr).await;
    assert_eq!(topic_count(&s, STREAM), 0, "{s}");
    // Leaving a topic that is not joined is ok {} too, with no phx_close.
    c.send(json!("9"), json!("10"), VSM, "phx_leave", json!({}))
        .await;
    let r = c.reply_to(VSM, &json!("10")).await;
    assert_eq!(r.assert_ok(), &json!({}));
    c.heartbeat().await;
    assert!(
        c.take_stash().iter().all(|m| m.event != "phx_close"),
        "no phx_close for a topic that was not joined"
    );
}

#[tokio::test]
async fn v1_leave_pushes_phx_close_with_the_join_ref_as_ref() {
    let server = Server::start(&[]);
    let mut c = v1(server.addr).await;
    c.send_text(r#"{"topic":"patterns:vsm","event":"phx_join","payload":{},"ref":11}"#)
        .await;
    assert_eq!(c.next_msg().await.status(), "ok");
    c.send_text(r#"{"topic":"patterns:vsm","event":"phx_leave","payload":{},"ref":12}"#)
        .await;
    let reply = c.next_msg().await;
    assert_eq!(reply.reference, json!(12));
    assert_eq!(reply.status(), "ok");
    let close = c.next_msg().await;
    assert_eq!(close.event, "phx_close", "{}", close.raw);
    assert_eq!(close.reference, json!(11), "{}", close.raw);
}

#[tokio::test]
async fn duplicate_join_replaces_old_membership() {
    let server = Server::start(&[]);
    let mut other = v2(server.addr).await;
    other.join_ok(STREAM, json!({})).await;
    let mut c = v2(server.addr).await;
    c.send(json!("1"), json!("1"), STREAM, "phx_join", json!({}))
        .await;
    c.reply_to(STREAM, &json!("1")).await.assert_ok();
    assert_eq!(topic_count(&stats(server.addr).await, STREAM), 2);
    c.send(json!("5"), json!("5"), STREAM, "phx_join", json!({}))
        .await;
    // The old membership ends first: phx_close with the old join_ref, then
    // the reply to the new join.
    let mut seen = Vec::new();
    loop {
        let m = c.next_msg().await;
        let done = m.is_reply() && m.reference == json!("5");
        seen.push(m);
        if done {
            break;
        }
    }
    let close_at = seen
        .iter()
        .position(|m| m.event == "phx_close")
        .unwrap_or_else(|| panic!("no phx_close in {seen:?}"));
    assert_eq!(
        seen[close_at].join_ref,
        json!("1"),
        "{}",
        seen[close_at].raw
    );
    assert_eq!(seen[close_at].topic, STREAM);
    assert!(
        close_at < seen.len() - 1,
        "phx_close precedes the new reply"
    );
    assert_eq!(seen.last().unwrap().status(), "ok");
    assert_eq!(seen.last().unwrap().join_ref, json!("5"));
    // Net zero: still one membership for this socket.
    let s = stats(server.addr).await;
    assert_eq!(topic_count(&s, STREAM), 2, "{s}");
    assert_eq!(s["connection_count"], 2, "{s}");
    let m = metrics(server.addr).await;
    assert_eq!(m.value("headcount_joins_total", &[]), 3.0);
    assert_eq!(m.value("headcount_leaves_total", &[]), 1.0);
    // The new membership works.
    c.send(
        json!("5"),
        json!("6"),
        STREAM,
        "get_connection_stats",
        json!({}),
    )
    .await;
    c.reply_to(STREAM, &json!("6")).await.assert_ok();
}

#[tokio::test]
async fn v1_duplicate_join_closes_the_old_ref() {
    let server = Server::start(&[]);
    let mut c = v1(server.addr).await;
    c.send_text(r#"{"topic":"patterns:stats","event":"phx_join","payload":{},"ref":1}"#)
        .await;
    c.reply_to(STATS, &json!(1)).await.assert_ok();
    c.send_text(r#"{"topic":"patterns:stats","event":"phx_join","payload":{},"ref":2}"#)
        .await;
    let close = c.expect_event(STATS, "phx_close").await;
    assert_eq!(close.reference, json!(1), "{}", close.raw);
    c.reply_to(STATS, &json!(2)).await.assert_ok();
    let s = stats(server.addr).await;
    assert_eq!(topic_count(&s, STATS), 1, "{s}");
}

#[tokio::test]
async fn messages_with_a_stale_join_ref_are_ignored() {
    let server = Server::start(&[]);
    let mut c = v2(server.addr).await;
    c.send(json!("1"), json!("1"), STATS, "phx_join", json!({}))
        .await;
    c.reply_to(STATS, &json!("1")).await.assert_ok();
    c.send(json!("2"), json!("2"), STATS, "phx_join", json!({}))
        .await;
    c.reply_to(STATS, &json!("2")).await.assert_ok();
    // Stale: join_ref "1" belongs to the replaced membership.
    c.send(json!("1"), json!("3"), STATS, "get_local_stats", json!({}))
        .await;
    c.send(json!("1"), json!("4"), STATS, "phx_leave", json!({}))
        .await;
    c.send(json!("1"), json!("5"), STATS, "no_such_event", json!({}))
        .await;
    // A current-ref request after them: its reply is the next reply seen.
    c.send(
        json!("2"),
        json!("6"),
        STATS,
        "get_connection_stats",
        json!({}),
    )
    .await;
    c.reply_to(STATS, &json!("6")).await.assert_ok();
    for m in c.take_stash() {
        assert!(
            !(m.is_reply() && ["3", "4", "5"].contains(&m.reference.as_str().unwrap_or(""))),
            "stale message was answered: {}",
            m.raw
        );
        assert_ne!(
            m.event, "local_stats",
            "stale get_local_stats ran: {}",
            m.raw
        );
    }
    // The stale leave did not end the membership.
    assert_eq!(topic_count(&stats(server.addr).await, STATS), 1);
}

#[tokio::test]
async fn unmatched_topic_is_refused_for_join_and_other_events() {
    let server = Server::start(&["--allow-topic", "rooms:*"]);
    let mut c = v2(server.addr).await;
    for topic in ["nope", "patterns:other", "room:x", "patterns:stats:x", ""] {
        let r = c.join(topic, json!({})).await;
        assert_eq!(
            r.assert_error(),
            &json!({"reason": "unmatched topic"}),
            "{topic:?}"
        );
    }
    // Events on topics the socket has not joined, built-in or not.
    for topic in [STATS, STREAM, "rooms:a", "nope"] {
        let r = c.request(topic, "get_connection_stats", json!({})).await;
        assert_eq!(
            r.assert_error(),
            &json!({"reason": "unmatched topic"}),
            "{topic}"
        );
    }
    let s = stats(server.addr).await;
    assert_eq!(s["connection_count"], 0, "{s}");
    let m = metrics(server.addr).await;
    assert_eq!(
        m.value(
            "headcount_join_rejections_total",
            &[("reason", "unmatched_topic")]
        ),
        5.0,
        "{}",
        m.text
    );
}

#[tokio::test]
async fn unknown_event_is_an_error_and_the_channel_stays_joined() {
    let server = Server::start(&["--allow-topic", "rooms:*"]);
    let mut c = v2(server.addr).await;
    for topic in [STATS, STREAM, VSM, "rooms:a"] {
        c.join_ok(topic, json!({})).await;
        let r = c.request(topic, "frobnicate", json!({"x": 1})).await;
        assert_eq!(
            r.assert_error(),
            &json!({"reason": "unknown event", "event": "frobnicate"}),
            "{topic}"
        );
        // Still joined: the common events still answer, the count stays.
        let r = c.request(topic, "get_connection_stats", json!({})).await;
        let local = r.assert_ok();
        assert_eq!(topic_count(local, topic), 1, "{topic}: {local}");
    }
    let s = stats(server.addr).await;
    assert_eq!(s["connection_count"], 4, "{s}");
}

#[tokio::test]
async fn too_many_channels_joined_is_refused_and_not_counted() {
    let server = Server::start(&["--allow-topic", "rooms:*", "--max-channels-per-socket", "3"]);
    let mut c = v2(server.addr).await;
    for t in ["rooms:1", "rooms:2", "rooms:3"] {
        c.join_ok(t, json!({})).await;
    }
    let r = c.join("rooms:4", json!({})).await;
    assert_eq!(
        r.assert_error(),
        &json!({"reason": "too many channels joined"})
    );
    let r = c.join(STATS, json!({})).await;
    assert_eq!(
        r.assert_error(),
        &json!({"reason": "too many channels joined"})
    );
    // A rejoin of a joined topic replaces it rather than adding one.
    c.join_ok("rooms:2", json!({})).await;
    // After a leave there is room again.
    c.leave("rooms:1").await.assert_ok();
    c.join_ok("rooms:4", json!({})).await;
    let s = stats(server.addr).await;
    assert_eq!(s["connection_count"], 3, "{s}");
    assert_eq!(topic_count(&s, "rooms:1"), 0);
    // Another socket has its own allowance.
    let mut d = v1(server.addr).await;
    d.join_ok("rooms:1", json!({})).await;
    let m = metrics(server.addr).await;
    assert_eq!(
        m.value(
            "headcount_join_rejections_total",
            &[("reason", "too_many_channels")]
        ),
        2.0
    );
}

/// Frames that cannot be decoded: answered `malformed message` when topic
/// and ref are recoverable, dropped otherwise; the socket stays open, no
/// count moves, and the metric counts every one.
#[tokio::test]
async fn malformed_frames_keep_the_socket_open_and_are_counted() {
    let server = Server::start(&[]);
    let mut a = v1(server.addr).await;
    a.join_ok(STREAM, json!({})).await;
    let mut b = v2(server.addr).await;
    b.join_ok(STATS, json!({})).await;
    let before = stats(server.addr).await;

    let malformed = json!({"reason": "malformed message"});
    // V1, recoverable (topic and ref present): wrong types, missing fields.
    let v1_recoverable = [
        (
            r#"{"topic":"patterns:stream","event":5,"payload":{},"ref":"r1"}"#,
            "r1",
        ),
        (
            r#"{"topic":"patterns:stream","event":"x","ref":"r2"}"#,
            "r2",
        ),
        (
            r#"{"topic":"patterns:stream","payload":{},"ref":"r3"}"#,
            "r3",
        ),
        (
            r#"{"topic":"patterns:stream","event":"x","payload":{},"ref":"r4","join_ref":{}}"#,
            "r4",
        ),
    ];
    for (frame, r) in v1_recoverable {
        a.send_text(frame).await;
        let reply = a.reply_to(STREAM, &json!(r)).await;
        assert_eq!(reply.assert_error(), &malformed, "{frame}");
    }
    // V1, unrecoverable: dropped silently.
    let v1_dropped = [
        "{nope",
        "",
        "[1,2,3,4,5]",
        "\"a string\"",
        "42",
        r#"{"topic":5,"event":"x","payload":{},"ref":"r5"}"#,
        r#"{"topic":"patterns:stream","event":"x","payload":{},"ref":{"a":1}}"#,
        r#"{"topic":"patterns:stream","event":"x","payload":{},"ref":"r6""#,
    ];
    for frame in v1_dropped {
        a.send_text(frame).await;
    }
    a.send_binary(vec![0, 1, 2]).await;
    a.heartbeat().await;
    let stray: Vec<Msg> = a.take_stash().into_iter().filter(Msg::is_reply).collect();
    assert!(
        stray.is_empty(),
        "dropped frames got answers: {:?}",
        stray.iter().map(|m| &m.raw).collect::<Vec<_>>()
    );

    // V2, recoverable: wrong arity, wrong types.
    let v2_recoverable = [
        (r#"["1","s1","patterns:stats","get_local_stats"]"#, "s1"),
        (
            r#"["1","s2","patterns:stats","get_local_stats",{},"extra"]"#,
            "s2",
        ),
        (r#"["1","s3","patterns:stats",7,{}]"#, "s3"),
    ];
    for (frame, r) in v2_recoverable {
        b.send_text(frame).await;
        let reply = b.reply_to(STATS, &json!(r)).await;
        assert_eq!(reply.assert_error(), &malformed, "{frame}");
    }
    // A binary push whose event field is cut short still names topic and ref.
    let mut cut = binary_push("1", "s4", STATS, "get_local_stats", b"{}");
    cut.truncate(5 + 1 + 2 + STATS.len() + 3);
    b.send_binary(cut).await;
    let reply = b.reply_to(STATS, &json!("s4")).await;
    assert_eq!(reply.assert_error(), &malformed);
    // V2, unrecoverable.
    let v2_dropped = [
        "[1,2",
        r#"{"topic":"patterns:stats","event":"x","payload":{},"ref":"1"}"#,
        "[]",
        r#"[{},{},1,2,3]"#,
        "null",
    ];
    for frame in v2_dropped {
        b.send_text(frame).await;
    }
    // Truncated binary headers and unknown binary kinds.
    for bin in [
        vec![0u8],
        vec![0, 1, 2],
        vec![0, 5, 5, 5, 5, b'1'],
        vec![1, 0, 0, 0, 0],
        vec![9; 40],
    ] {
        b.send_binary(bin).await;
    }
    b.heartbeat().await;
    let stray: Vec<Msg> = b.take_stash().into_iter().filter(Msg::is_reply).collect();
    assert!(
        stray.is_empty(),
        "dropped frames got answers: {:?}",
        stray.iter().map(|m| &m.raw).collect::<Vec<_>>()
    );

    // Both sockets still work and no count moved.
    a.request(STREAM, "get_connection_stats", json!({}))
        .await
        .assert_ok();
    b.request(STATS, "get_connection_stats", json!({}))
        .await
        .assert_ok();
    let after = stats(server.addr).await;
    assert_eq!(topic_counts(&after), topic_counts(&before));
    assert_eq!(after["socket_count"], before["socket_count"]);
    let expected = (v1_recoverable.len()
        + v1_dropped.len()
        + 1
        + v2_recoverable.len()
        + 1
        + v2_dropped.len()
        + 5) as f64;
    let m = metrics(server.addr).await;
    assert_eq!(
        m.value(
            "headcount_frames_rejected_total",
            &[("reason", "malformed")]
        ),
        expected,
        "{}",
        m.text
    );
}
