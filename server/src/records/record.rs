//! One call's record, as the store keeps it and the admin API shows it: who called what, how
//! the ACD handled it (each offer and how it ended), how it ended, how long each part took,
//! and how its media fared. Times are Unix milliseconds inside, RFC 3339 (UTC, to the
//! millisecond) outside, so a record reads the same in JSON, in CSV and in a log.

use serde::{Deserialize, Serialize};

/// Longest caller-chosen text kept (From, display name, Request-URI, Call-ID): a record is
/// read by people and spreadsheets, not a copy of the INVITE.
pub const MAX_TEXT: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Ours, unique: a Call-ID may come back in a later call.
    pub id: String,
    pub call_id: String,
    /// The caller's From URI.
    pub caller: String,
    pub caller_name: Option<String>,
    /// The Request-URI the caller dialled.
    pub dialled: String,
    pub call_type: String,
    pub queue: String,
    pub priority: i32,
    #[serde(with = "rfc3339")]
    pub arrived: u64,
    #[serde(with = "rfc3339::option")]
    pub answered: Option<u64>,
    #[serde(with = "rfc3339")]
    pub ended: u64,
    /// `answered`, `abandoned`, `timed-out` or `refused`.
    pub outcome: String,
    /// How it ended: for an answered call who hung up (or why it was cut), else the ACD's
    /// reason (`caller hung up`, `queue timeout`, `no agent for the queue`...).
    pub reason: String,
    /// `caller`, `agent` or `system` (a failure or the shutdown); none when not answered.
    pub hung_up_by: Option<String>,
    /// Who answered.
    pub agent: Option<String>,
    /// The edge of the agent who answered.
    pub edge: Option<String>,
    /// In the order they were made.
    pub offers: Vec<OfferRecord>,
    /// From arrival to the answer, or to the end when there was none.
    pub wait_ms: u64,
    /// How long the answering offer rang.
    pub ring_ms: Option<u64>,
    pub talk_ms: Option<u64>,
    /// From the hang-up to the end of the agent's wrap-up; filled in when that ends.
    pub wrap_up_ms: Option<u64>,
    pub media: Option<MediaSummary>,
    /// One-way audio the bridge flagged during the call, each kind once, in the order first
    /// seen (the metric counts every flag): `caller-silent`
    /// (the agent heard nothing), `agent-silent` (the caller heard nothing).
    #[serde(default)]
    pub one_way_audio: Vec<String>,
    /// Set by the agent's page in wrap-up (not yet: the page has no form for it).
    pub disposition: Option<String>,
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferRecord {
    pub agent: String,
    pub edge: Option<String>,
    #[serde(with = "rfc3339")]
    pub offered: u64,
    #[serde(with = "rfc3339::option")]
    pub ended: Option<u64>,
    /// `answered`, `declined`, `no-answer`, `failed`, `unacceptable`, `caller-hung-up`,
    /// `signed-out`; none when the call ended another way (a shutdown) while it rang.
    pub result: Option<String>,
}

/// The media of an answered call, from the bridge's last statistics: each direction as the
/// bridge received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaSummary {
    /// What the caller sent (towards the agent).
    pub caller: LegSummary,
    /// What the agent sent (towards the caller).
    pub agent: LegSummary,
    /// How the agent's WebRTC media reached the edge: `udp`, `tcp` (ICE-TCP through the
    /// distributor) or `turn-tls`.
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegSummary {
    pub packets: u64,
    pub lost: u64,
    pub jitter_ms: u32,
    /// Lost out of expected (received and lost), in percent.
    pub loss_pct: f64,
    /// An E-model estimate for G.711 (see [`mos`]), none before any packet.
    pub mos: Option<f64>,
}

impl LegSummary {
    pub fn new(packets: u64, lost: u64, jitter_ms: u32) -> LegSummary {
        let expected = packets.saturating_add(lost);
        let loss_pct = if expected == 0 {
            0.0
        } else {
            round2(100.0 * lost as f64 / expected as f64)
        };
        LegSummary {
            packets,
            lost,
            jitter_ms,
            loss_pct,
            mos: (packets > 0).then(|| mos(loss_pct, jitter_ms)),
        }
    }
}

/// The bridge's statistics as the edge reports them (`media::bridge::MediaStats`), read
/// leniently: a field it does not send is zero, not an error.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReportedStats {
    from_caller: ReportedFlow,
    from_agent: ReportedFlow,
    ice_protocol: Option<String>,
    one_way: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReportedFlow {
    packets: u64,
    lost: u64,
    jitter_ms: u32,
}

