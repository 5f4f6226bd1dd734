//! Writing one message to many sockets. An event that comes alone goes
//! straight into every socket from here — one non-blocking write each, no
//! session woken — split over the machine's cores when the topic is big, so
//! one event to 10,000 subscribers costs the kernel's sends and little
//! more, on every core. Messages that follow each other quickly are queued
//! instead, so that each socket's session writes many in one syscall: the
//! throughput of a busy topic comes from that batching.

use crate::outbox::Outbox;
use crate::protocol::Vsn;
use bytes::Bytes;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// A topic published to again within this long of its last message's
/// fan-out is busy: its messages are queued for batching rather than
/// written one by one.
pub const BUSY_WITHIN: Duration = Duration::from_millis(50);
/// Fewer members than this are not worth a second thread.
const PARALLEL_FROM: usize = 1024;
/// The threads a big fan-out is split over: asked once, as the answer
/// takes system calls (affinity, cgroup limits).
static CORES: LazyLock<usize> =
    LazyLock::new(|| std::thread::available_parallelism().map_or(1, usize::from));

/// One topic's publishing order: a message reaches every member before the
/// next one starts, whichever thread publishes it.
#[derive(Default)]
pub struct Order {
    last: Mutex<Option<Instant>>,
}

/// One member's outbox and serializer.
pub type Recipient = (Arc<Outbox>, Vsn);
/// Where one message goes.
pub type Recipients = Vec<Recipient>;

/// Sends `frames` (one per serializer version, V1 then V2) to every
/// recipient; returns how many took it.
pub fn send(order: &Order, recipients: &Recipients, frames: &[Option<Bytes>; 2]) -> usize {
    let mut last = order.last.lock().unwrap_or_else(|e| e.into_inner());
    let busy = last.is_some_and(|t| t.elapsed() < BUSY_WITHIN);
    let one = |(outbox, vsn): &Recipient| -> bool {
        let frame = match vsn {
            Vsn::V1 => &frames[0],
            Vsn::V2 => &frames[1],
        };
        let Some(frame) = frame else {
            return false;
        };
        if busy {
            outbox.push_later(frame.clone())
        } else {
            outbox.push(frame.clone())
        }
    };
    let threads = if busy || recipients.len() < PARALLEL_FROM {
        1
    } else {
        *CORES
    };
    let sent = if threads == 1 {
        recipients.iter().filter(|r| one(r)).count()
    } else {
        in_parallel(recipients, threads, &one)
    };
    *last = Some(Instant::now());
    sent
}

/// `one` for every recipient, on `threads` threads (this one included).
fn in_parallel(
    recipients: &Recipients,
    threads: usize,
    one: &(dyn Fn(&Recipient) -> bool + Sync),
) -> usize {
    let chunk = recipients.len().div_ceil(threads);
    let mut parts = recipients.chunks(chunk);
    let mine = parts.next().unwrap_or(&[]);
    std::thread::scope(|scope| {
        let others: Vec<_> = parts
            .map(|part| scope.spawn(move || part.iter().filter(|r| one(r)).count()))
            .collect();
        let here = mine.iter().filter(|r| one(r)).count();
        here + others
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .sum::<usize>()
    })
}
