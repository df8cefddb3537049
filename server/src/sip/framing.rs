//! Cutting SIP messages out of a byte stream (TCP, TLS): RFC 3261 §18.3 framing by
//! Content-Length, and the RFC 5626 CRLF keep-alive.
//!
//! "Not enough bytes yet" is a normal answer, not an error: the caller reads more and asks
//! again.

use super::error::SipError;
use super::message::find;

/// What the front of the buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole message occupies the first `len` bytes.
    Message { len: usize },
    /// A double-CRLF keep-alive ping of `len` bytes; answer with a single CRLF (pong).
    Ping { len: usize },
    /// Stray CRLFs between messages (or a pong) of `len` bytes: skip them.
    Skip { len: usize },
    /// Read more bytes.
    Incomplete,
}

/// Looks at the start of `buf`. An error means the stream cannot be trusted any more and the
/// connection should be closed (a stream has no way to resynchronise after a bad length).
pub fn next_frame(buf: &[u8], max_message: usize) -> Result<Frame, SipError> {
    if buf.starts_with(b"\r\n\r\n") {
        return Ok(Frame::Ping { len: 4 });
    }
    let blanks = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if blanks > 0 {
        if blanks == buf.len() && blanks < 4 && buf.starts_with(b"\r\n\r") {
            return Ok(Frame::Incomplete);
        }
        return Ok(Frame::Skip { len: blanks });
    }
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > max_message {
            return Err(SipError::TooLarge {
                len: buf.len(),
                max: max_message,
            });
        }
        return Ok(Frame::Incomplete);
    };
    let head = &buf[..head_end];
    let content_length = content_length(head)?
        .ok_or_else(|| SipError::malformed("no Content-Length on a stream transport"))?;
    let len = head_end
        .checked_add(4)
        .and_then(|l| l.checked_add(content_length))
        .ok_or_else(|| SipError::malformed("Content-Length overflows"))?;
    if len > max_message {
        return Err(SipError::TooLarge {
            len,
            max: max_message,
        });
    }
    if buf.len() < len {
        return Ok(Frame::Incomplete);
    }
    Ok(Frame::Message { len })
}

fn content_length(head: &[u8]) -> Result<Option<usize>, SipError> {
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let value = std::str::from_utf8(line[colon + 1..].trim_ascii())
                .map_err(|_| SipError::malformed("bad Content-Length"))?;
            return value
                .parse()
                .map(Some)
                .map_err(|_| SipError::malformed("bad Content-Length"));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabc";

    #[test]
    fn frames_by_content_length() {
        assert_eq!(next_frame(MSG, 1000), Ok(Frame::Message { len: MSG.len() }));
        assert_eq!(
            next_frame(&MSG[..MSG.len() - 1], 1000),
            Ok(Frame::Incomplete)
        );
        let mut two = MSG.to_vec();
        two.extend_from_slice(MSG);
        assert_eq!(
            next_frame(&two, 1000),
            Ok(Frame::Message { len: MSG.len() })
        );
    }

    #[test]
    fn keepalives() {
        assert_eq!(next_frame(b"\r\n\r\n", 100), Ok(Frame::Ping { len: 4 }));
        assert_eq!(next_frame(b"\r\nOPT", 100), Ok(Frame::Skip { len: 2 }));
        assert_eq!(next_frame(b"\r\n\r", 100), Ok(Frame::Incomplete));
        assert_eq!(next_frame(b"\r\n", 100), Ok(Frame::Skip { len: 2 }));
    }

    #[test]
    fn bounds_and_bad_lengths() {
        assert!(matches!(
            next_frame(MSG, 10),
            Err(SipError::TooLarge { .. })
        ));
        assert!(matches!(
            next_frame(&[b'A'; 200], 100),
            Err(SipError::TooLarge { .. })
        ));
        assert!(next_frame(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n", 100).is_err());
        assert!(next_frame(b"A\r\nl: 99999999999999999999999\r\n\r\n", 100).is_err());
        assert!(next_frame(b"A\r\nContent-Length: 18446744073709551615\r\n\r\n", 100).is_err());
    }
}
