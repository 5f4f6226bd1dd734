//! `headcount watch` as a person runs it: in a pseudo-terminal, redrawing in
//! place as counts change, quitting on Ctrl-C with exit code 0 and the
//! terminal restored; piped, printing plain frames; and carrying on while
//! the node is unreachable. The node, its client and output capture come
//! from `tests/common`; the pseudo-terminal is local to this file.

mod common;

use common::{bare_command, free_port, v2, wait_exit, Output, Server, STREAM};
use serde_json::json;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

const HOME: &str = "\x1b[H";
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
const RESTORE: &str = "\x1b[?25h\x1b[?1049l";

fn start_node() -> Server {
    Server::builder()
        .args(["--node", "watch@test"])
        .env("RUST_LOG", "warn")
        .start()
}

/// The newest complete frame (the text between the last two cursor-home
/// sequences), or the whole output if there is none.
fn last_frame(out: &Output) -> String {
    let text = out.text();
    let starts: Vec<usize> = text.match_indices(HOME).map(|(i, _)| i).collect();
    match starts.len() {
        0 => text,
        1 => text[starts[0]..].to_owned(),
        n => text[starts[n - 2]..starts[n - 1]].to_owned(),
    }
}

/// Waits for `child` to exit; kills it and fails the test after `limit`.
fn exit_within(child: &mut Child, limit: Duration) -> ExitStatus {
    wait_exit(child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("watch did not exit within {limit:?}");
    })
}

/// A pseudo-terminal of `cols` × `rows`: (master, slave).
fn openpty(cols: u16, rows: u16) -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors; the pointers are valid.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// `headcount watch` on a fresh pseudo-terminal that is its controlling
/// terminal, so a Ctrl-C typed on the master reaches it as SIGINT.
fn watch_in_pty(args: &[&str]) -> (Child, std::fs::File, Output) {
    let (master, slave) = openpty(100, 40);
    let mut cmd = bare_command();
    cmd.arg("watch")
        .args(args)
        .env("TERM", "xterm-256color")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and ioctl are async-signal-safe; they only touch the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn headcount watch");
    drop(cmd); // closes the parent's copies of the slave
    let output = Output::default();
    let master = std::fs::File::from(master);
    output.gather(master.try_clone().unwrap());
    (child, master, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redraws_in_place_and_quits_cleanly_on_ctrl_c() {
    let node = start_node();
    let url = format!("http://{}", node.addr);
    let (mut child, mut master, out) = watch_in_pty(&["--url", &url, "--interval-ms", "100"]);

    out.wait_for("the first frame", |o| o.text().contains("connections  0"));
    assert!(
        out.text().starts_with(ENTER),
        "alternate screen, hidden cursor"
    );
    let mut socket = v2(node.addr).await;
    socket.join_ok(STREAM, json!({})).await;
    out.wait_for("a redraw with the new membership", |o| {
        last_frame(o).contains("connections  1")
    });
    let frame = last_frame(&out);
    assert!(frame.contains("stream       1"), "{frame:?}");
    assert!(frame.contains("patterns:stream"), "{frame:?}");
    assert!(frame.contains("watch@test"), "{frame:?}");
    socket.vanish();
    out.wait_for("a redraw after the socket left", |o| {
        last_frame(o).contains("connections  0")
    });
    let frames = out.text().matches(HOME).count();
    assert!(frames >= 3, "{frames} redraws");
    // In place: one clear of the whole screen, then cursor-home redraws
    // that never scroll past the 40 rows of the terminal.
    assert_eq!(out.text().matches("\x1b[2J").count(), 1);
    assert!(last_frame(&out).lines().count() <= 40);

    master.write_all(&[0x03]).unwrap(); // Ctrl-C
    let status = exit_within(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit code after Ctrl-C");
    out.wait_for("the terminal restored", |o| o.text().ends_with(RESTORE));
    assert!(
        !out.text().contains("^C"),
        "typed keys are not echoed over the view"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_keeps_running_while_the_node_is_unreachable() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let (mut child, _master, out) = watch_in_pty(&["--url", &url, "--interval-ms", "100"]);
    out.wait_for("the error line", |o| o.text().contains("! cannot reach"));
    out.wait_for("a second attempt", |o| {
        o.text().matches("! cannot reach").count() >= 2
    });
    assert!(child.try_wait().unwrap().is_none(), "still running");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = exit_within(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    out.wait_for("the terminal restored", |o| o.text().ends_with(RESTORE));
}

#[test]
fn watch_piped_prints_plain_frames_and_exits_0_on_sigint() {
    let node = start_node();
    let mut child = bare_command()
        .args(["watch", "--cluster", "--interval-ms", "100"])
        .args(["--url", &format!("http://{}", node.addr)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Output::default();
    let reader = out.gather(child.stdout.take().unwrap());
    out.wait_for("two frames", |o| {
        o.text().matches("headcount watch ·").count() >= 2
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = exit_within(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    reader.join().unwrap();
    let text = out.text();
    assert!(
        !text.contains('\x1b'),
        "no escape sequences when piped: {text:?}"
    );
    assert!(text.contains("/api/stats/cluster"), "{text}");
    assert!(
        text.contains("cluster      1 node(s), source local"),
        "{text}"
    );
    let _ = child.stderr.take().map(|mut e| {
        let mut s = String::new();
        let _ = e.read_to_string(&mut s);
        assert!(s.is_empty(), "stderr: {s}");
    });
}
