//! SIP messages as the rest of the server sees them.
//!
//! A message keeps every header as text, in order, exactly as received (compact names are
//! expanded, multi-value Via/Route/Record-Route/Contact lines are split one value per entry).
//! The B2BUA re-addresses a handful of headers and must pass the rest through untouched, so
//! typed views are parsed on demand from the raw value instead of converting the whole message
//! into a typed tree and back.

use std::fmt::Write as _;

use bytes::Bytes;

use super::error::SipError;
use super::uri::NameAddr;

/// A SIP method. Unknown methods are carried as written, so a proxy can forward them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Message,
    Notify,
    Subscribe,
    Refer,
    Prack,
    Other(String),
}

impl Method {
    pub fn parse(token: &str) -> Result<Method, SipError> {
        if token.is_empty() || !token.bytes().all(is_token_byte) {
            return Err(SipError::bad_request("method is not a token"));
        }
        Ok(match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "REGISTER" => Method::Register,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "MESSAGE" => Method::Message,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "REFER" => Method::Refer,
            "PRACK" => Method::Prack,
            other => Method::Other(other.to_owned()),
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Other(s) => s,
            known => known.standard().unwrap_or_default(),
        }
    }

    /// The name of a method SIP's RFCs define; `None` for any other.
    pub fn standard(&self) -> Option<&'static str> {
        Some(match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Message => "MESSAGE",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Refer => "REFER",
            Method::Prack => "PRACK",
            Method::Other(_) => return None,
        })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first line: what distinguishes a request from a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, uri: String },
    Response { code: u16, reason: String },
}

/// One header line. `name` is the canonical long form for the headers this server reads,
/// and the name as received for the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A parsed SIP message. The body is kept as bytes (SDP passes through unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Bytes,
}

/// A message refused by [`SipMessage::parse_checked`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub error: SipError,
    /// The response to send back, when the message was a request that can be answered
    /// (boxed: refusals are rare, and the Ok path should stay small).
    pub answer: Option<Box<SipMessage>>,
}

/// What [`SipMessage::parse_lenient`] made of a message: the message, and what was wrong
/// with it that still let its head be read.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub msg: SipMessage,
    /// The version of a request line that is not SIP/2.0 (505).
    pub version: Option<String>,
    /// The first break of the grammar that was skipped over (400).
    pub defect: Option<SipError>,
}

impl Parsed {
    /// The message, if nothing was wrong with it.
    fn strict(self) -> Result<SipMessage, SipError> {
        match (self.version, self.defect) {
            (Some(version), _) => Err(SipError::Version(version)),
            (None, Some(defect)) => Err(defect),
            (None, None) => Ok(self.msg),
        }
    }
}

/// The parts of the CSeq header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

/// The parts of one Via value this server needs: where responses go and the transaction id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub branch: Option<String>,
    pub received: Option<String>,
    pub rport: Option<Option<u16>>,
}

/// Headers whose values are comma-separated lists we split into one entry per value, so
/// "the top Via" or "the first Route" is simply the first entry with that name.
const SPLIT_HEADERS: [&str; 4] = ["Via", "Route", "Record-Route", "Contact"];

fn canonical_name(name: &str) -> Option<&'static str> {
    const KNOWN: [&str; 17] = [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Max-Forwards",
        "Route",
        "Record-Route",
        "Content-Length",
        "Content-Type",
        "Expires",
        "Authorization",
        "WWW-Authenticate",
        "Supported",
        "User-Agent",
        "Server",
    ];
    let compact = match name.to_ascii_lowercase().as_str() {
        "v" => Some("Via"),
        "f" => Some("From"),
        "t" => Some("To"),
        "i" => Some("Call-ID"),
        "m" => Some("Contact"),
        "l" => Some("Content-Length"),
        "c" => Some("Content-Type"),
        "k" => Some("Supported"),
        _ => None,
    };
    compact.or_else(|| KNOWN.iter().copied().find(|k| k.eq_ignore_ascii_case(name)))
}

pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Splits a header value on commas that are outside quotes and angle brackets.
pub(crate) fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(value[start..].trim());
    out.retain(|v| !v.is_empty());
    out
}

