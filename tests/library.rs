//! headcount embedded as a library (issue 3, item 6): a `Server` bound in
//! process, real sockets joined to it, and events published through the
//! Rust `Bus` API reaching them exactly as HTTP-published ones do; the
//! shutdown future passed to `run` drains it.

mod common;

use common::*;
use headcount::{Config, Event, Server as Embedded};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_publish_reaches_subscribers_of_an_embedded_server() {
    let server = Embedded::bind(Config {
        bind: "127.0.0.1:0".into(),
        node: "lib@test".into(),
        ..Config::default()
    })
    .await
    .expect("bind");
    let addr = server.local_addr();
    let bus = server.bus();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let mut stream = v1(addr).await;
    stream.join_ok(STREAM, json!({})).await;
    stream.expect_event(STREAM, "initial_stats").await;
    let mut vsm = v2(addr).await;
    vsm.join_ok(VSM, json!({"subsystem": "s4"})).await;

    let event = Event::new(
        "pattern_detected",
        json!({"pattern_type": "lib", "confidence": 0.5}),
    )
    .expect("valid event");
    assert_eq!(bus.publish(event), 2, "one delivery per subscriber");
    let flow = Event::new("vsm_pattern_flow", json!({"subsystem": "S4"})).unwrap();
    assert_eq!(bus.publish(flow), 1);
    assert!(Event::new("vsm_pattern_flow", json!({})).is_err());
    assert!(Event::new("no_such_type", json!({})).is_err());

    let m = stream.expect_event(STREAM, "pattern_detected").await;
    assert_eq!(m.payload["pattern_type"], "lib");
    assert_eq!(m.payload["source"], "s4_intelligence");
    let m = vsm.expect_event(VSM, "pattern_detected").await;
    assert_eq!(m.payload["confidence"], 0.5);
    let m = vsm.expect_event(VSM, "vsm_pattern_flow").await;
    assert_eq!(m.payload["subsystem"], "S4");

    let s = stats(addr).await;
    assert_local_stats(&s, "lib@test");
    assert_eq!(s["connection_count"], 2);

    // The shutdown future drains the embedded server: 1001 to the sockets.
    stop.send(()).unwrap();
    assert!(matches!(
        stream.expect_closed().await,
        Closed::Frame(1001, _)
    ));
    assert!(matches!(vsm.expect_closed().await, Closed::Frame(1001, _)));
    tokio::time::timeout(std::time::Duration::from_secs(10), running)
        .await
        .expect("run returns after the shutdown future resolves")
        .unwrap();
}
