//! The buffer server's HTTPS listener: the agent page at `/` and SIP over secure WebSocket at
//! `/sip` (RFC 7118). A client that does not offer the `sip` subprotocol is refused before the
//! upgrade, so nothing that is not a SIP user agent ever holds a socket here.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tracing::debug;

use super::tls_listener::{PeerAddr, TlsListener};
use super::{Transports, ingest};
use crate::sip::{Target, TransportKind};

/// The WebSocket subprotocol of SIP (RFC 7118 §4.1).
pub const SIP_SUBPROTOCOL: &str = "sip";

const AGENT_PAGE: &str = include_str!("../../../agent-web/index.html");
const AGENT_STYLE: &str = include_str!("../../../agent-web/style.css");
/// JsSIP and the page's script, bundled by `build.rs`.
const AGENT_SCRIPT: &str = include_str!(concat!(env!("OUT_DIR"), "/app.js"));

/// Binds the HTTPS listener and serves it in the background.
pub async fn listen(
    transports: &Transports,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<SocketAddr> {
    let listener = TlsListener::bind(addr, tls).await?;
    let local = axum::serve::Listener::local_addr(&listener)?;
    let page = Router::new()
        .route("/", get(|| async { Html(AGENT_PAGE) }))
        .route(
            "/app.js",
            get(|| async {
                (
                    [(CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    AGENT_SCRIPT,
                )
            }),
        )
        .route(
            "/style.css",
            get(|| async { ([(CONTENT_TYPE, "text/css; charset=utf-8")], AGENT_STYLE) }),
        )
        .layer(axum::middleware::map_response(page_headers));
    let app = page
        .route("/sip", get(sip_upgrade))
        .with_state(transports.clone());
    tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<PeerAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::error!(error = %e, "HTTPS server stopped");
        }
    });
    Ok(local)
}

/// The page holds the agent's token and its microphone: it runs only its own script and
/// style (no inline code, so injected markup cannot run), connects only to its own origin and
/// secure WebSockets, is never framed (clickjacking), and leaks nothing in a Referer.
const PAGE_HEADERS: [(header::HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; connect-src 'self' wss:; media-src 'self' blob:; \
         img-src 'self' data:; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
         form-action 'none'",
    ),
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
];

async fn page_headers(mut response: Response) -> Response {
    for (name, value) in PAGE_HEADERS {
        response
            .headers_mut()
            .insert(name, header::HeaderValue::from_static(value));
    }
    response
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
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            "this endpoint speaks SIP over WebSocket: offer subprotocol \"sip\" (RFC 7118)\n",
        )
            .into_response();
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
    let as_message = |bytes: Bytes| match String::from_utf8(bytes.to_vec()) {
        Ok(text) => Message::Text(text.into()),
        Err(e) => Message::Binary(Bytes::from(e.into_bytes())),
    };
    // Messages already waiting go out with one flush (one TLS record, one write).
    let write = async {
        'conn: while let Some(bytes) = outbound.recv().await {
            if sink.feed(as_message(bytes)).await.is_err() {
                break;
            }
            while let Ok(bytes) = outbound.try_recv() {
                if sink.feed(as_message(bytes)).await.is_err() {
                    break 'conn;
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
    };
    let read = async {
        while let Some(Ok(msg)) = stream.next().await {
            let data: Bytes = match msg {
                Message::Text(t) => Bytes::from(t),
                Message::Binary(b) => b,
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            // RFC 7118 §5: one WebSocket message is one whole SIP message.
            if !ingest(&transports, &data, from.clone()).await {
                break;
            }
        }
    };
    tokio::select! {
        () = write => {}
        () = read => {}
    }
    debug!(%peer, ?id, "WebSocket closed");
    transports.remove_conn(id).await;
}