impl SipMessage {
    /// Parses one complete message (a datagram, or a frame cut by [`super::framing`]).
    ///
    /// Any break of the grammar is an error, as is a request line of another SIP version;
    /// missing mandatory headers are found by [`SipMessage::validate_request`]. To answer a
    /// broken request instead of dropping it, use [`SipMessage::parse_checked`] (or
    /// [`super::validate`]), which parses leniently and says what was wrong.
    pub fn parse(buf: &[u8]) -> Result<SipMessage, SipError> {
        Self::parse_lenient(buf, true)?.strict()
    }

    /// Parses the start line and headers only, for answering a message whose body will never
    /// be read (an oversized one). The body is left empty.
    pub fn parse_head(buf: &[u8]) -> Result<SipMessage, SipError> {
        Self::parse_lenient(buf, false)?.strict()
    }

    /// Parses as far as the grammar lets a server answer: an error only when there is no
    /// message head at all (no end of headers, not UTF-8, a first line that names no method
    /// or status). Anything else that is wrong (a header line without a colon, a bad
    /// Content-Length, a body shorter than it, a request line with extra spaces) is skipped
    /// over and reported as the `defect`, so the request can still be answered 400.
    pub(crate) fn parse_lenient(buf: &[u8], with_body: bool) -> Result<Parsed, SipError> {
        let head_end = find(buf, b"\r\n\r\n")
            .map(|i| (i, i + 4))
            .or_else(|| find(buf, b"\n\n").map(|i| (i, i + 2)))
            .ok_or_else(|| SipError::malformed("no end of headers"))?;
        let head = std::str::from_utf8(&buf[..head_end.0])
            .map_err(|_| SipError::malformed("headers are not UTF-8"))?;
        let mut lines = unfold(head).into_iter();
        let first = lines
            .next()
            .ok_or_else(|| SipError::malformed("empty message"))?;
        let mut defect = None;
        let (start, version) = parse_start_line(&first, &mut defect)?;
        let mut headers = Vec::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                defect.get_or_insert_with(|| SipError::malformed("header line without a colon"));
                continue;
            };
            let name = name.trim_end();
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                defect.get_or_insert_with(|| SipError::malformed("header name is not a token"));
                continue;
            }
            let value = value.trim();
            let name = canonical_name(name).map_or_else(|| name.to_owned(), str::to_owned);
            if SPLIT_HEADERS.contains(&name.as_str()) && value != "*" {
                for v in split_list(value) {
                    headers.push(Header {
                        name: name.clone(),
                        value: v.to_owned(),
                    });
                }
            } else {
                headers.push(Header {
                    name,
                    value: value.to_owned(),
                });
            }
        }
        let rest = &buf[head_end.1..];
        let mut msg = SipMessage {
            start,
            headers,
            body: Bytes::new(),
        };
        if with_body {
            let body_len = match msg.header("Content-Length") {
                Some(v) => match v.trim().parse::<usize>() {
                    Ok(len) => len,
                    Err(_) => {
                        defect.get_or_insert_with(|| {
                            SipError::malformed("Content-Length is not a number")
                        });
                        rest.len()
                    }
                },
                None => rest.len(),
            };
            if body_len > rest.len() {
                defect.get_or_insert_with(|| {
                    SipError::malformed(format!(
                        "Content-Length {body_len} is beyond the end of the message ({} bytes of body)",
                        rest.len()
                    ))
                });
            }
            msg.body = Bytes::copy_from_slice(&rest[..body_len.min(rest.len())]);
        }
        Ok(Parsed {
            msg,
            version,
            defect,
        })
    }

    /// Parses and checks a message from a peer in one step (see [`super::validate::message`]).
    /// A request that parses far enough to be answered but breaks the rules comes back with
    /// the response that explains why (none for ACK, which is never answered), so every
    /// place that reads peer bytes refuses them the same way.
    pub fn parse_checked(buf: &[u8]) -> Result<SipMessage, Rejected> {
        super::validate::message(buf)
    }

    /// Checks what RFC 3261 §8.1.1 requires of a request before anything acts on it (see
    /// [`super::validate::request`]). Responses can be formed from a request that fails this
    /// (the error carries the status).
    pub fn validate_request(&self) -> Result<(), SipError> {
        super::validate::request(self)
    }

    /// Checks a response before a transaction matches it.
    pub fn validate_response(&self) -> Result<(), SipError> {
        for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
            if self.header(name).is_none() {
                return Err(SipError::malformed(format!("response without {name}")));
            }
        }
        self.top_via()?;
        self.cseq()?;
        Ok(())
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn set_request_uri(&mut self, new: impl Into<String>) {
        if let StartLine::Request { uri, .. } = &mut self.start {
            *uri = new.into();
        }
    }

    /// The first value of a header, by canonical or received name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Replaces every value of `name` with one value, placed where the first one was.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self
            .headers
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(name))
        {
            Some(pos) => {
                self.headers[pos].value = value;
                let mut i = 0;
                self.headers.retain(|h| {
                    let keep = i <= pos || !h.name.eq_ignore_ascii_case(name);
                    i += 1;
                    keep
                });
            }
            None => self.headers.push(Header {
                name: name.to_owned(),
                value,
            }),
        }
    }

    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    /// Removes the first value of `name` and returns it (popping a Route or a Via).
    pub fn pop_header(&mut self, name: &str) -> Option<String> {
        let pos = self
            .headers
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(name))?;
        Some(self.headers.remove(pos).value)
    }

    /// Inserts a value above all others of the same name (a new top Via, a Record-Route).
    pub fn push_header_front(&mut self, name: &str, value: impl Into<String>) {
        let pos = self
            .headers
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(name))
            .unwrap_or(0);
        self.headers.insert(
            pos,
            Header {
                name: name.to_owned(),
                value: value.into(),
            },
        );
    }

    pub fn push_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push(Header {
            name: name.to_owned(),
            value: value.into(),
        });
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
    }

    pub fn cseq(&self) -> Result<CSeq, SipError> {
        let v = self
            .header("CSeq")
            .ok_or_else(|| SipError::bad_request("missing CSeq"))?;
        let mut parts = v.split_whitespace();
        let seq = parts
            .next()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| SipError::bad_request("bad CSeq number"))?;
        let method = Method::parse(
            parts
                .next()
                .ok_or_else(|| SipError::bad_request("CSeq without method"))?,
        )?;
        if parts.next().is_some() {
            return Err(SipError::bad_request("bad CSeq"));
        }
        Ok(CSeq { seq, method })
    }

    pub fn from_tag(&self) -> Option<String> {
        NameAddr::parse(self.header("From")?)
            .ok()?
            .tag()
            .map(str::to_owned)
    }

    pub fn to_tag(&self) -> Option<String> {
        NameAddr::parse(self.header("To")?)
            .ok()?
            .tag()
            .map(str::to_owned)
    }

    pub fn top_via(&self) -> Result<Via, SipError> {
        Via::parse(
            self.header("Via")
                .ok_or_else(|| SipError::bad_request("missing Via"))?,
        )
    }

    /// Replaces a response's reason phrase, e.g. to say which header made a request bad.
    /// Control characters are dropped so a peer's text can never split the status line.
    pub fn set_reason(&mut self, text: &str) {
        if let StartLine::Response { reason, .. } = &mut self.start {
            *reason = text.chars().filter(|c| !c.is_control()).collect();
        }
    }

    pub fn max_forwards(&self) -> Option<u8> {
        self.header("Max-Forwards")?.trim().parse().ok()
    }

    /// Serialises with a Content-Length that always matches the body, which is what stream
    /// transports need to frame it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(256 + self.headers.len() * 48);
        match &self.start {
            StartLine::Request { method, uri } => {
                let _ = write!(out, "{method} {uri} SIP/2.0\r\n");
            }
            StartLine::Response { code, reason } => {
                let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
            }
        }
        for h in &self.headers {
            if h.name.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            let _ = write!(out, "{}: {}\r\n", h.name, h.value);
        }
        let _ = write!(out, "Content-Length: {}\r\n\r\n", self.body.len());
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// Builds a response to this request (RFC 3261 §8.2.6): Via, From, To, Call-ID and CSeq
    /// copied, with `to_tag` added to To when the request had none.
    pub fn response(&self, code: u16, to_tag: Option<&str>) -> SipMessage {
        let mut headers = Vec::new();
        for h in &self.headers {
            let copy = ["Via", "From", "Call-ID", "CSeq", "Record-Route"]
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n))
                && (code != 100 || !h.name.eq_ignore_ascii_case("Record-Route"));
            if h.name.eq_ignore_ascii_case("To") {
                let mut value = h.value.clone();
                if let Some(tag) = to_tag
                    && code != 100
                    && NameAddr::parse(&h.value)
                        .ok()
                        .and_then(|n| n.tag().map(str::to_owned))
                        .is_none()
                {
                    let _ = write!(value, ";tag={tag}");
                }
                headers.push(Header {
                    name: "To".into(),
                    value,
                });
            } else if copy {
                headers.push(h.clone());
            }
        }
        SipMessage {
            start: StartLine::Response {
                code,
                reason: reason_phrase(code).to_owned(),
            },
            headers,
            body: Bytes::new(),
        }
    }
}

