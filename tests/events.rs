//! The event bus (SPEC §5, issue 3): each event type's exact push on each
//! topic that routes it, vsm subsystem filtering, the algedonic threshold,
//! all-or-nothing batches, the 400/401/413/415 answers, `/api/broadcast`,
//! client broadcast, exactly-once fan-out to V1 and V2 subscribers, and a
//! slow consumer dropped while everyone else still receives everything.
//!
//! Absence is proven with a marker: after whatever must not arrive, a
//! marker event is published; on one socket pushes keep their order, so
//! whatever arrives before the marker is everything that arrived.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;

const T: &str = "2026-01-02T03:04:05.678Z";

/// An expected push: (topic, event, payload).
type Push = (&'static str, &'static str, Value);

/// A client joined to `topic`, with the join's own push consumed.
async fn subscriber(addr: SocketAddr, vsn: Vsn, topic: &str, params: Value) -> Client {
    let mut c = client(addr, vsn).await;
    c.join_ok(topic, params).await;
    if topic == STREAM {
        c.expect_event(STREAM, "initial_stats").await;
    }
    c
}

fn is_marker(m: &Msg) -> bool {
    m.event == "pattern_detected" && m.payload["pattern_type"] == "marker"
}

async fn publish_marker(addr: SocketAddr) {
    publish(
        addr,
        &json!({"type": "pattern_detected", "data": {"pattern_type": "marker"}}),
    )
    .await;
}

/// Every push on `topic` before the marker (replies and other topics aside).
async fn until(c: &mut Client, topic: &str, end: impl Fn(&Msg) -> bool) -> Vec<Msg> {
    let mut out = Vec::new();
    loop {
        let m = c.next_msg().await;
        if m.topic != topic || m.is_reply() {
            continue;
        }
        if end(&m) {
            return out;
        }
        out.push(m);
    }
}

async fn until_marker(c: &mut Client, topic: &str) -> Vec<Msg> {
    until(c, topic, is_marker).await
}

/// Compares a push payload with `expected`; a `"<now>"` timestamp means
/// "defaulted to now": any RFC 3339 UTC millisecond timestamp.
fn assert_payload(got: &Value, expected: &Value, what: &str) {
    let mut got = got.clone();
    let mut expected = expected.clone();
    if expected["timestamp"] == "<now>" {
        assert_timestamp(&got["timestamp"]);
        got["timestamp"] = json!("<now>");
    }
    if expected.get("timestamp").is_none() {
        expected["timestamp"] = got["timestamp"].clone();
    }
    assert_eq!(got, expected, "{what}");
}

