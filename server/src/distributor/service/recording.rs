//! The distributor's side of call records: what it tells the [`Recorder`] beyond the ACD's
//! events (a BYE and who sent it, an edge's media statistics), and the finished records
//! handed to the writer as outputs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{info, warn};

use super::{Distributor, Output};
use crate::records::{RecordOutput, Side};
use crate::sip::{Method, SipMessage};

impl Distributor {
    /// A BYE either way ends the call for the ACD and its record.
    pub(super) fn note_bye(&mut self, msg: &SipMessage, side: Side, now: Instant) {
        if msg.method() == Some(&Method::Bye)
            && let Some(call_id) = msg.call_id()
        {
            self.media_stats.remove(call_id);
            let reason = msg.header("Reason").and_then(reason_text);
            self.records.hung_up(call_id, side, reason, now);
            self.acd.call_ended(call_id, now);
        }
    }

    /// The edge's media statistics for a call whose record is being built, from the edge of
    /// the agent who answered (its last report comes after the BYE).
    /// One-way audio the report starts or ends is counted and told on the event stream.
    pub(super) fn media_for_record(&mut self, call_id: &str, edge_id: &str, json: &str) {
        let Some(one_way) = self.records.media(call_id, edge_id, json) else {
            return;
        };
        let agent = self.acd.agent_of(call_id).map(str::to_owned);
        match &one_way {
            Some(w) => {
                warn!(%call_id, agent = ?agent, one_way = %w, "one-way audio");
                self.metrics.one_way_audio(w);
            }
            None => info!(%call_id, "audio flows both ways again"),
        }
        let event = json!({
            "type": "one-way-audio",
            "call": call_id,
            "agent": agent,
            "edge": edge_id,
            "one_way": one_way,
        });
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(Arc::from(event.to_string()));
        }
    }

    /// Hands the finished records (and updates) to the writer.
    pub(super) fn flush_records(&mut self) {
        while let Some(out) = self.records.poll_output() {
            if let RecordOutput::Write(r) = &out {
                if let (Some(ring), Some(talk)) = (r.ring_ms, r.talk_ms) {
                    let ms = Duration::from_millis;
                    self.metrics.answered_call(&r.queue, ms(ring), ms(talk));
                }
                if let Some(media) = &r.media {
                    self.metrics.call_media(media);
                }
            }
            self.out.push_back(Output::Record(out));
        }
    }
}

/// The text of a `Reason` header (RFC 3326), e.g. `SIP ;cause=503 ;text="shutting down"`.
fn reason_text(value: &str) -> Option<&str> {
    let start = value.find("text=\"")? + "text=\"".len();
    let rest = &value[start..];
    let text = &rest[..rest.find('"')?];
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reason_headers_text_is_read() {
        assert_eq!(
            super::reason_text("SIP ;cause=503 ;text=\"shutting down\""),
            Some("shutting down")
        );
        assert_eq!(super::reason_text("Q.850;cause=16"), None);
        assert_eq!(super::reason_text("SIP;text=\"unterminated"), None);
    }
}
