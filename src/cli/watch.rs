//! `headcount watch`: a live terminal view of a node's stats. Polls
//! `/api/stats` (or `/api/stats/cluster`) every interval, asking for only
//! as many of the largest topics as the terminal has rows (`limit`, SPEC
//! §7.3; 100 when piped), and redraws the `stats` table in place, with
//! "… and N more topics" for the rest, using plain ANSI sequences: an
//! alternate screen, cursor home, clear-to-end. Ctrl-C (SIGINT), SIGTERM or SIGHUP end it with
//! the terminal restored and exit code 0. When stdout is not a terminal the
//! frames are printed one after another, without escape sequences.

use super::{fetch, stats};
use clap::Args;
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Base URL of the node.
    #[arg(long, default_value = "http://127.0.0.1:4000", env = "HEADCOUNT_URL")]
    pub url: String,
    /// Show cluster-wide figures.
    #[arg(long)]
    pub cluster: bool,
    /// Milliseconds between polls.
    #[arg(long, default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    pub interval_ms: u64,
}

/// Samples kept for the sparkline.
const HISTORY: usize = 240;

/// Topics asked for when stdout is not a terminal (no height to fit).
const PIPED_LIMIT: usize = 100;

/// The `limit` of a poll for a terminal of `rows` rows: no more topics than
/// could show (each takes at least one row), within what the node takes.
pub fn topic_limit(rows: usize) -> u32 {
    u32::try_from(rows)
        .unwrap_or(u32::MAX)
        .clamp(1, stats::MAX_LIMIT)
}

/// What the view shows: the last answer, when it came, and what went wrong
/// since, if anything.
#[derive(Default)]
pub struct View {
    pub url: String,
    pub interval_ms: u64,
    pub last: Option<Value>,
    pub last_at: Option<String>,
    pub error: Option<String>,
    pub history: VecDeque<u64>,
}

impl View {
    fn update(&mut self, answer: Result<String, String>) {
        match answer
            .and_then(|body| serde_json::from_str::<Value>(&body).map_err(|e| e.to_string()))
        {
            Ok(value) => {
                if let Some(n) = value.get("connection_count").and_then(Value::as_u64) {
                    if self.history.len() == HISTORY {
                        self.history.pop_front();
                    }
                    self.history.push_back(n);
                }
                self.last = Some(value);
                self.last_at = Some(clock());
                self.error = None;
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// The frame as lines, clipped to `cols` × `rows`, without colour.
    pub fn lines(&self, cols: usize, rows: usize) -> Vec<String> {
        let mut lines = vec![format!(
            "headcount watch · {} · every {} ms · Ctrl-C quits · {}",
            self.url,
            self.interval_ms,
            clock()
        )];
        if let Some(e) = &self.error {
            lines.push(format!(
                "! {e} — retrying{}",
                self.last_at
                    .as_ref()
                    .map(|t| format!("; figures below are from {t}"))
                    .unwrap_or_default()
            ));
        }
        lines.push(String::new());
        match &self.last {
            Some(v) => {
                lines.extend(stats::table(v).lines().map(str::to_owned));
                if self.history.len() > 1 {
                    let width = cols.saturating_sub(24).clamp(8, HISTORY);
                    let max = self.history.iter().max().copied().unwrap_or(0);
                    lines.push(String::new());
                    lines.push(format!(
                        "connections {} (max {max})",
                        sparkline(self.history.iter().copied(), width, max)
                    ));
                }
            }
            None if self.error.is_none() => lines.push("waiting for the first answer…".into()),
            None => {}
        }
        clip(lines, cols, rows)
    }
}

fn clock() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    now.get(11..19).unwrap_or(&now).to_owned()
}

/// The last `width` values as block characters scaled to `0..=max`.
pub fn sparkline(values: impl DoubleEndedIterator<Item = u64>, width: usize, max: u64) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let mut tail: Vec<u64> = values.rev().take(width).collect();
    tail.reverse();
    tail.iter()
        .map(|v| {
            let level = (v * 7 + max / 2).checked_div(max).unwrap_or(0);
            BARS[level.min(7) as usize]
        })
        .collect()
}

/// Cuts lines to the terminal: each to `cols` characters, and the frame to
/// `rows` lines with a note of what was left out.
fn clip(lines: Vec<String>, cols: usize, rows: usize) -> Vec<String> {
    let cut = |l: String| -> String {
        if l.chars().count() > cols {
            l.chars().take(cols).collect()
        } else {
            l
        }
    };
    let rows = rows.max(2);
    if lines.len() <= rows {
        return lines.into_iter().map(cut).collect();
    }
    let hidden = lines.len() - (rows - 1);
    let mut out: Vec<String> = lines.into_iter().take(rows - 1).map(cut).collect();
    out.push(cut(format!("… {hidden} more lines (enlarge the terminal)")));
    out
}

/// Columns and rows of the terminal on stdout, if it is one.
fn terminal_size() -> Option<(usize, usize)> {
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col as usize, ws.ws_row as usize))
}

/// The terminal in watch mode: alternate screen, hidden cursor, no echo of
/// typed keys (so `^C` does not smear the frame). Dropping it restores all
/// three, on every way out including a panic.
struct Screen {
    saved: Option<libc::termios>,
}