impl Via {
    /// Reads one Via value. White space may surround the slashes of the sent-protocol, the
    /// colon of the sent-by and the separators of parameters (`SIP / 2.0 / UDP host : 5060 ;
    /// branch = z9hG4bK1`: SLASH, COLON, SEMI and EQUAL allow it, RFC 3261 §25.1).
    pub fn parse(value: &str) -> Result<Via, SipError> {
        let bad = || SipError::bad_request("bad Via");
        let mut proto_parts = value.trim().splitn(3, '/');
        let (Some(name), Some(version), Some(rest)) =
            (proto_parts.next(), proto_parts.next(), proto_parts.next())
        else {
            return Err(bad());
        };
        let (name, version) = (name.trim(), version.trim());
        if !name.eq_ignore_ascii_case("SIP")
            || version.is_empty()
            || !version.bytes().all(is_token_byte)
        {
            return Err(bad());
        }
        let rest = rest.trim_start();
        let transport_len = rest.bytes().take_while(|b| is_token_byte(*b)).count();
        let (transport, rest) = rest.split_at(transport_len);
        if transport.is_empty() || !rest.starts_with([' ', '\t']) {
            return Err(bad());
        }
        let mut params = rest.trim().split(';');
        let sent_by = params.next().ok_or_else(bad)?.trim();
        // `host : port` as `host:port`; a host itself never holds white space.
        let sent_by = match sent_by.rsplit_once(':') {
            Some((h, p))
                if !p.trim().is_empty() && p.trim().bytes().all(|b| b.is_ascii_digit()) =>
            {
                format!("{}:{}", h.trim_end(), p.trim_start())
            }
            _ => sent_by.to_owned(),
        };
        let (host, port) = super::uri::split_host_port(&sent_by).ok_or_else(bad)?;
        let mut via = Via {
            transport: transport.trim().to_ascii_uppercase(),
            host,
            port,
            branch: None,
            received: None,
            rport: None,
        };
        for p in params {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (p.trim(), None),
            };
            if k.eq_ignore_ascii_case("branch") {
                via.branch = v.map(str::to_owned);
            } else if k.eq_ignore_ascii_case("received") {
                via.received = v.map(str::to_owned);
            } else if k.eq_ignore_ascii_case("rport") {
                via.rport = Some(v.and_then(|v| v.parse().ok()));
            }
        }
        Ok(via)
    }
}