impl MediaSummary {
    /// From an edge's statistics report (JSON), with the one-way audio it flags now (if
    /// any); none when it does not parse.
    pub fn from_report(json: &str) -> Option<(MediaSummary, Option<String>)> {
        let r: ReportedStats = serde_json::from_str(json).ok()?;
        let leg = |f: &ReportedFlow| LegSummary::new(f.packets, f.lost, f.jitter_ms);
        let summary = MediaSummary {
            caller: leg(&r.from_caller),
            agent: leg(&r.from_agent),
            path: r.ice_protocol.map(|p| truncate(&p, 16)),
        };
        let one_way = r.one_way.filter(|w| ONE_WAY.contains(&w.as_str()));
        Some((summary, one_way))
    }
}

/// What the bridge flags as one-way audio (anything else an edge says is ignored).
pub const ONE_WAY: [&str; 2] = ["caller-silent", "agent-silent"];

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A mean opinion score estimated with the ITU-T G.107 E-model for G.711 with packet loss
/// concealment (Ie = 0, Bpl = 25.1), from the loss and jitter the bridge measured. The delay
/// is not measured on the caller's side, so it is taken as the packetisation (20 ms), a
/// jitter buffer of twice the jitter, and 20 ms of network: an estimate for comparing calls,
/// not a listening test.
pub fn mos(loss_pct: f64, jitter_ms: u32) -> f64 {
    let delay = 40.0 + 2.0 * f64::from(jitter_ms);
    let id = 0.024 * delay
        + if delay > 177.3 {
            0.11 * (delay - 177.3)
        } else {
            0.0
        };
    let ppl = loss_pct.clamp(0.0, 100.0);
    let ie_eff = 95.0 * ppl / (ppl + 25.1);
    let r = 93.2 - id - ie_eff;
    let mos = if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + 7.0e-6 * r * (r - 60.0) * (100.0 - r)
    };
    round2(mos.clamp(1.0, 4.5))
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The CSV export's columns, in order.
pub const CSV_HEADER: [&str; 33] = [
    "id",
    "call_id",
    "arrived",
    "answered",
    "ended",
    "caller",
    "caller_name",
    "dialled",
    "call_type",
    "queue",
    "priority",
    "outcome",
    "reason",
    "hung_up_by",
    "agent",
    "edge",
    "offers",
    "wait_ms",
    "ring_ms",
    "talk_ms",
    "wrap_up_ms",
    "caller_packets",
    "caller_lost",
    "caller_jitter_ms",
    "caller_mos",
    "agent_packets",
    "agent_lost",
    "agent_jitter_ms",
    "agent_mos",
    "path",
    "one_way_audio",
    "disposition",
    "notes",
];

impl CallRecord {
    /// The record as a CSV row (RFC 4180: every field quoted, CRLF at the end). Text a
    /// caller chose that a spreadsheet would read as a formula gets a leading `'`.
    pub fn csv_row(&self) -> String {
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let time = |v: Option<u64>| v.map(rfc3339::format).unwrap_or_default();
        let offers = self
            .offers
            .iter()
            .map(|o| format!("{}:{}", o.agent, o.result.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(";");
        let leg = |pick: fn(&MediaSummary) -> &LegSummary| -> [String; 4] {
            match &self.media {
                Some(m) => {
                    let l = pick(m);
                    [
                        l.packets.to_string(),
                        l.lost.to_string(),
                        l.jitter_ms.to_string(),
                        l.mos.map(|m| m.to_string()).unwrap_or_default(),
                    ]
                }
                None => Default::default(),
            }
        };
        let [cp, cl, cj, cm] = leg(|m| &m.caller);
        let [ap, al, aj, am] = leg(|m| &m.agent);
        let fields: [String; 33] = [
            self.id.clone(),
            inert(&self.call_id),
            time(Some(self.arrived)),
            time(self.answered),
            time(Some(self.ended)),
            inert(&self.caller),
            inert(self.caller_name.as_deref().unwrap_or("")),
            inert(&self.dialled),
            self.call_type.clone(),
            self.queue.clone(),
            self.priority.to_string(),
            self.outcome.clone(),
            self.reason.clone(),
            self.hung_up_by.clone().unwrap_or_default(),
            self.agent.clone().unwrap_or_default(),
            self.edge.clone().unwrap_or_default(),
            offers,
            self.wait_ms.to_string(),
            opt(self.ring_ms),
            opt(self.talk_ms),
            opt(self.wrap_up_ms),
            cp,
            cl,
            cj,
            cm,
            ap,
            al,
            aj,
            am,
            self.media
                .as_ref()
                .and_then(|m| m.path.clone())
                .unwrap_or_default(),
            self.one_way_audio.join(";"),
            inert(self.disposition.as_deref().unwrap_or("")),
            inert(self.notes.as_deref().unwrap_or("")),
        ];
        csv_line(fields.iter().map(String::as_str))
    }
}

/// One CSV line of quoted fields.
pub fn csv_line<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    let mut line = String::new();
    for (i, field) in fields.enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push('"');
        line.push_str(&field.replace('"', "\"\""));
        line.push('"');
    }
    line.push_str("\r\n");
    line
}