#[tokio::test]
async fn each_event_type_pushes_its_exact_payload_on_each_routed_topic() {
    let server = Server::start(&[]);
    let addr = server.addr;
    let mut stream_v1 = subscriber(addr, Vsn::V1, STREAM, json!({})).await;
    let mut stream_v2 = subscriber(addr, Vsn::V2, STREAM, json!({})).await;
    let mut vsm_v1 = subscriber(addr, Vsn::V1, VSM, json!({})).await;
    let mut vsm_v2 = subscriber(addr, Vsn::V2, VSM, json!({"subsystem": "all"})).await;

    // (event sent, [(topic, push event, payload)]).
    let cases: Vec<(Value, Vec<Push>)> = vec![
        (
            json!({"type": "patterns_indexed", "data": {"count": 3, "deduplicated": true, "source": "idx", "timestamp": T, "bogus": 1}}),
            vec![(
                STREAM,
                "pattern_indexed",
                json!({"count": 3, "deduplicated": true, "source": "idx", "timestamp": T}),
            )],
        ),
        (
            json!({"type": "patterns_indexed", "data": {"count": 0, "deduplicated": 2, "source": {"any": ["json"]}}}),
            vec![(
                STREAM,
                "pattern_indexed",
                json!({"count": 0, "deduplicated": 2, "source": {"any": ["json"]}, "timestamp": "<now>"}),
            )],
        ),
        (
            json!({"type": "pattern_matched", "data": {
                "pattern_id": "p-1", "confidence": 0.75, "type": "spike", "timestamp": T, "extra": "dropped",
                "context": {"type": "a", "confidence": 0.5, "source": "s", "subsystem": "S2", "secret": "x", "nested": {"y": 1}}}}),
            vec![(
                STREAM,
                "pattern_matched",
                json!({
                "pattern_id": "p-1", "confidence": 0.75, "type": "spike", "timestamp": T,
                "context": {"type": "a", "confidence": 0.5, "source": "s", "subsystem": "S2"}}),
            )],
        ),
        (
            json!({"type": "pattern_matched", "data": {"pattern_id": 9, "confidence": 1, "type": "t", "context": {"secret": 1, "source": "only"}, "timestamp": T}}),
            vec![(
                STREAM,
                "pattern_matched",
                json!({"pattern_id": 9, "confidence": 1, "type": "t", "context": {"source": "only"}, "timestamp": T}),
            )],
        ),
        (
            json!({"type": "pattern_detected", "data": {}}),
            vec![
                (
                    STREAM,
                    "pattern_detected",
                    json!({"pattern_type": "unknown", "confidence": 0.0, "source": "s4_intelligence", "severity": "normal", "metadata": {}, "vsm_impact": null, "timestamp": "<now>"}),
                ),
                (
                    VSM,
                    "pattern_detected",
                    json!({"pattern_type": "unknown", "confidence": 0.0, "source": "s4_intelligence", "severity": "normal", "metadata": {}, "vsm_impact": null, "timestamp": "<now>"}),
                ),
            ],
        ),
        (
            json!({"type": "pattern_detected", "data": {"pattern_type": "cycle", "confidence": 0.9, "source": "s3", "severity": "high", "metadata": {"k": "v"}, "vsm_impact": {"s1": 0.2}, "timestamp": T, "junk": true}}),
            vec![
                (
                    STREAM,
                    "pattern_detected",
                    json!({"pattern_type": "cycle", "confidence": 0.9, "source": "s3", "severity": "high", "metadata": {"k": "v"}, "vsm_impact": {"s1": 0.2}, "timestamp": T}),
                ),
                (
                    VSM,
                    "pattern_detected",
                    json!({"pattern_type": "cycle", "confidence": 0.9, "source": "s3", "severity": "high", "metadata": {"k": "v"}, "vsm_impact": {"s1": 0.2}, "timestamp": T}),
                ),
            ],
        ),
        (
            json!({"type": "temporal_pattern_detected", "data": {"pattern_type": "daily", "confidence": 0.6, "source": "clock", "time_window": "1h", "frequency": 24, "metadata": {"a": 1}, "timestamp": T, "junk": 1}}),
            vec![
                (
                    STREAM,
                    "temporal_pattern_detected",
                    json!({"pattern_type": "daily", "confidence": 0.6, "source": "clock", "time_window": "1h", "frequency": 24, "metadata": {"a": 1}, "timestamp": T}),
                ),
                (
                    VSM,
                    "temporal_pattern_detected",
                    json!({"pattern_type": "daily", "confidence": 0.6, "source": "clock", "time_window": "1h", "frequency": 24, "metadata": {"a": 1}, "timestamp": T}),
                ),
            ],
        ),
        (
            json!({"type": "algedonic_signal", "data": {"type": "pain", "intensity": 0.95, "source": "s1", "pattern_vector": [1, 2, 3], "timestamp": T, "junk": 1}}),
            vec![(
                STREAM,
                "algedonic_pattern",
                json!({"type": "pain", "intensity": 0.95, "source": "s1", "pattern_vector": [1, 2, 3], "timestamp": T, "severity": "critical"}),
            )],
        ),
        (
            json!({"type": "algedonic_signal", "data": {"type": "mild", "intensity": 0.5}}),
            vec![],
        ),
        (
            json!({"type": "vsm_pattern_flow", "data": {"subsystem": "s3", "pattern_type": "x", "confidence": 0.4, "flow_direction": "up", "variety_type": "amplify", "metadata": {"m": [1]}, "timestamp": T, "junk": 1}}),
            vec![(
                VSM,
                "vsm_pattern_flow",
                json!({"subsystem": "S3", "pattern_type": "x", "confidence": 0.4, "flow_direction": "up", "variety_type": "amplify", "metadata": {"m": [1]}, "timestamp": T}),
            )],
        ),
    ];
    for (event, _) in &cases {
        let res = publish(addr, event).await;
        assert_eq!(res, json!({"accepted": 1}), "{event}");
    }
    publish_marker(addr).await;

    for (topic, subs) in [
        (STREAM, [&mut stream_v1, &mut stream_v2]),
        (VSM, [&mut vsm_v1, &mut vsm_v2]),
    ] {
        let expected: Vec<(&str, &Value)> = cases
            .iter()
            .flat_map(|(_, pushes)| pushes.iter())
            .filter(|(t, _, _)| *t == topic)
            .map(|(_, e, p)| (*e, p))
            .collect();
        for sub in subs {
            let got = until_marker(sub, topic).await;
            let names: Vec<&str> = got.iter().map(|m| m.event.as_str()).collect();
            let want: Vec<&str> = expected.iter().map(|(e, _)| *e).collect();
            assert_eq!(names, want, "{topic} ({:?}) pushes", sub.vsn);
            for (m, (e, p)) in got.iter().zip(&expected) {
                assert_payload(&m.payload, p, &format!("{topic} {e} ({:?})", sub.vsn));
                // Bus pushes are broadcasts: both refs null.
                assert_eq!(m.reference, Value::Null, "{}", m.raw);
                assert_eq!(m.join_ref, Value::Null, "{}", m.raw);
            }
        }
    }
}