/// Reason phrases for the codes this server sends.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => match code / 100 {
            1 => "Session Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Request Failure",
            5 => "Server Failure",
            _ => "Global Failure",
        },
    }
}

/// Reads the first line. A response line must be exact; a request line that names a method
/// is kept even when the rest is wrong, with the problem in `defect`, so it can be answered.
/// The version is returned when it is not SIP/2.0.
fn parse_start_line(
    line: &str,
    defect: &mut Option<SipError>,
) -> Result<(StartLine, Option<String>), SipError> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code
            .parse()
            .ok()
            .filter(|c| (100..700).contains(c))
            .ok_or_else(|| SipError::malformed("bad status code"))?;
        return Ok((
            StartLine::Response {
                code,
                reason: reason.to_owned(),
            },
            None,
        ));
    }
    let token = line.split(' ').next().unwrap_or_default();
    let method = Method::parse(token).map_err(|_| SipError::malformed("bad method"))?;
    let mut parts = line.split(' ');
    let (Some(_), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        *defect = Some(SipError::malformed(
            "bad request line: Method SP Request-URI SP SIP-Version, one space each",
        ));
        return Ok((
            StartLine::Request {
                method,
                uri: String::new(),
            },
            None,
        ));
    };
    let foreign = if version.eq_ignore_ascii_case("SIP/2.0") {
        None
    } else if is_sip_version(version) {
        Some(version.to_owned())
    } else {
        *defect = Some(SipError::malformed("bad request line: no SIP version"));
        None
    };
    if uri.is_empty() || !uri.contains(':') {
        defect.get_or_insert_with(|| SipError::malformed("bad request line: no Request-URI"));
    }
    Ok((
        StartLine::Request {
            method,
            uri: uri.to_owned(),
        },
        foreign,
    ))
}

