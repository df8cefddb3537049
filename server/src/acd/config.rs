//! The ACD's part of the configuration file: call-type rules and queues, under
//! `[distributor]`. Parsed by serde, then checked by [`validate`] so a rule naming a missing
//! queue, a bad regular expression or an overflow loop stops the start-up, not a call.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// One call-type rule: every condition given must hold (an empty rule matches every call).
/// Rules are tried in order; the first that matches gives the call its type.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CallTypeConfig {
    /// The call type's name, shown in the live view and to the agent.
    pub name: String,
    /// The queue calls of this type wait in.
    pub queue: String,
    /// Higher goes ahead of lower in the same queue (may be negative).
    pub priority: i32,
    /// The request-URI's user part: the dialled number or name. Case-sensitive.
    pub request_user: Option<TextMatch>,
    /// The From URI's user part. Case-sensitive.
    pub from_user: Option<TextMatch>,
    /// The From URI's host. Case-insensitive.
    pub from_domain: Option<TextMatch>,
    /// The To URI's user part. Case-sensitive.
    pub to_user: Option<TextMatch>,
    /// The To URI's host. Case-insensitive.
    pub to_domain: Option<TextMatch>,
    /// Header name → condition on its value (case-insensitive, first occurrence).
    pub headers: BTreeMap<String, TextMatch>,
    /// The offered media: `audio` (audio and no video) or `video` (any video stream).
    pub media: Option<MediaMatch>,
}

/// A condition on a text: exactly one of its fields.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TextMatch {
    pub equals: Option<String>,
    pub prefix: Option<String>,
    /// A regular expression (Rust `regex` syntax), unanchored unless it says `^…$`.
    pub regex: Option<String>,
    /// `true`: the value is there (any value); `false`: it is not.
    pub present: Option<bool>,
}

/// What the offered SDP must carry.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MediaMatch {
    /// Audio, and no video stream.
    Audio,
    /// A video stream.
    Video,
}

/// How a queue chooses among the agents free to take its next call.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The agent whose last call (or sign-in) ended longest ago.
    #[default]
    LongestIdle,
    /// Each agent in turn, by name, after the one this queue chose last.
    RoundRobin,
    /// The agent who has answered the fewest calls since signing in.
    FewestCalls,
    /// The agent with the highest total level in the queue's skills.
    BestSkill,
}

/// What a caller hears while queued.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum Ringback {
    /// `180 Ringing`: the caller's own phone plays the ring tone.
    #[default]
    #[serde(rename = "180")]
    Ringing,
    /// `183 Session Progress` with SDP, and the queue's `announcement` played as early media
    /// (G.711, looped) until the call is answered or ends. A caller whose offer has no audio
    /// stream or no G.711 gets 180 instead.
    #[serde(rename = "183")]
    EarlyMedia,
}

/// A queue: who may take its calls, how they are chosen, and its limits.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub name: String,
    /// Skill → minimum level (1-100) an agent needs for this queue's calls.
    pub skills: BTreeMap<String, u8>,
    pub strategy: Strategy,
    /// Calls waiting at most; a call arriving at a full queue gets `full_status`.
    pub max_length: usize,
    /// Longest wait, in seconds, before the call moves to `overflow` or gets `timeout_status`.
    pub max_wait_s: u64,
    /// Queue a call moves to after `max_wait_s`, or when no agent signed in could take it.
    pub overflow: Option<String>,
    /// Status for a call arriving at a full queue.
    pub full_status: u16,
    /// Status for a call that waited `max_wait_s` with nowhere to overflow.
    pub timeout_status: u16,
    /// Status when no agent signed in has the skills (and no overflow).
    pub no_agent_status: u16,
    /// Ring time, in seconds, before an offer is withdrawn and the agent made away.
    pub ring_timeout_s: u64,
    /// Seconds an agent stays in wrap-up after a call of this queue.
    pub wrap_up_s: u64,
    pub ringback: Ringback,
    /// With `ringback = "183"`: a WAV file (8000 Hz mono; 16-bit PCM, µ-law or A-law), read at
    /// start-up.
    pub announcement: Option<std::path::PathBuf>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            name: String::new(),
            skills: BTreeMap::new(),
            strategy: Strategy::LongestIdle,
            max_length: 100,
            max_wait_s: 120,
            overflow: None,
            full_status: 486,
            timeout_status: 480,
            no_agent_status: 480,
            ring_timeout_s: 20,
            wrap_up_s: 0,
            ringback: Ringback::Ringing,
            announcement: None,
        }
    }
}