#[tokio::test]
async fn fields_without_a_default_are_present_and_defaults_fill_the_rest() {
    let server = Server::start(&[]);
    let mut s = subscriber(server.addr, Vsn::V2, STREAM, json!({})).await;
    let mut v = subscriber(server.addr, Vsn::V2, VSM, json!({})).await;
    for ty in [
        "patterns_indexed",
        "pattern_matched",
        "pattern_detected",
        "temporal_pattern_detected",
    ] {
        publish(server.addr, &json!({"type": ty, "data": {}})).await;
    }
    publish(
        server.addr,
        &json!({"type": "vsm_pattern_flow", "data": {"subsystem": "S1"}}),
    )
    .await;
    publish_marker(server.addr).await;
    let keys = |m: &Msg| {
        let mut k: Vec<String> = m.payload.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let got = until_marker(&mut s, STREAM).await;
    assert_eq!(got.len(), 4);
    assert_eq!(
        keys(&got[0]),
        ["count", "deduplicated", "source", "timestamp"]
    );
    assert_eq!(
        keys(&got[1]),
        ["confidence", "context", "pattern_id", "timestamp", "type"]
    );
    assert_eq!(
        got[1].payload["context"],
        json!({}),
        "context defaults to {{}}"
    );
    assert_eq!(
        keys(&got[3]),
        [
            "confidence",
            "frequency",
            "metadata",
            "pattern_type",
            "source",
            "time_window",
            "timestamp"
        ]
    );
    for m in &got {
        assert_timestamp(&m.payload["timestamp"]);
    }
    let got = until_marker(&mut v, VSM).await;
    let flow = got
        .iter()
        .find(|m| m.event == "vsm_pattern_flow")
        .expect("vsm_pattern_flow pushed");
    assert_eq!(
        keys(flow),
        [
            "confidence",
            "flow_direction",
            "metadata",
            "pattern_type",
            "subsystem",
            "timestamp",
            "variety_type"
        ]
    );
    assert_eq!(flow.payload["subsystem"], "S1");
    assert_eq!(flow.payload["metadata"], json!({}));
}

#[tokio::test]
async fn vsm_members_get_their_subsystem_flow_and_every_pattern() {
    let server = Server::start(&[]);
    let addr = server.addr;
    let mut all = subscriber(addr, Vsn::V2, VSM, json!({})).await;
    let mut s1 = subscriber(addr, Vsn::V1, VSM, json!({"subsystem": "s1"})).await;
    let mut s3_upper = subscriber(addr, Vsn::V2, VSM, json!({"subsystem": "S3"})).await;
    let mut s3_lower = subscriber(addr, Vsn::V1, VSM, json!({"subsystem": "s3"})).await;
    let mut s5 = subscriber(addr, Vsn::V2, VSM, json!({"subsystem": "s5"})).await;
    // A member that switches subsystem by joining again.
    let mut switched = subscriber(addr, Vsn::V2, VSM, json!({"subsystem": "s1"})).await;
    switched.join_ok(VSM, json!({"subsystem": "s2"})).await;
    switched.expect_event(VSM, "phx_close").await;
    let mut stream = subscriber(addr, Vsn::V2, STREAM, json!({})).await;

    let flows = ["S1", "s3", "S5", "S2", "s1", "S4"];
    for (i, sub) in flows.iter().enumerate() {
        publish(
            addr,
            &json!({"type": "vsm_pattern_flow", "data": {"subsystem": sub, "pattern_type": format!("f{i}")}}),
        )
        .await;
    }
    publish(
        addr,
        &json!({"type": "temporal_pattern_detected", "data": {"pattern_type": "t"}}),
    )
    .await;
    publish_marker(addr).await;

    let summary = |got: Vec<Msg>| -> Vec<String> {
        got.iter()
            .map(|m| match m.event.as_str() {
                "vsm_pattern_flow" => format!(
                    "{}:{}",
                    m.payload["subsystem"].as_str().unwrap(),
                    m.payload["pattern_type"].as_str().unwrap()
                ),
                other => other.to_owned(),
            })
            .collect()
    };
    assert_eq!(
        summary(until_marker(&mut all, VSM).await),
        [
            "S1:f0",
            "S3:f1",
            "S5:f2",
            "S2:f3",
            "S1:f4",
            "S4:f5",
            "temporal_pattern_detected"
        ]
    );
    assert_eq!(
        summary(until_marker(&mut s1, VSM).await),
        ["S1:f0", "S1:f4", "temporal_pattern_detected"]
    );
    for c in [&mut s3_upper, &mut s3_lower] {
        assert_eq!(
            summary(until_marker(c, VSM).await),
            ["S3:f1", "temporal_pattern_detected"]
        );
    }
    assert_eq!(
        summary(until_marker(&mut s5, VSM).await),
        ["S5:f2", "temporal_pattern_detected"]
    );
    assert_eq!(
        summary(until_marker(&mut switched, VSM).await),
        ["S2:f3", "temporal_pattern_detected"]
    );
    // The stream never sees vsm flows.
    assert_eq!(
        summary(until_marker(&mut stream, STREAM).await),
        ["temporal_pattern_detected"]
    );
}

#[tokio::test]
async fn vsm_pattern_flow_without_a_valid_subsystem_is_rejected() {
    let server = Server::start(&[]);
    let mut all = subscriber(server.addr, Vsn::V2, VSM, json!({})).await;
    for data in [
        json!({}),
        json!({"subsystem": "S6"}),
        json!({"subsystem": "s0"}),
        json!({"subsystem": "all"}),
        json!({"subsystem": 3}),
        json!({"subsystem": null}),
    ] {
        let res = post_json(
            server.addr,
            "/api/events",
            &json!({"type": "vsm_pattern_flow", "data": data}),
        )
        .await;
        assert_eq!(res.status, 400, "{data}: {}", res.text());
        let err = res.json()["error"].as_str().unwrap_or("").to_owned();
        assert!(err.contains("subsystem"), "{data}: {err}");
    }
    publish_marker(server.addr).await;
    assert!(until_marker(&mut all, VSM).await.is_empty());
}

#[tokio::test]
async fn algedonic_signal_is_pushed_only_above_0_8() {
    let server = Server::start(&[]);
    let mut s = subscriber(server.addr, Vsn::V1, STREAM, json!({})).await;
    let accepted_not_pushed = [
        json!({"intensity": 0.8}),
        json!({"intensity": 0.5}),
        json!({"intensity": 0}),
        json!({"intensity": -3}),
        json!({}),
        json!({"intensity": null, "type": "x"}),
    ];
    for data in &accepted_not_pushed {
        let res = publish(
            server.addr,
            &json!({"type": "algedonic_signal", "data": data}),
        )
        .await;
        assert_eq!(res, json!({"accepted": 1}), "{data}");
    }
    // Non-numeric intensities are the wrong type: 400 naming the field.
    for data in [
        json!({"intensity": "0.9"}),
        json!({"intensity": "high"}),
        json!({"intensity": true}),
        json!({"intensity": [0.95]}),
    ] {
        let res = post_json(
            server.addr,
            "/api/events",
            &json!({"type": "algedonic_signal", "data": data}),
        )
        .await;
        assert_eq!(res.status, 400, "{data}: {}", res.text());
        assert!(res.json()["error"].as_str().unwrap().contains("intensity"));
    }
    for (i, intensity) in [json!(0.8000001), json!(1), json!(0.81), json!(100)]
        .iter()
        .enumerate()
    {
        publish(
            server.addr,
            &json!({"type": "algedonic_signal", "data": {"intensity": intensity, "source": i}}),
        )
        .await;
    }
    publish_marker(server.addr).await;
    let got = until_marker(&mut s, STREAM).await;
    let sources: Vec<&Value> = got.iter().map(|m| &m.payload["source"]).collect();
    assert_eq!(sources, [&json!(0), &json!(1), &json!(2), &json!(3)]);
    for m in &got {
        assert_eq!(m.event, "algedonic_pattern");
        assert_eq!(m.payload["severity"], "critical");
    }
    assert_eq!(got[1].payload["intensity"], json!(1));
}

#[tokio::test]
async fn a_batch_is_all_or_nothing() {
    let server = Server::start(&["--outbound-queue", "4096"]);
    let addr = server.addr;
    let mut s = subscriber(addr, Vsn::V2, STREAM, json!({})).await;
    let mut v = subscriber(addr, Vsn::V1, VSM, json!({})).await;
    let good = json!({"type": "pattern_detected", "data": {"pattern_type": "should-not-arrive"}});
    let bad_batches = [
        (
            json!([good, good, good, {"type": "pattern_matched", "data": {"confidence": "x"}}, good]),
            "confidence",
            "3",
        ),
        (
            json!([good, {"type": "no_such_type", "data": {}}, good]),
            "no_such_type",
            "1",
        ),
        (
            json!([good, good, {"type": "vsm_pattern_flow", "data": {}}]),
            "subsystem",
            "2",
        ),
        (json!([good, {"data": {}}]), "type", "1"),
    ];
    for (batch, field, index) in &bad_batches {
        let res = post_json(addr, "/api/events", batch).await;
        assert_eq!(res.status, 400, "{}", res.text());
        let err = res.json()["error"].as_str().unwrap().to_owned();
        assert!(err.contains(field), "error names {field}: {err}");
        assert!(err.contains(index), "error names event {index}: {err}");
    }
    // Over 1000 events: refused whole.
    let many: Vec<Value> = (0..1001).map(|_| good.clone()).collect();
    let res = post_json(addr, "/api/events", &Value::Array(many)).await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(res.json()["error"].is_string());
    publish_marker(addr).await;
    let got = until_marker(&mut s, STREAM).await;
    assert!(got.is_empty(), "rejected batches leaked: {got:?}");
    let got = until_marker(&mut v, VSM).await;
    assert!(got.is_empty(), "rejected batches leaked: {got:?}");
    let m = metrics(addr).await;
    assert_eq!(
        m.value("headcount_bus_deliveries_total", &[]),
        2.0,
        "{}",
        m.text
    );

    // Exactly 1000 is fine, and every one arrives in order.
    let batch: Vec<Value> = (0..1000)
        .map(|i| json!({"type": "patterns_indexed", "data": {"count": i}}))
        .collect();
    let res = publish(addr, &Value::Array(batch)).await;
    assert_eq!(res, json!({"accepted": 1000}));
    publish_marker(addr).await;
    let got = until_marker(&mut s, STREAM).await;
    let counts: Vec<u64> = got
        .iter()
        .map(|m| m.payload["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, (0..1000).collect::<Vec<u64>>());
}

#[tokio::test]
async fn bad_input_gets_400_naming_what_is_wrong() {
    let server = Server::start(&[]);
    let addr = server.addr;
    let mut s = subscriber(addr, Vsn::V2, STREAM, json!({})).await;
    let cases: Vec<(&[u8], &str)> = vec![
        (b"{not json", ""),
        (b"", ""),
        (br#"{"type": "nope", "data": {}}"#, "nope"),
        (br#"{"data": {}}"#, "type"),
        (br#"{"type": 5, "data": {}}"#, "type"),
        (br#"{"type": "pattern_detected", "data": 5}"#, "data"),
        (
            br#"{"type": "pattern_detected", "data": {"confidence": "high"}}"#,
            "confidence",
        ),
        (
            br#"{"type": "pattern_detected", "data": {"metadata": [1]}}"#,
            "metadata",
        ),
        (
            br#"{"type": "temporal_pattern_detected", "data": {"metadata": "x"}}"#,
            "metadata",
        ),
        (
            br#"{"type": "pattern_matched", "data": {"context": "x"}}"#,
            "context",
        ),
        (
            br#"{"type": "patterns_indexed", "data": {"count": -1}}"#,
            "count",
        ),
        (
            br#"{"type": "patterns_indexed", "data": {"count": 1.5}}"#,
            "count",
        ),
        (
            br#"{"type": "patterns_indexed", "data": {"count": "3"}}"#,
            "count",
        ),
        (
            br#"{"type": "patterns_indexed", "data": {"deduplicated": "yes"}}"#,
            "deduplicated",
        ),
        (
            br#"{"type": "vsm_pattern_flow", "data": {"subsystem": "S1", "confidence": {}}}"#,
            "confidence",
        ),
        (br#"42"#, ""),
        (br#""text""#, ""),
    ];
    for (body, names) in &cases {
        let res = post(addr, "/api/events", &[], body).await;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(res.status, 400, "{shown}: {}", res.text());
        let v = res.json();
        let err = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{shown}: body {v} has no error string"));
        assert!(!err.is_empty());
        assert!(
            err.contains(names),
            "{shown}: error {err:?} names {names:?}"
        );
    }
    // /api/broadcast needs a topic and an event.
    for body in [
        json!({"event": "e", "payload": {}}),
        json!({"topic": "t", "payload": {}}),
        json!({"topic": 5, "event": "e"}),
        json!({"topic": "t", "event": ["e"]}),
    ] {
        let res = post_json(addr, "/api/broadcast", &body).await;
        assert_eq!(res.status, 400, "{body}: {}", res.text());
        assert!(res.json()["error"].is_string());
    }
    publish_marker(addr).await;
    assert!(until_marker(&mut s, STREAM).await.is_empty());
}

#[tokio::test]
async fn oversized_bodies_get_413_and_wrong_content_types_415() {
    let server = Server::start(&[]);
    let addr = server.addr;
    let mut s = subscriber(addr, Vsn::V1, STREAM, json!({})).await;
    // A valid batch just over 1 MiB.
    let pad = "x".repeat(1100);
    let batch: Vec<Value> = (0..1000)
        .map(|_| json!({"type": "pattern_detected", "data": {"pattern_type": pad}}))
        .collect();
    let body = serde_json::to_vec(&batch).unwrap();
    assert!(body.len() > 1 << 20);
    for path in ["/api/events", "/api/broadcast"] {
        let res = post(addr, path, &[], &body).await;
        assert_eq!(res.status, 413, "{path}: {}", res.text());
        assert!(res.json()["error"].is_string(), "{}", res.text());
    }
    // Just under the limit is accepted.
    let small: Vec<Value> = (0..10)
        .map(|i| json!({"type": "patterns_indexed", "data": {"count": i, "source": "y".repeat(90_000)}}))
        .collect();
    let small_body = serde_json::to_vec(&small).unwrap();
    assert!(small_body.len() < 1 << 20 && small_body.len() > 900_000);
    let res = post(addr, "/api/events", &[], &small_body).await;
    assert_eq!(res.status, 202, "{}", res.text());
    // Wrong or missing content type.
    let event = json!({"type": "pattern_detected", "data": {}}).to_string();
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ] {
        let res = http(
            addr,
            "POST",
            "/api/events",
            &[("Content-Type", ct)],
            event.as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(res.status, 415, "{ct}: {}", res.text());
        assert!(res.json()["error"].is_string());
    }
    let res = http(addr, "POST", "/api/events", &[], event.as_bytes())
        .await
        .unwrap();
    assert_eq!(res.status, 415, "no content type: {}", res.text());
    let res = http(
        addr,
        "POST",
        "/api/broadcast",
        &[("Content-Type", "text/plain")],
        br#"{"topic":"patterns:stream","event":"e","payload":{}}"#,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 415, "{}", res.text());
    // A charset parameter is still JSON.
    let res = http(
        addr,
        "POST",
        "/api/events",
        &[("Content-Type", "application/json; charset=utf-8")],
        json!({"type": "patterns_indexed", "data": {"count": 77}})
            .to_string()
            .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 202, "{}", res.text());
    publish_marker(addr).await;
    let got = until_marker(&mut s, STREAM).await;
    let counts: Vec<&Value> = got.iter().map(|m| &m.payload["count"]).collect();
    let mut want: Vec<Value> = (0..10).map(|i| json!(i)).collect();
    want.push(json!(77));
    assert_eq!(
        counts,
        want.iter().collect::<Vec<_>>(),
        "only accepted bodies arrive"
    );
}

#[tokio::test]
async fn api_key_guards_the_write_routes_only() {
    let server = Server::start(&["--api-key", "s3cret", "--allow-topic", "rooms:*"]);
    let addr = server.addr;
    let mut s = subscriber(addr, Vsn::V2, STREAM, json!({})).await;
    let event = json!({"type": "pattern_detected", "data": {"pattern_type": "nope"}}).to_string();
    let bcast = json!({"topic": STREAM, "event": "nope", "payload": {}}).to_string();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cre"),
        Some("Bearer s3cret2"),
        Some("s3cret"),
        Some("Basic s3cret"),
        Some("Bearer "),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        for (path, body) in [("/api/events", &event), ("/api/broadcast", &bcast)] {
            let res = post(addr, path, &headers, body.as_bytes()).await;
            assert_eq!(res.status, 401, "{path} with {auth:?}: {}", res.text());
            assert!(res.json()["error"].is_string());
        }
    }
    // Read routes stay open.
    assert_eq!(get(addr, "/api/stats").await.status, 200);
    assert_eq!(get(addr, "/api/stats/cluster").await.status, 200);
    assert_eq!(get(addr, "/metrics").await.status, 200);
    assert_eq!(get(addr, "/healthz").await.status, 200);
    // The right key works on both routes.
    let auth = [("Authorization", "Bearer s3cret")];
    for (path, body) in [
        (
            "/api/events",
            json!({"type": "patterns_indexed", "data": {"count": 1}}),
        ),
        (
            "/api/broadcast",
            json!({"topic": STREAM, "event": "hello", "payload": {"a": 1}}),
        ),
        (
            "/api/events",
            json!({"type": "pattern_detected", "data": {"pattern_type": "marker"}}),
        ),
    ] {
        let res = post(addr, path, &auth, body.to_string().as_bytes()).await;
        assert_eq!(res.status, 202, "{path} {body}: {}", res.text());
    }
    let got = until_marker(&mut s, STREAM).await;
    let events: Vec<&str> = got.iter().map(|m| m.event.as_str()).collect();
    assert_eq!(
        events,
        ["pattern_indexed", "hello"],
        "refused writes leaked"
    );
}

#[tokio::test]
async fn api_broadcast_reaches_builtin_and_allowed_topics_in_both_formats() {
    let server = Server::start(&["--allow-topic", "rooms:*"]);
    let addr = server.addr;
    let mut room_v1 = subscriber(addr, Vsn::V1, "rooms:lobby", json!({})).await;
    let mut room_v2 = subscriber(addr, Vsn::V2, "rooms:lobby", json!({})).await;
    let mut other_room = subscriber(addr, Vsn::V2, "rooms:other", json!({})).await;
    let mut stream_v2 = subscriber(addr, Vsn::V2, STREAM, json!({})).await;
    let mut vsm_s2 = subscriber(addr, Vsn::V1, VSM, json!({"subsystem": "s2"})).await;
    let mut stats_v1 = subscriber(addr, Vsn::V1, STATS, json!({})).await;

    let payloads = [
        json!({"hello": "world", "n": [1, 2, {"deep": null}]}),
        json!([1, "two"]),
        json!("just a string"),
        json!(3.5),
    ];
    for p in &payloads {
        broadcast(addr, "rooms:lobby", "shout", p).await;
    }
    // No payload: an empty object.
    let res = post_json(
        addr,
        "/api/broadcast",
        &json!({"topic": "rooms:lobby", "event": "bare"}),
    )
    .await;
    assert_eq!(res.status, 202, "{}", res.text());
    broadcast(addr, "rooms:lobby", "end", &json!({})).await;
    for c in [&mut room_v1, &mut room_v2] {
        let got = until(c, "rooms:lobby", |m| m.event == "end").await;
        let ps: Vec<&Value> = got
            .iter()
            .filter(|m| m.event == "shout")
            .map(|m| &m.payload)
            .collect();
        assert_eq!(ps, payloads.iter().collect::<Vec<_>>(), "{:?}", c.vsn);
        assert_eq!(got.last().unwrap().event, "bare");
        assert_eq!(got.last().unwrap().payload, json!({}));
        for m in &got {
            assert_eq!(m.reference, Value::Null);
            assert_eq!(m.join_ref, Value::Null);
        }
        // Exact wire shapes.
        let first: Value = serde_json::from_str(&got[0].raw).unwrap();
        match c.vsn {
            Vsn::V2 => assert_eq!(
                first,
                json!([null, null, "rooms:lobby", "shout", payloads[0]])
            ),
            Vsn::V1 => assert_eq!(
                first,
                json!({"topic": "rooms:lobby", "event": "shout", "payload": payloads[0], "ref": null})
            ),
        }
    }
    // Built-in topics take raw pushes too.
    for (topic, c) in [
        (STREAM, &mut stream_v2),
        (VSM, &mut vsm_s2),
        (STATS, &mut stats_v1),
    ] {
        broadcast(addr, topic, "notice", &json!({"to": topic})).await;
        let m = c.expect_event(topic, "notice").await;
        assert_eq!(m.payload, json!({"to": topic}));
    }
    // A topic nobody joined: accepted, delivered nowhere.
    broadcast(addr, "rooms:empty", "x", &json!({})).await;
    broadcast(addr, "rooms:other", "end", &json!({})).await;
    let got = until(&mut other_room, "rooms:other", |m| m.event == "end").await;
    assert!(got.is_empty(), "other room got {got:?}");
}

#[tokio::test]
async fn client_broadcast_is_relayed_only_with_the_flag() {
    for enabled in [true, false] {
        let args: &[&str] = if enabled {
            &["--allow-topic", "rooms:*", "--client-broadcast"]
        } else {
            &["--allow-topic", "rooms:*"]
        };
        let server = Server::start(args);
        let addr = server.addr;
        let mut a = subscriber(addr, Vsn::V1, "rooms:x", json!({})).await;
        let mut b = subscriber(addr, Vsn::V2, "rooms:x", json!({})).await;
        let mut elsewhere = subscriber(addr, Vsn::V2, "rooms:y", json!({})).await;
        let r = a
            .request(
                "rooms:x",
                "broadcast",
                json!({"event": "chat", "payload": {"text": "hi", "n": 1}}),
            )
            .await;
        if enabled {
            assert_eq!(r.assert_ok(), &json!({}));
        } else {
            r.assert_error();
        }
        // Malformed client broadcasts are refused either way.
        for bad in [
            json!({}),
            json!({"payload": {}}),
            json!({"event": 5}),
            json!("x"),
        ] {
            a.request("rooms:x", "broadcast", bad).await.assert_error();
        }
        broadcast(addr, "rooms:x", "end", &json!({})).await;
        broadcast(addr, "rooms:y", "end", &json!({})).await;
        for c in [&mut a, &mut b] {
            let got = until(c, "rooms:x", |m| m.event == "end").await;
            let events: Vec<(&str, &Value)> =
                got.iter().map(|m| (m.event.as_str(), &m.payload)).collect();
            if enabled {
                assert_eq!(
                    events,
                    [("chat", &json!({"text": "hi", "n": 1}))],
                    "{:?}",
                    c.vsn
                );
            } else {
                assert!(events.is_empty(), "relayed without the flag: {events:?}");
            }
        }
        assert!(until(&mut elsewhere, "rooms:y", |m| m.event == "end")
            .await
            .is_empty());
    }
}

#[tokio::test]
async fn client_broadcast_is_not_a_builtin_channel_event() {
    let server = Server::start(&["--client-broadcast"]);
    let mut a = subscriber(server.addr, Vsn::V2, STREAM, json!({})).await;
    let mut b = subscriber(server.addr, Vsn::V2, STREAM, json!({})).await;
    let r = a
        .request(STREAM, "broadcast", json!({"event": "fake", "payload": {}}))
        .await;
    assert_eq!(
        r.assert_error(),
        &json!({"reason": "unknown event", "event": "broadcast"})
    );
    publish_marker(server.addr).await;
    assert!(until_marker(&mut b, STREAM).await.is_empty());
}

/// 100 V1 and 100 V2 subscribers; every event reaches each exactly once,
/// in publish order, with the same payload in both formats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_event_exactly_once_v1_and_v2() {
    let server = Server::start(&[]);
    let addr = server.addr;
    let mut subs = Vec::new();
    for i in 0..200usize {
        let vsn = Vsn::alternating(i);
        subs.push(subscriber(addr, vsn, STREAM, json!({})).await);
    }
    assert_eq!(topic_count(&stats(addr).await, STREAM), 200);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let got = until_marker(&mut c, STREAM).await;
                (c.vsn, got)
            })
        })
        .collect();
    // Singles, a batch, and raw broadcasts, interleaved.
    let mut expected = Vec::new();
    for i in 0..10 {
        publish(
            addr,
            &json!({"type": "patterns_indexed", "data": {"count": i, "source": "single"}}),
        )
        .await;
        expected.push(i);
    }
    let batch: Vec<Value> = (10..30)
        .map(|i| json!({"type": "patterns_indexed", "data": {"count": i, "source": "batch"}}))
        .collect();
    publish(addr, &Value::Array(batch)).await;
    expected.extend(10..30);
    for i in 30..35 {
        broadcast(
            addr,
            STREAM,
            "pattern_indexed",
            &json!({"count": i, "source": "raw"}),
        )
        .await;
        expected.push(i);
    }
    publish_marker(addr).await;
    let mut payloads_by_vsn: [Option<Vec<Value>>; 2] = [None, None];
    for r in readers {
        let (vsn, got) = r.await.expect("reader");
        let counts: Vec<u64> = got
            .iter()
            .map(|m| m.payload["count"].as_u64().expect("count"))
            .collect();
        assert_eq!(counts, expected, "{vsn:?} subscriber: each once, in order");
        let payloads: Vec<Value> = got.into_iter().map(|m| m.payload).collect();
        let slot = &mut payloads_by_vsn[(vsn == Vsn::V2) as usize];
        match slot {
            None => *slot = Some(payloads),
            Some(first) => assert_eq!(first, &payloads, "same bytes to every {vsn:?} subscriber"),
        }
    }
    assert_eq!(
        payloads_by_vsn[0], payloads_by_vsn[1],
        "V1 and V2 carry the same payloads"
    );
    let m = metrics(addr).await;
    assert_eq!(
        m.value("headcount_bus_deliveries_total", &[]),
        (200 * (expected.len() + 1)) as f64,
        "{}",
        m.text
    );
}

/// A subscriber that never reads is closed `1008 slow consumer` and
/// counted down, while the fast ones receive every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_dropped_while_the_rest_receive_everything() {
    let server = Server::start(&["--outbound-queue", "32"]);
    let addr = server.addr;
    let opts = ConnectOpts {
        recv_buffer: Some(4096),
        ..ConnectOpts::default()
    };
    let mut slow = try_connect(addr, "vsn=2.0.0", opts)
        .await
        .expect("slow connect");
    slow.join_ok(STREAM, json!({})).await;
    let mut readers = Vec::new();
    for i in 0..6usize {
        let vsn = Vsn::alternating(i);
        let mut c = subscriber(addr, vsn, STREAM, json!({})).await;
        readers.push(tokio::spawn(async move {
            let got = until(&mut c, STREAM, |m| m.event == "end").await;
            (c, got)
        }));
    }
    // Flood with 16 KiB broadcasts until the slow socket is dropped, then
    // some more.
    let blob = "z".repeat(16 * 1024);
    let mut sent = 0u64;
    let mut after_drop = None;
    while after_drop.is_none_or(|n| sent < n) {
        broadcast(addr, STREAM, "blob", &json!({"seq": sent, "blob": blob})).await;
        sent += 1;
        if after_drop.is_none() && sent.is_multiple_of(8) {
            let m = metrics(addr).await;
            if m.value("headcount_slow_consumer_closes_total", &[]) >= 1.0 {
                after_drop = Some(sent + 20);
            }
        }
        assert!(sent < 5000, "the slow consumer was never dropped");
    }
    broadcast(addr, STREAM, "end", &json!({})).await;
    // The slow one sees, after whatever was already on the wire, its close.
    let closed = slow.expect_closed().await;
    assert_eq!(closed, Closed::Frame(1008, "slow consumer".into()));
    // The others got every message, in order.
    let mut fast = Vec::new();
    for r in readers {
        let (c, got) = r.await.expect("reader");
        let seqs: Vec<u64> = got
            .iter()
            .map(|m| m.payload["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (0..sent).collect::<Vec<_>>(), "{:?} reader", c.vsn);
        fast.push(c);
    }
    let s = wait_stats(addr, "slow consumer counted down", |s| {
        s["socket_count"] == 6
    })
    .await;
    assert_eq!(topic_count(&s, STREAM), 6, "{s}");
    let m = metrics(addr).await;
    assert_eq!(m.value("headcount_slow_consumer_closes_total", &[]), 1.0);
}