impl Screen {
    fn enter(out: &mut impl Write) -> io::Result<Screen> {
        let saved = if io::stdin().is_terminal() {
            // SAFETY: tcgetattr/tcsetattr read and write the struct we pass.
            unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(libc::STDIN_FILENO, &mut t) == 0 {
                    let saved = t;
                    t.c_lflag &= !libc::ECHO;
                    libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t);
                    Some(saved)
                } else {
                    None
                }
            }
        } else {
            None
        };
        out.write_all(b"\x1b[?1049h\x1b[?25l\x1b[2J")?;
        out.flush()?;
        Ok(Screen { saved })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = io::stdout();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        if let Some(t) = self.saved {
            // SAFETY: restores the attributes read in `enter`.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t);
            }
        }
    }
}

/// One frame for a terminal: home, each line cleared to its end, the rest
/// of the screen cleared; alerts in red.
fn paint(lines: &[String]) -> String {
    let mut out = String::from("\x1b[H");
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if i == 0 {
            out.push_str("\x1b[1m");
            out.push_str(line);
            out.push_str("\x1b[0m");
        } else if line.starts_with("! ") || line.contains("DEGRADED") {
            out.push_str("\x1b[31m");
            out.push_str(line);
            out.push_str("\x1b[0m");
        } else {
            out.push_str(line);
        }
        out.push_str("\x1b[K");
    }
    out.push_str("\x1b[J");
    out
}

/// Runs the view until SIGINT, SIGTERM or SIGHUP.
pub async fn run(args: &WatchArgs) -> io::Result<()> {
    // Signals first: from here on Ctrl-C can no longer kill the process with
    // the terminal left in watch mode.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut winch = signal(SignalKind::window_change())?;
    let mut view = View {
        url: stats::stats_url(&args.url, args.cluster, None, None),
        interval_ms: args.interval_ms,
        ..View::default()
    };
    let mut stdout = io::stdout();
    let tty = stdout.is_terminal();
    let screen = if tty {
        Some(Screen::enter(&mut stdout)?)
    } else {
        None
    };
    let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let poll = tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => break,
            _ = winch.recv() => false,
            _ = tick.tick() => true,
        };
        if poll {
            let rows = if tty {
                terminal_size().map_or(24, |(_, rows)| rows)
            } else {
                PIPED_LIMIT
            };
            let url = stats::stats_url(&args.url, args.cluster, None, Some(topic_limit(rows)));
            let answer = tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = hup.recv() => break,
                a = fetch::get(&url) => a.map_err(|e| e.to_string()),
            };
            view.update(answer);
        }
        if tty {
            let (cols, rows) = terminal_size().unwrap_or((80, 24));
            stdout.write_all(paint(&view.lines(cols, rows)).as_bytes())?;
        } else if poll {
            let mut frame = view.lines(usize::MAX, usize::MAX).join("\n");
            frame.push_str("\n\n");
            stdout.write_all(frame.as_bytes())?;
        }
        stdout.flush()?;
    }
    drop(screen);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_to_the_maximum() {
        assert_eq!(sparkline([0u64, 4, 8].into_iter(), 10, 8), "▁▅█");
        assert_eq!(sparkline([1u64, 2, 3].into_iter(), 2, 3), "▆█");
        assert_eq!(sparkline([0u64, 0].into_iter(), 5, 0), "▁▁");
    }

    #[test]
    fn frame_is_clipped_to_the_terminal() {
        let mut v = View {
            url: "http://x/api/stats".into(),
            interval_ms: 1000,
            ..View::default()
        };
        v.update(Ok(
            r#"{"node":"a","connection_count":3,"stream_count":1,"socket_count":2,
            "connections_by_topic":{"t1":{"a":1},"t2":{"a":1},"patterns:stream":{"a":1}},
            "timestamp":"x"}"#
                .into(),
        ));
        let lines = v.lines(20, 8);
        assert_eq!(lines.len(), 8);
        assert!(lines.iter().all(|l| l.chars().count() <= 20));
        assert!(lines[7].starts_with("… "), "{lines:?}");
        let all = v.lines(200, 100).join("\n");
        assert!(all.contains("connections  3"), "{all}");
        v.update(Err("cannot reach x: refused".into()));
        let all = v.lines(200, 100).join("\n");
        assert!(all.contains("! cannot reach x: refused — retrying; figures below are from"));
        assert!(all.contains("connections  3"), "{all}");
    }

    #[test]
    fn asks_for_as_many_topics_as_fit_and_says_how_many_more() {
        assert_eq!(topic_limit(0), 1);
        assert_eq!(topic_limit(40), 40);
        assert_eq!(topic_limit(usize::MAX), stats::MAX_LIMIT);
        let mut v = View::default();
        v.update(Ok(
            r#"{"node":"a","connection_count":9,"stream_count":0,"socket_count":9,
            "connections_by_topic":{"t1":{"a":5}},"topics_omitted":12,"timestamp":"x"}"#
                .into(),
        ));
        let all = v.lines(200, 100).join("\n");
        assert!(all.contains("… and 12 more topics"), "{all}");
    }
}
