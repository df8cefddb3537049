//! Errors of the SIP layer. Each knows the status a server answers with when the peer is to
//! blame, so the shells never have to guess.

/// What went wrong with a message a peer sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    /// The bytes are not a SIP message at all, or break its grammar (a header line without a
    /// colon, a body shorter than its Content-Length). A request whose head still parses is
    /// answered 400 with this text; anything else is dropped and logged.
    #[error("malformed SIP message: {0}")]
    Malformed(String),
    /// A SIP message whose content breaks a rule that a response can explain (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The message is bigger than the configured bound (513; a stream is closed after it).
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// A request line naming a SIP version other than 2.0 (505, RFC 3261 §8.2 and §20).
    #[error("version {0} is not supported")]
    Version(String),
    /// A Request-URI whose scheme we do not serve: only sip and sips (416, §8.2.2.1).
    #[error("URI scheme {0} is not supported")]
    Scheme(String),
    /// Option tags in Require (or Proxy-Require, as a proxy) that we do not implement (420
    /// with the tags in Unsupported, §8.2.2.3 and §16.3).
    #[error("bad extension: {}", .0.join(", "))]
    Extension(Vec<String>),
}

impl SipError {
    pub fn malformed(why: impl Into<String>) -> Self {
        SipError::Malformed(why.into())
    }

    pub fn bad_request(why: impl Into<String>) -> Self {
        SipError::BadRequest(why.into())
    }

    /// The status to answer with, when an answer is possible at all.
    pub fn status(&self) -> u16 {
        match self {
            SipError::Malformed(_) | SipError::BadRequest(_) => 400,
            SipError::TooLarge { .. } => 513,
            SipError::Version(_) => 505,
            SipError::Scheme(_) => 416,
            SipError::Extension(_) => 420,
        }
    }
}
