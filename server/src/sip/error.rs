//! Errors of the SIP layer. Each knows the status a server answers with when the peer is to
//! blame, so the shells never have to guess.

/// What went wrong with a message a peer sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    /// The bytes are not a SIP message at all (no start line, no header block, a body shorter
    /// than its Content-Length). Nothing can be answered: the message is dropped and logged.
    #[error("malformed SIP message: {0}")]
    Malformed(String),
    /// A SIP message whose content breaks a rule that a response can explain (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The message is bigger than the configured bound (513 on datagrams, closed on streams).
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
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
        }
    }
}
