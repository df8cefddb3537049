//! One-way audio, as the bridge reports it: the distributor hears of it at once (the call's
//! statistics carry it, for the live view, the metrics and the call's record), and so does
//! the agent's page, which says which way the audio is missing.

use std::time::Instant;

use proto_tunnel::Frame;
use serde_json::json;
use tracing::{info, warn};

use super::Buffer;
use crate::buffer::routing_table::CallKey;
use crate::media::bridge::Silent;

/// What the page is sent about its call's audio.
pub(super) const QUALITY_TYPE: &str = "application/vnd.agent-edge.call-quality+json";

impl Buffer {
    pub(super) fn one_way_audio(&mut self, key: CallKey, silent: Option<Silent>, now: Instant) {
        let Some(entry) = self.calls.get(key) else {
            return;
        };
        let (agent, agent_call, caller_call) = (
            entry.agent.clone(),
            entry.agent_leg.call_id.clone(),
            entry.client.call_id.clone(),
        );
        match silent {
            Some(s) => warn!(call = ?key, %agent, one_way = s.label(), "one-way audio"),
            None => info!(call = ?key, %agent, "audio flows both ways again"),
        }
        let stats = self.media.as_ref().and_then(|m| m.stats(key.0));
        if let Some(json) = stats.and_then(|s| serde_json::to_string(&s).ok()) {
            self.send_frame(Frame::CallStats {
                call_id: caller_call,
                json,
            });
        }
        let notice = json!({ "call_id": agent_call, "one_way": silent.map(Silent::label) });
        self.tell_page(&agent, QUALITY_TYPE, &notice.to_string(), now);
    }
}
