//! The buffer server's HTTPS listener: the agent page at `/` and SIP over secure WebSocket at
//! `/sip` (RFC 7118). A client that does not offer the `sip` subprotocol is refused before the
//! upgrade, so nothing that is not a SIP user agent ever holds a socket here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

use tracing::{debug, warn};

use super::agent_page;
use super::per_source::PerSource;
use super::tls_listener::{PeerAddr, TlsListener};
use super::{Transports, ingest};
use crate::sip::{Target, TransportKind};

/// The WebSocket subprotocol of SIP (RFC 7118 §4.1).
pub const SIP_SUBPROTOCOL: &str = "sip";

/// Binds the HTTPS listener and serves it in the background.
pub async fn listen(
    transports: &Transports,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    per_source: PerSource,
) -> std::io::Result<SocketAddr> {
    let listener = TlsListener::bind(addr, tls, per_source).await?;
    let local = axum::serve::Listener::local_addr(&listener)?;
    let page = Router::new()
        .route("/", get(page_file))
        .route("/{file}", get(page_file))
        .layer(axum::middleware::map_response(agent_page::with_headers));
    let app = page
        .route("/sip", get(sip_upgrade))
        .with_state(transports.clone());
    let header_read = transports.deadlines().header_read;
    super::serve::spawn(listener, app, "buffer.https", header_read);
    Ok(local)
}

async fn page_file(path: Option<Path<String>>) -> Response {
    let file = path.map(|Path(f)| f).unwrap_or_default();
    match agent_page::asset(&file) {
        Some((content_type, body)) => ([(CONTENT_TYPE, content_type)], body).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Read buffer of an agent's WebSocket: room for a REGISTER with its bearer token, the one
/// message an idle agent sends. A larger message (a browser's SDP) grows it as it arrives.
const AGENT_READ_BUFFER: usize = 2048;

async fn sip_upgrade(
    ws: WebSocketUpgrade,
    State(transports): State<Transports>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
) -> Response {
    // tungstenite zero-fills its whole read buffer (128 KiB by default) on the first read:
    // that would be most of an idle agent's memory. SIP messages are small; a larger one
    // grows the buffer as it arrives. A frame is read whole before the message limit is
    // checked, so the frame is capped too: else one frame header from anyone who can
    // upgrade (no token needed) makes us wait for and hold 16 MiB.
    let max = transports.max_message();
    let ws = ws
        .protocols([SIP_SUBPROTOCOL])
        .read_buffer_size(AGENT_READ_BUFFER)
        .max_frame_size(max)
        .max_message_size(max);
    if ws.selected_protocol().is_none() {
        debug!(%peer, "refusing WebSocket without subprotocol sip");
        return not_sip();
    }
    ws.on_upgrade(move |socket| serve_sip_socket(transports, socket, peer))
}

async fn serve_sip_socket(transports: Transports, socket: WebSocket, peer: SocketAddr) {
    let (id, mut outbound) = transports.add_conn(TransportKind::Wss, peer);
    let from = Target {
        kind: TransportKind::Wss,
        addr: peer,
        conn: Some(id),
    };
    let (mut sink, mut stream) = socket.split();
    // Messages already waiting go out with one flush (one TLS record, one write).
    let write = async {
        'conn: while let Some(bytes) = outbound.recv().await {
            if sink.feed(ws_message(bytes)).await.is_err() {
                break;
            }
            while let Ok(bytes) = outbound.try_recv() {
                if sink.feed(ws_message(bytes)).await.is_err() {
                    break 'conn;
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
    };
    // RFC 7118 §5: one WebSocket message is one whole SIP message.
    let first_within = transports.deadlines().ws_first_message;
    let read = read_messages(&mut stream, first_within, |data| {
        let (transports, from) = (&transports, from.clone());
        async move { ingest(transports, &data, from).await }
    });
    tokio::select! {
        () = write => {}
        () = read => {}
    }
    debug!(%peer, ?id, "WebSocket closed");
    transports.remove_conn(id).await;
}

/// SIP goes out as a text message when it is UTF-8 (what browsers' SIP stacks expect), else
/// as binary (RFC 7118 §5 allows both).
pub(crate) fn ws_message(bytes: Bytes) -> Message {
    match String::from_utf8(bytes.to_vec()) {
        Ok(text) => Message::Text(text.into()),
        Err(e) => Message::Binary(Bytes::from(e.into_bytes())),
    }
}

/// Hands each data message read from a WebSocket to `each` until the peer closes, the socket
/// fails, `each` says stop or nothing comes within `first_within` of the start (an agent's
/// page registers at once; a socket that says nothing is only holding a place); pings are
/// answered by the WebSocket layer itself.
pub(crate) async fn read_messages<S, F, Fut>(
    stream: &mut S,
    first_within: std::time::Duration,
    mut each: F,
) where
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut first = true;
    loop {
        let next = if first {
            match tokio::time::timeout(first_within, next_data(stream)).await {
                Ok(next) => next,
                Err(_) => {
                    static SAID: AtomicBool = AtomicBool::new(false);
                    if super::first_time(&SAID) {
                        warn!(
                            ?first_within,
                            "closing a SIP WebSocket that sent nothing (said once)"
                        );
                    } else {
                        debug!("closing a SIP WebSocket that sent nothing");
                    }
                    return;
                }
            }
        } else {
            next_data(stream).await
        };
        let Some(data) = next else {
            return;
        };
        first = false;
        if !each(data).await {
            return;
        }
    }
}

/// The next data message; `None` when the peer closed or the socket failed.
async fn next_data<S>(stream: &mut S) -> Option<Bytes>
where
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(t) => return Some(Bytes::from(t)),
            Message::Binary(b) => return Some(b),
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
    None
}

/// The answer to a WebSocket upgrade that does not offer SIP.
pub(crate) fn not_sip() -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain")],
        "this endpoint speaks SIP over WebSocket: offer subprotocol \"sip\" (RFC 7118)\n",
    )
        .into_response()
}
