//! A plain HTTPS and WSS client for the tests that look at what a listener answers: the
//! status line, the headers and the body, trusting the test system's own CA.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::WAIT;

pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;
pub type Ws = tungstenite::WebSocket<Tls>;

/// A TLS connection to `addr`, trusting the CA in `dir/certs` (where the test config puts it).
pub fn tls(dir: &Path, addr: SocketAddr) -> Tls {
    let config = certs::client_config(&dir.join("certs").join("ca.pem")).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// What one GET got.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body as sent (chunked framing left in place).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One GET of `path` over HTTPS; status 0 when the server closed the connection without
/// answering (during the handshake, say).
pub fn get(dir: &Path, addr: SocketAddr, path: &str) -> Response {
    let mut stream = tls(dir, addr);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return Response {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
        };
    }
    let mut response = Vec::new();
    // The server may end without a TLS close_notify: what arrived is the response.
    let _ = stream.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let body = response.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body,
    }
}

/// A WebSocket to `path` on `addr`, offering `subprotocol` when given; the handshake's
/// refusal comes back as the error (`tungstenite::Error::Http` holds the status).
pub fn websocket(
    dir: &Path,
    addr: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let mut request = format!("wss://{addr}{path}").into_client_request()?;
    if let Some(p) = subprotocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    tungstenite::client(request, tls(dir, addr))
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => {
                tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
            }
        })
}

/// The status of a refused WebSocket handshake, or 101 when it was accepted.
pub fn websocket_status(
    dir: &Path,
    addr: SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
) -> u16 {
    match websocket(dir, addr, path, subprotocol) {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("WebSocket to {path}: {e}"),
    }
}

/// A REGISTER for `agent` over `ws` (fresh branch and Call-ID each time), with `token` as
/// its bearer credential, padded with `padding` bytes of an extension header; returns the
/// answer.
pub fn register(ws: &mut Ws, agent: &str, token: Option<&str>, padding: usize) -> String {
    register_for(ws, agent, token, padding, 600)
}

/// An un-REGISTER (Expires: 0) for `agent` over `ws`, with `token` when given.
pub fn unregister(ws: &mut Ws, agent: &str, token: Option<&str>) -> String {
    register_for(ws, agent, token, 0, 0)
}

fn register_for(
    ws: &mut Ws,
    agent: &str,
    token: Option<&str>,
    padding: usize,
    expires: u32,
) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let pad = if padding > 0 {
        format!("X-Padding: {}\r\n", "a".repeat(padding))
    } else {
        String::new()
    };
    let msg = format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS agent.invalid;branch=z9hG4bKws{n}\r\n\
         From: <sip:{agent}@127.0.0.1>;tag=w{n}\r\nTo: <sip:{agent}@127.0.0.1>\r\n\
         Call-ID: ws-{n}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{agent}@agent.invalid;transport=ws>\r\n\
         Expires: {expires}\r\nMax-Forwards: 70\r\n{auth}{pad}Content-Length: 0\r\n\r\n"
    );
    sip_request(ws, msg)
}

/// Sends one SIP request over `ws` and returns its answer, skipping the requests the server
/// sends meanwhile (the agent's state).
pub fn sip_request(ws: &mut Ws, msg: String) -> String {
    use tungstenite::Message;
    ws.send(Message::text(msg)).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Text(t) if t.starts_with("SIP/2.0 ") => return t.to_string(),
            _ => {}
        }
    }
}

/// The page's presence MESSAGE for `agent` (`{"state": state}`), without a token.
pub fn presence(ws: &mut Ws, agent: &str, state: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let body = format!(r#"{{"state":"{state}","reason":"lunch"}}"#);
    let msg = format!(
        "MESSAGE sip:presence@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS agent.invalid;branch=z9hG4bKpr{n}\r\n\
         From: <sip:{agent}@127.0.0.1>;tag=p{n}\r\nTo: <sip:presence@127.0.0.1>\r\n\
         Call-ID: pr-{n}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n\
         Content-Type: application/vnd.agent-edge.presence+json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sip_request(ws, msg)
}

/// The status code of a SIP response.
pub fn sip_status(response: &str) -> u16 {
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether the server ends the WebSocket within `limit` (a close frame, EOF or a reset);
/// SIP it sends meanwhile (the agent's state) is skipped.
pub fn closed_within(ws: &mut Ws, limit: std::time::Duration) -> bool {
    use std::io::ErrorKind;
    use std::time::{Duration, Instant};
    use tungstenite::Message;
    ws.get_mut()
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => return true,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                if Instant::now() > deadline {
                    return false;
                }
            }
            Err(_) => return true,
        }
    }
}
