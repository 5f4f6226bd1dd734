//! The child-process end of a worker: the coordinator starts
//! `headcount bench-worker` to pass its own file limit and talks JSON lines.

use super::{run, Command, Event, WorkerSpec};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// `headcount bench-worker`: reads its spec and then commands from stdin,
/// writes events to stdout as JSON lines. The caller raises the open-file
/// limit first (the `headcount` binary does, before it calls this).
pub async fn main_stdio() -> std::io::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await?
        .ok_or_else(|| std::io::Error::other("no worker spec on stdin"))?;
    let spec: WorkerSpec = serde_json::from_str(&first).map_err(std::io::Error::other)?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(c) = serde_json::from_str::<Command>(&line) {
                if cmd_tx.send(c).is_err() {
                    return;
                }
            }
        }
        let _ = cmd_tx.send(Command::Stop);
    });
    let work = tokio::spawn(run(spec, cmd_rx, ev_tx));
    let mut out = tokio::io::stdout();
    while let Some(ev) = ev_rx.recv().await {
        let mut line = serde_json::to_vec(&ev).map_err(std::io::Error::other)?;
        line.push(b'\n');
        out.write_all(&line).await?;
        out.flush().await?;
        if matches!(ev, Event::Done(_) | Event::Failed(_)) {
            break;
        }
    }
    let _ = work.await;
    Ok(())
}
