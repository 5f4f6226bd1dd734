//! Gives memory back to the operating system after many sockets close, for
//! builds on glibc's allocator (`--no-default-features`): it keeps freed
//! memory in its arenas, so a node that held 18,000 sockets would keep that
//! footprint for ever; after a large drop in open sockets this asks it to
//! return what it can (`malloc_trim`). The default allocator, jemalloc,
//! purges from its own background thread (main.rs), and mimalloc is only a
//! comparison build: for both this task does nothing.

use crate::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// How often the socket count is looked at.
const EVERY: Duration = Duration::from_secs(2);
/// A drop of at least this many sockets since the last trim triggers one.
const DROP: u64 = 1000;

/// Watches the socket count until the task is dropped.
pub async fn run(registry: Arc<Registry>) {
    let mut peak = 0;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The registry remembers the high-water mark between ticks, so a
        // burst that opens and closes within one tick is still seen.
        let (seen, now) = registry.take_socket_peak();
        peak = peak.max(seen);
        if peak - now >= DROP {
            peak = now;
            // Trimming walks the heap: keep it off the I/O threads.
            let _ = tokio::task::spawn_blocking(release).await;
        }
    }
}

/// Returns free heap memory to the OS where the allocator needs asking.
pub fn release() {
    #[cfg(all(
        target_os = "linux",
        target_env = "gnu",
        not(any(feature = "jemalloc", feature = "mimalloc"))
    ))]
    // SAFETY: malloc_trim only walks glibc's own arenas; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}