/// `SIP/1*DIGIT.1*DIGIT` (RFC 3261 §25.1), "SIP" in any case.
fn is_sip_version(v: &str) -> bool {
    let Some((name, number)) = v.split_once('/') else {
        return false;
    };
    let Some((major, minor)) = number.split_once('.') else {
        return false;
    };
    name.eq_ignore_ascii_case("SIP")
        && [major, minor]
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Joins folded header lines (RFC 3261 §7.3.1: a line starting with whitespace continues the
/// previous one) and drops the line terminators.
fn unfold(head: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in head.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.starts_with([' ', '\t'])
            && let Some(last) = lines.last_mut()
        {
            last.push(' ');
            last.push_str(line.trim());
            continue;
        }
        lines.push(line.to_owned());
    }
    // Leading blank lines are keep-alives that a datagram peer may put before a message.
    while lines.first().is_some_and(|l| l.is_empty()) {
        lines.remove(0);
    }
    lines
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:support@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-1;rport, SIP/2.0/UDP 10.0.0.2\r\n\
Max-Forwards: 70\r\n\
f: \"John Doe\" <sip:john.doe@example.com>;tag=abc\r\n\
To: <sip:support@example.com>\r\n\
i: call-1@host\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:john.doe@10.0.0.1:5062>\r\n\
X-Custom: kept as is\r\n\
\x20folded\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn parses_a_request_with_compact_split_and_folded_headers() {
        let m = SipMessage::parse(INVITE.as_bytes()).unwrap();
        assert_eq!(m.method(), Some(&Method::Invite));
        assert_eq!(m.request_uri(), Some("sip:support@127.0.0.1:5060"));
        assert_eq!(m.headers_named("Via").count(), 2);
        assert_eq!(m.top_via().unwrap().branch.as_deref(), Some("z9hG4bK-1"));
        assert_eq!(m.top_via().unwrap().port, Some(5062));
        assert_eq!(m.call_id(), Some("call-1@host"));
        assert_eq!(m.from_tag().as_deref(), Some("abc"));
        assert_eq!(m.to_tag(), None);
        assert_eq!(m.header("x-custom"), Some("kept as is folded"));
        assert_eq!(&m.body[..], b"v=0\n");
        m.validate_request().unwrap();
    }

    #[test]
    fn serialises_back_to_an_equal_message() {
        let m = SipMessage::parse(INVITE.as_bytes()).unwrap();
        let again = SipMessage::parse(&m.to_bytes()).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn response_copies_the_transaction_headers_and_adds_a_tag() {
        let m = SipMessage::parse(INVITE.as_bytes()).unwrap();
        let r = m.response(486, Some("t1"));
        assert_eq!(r.status(), Some(486));
        assert_eq!(r.headers_named("Via").count(), 2);
        assert_eq!(r.to_tag().as_deref(), Some("t1"));
        assert_eq!(r.header("Contact"), None);
        assert_eq!(r.cseq().unwrap().seq, 1);
    }

    #[test]
    fn missing_or_broken_mandatory_headers_are_400() {
        let broken = INVITE.replace("CSeq: 1 INVITE", "CSeq: one INVITE");
        let m = SipMessage::parse(broken.as_bytes()).unwrap();
        assert_eq!(m.validate_request().unwrap_err().status(), 400);
        let no_call_id = INVITE.replace("i: call-1@host\r\n", "");
        let m = SipMessage::parse(no_call_id.as_bytes()).unwrap();
        assert_eq!(m.validate_request().unwrap_err().status(), 400);
        let mismatch = INVITE.replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
        let m = SipMessage::parse(mismatch.as_bytes()).unwrap();
        assert!(m.validate_request().is_err());
    }

    #[test]
    fn structural_garbage_is_an_error_not_a_panic() {
        for input in [
            &b""[..],
            b"\r\n\r\n",
            b"HELLO\r\n\r\n",
            b"INVITE sip:a SIP/2.0\r\nno colon\r\n\r\n",
            b"SIP/2.0 99 Low\r\n\r\n",
            b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nshort",
            b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n",
            b"\xff\xfe INVITE\r\n\r\n",
        ] {
            assert!(SipMessage::parse(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn via_allows_white_space_around_its_separators() {
        let via = Via::parse("SIP / 2.0 / tcp [2001:db8::1] : 5070 ; branch = z9hG4bK-x ; rport")
            .unwrap();
        assert_eq!(via.transport, "TCP");
        assert_eq!((via.host.as_str(), via.port), ("2001:db8::1", Some(5070)));
        assert_eq!(via.branch.as_deref(), Some("z9hG4bK-x"));
        assert_eq!(via.rport, Some(None));
        let via = Via::parse("SIP/2.0/UDP\thost").unwrap();
        assert_eq!((via.host.as_str(), via.port), ("host", None));
        for bad in [
            "SIP/2.0/UDP",
            "SIP/2.0 UDP host",
            "SIP/2.0/UDPhost",
            "HTTP/1.1/TCP host",
            "SIP/2.0/UDP ho st",
            "SIP/2.0/UDP [::zz]",
        ] {
            assert!(Via::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lenient_parse_reports_what_it_skipped() {
        let text = INVITE.replace("Max-Forwards: 70\r\n", "no colon here\r\n");
        let parsed = SipMessage::parse_lenient(text.as_bytes(), true).unwrap();
        assert!(matches!(parsed.defect, Some(SipError::Malformed(ref m)) if m.contains("colon")));
        assert_eq!(parsed.msg.call_id(), Some("call-1@host"));
        assert!(SipMessage::parse(text.as_bytes()).is_err());

        let short = INVITE.replace("Content-Length: 4", "Content-Length: 400");
        let parsed = SipMessage::parse_lenient(short.as_bytes(), true).unwrap();
        assert!(parsed.defect.is_some());
        assert_eq!(&parsed.msg.body[..], b"v=0\n", "the body is what there is");

        let v3 = INVITE.replacen("SIP/2.0\r\n", "SIP/3.0\r\n", 1);
        let parsed = SipMessage::parse_lenient(v3.as_bytes(), true).unwrap();
        assert_eq!(parsed.version.as_deref(), Some("SIP/3.0"));
        assert_eq!(
            SipMessage::parse(v3.as_bytes()),
            Err(SipError::Version("SIP/3.0".into()))
        );

        let spaces = INVITE.replacen("INVITE sip:", "INVITE  sip:", 1);
        let parsed = SipMessage::parse_lenient(spaces.as_bytes(), true).unwrap();
        assert_eq!(parsed.msg.method(), Some(&Method::Invite));
        assert!(parsed.defect.is_some());

        let lower = INVITE.replacen("SIP/2.0\r\n", "sip/2.0\r\n", 1);
        SipMessage::parse(lower.as_bytes()).unwrap();
    }

    #[test]
    fn folding_and_white_space_in_mandatory_headers() {
        let text = INVITE
            .replace("CSeq: 1 INVITE", "CSeq:  1\r\n\t  INVITE")
            .replace(
                "To: <sip:support@example.com>",
                "To :\r\n <sip:support@example.com>",
            );
        let m = SipMessage::parse(text.as_bytes()).unwrap();
        assert_eq!(m.cseq().unwrap().seq, 1);
        assert_eq!(m.header("To"), Some("<sip:support@example.com>"));
        m.validate_request().unwrap();
    }

    #[test]
    fn header_editing_keeps_order() {
        let mut m = SipMessage::parse(INVITE.as_bytes()).unwrap();
        m.push_header_front("Via", "SIP/2.0/TCP proxy;branch=z9hG4bK-p");
        assert_eq!(m.top_via().unwrap().host, "proxy");
        assert_eq!(
            m.pop_header("Via").as_deref(),
            Some("SIP/2.0/TCP proxy;branch=z9hG4bK-p")
        );
        m.set_header("Via", "SIP/2.0/UDP only;branch=z9hG4bK-o");
        assert_eq!(m.headers_named("Via").count(), 1);
        assert_eq!(m.headers[0].name, "Via");
    }
}
