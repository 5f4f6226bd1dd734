//! `patterns:vsm`: Viable System Model subsystems. A member picks one
//! subsystem (or all) when it joins; the registry filters `vsm_pattern_flow` by it.

use super::Refusal;
use crate::bus::subsystem_number;
use crate::metrics::JoinRejection;
use crate::protocol::reason;
use crate::registry::Tag;
use serde_json::{Map, Value};

pub fn join(params: &Map<String, Value>) -> Result<Tag, Refusal> {
    let n = match params.get("subsystem") {
        None | Some(Value::Null) => Some(0),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("all") => Some(0),
        Some(Value::String(s)) => subsystem_number(s),
        Some(_) => None,
    };
    n.map(Tag::Subsystem).ok_or_else(|| Refusal {
        reason: reason("invalid subsystem"),
        metric: JoinRejection::InvalidSubsystem,
    })
}
