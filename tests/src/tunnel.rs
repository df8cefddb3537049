//! A raw tunnel client, as an edge would dial the distributor: for the tests of what the
//! distributor does with frames no real edge sends.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use proto_tunnel::{Frame, Limits};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

use crate::WAIT;

pub type Ws = tungstenite::WebSocket<crate::https::Tls>;

/// A tunnel to the distributor with `credential`, as edge `edge_id` would open it: welcomed.
pub fn tunnel(dir: &Path, addr: SocketAddr, credential: &str, edge_id: &str) -> Ws {
    let config = certs::client_config(&dir.join("certs").join("ca.pem")).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = rustls::StreamOwned::new(rustls::ClientConnection::new(config, name).unwrap(), tcp);
    let mut request = format!("wss://{addr}/tunnel")
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        proto_tunnel::SUBPROTOCOL.parse().unwrap(),
    );
    headers.insert(
        "Authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    let (mut ws, _) = tungstenite::client(request, tls).unwrap();
    send(
        &mut ws,
        &Frame::Hello {
            version: proto_tunnel::PROTOCOL_VERSION,
            edge_id: edge_id.into(),
            handoffs: vec!["tunnel".into()],
        },
    );
    let welcome = next_frame(&mut ws, WAIT).expect("no answer to Hello");
    assert!(matches!(welcome, Frame::Welcome { .. }), "{welcome:?}");
    ws
}

pub fn send(ws: &mut Ws, frame: &Frame) {
    ws.send(Message::Binary(proto_tunnel::encode(frame)))
        .unwrap();
}

/// The next frame from the distributor within `limit` (Pings answered on the way).
pub fn next_frame(ws: &mut Ws, limit: Duration) -> Option<Frame> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match proto_tunnel::decode(&next_binary(ws, left, "tunnel")?, &Limits::default()).unwrap() {
            Frame::Ping { nonce } => send(ws, &Frame::Pong { nonce }),
            frame => return Some(frame),
        }
    }
}

/// The next binary message on `ws` within `limit` (it reads with a short timeout); `what`
/// names the connection in a panic.
fn next_binary(ws: &mut Ws, limit: Duration, what: &str) -> Option<tungstenite::Bytes> {
    let deadline = Instant::now() + limit;
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => return Some(b),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{what}: {e}"),
        }
        if Instant::now() > deadline {
            return None;
        }
    }
}

/// A raw media connection to the distributor's caller media relay (`/media`), as an edge
/// dials it, with `credential` and `subprotocol` when given; a refused handshake comes back
/// as the error.
pub fn media(
    dir: &Path,
    addr: SocketAddr,
    credential: Option<&str>,
    subprotocol: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let mut request = format!("wss://{addr}/media").into_client_request()?;
    let headers = request.headers_mut();
    if let Some(p) = subprotocol {
        headers.insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    if let Some(c) = credential {
        headers.insert("Authorization", format!("Bearer {c}").parse().unwrap());
    }
    tungstenite::client(request, crate::https::tls(dir, addr))
        .map(|(ws, _)| {
            ws.get_ref()
                .sock
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            ws
        })
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => {
                tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
            }
        })
}

/// The next media frame from the distributor within `limit`.
pub fn next_media(ws: &mut Ws, limit: Duration) -> Option<proto_tunnel::media::MediaFrame> {
    let bytes = next_binary(ws, limit, "media connection")?;
    Some(proto_tunnel::media::decode_media(&bytes).unwrap())
}