impl TextMatch {
    fn check(&self, what: &str) -> Result<(), String> {
        let given = [
            self.equals.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
            self.present.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            return Err(format!(
                "{what}: give exactly one of equals, prefix, regex, present"
            ));
        }
        if let Some(re) = &self.regex {
            regex::Regex::new(re).map_err(|e| format!("{what}: {e}"))?;
        }
        Ok(())
    }
}

/// The queues as the ACD uses them: those configured, and the default queue (implied with
/// default settings when not configured).
pub fn queues_with_default(queues: &[QueueConfig], default_queue: &str) -> Vec<QueueConfig> {
    let mut all = queues.to_vec();
    if !all.iter().any(|q| q.name == default_queue) {
        all.push(QueueConfig {
            name: default_queue.to_owned(),
            ..QueueConfig::default()
        });
    }
    all
}

/// Checks the rules and queues together.
pub fn validate(
    call_types: &[CallTypeConfig],
    queues: &[QueueConfig],
    default_queue: &str,
) -> Result<(), String> {
    let all = queues_with_default(queues, default_queue);
    let mut names = BTreeSet::new();
    for q in &all {
        if q.name.is_empty() {
            return Err("every queue needs a name".into());
        }
        if !names.insert(q.name.as_str()) {
            return Err(format!("queue {} is defined twice", q.name));
        }
        for code in [q.full_status, q.timeout_status, q.no_agent_status] {
            if !(400..=699).contains(&code) {
                return Err(format!(
                    "queue {}: statuses must be final failures (400-699)",
                    q.name
                ));
            }
        }
        if q.ring_timeout_s == 0 || q.max_wait_s == 0 || q.max_length == 0 {
            return Err(format!(
                "queue {}: ring_timeout_s, max_wait_s and max_length must be at least 1",
                q.name
            ));
        }
        if (q.ringback == Ringback::EarlyMedia) != q.announcement.is_some() {
            return Err(format!(
                "queue {}: ringback = \"183\" and announcement go together",
                q.name
            ));
        }
        if let Some((skill, _)) = q.skills.iter().find(|(_, l)| !(1..=100).contains(*l)) {
            return Err(format!(
                "queue {}: skill {skill} needs a level from 1 to 100",
                q.name
            ));
        }
    }
    for q in &all {
        // Follow the overflow chain: it must name queues that exist and end.
        let mut seen = BTreeSet::from([q.name.as_str()]);
        let mut next = q.overflow.as_deref();
        while let Some(name) = next {
            let Some(target) = all.iter().find(|o| o.name == name) else {
                return Err(format!(
                    "queue {} overflows to {name}, which is not defined",
                    q.name
                ));
            };
            if !seen.insert(name) {
                return Err(format!("queue {}: overflow loops back to {name}", q.name));
            }
            next = target.overflow.as_deref();
        }
    }
    for (i, t) in call_types.iter().enumerate() {
        let what = format!("call type {} ({})", i + 1, t.name);
        if t.name.is_empty() {
            return Err(format!("{what}: needs a name"));
        }
        if !names.contains(t.queue.as_str()) {
            return Err(format!("{what}: queue {:?} is not defined", t.queue));
        }
        let texts = [
            ("request_user", &t.request_user),
            ("from_user", &t.from_user),
            ("from_domain", &t.from_domain),
            ("to_user", &t.to_user),
            ("to_domain", &t.to_domain),
        ];
        for (field, m) in texts {
            if let Some(m) = m {
                m.check(&format!("{what} {field}"))?;
            }
        }
        for (header, m) in &t.headers {
            m.check(&format!("{what} header {header}"))?;
        }
    }
    Ok(())
}
