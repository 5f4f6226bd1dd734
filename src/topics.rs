//! The names of the built-in topics, in one place: the channel router, the
//! bus, the registry's stream count and the metrics all refer to these.

pub const STATS: &str = "patterns:stats";
pub const STREAM: &str = "patterns:stream";
pub const VSM: &str = "patterns:vsm";

/// The only topics that get their own metric label (no unbounded labels).
pub const BUILTIN: [&str; 3] = [STATS, STREAM, VSM];