/// Text a spreadsheet would take for a formula (OWASP's CSV injection list) made inert.
fn inert(text: &str) -> String {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_owned(),
    }
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds, and back (any offset, any
/// precision, as RFC 3339 allows).
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn format(ms: u64) -> String {
        let nanos = i128::from(ms) * 1_000_000;
        match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            ),
            Err(_) => ms.to_string(),
        }
    }

    /// None when it is not RFC 3339, or before 1970.
    pub fn parse(text: &str) -> Option<u64> {
        let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
    }

    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).ok_or_else(|| serde::de::Error::custom(format!("not RFC 3339: {text}")))
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => super::serialize(ms, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(text) => super::parse(&text)
                    .map(Some)
                    .ok_or_else(|| serde::de::Error::custom(format!("not RFC 3339: {text}"))),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_back_as_written() {
        assert_eq!(rfc3339::format(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339::format(1_796_652_300_123),
            "2026-12-07T14:05:00.123Z"
        );
        assert_eq!(
            rfc3339::parse("2026-12-07T14:05:00.123Z"),
            Some(1_796_652_300_123)
        );
        assert_eq!(
            rfc3339::parse("2026-12-07T15:05:00+01:00"),
            Some(1_796_652_300_000)
        );
        assert_eq!(rfc3339::parse("yesterday"), None);
        assert_eq!(rfc3339::parse("1969-12-31T23:59:59Z"), None);
    }

    #[test]
    fn mos_falls_with_loss_and_jitter() {
        let clean = mos(0.0, 0);
        assert!((4.3..=4.45).contains(&clean), "{clean}");
        assert!(mos(1.0, 0) < clean);
        assert!(mos(5.0, 0) < mos(1.0, 0));
        assert!(mos(0.0, 100) < clean);
        assert!(mos(100.0, 500) >= 1.0);
        // G.107's figures for G.711 with PLC at 2 % random loss: R about 87, MOS about 4.2.
        let two = mos(2.0, 0);
        assert!((4.0..4.3).contains(&two), "{two}");
    }

    #[test]
    fn an_edge_report_becomes_a_summary() {
        let json = r#"{"from_caller":{"packets":990,"bytes":1,"lost":10,"jitter_ms":3},
            "from_agent":{"packets":1000,"bytes":1,"lost":0,"jitter_ms":1},
            "dropped":0,"unauthenticated":0,"ice_protocol":"tcp","ice_state":"Connected"}"#;
        let (m, one_way) = MediaSummary::from_report(json).unwrap();
        assert_eq!(one_way, None);
        assert_eq!(m.caller.loss_pct, 1.0);
        assert_eq!(m.agent.loss_pct, 0.0);
        assert_eq!(m.path.as_deref(), Some("tcp"));
        assert!(m.caller.mos < m.agent.mos);
        assert_eq!(MediaSummary::from_report("not json"), None);
        let (silent, _) = MediaSummary::from_report("{}").unwrap();
        assert_eq!(silent.caller.mos, None);
        let flagged = MediaSummary::from_report(r#"{"one_way":"caller-silent"}"#).unwrap();
        assert_eq!(flagged.1.as_deref(), Some("caller-silent"));
        let odd = MediaSummary::from_report(r#"{"one_way":"<script>"}"#).unwrap();
        assert_eq!(odd.1, None);
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_made_inert() {
        let line = csv_line(["a", "b\"c", "d,e"].into_iter());
        assert_eq!(line, "\"a\",\"b\"\"c\",\"d,e\"\r\n");
        assert_eq!(inert("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(inert("sip:1000@x"), "sip:1000@x");
        assert_eq!(truncate("ééé", 3), "é");
    }
}
