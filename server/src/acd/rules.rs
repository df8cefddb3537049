//! Call types from the INVITE. The rules are compiled once (regular expressions included);
//! a call's facts are read once from its INVITE; the first rule whose conditions all hold
//! gives the type, else the default type. Pure: no clock, no IO.

use std::collections::BTreeMap;

use regex::Regex;

use super::config::{CallTypeConfig, MediaMatch, TextMatch};
use crate::sip::{NameAddr, SipMessage};

/// What a call is, as far as the ACD cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallType {
    pub name: String,
    pub queue: String,
    pub priority: i32,
}

/// The parts of an INVITE the rules look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFacts {
    pub request_user: String,
    pub from_user: String,
    pub from_domain: String,
    pub to_user: String,
    pub to_domain: String,
    /// Header name (lower case) → first value.
    pub headers: BTreeMap<String, String>,
    pub audio: bool,
    pub video: bool,
}

impl CallFacts {
    pub fn from_invite(invite: &SipMessage) -> CallFacts {
        let (request_user, _) = invite.request_uri().map(user_and_host).unwrap_or_default();
        let addr = |name: &str| {
            invite
                .header(name)
                .and_then(|v| NameAddr::parse(v).ok())
                .map(|a| user_and_host(&a.uri))
                .unwrap_or_default()
        };
        let (from_user, from_domain) = addr("From");
        let (to_user, to_domain) = addr("To");
        let mut headers = BTreeMap::new();
        for h in &invite.headers {
            headers
                .entry(h.name.to_ascii_lowercase())
                .or_insert_with(|| h.value.clone());
        }
        let (audio, video) = sdp_media(&invite.body);
        CallFacts {
            request_user,
            from_user,
            from_domain,
            to_user,
            to_domain,
            headers,
            audio,
            video,
        }
    }
}

/// User (without user parameters) and host of a `sip:`, `sips:` or `tel:` URI.
fn user_and_host(uri: &str) -> (String, String) {
    let uri = uri.trim();
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Default::default();
    };
    if scheme.eq_ignore_ascii_case("tel") {
        let number = rest.split(';').next().unwrap_or_default();
        return (number.to_owned(), String::new());
    }
    let rest = rest.split('?').next().unwrap_or_default();
    let (user, hostpart) = match rest.rfind('@') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => ("", rest),
    };
    let user = user.split([';', ':']).next().unwrap_or_default();
    let host = hostpart.split([';', ':']).next().unwrap_or_default();
    (user.to_owned(), host.to_owned())
}

/// Whether the SDP offers audio and video streams that are not disabled (port 0).
fn sdp_media(body: &[u8]) -> (bool, bool) {
    let text = String::from_utf8_lossy(body);
    let (mut audio, mut video) = (false, false);
    for line in text.lines() {
        let Some(m) = line.trim().strip_prefix("m=") else {
            continue;
        };
        let mut parts = m.split_whitespace();
        let (kind, port) = (parts.next().unwrap_or(""), parts.next().unwrap_or("0"));
        if port.split('/').next() == Some("0") {
            continue;
        }
        match kind {
            "audio" => audio = true,
            "video" => video = true,
            _ => {}
        }
    }
    (audio, video)
}

#[derive(Debug)]
enum Text {
    Equals(String),
    Prefix(String),
    Regex(Regex),
    Present(bool),
}

impl Text {
    fn compile(m: &TextMatch) -> Option<Text> {
        if let Some(v) = &m.equals {
            return Some(Text::Equals(v.clone()));
        }
        if let Some(v) = &m.prefix {
            return Some(Text::Prefix(v.clone()));
        }
        if let Some(v) = &m.regex {
            return Regex::new(v).ok().map(Text::Regex);
        }
        m.present.map(Text::Present)
    }

    /// `value` is `None` when the field is absent (a header not sent, an empty user).
    fn matches(&self, value: Option<&str>, ignore_case: bool) -> bool {
        match (self, value) {
            (Text::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Text::Equals(e), Some(v)) if ignore_case => v.eq_ignore_ascii_case(e),
            (Text::Equals(e), Some(v)) => v == e,
            (Text::Prefix(p), Some(v)) if ignore_case => v
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            (Text::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (Text::Regex(re), Some(v)) => re.is_match(v),
        }
    }
}

#[derive(Debug)]
struct Rule {
    call_type: CallType,
    /// (field, condition, ignore case)
    fields: Vec<(Field, Text, bool)>,
    headers: Vec<(String, Text)>,
    media: Option<MediaMatch>,
}

#[derive(Debug, Clone, Copy)]
enum Field {
    RequestUser,
    FromUser,
    FromDomain,
    ToUser,
    ToDomain,
}

impl Field {
    fn of(self, facts: &CallFacts) -> &str {
        match self {
            Field::RequestUser => &facts.request_user,
            Field::FromUser => &facts.from_user,
            Field::FromDomain => &facts.from_domain,
            Field::ToUser => &facts.to_user,
            Field::ToDomain => &facts.to_domain,
        }
    }
}

/// The compiled call-type rules.
#[derive(Debug)]
pub struct Classifier {
    rules: Vec<Rule>,
    default: CallType,
}

impl Classifier {
    /// Compiles validated rules (see [`super::config::validate`]); a condition that does not
    /// compile never matches.
    pub fn new(types: &[CallTypeConfig], default_queue: &str) -> Classifier {
        let rules = types
            .iter()
            .map(|t| {
                let fields = [
                    (Field::RequestUser, &t.request_user, false),
                    (Field::FromUser, &t.from_user, false),
                    (Field::FromDomain, &t.from_domain, true),
                    (Field::ToUser, &t.to_user, false),
                    (Field::ToDomain, &t.to_domain, true),
                ]
                .into_iter()
                .filter_map(|(f, m, ic)| Some((f, Text::compile(m.as_ref()?)?, ic)))
                .collect();
                let headers = t
                    .headers
                    .iter()
                    .filter_map(|(h, m)| Some((h.to_ascii_lowercase(), Text::compile(m)?)))
                    .collect();
                Rule {
                    call_type: CallType {
                        name: t.name.clone(),
                        queue: t.queue.clone(),
                        priority: t.priority,
                    },
                    fields,
                    headers,
                    media: t.media,
                }
            })
            .collect();
        Classifier {
            rules,
            default: CallType {
                name: "default".into(),
                queue: default_queue.to_owned(),
                priority: 0,
            },
        }
    }

    pub fn classify(&self, facts: &CallFacts) -> &CallType {
        self.rules
            .iter()
            .find(|r| r.matches(facts))
            .map_or(&self.default, |r| &r.call_type)
    }
}

impl Rule {
    fn matches(&self, facts: &CallFacts) -> bool {
        let fields = self.fields.iter().all(|(field, text, ignore_case)| {
            let value = field.of(facts);
            text.matches((!value.is_empty()).then_some(value), *ignore_case)
        });
        let headers = self
            .headers
            .iter()
            .all(|(name, text)| text.matches(facts.headers.get(name).map(|v| v.trim()), true));
        let media = match self.media {
            None => true,
            Some(MediaMatch::Audio) => facts.audio && !facts.video,
            Some(MediaMatch::Video) => facts.video,
        };
        fields && headers && media
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
