//! A browser agent without the browser: SIP over secure WebSocket (RFC 7118) to the buffer
//! server, and real WebRTC media (full ICE, DTLS, SRTP) through str0m, as Chromium would do
//! it. It answers one call, sends known audio payloads and records every RTP packet received.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use str0m::change::SdpOffer;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, MediaAdded, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::WAIT;
use crate::turn_client::TurnClient;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One RTP packet as the agent received it: payload type and payload.
pub type Received = (u8, Vec<u8>);

#[derive(Debug)]
pub struct WebRtcAgent {
    ws: Ws,
    agent: String,
}

/// A call's media, running in the background until dropped or stopped.
#[derive(Debug)]
pub struct CallMedia {
    pub received: Arc<Mutex<Vec<Received>>>,
    /// When each packet of `received` arrived (same order).
    pub arrived: Arc<Mutex<Vec<Instant>>>,
    /// When each payload given was sent (same order as the payloads).
    pub sent_at: Arc<Mutex<Vec<Instant>>>,
    /// How many of the payloads given were sent.
    pub sent: Arc<Mutex<usize>>,
    pub connected: Arc<Mutex<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CallMedia {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of a header in a SIP message (first, by full name).
pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A response to `request`, with our To tag, Contact and optional SDP.
fn response(request: &str, code: &str, sdp: Option<&str>) -> String {
    let head = request.split("\r\n\r\n").next().unwrap_or_default();
    let mut out = format!("SIP/2.0 {code}\r\n");
    for line in head.lines().skip(1) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("Via") || name.eq_ignore_ascii_case("Record-Route") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    for name in ["From", "Call-ID", "CSeq"] {
        out.push_str(&format!(
            "{name}: {}\r\n",
            header(request, name).unwrap_or_default()
        ));
    }
    let to = header(request, "To").unwrap_or_default();
    if to.contains("tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag=webrtc-agent\r\n"));
    }
    out.push_str("Contact: <sip:agent@agent.invalid;transport=ws>\r\n");
    match sdp {
        Some(sdp) => out.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )),
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    out
}

impl WebRtcAgent {
    /// Connects to `wss://https/sip` (trusting `ca`) and registers `agent` with `token`.
    pub async fn register(https: SocketAddr, ca: &Path, agent: &str, token: &str) -> WebRtcAgent {
        WebRtcAgent::register_at(https, "/sip", ca, agent, token).await
    }

    /// Issues `agent` a token from the test system in `dir` and registers with it at `path`
    /// on `https` (`/sip` on the edge, `/edge/<id>/sip` on the distributor), trusting the
    /// system's CA.
    pub async fn sign_in(dir: &Path, https: SocketAddr, path: &str, agent: &str) -> WebRtcAgent {
        let (owned, name) = (dir.to_owned(), agent.to_owned());
        let token = tokio::task::spawn_blocking(move || crate::issue_token(&owned, &name))
            .await
            .unwrap();
        let ca = dir.join("certs").join("ca.pem");
        WebRtcAgent::register_at(https, path, &ca, agent, &token).await
    }

    /// The same at another path: `/edge/<id>/sip` on the distributor, for an exposed edge.
    pub async fn register_at(
        https: SocketAddr,
        path: &str,
        ca: &Path,
        agent: &str,
        token: &str,
    ) -> WebRtcAgent {
        let tls = certs::client_config(ca).unwrap();
        let mut request = format!("wss://{https}{path}")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "sip".parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            false,
            Some(tokio_tungstenite::Connector::Rustls(tls)),
        )
        .await
        .unwrap();
        let mut me = WebRtcAgent {
            ws,
            agent: agent.to_owned(),
        };
        let register = format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WSS agent.invalid;branch=z9hG4bKreg{agent}\r\n\
             From: <sip:{agent}@127.0.0.1>;tag=r1\r\nTo: <sip:{agent}@127.0.0.1>\r\nCall-ID: reg-{agent}\r\n\
             CSeq: 1 REGISTER\r\nContact: <sip:{agent}@agent.invalid;transport=ws>\r\nExpires: 600\r\n\
             Max-Forwards: 70\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
        );
        me.send(&register).await;
        let answer = me.next_message().await;
        assert!(answer.starts_with("SIP/2.0 200 "), "{answer}");
        me
    }

    async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// The next SIP message from the buffer server.
    pub async fn next_message(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: nothing from the buffer server", self.agent))
                .expect("the WebSocket closed")
                .unwrap();
            if let Message::Text(t) = msg {
                return t.to_string();
            }
        }
    }

    /// Waits for an INVITE and returns it (answering 180 to it).
    pub async fn wait_invite(&mut self) -> String {
        loop {
            let m = self.next_message().await;
            if m.starts_with("INVITE ") {
                self.send(&response(&m, "180 Ringing", None)).await;
                return m;
            }
        }
    }

    /// Answers `invite` with WebRTC and starts the media: `payloads` are sent as RTP of the
    /// negotiated G.711 type, one every 20 ms once connected.
    pub async fn answer(&mut self, invite: &str, payloads: Vec<Vec<u8>>) -> CallMedia {
        self.answer_over(invite, payloads, IcePath::Udp).await
    }

    /// The same over the ICE path given: `Tcp` offers only an active TCP candidate, as a
    /// browser whose network lets out nothing but TCP would end up using, and connects to the
    /// bridge's passive one (RFC 6544, RFC 4571 framing).
    pub async fn answer_over(
        &mut self,
        invite: &str,
        payloads: Vec<Vec<u8>>,
        path: IcePath,
    ) -> CallMedia {
        // The address towards the bridge's (its offer's candidate): loopback on one host,
        // the agent's own address in a network namespace.
        let bridge_ip: std::net::IpAddr = body(invite)
            .lines()
            .find_map(|l| l.strip_prefix("a=candidate:"))
            .and_then(|c| c.split_whitespace().nth(4)?.parse().ok())
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        probe.connect((bridge_ip, 9)).unwrap();
        let own_ip = probe.local_addr().unwrap().ip();
        let socket = UdpSocket::bind((own_ip, 0)).await.unwrap();
        let local = socket.local_addr().unwrap();
        let now = Instant::now();
        let mut builder = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_pcmu(true, false)
            .enable_pcma(true, false);
        builder.codec_config().add_config(
            101.into(),
            None,
            Codec::Tele,
            Frequency::EIGHT_KHZ,
            None,
            FormatParams::parse_line("0-16"),
        );
        let mut rtc = builder.build(now);
        // An active TCP candidate's port is not used (RFC 6544 §4.5: 9, the discard port).
        let tcp_local = SocketAddr::new(own_ip, 9);
        let net = match path {
            IcePath::Udp => {
                rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
                Net::new(Some(socket), tcp_local)
            }
            IcePath::Tcp => {
                let active = Candidate::builder()
                    .tcp()
                    .host(tcp_local)
                    .tcptype(str0m::net::TcpType::Active)
                    .build()
                    .unwrap();
                rtc.add_local_candidate(active);
                Net::new(None, tcp_local)
            }
            IcePath::Turn => {
                let (server, username, password) =
                    turn_server(invite).expect("the INVITE names a TURN server (X-Turn)");
                let mut turn = TurnClient::connect(server).await.unwrap();
                let relayed = turn
                    .allocate(Some((&username, &password)))
                    .await
                    .unwrap()
                    .expect("a TURN allocation with the INVITE's credentials");
                rtc.add_local_candidate(Candidate::relayed(relayed, relayed, "udp").unwrap());
                let mut net = Net::new(None, tcp_local);
                net.turn = Some(Turn {
                    client: turn,
                    relayed,
                    permitted: HashSet::new(),
                });
                net
            }
        };
        let offer = SdpOffer::from_sdp_string(body(invite)).expect("a WebRTC offer");
        let answer = rtc.sdp_api().accept_offer(offer).unwrap().to_sdp_string();
        self.send(&response(invite, "200 OK", Some(&answer))).await;
        let media = Recording::default();
        let task = tokio::spawn(media_loop(rtc, net, payloads, media.clone()));
        CallMedia {
            received: media.received,
            arrived: media.arrived,
            sent_at: media.sent_at,
            sent: media.sent,
            connected: media.connected,
            task,
        }
    }

    /// Waits for the ACK, then a BYE, answering it.
    pub async fn wait_bye(&mut self) {
        loop {
            let m = self.next_message().await;
            if m.starts_with("BYE ") {
                self.send(&response(&m, "200 OK", None)).await;
                return;
            }
        }
    }
}

/// Which ICE path the agent answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcePath {
    Udp,
    Tcp,
    /// Only a relay candidate, allocated over TLS on the TURN server the INVITE names, as a
    /// browser forced onto TURN (`iceTransportPolicy: 'relay'`).
    Turn,
}

/// The TURN server and credentials of an INVITE's `X-Turn` header
/// (`<turns:IP:PORT?transport=tcp>;username="…";credential="…"`).
pub fn turn_server(invite: &str) -> Option<(SocketAddr, String, String)> {
    let value = header(invite, "X-Turn")?;
    let uri = value.strip_prefix("<turns:")?.split_once('?')?.0;
    let quoted = |name: &str| {
        let rest = value.split_once(&format!("{name}=\""))?.1;
        Some(rest.split_once('"')?.0.to_owned())
    };
    Some((
        uri.parse().ok()?,
        quoted("username")?,
        quoted("credential")?,
    ))
}

/// The agent's TURN allocation: what str0m sends from the relay candidate goes there, in
/// Send indications, after a permission for each new peer.
struct Turn {
    client: TurnClient,
    relayed: SocketAddr,
    permitted: HashSet<SocketAddr>,
}

/// The agent's side of the network: a UDP socket, or ICE-TCP connections it opens to the
/// bridge's passive candidates as str0m first sends to them.
struct Net {
    udp: Option<UdpSocket>,
    tcp_local: SocketAddr,
    tcp: HashMap<SocketAddr, tokio::net::tcp::OwnedWriteHalf>,
    tcp_in: tokio::sync::mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    tcp_in_tx: tokio::sync::mpsc::Sender<(SocketAddr, Vec<u8>)>,
    turn: Option<Turn>,
}

impl Net {
    fn new(udp: Option<UdpSocket>, tcp_local: SocketAddr) -> Net {
        let (tcp_in_tx, tcp_in) = tokio::sync::mpsc::channel(1024);
        Net {
            udp,
            tcp_local,
            tcp: HashMap::new(),
            tcp_in,
            tcp_in_tx,
            turn: None,
        }
    }

    async fn send(&mut self, t: &str0m::net::Transmit) {
        if let Some(turn) = self.turn.as_mut().filter(|turn| t.source == turn.relayed) {
            if turn.permitted.insert(t.destination) {
                let _ = turn.client.create_permission(t.destination).await;
            }
            let _ = turn.client.send(t.destination, &t.contents).await;
            return;
        }
        if t.proto == Protocol::Udp {
            if let Some(udp) = &self.udp {
                let _ = udp.send_to(&t.contents, t.destination).await;
            }
            return;
        }
        if !self.tcp.contains_key(&t.destination) {
            let Ok(stream) = tokio::net::TcpStream::connect(t.destination).await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let (mut reader, writer) = stream.into_split();
            let (tx, from) = (self.tcp_in_tx.clone(), t.destination);
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                while let Ok(len) = reader.read_u16().await {
                    let mut frame = vec![0u8; usize::from(len)];
                    if reader.read_exact(&mut frame).await.is_err()
                        || tx.send((from, frame)).await.is_err()
                    {
                        break;
                    }
                }
            });
            self.tcp.insert(t.destination, writer);
        }
        if let Some(writer) = self.tcp.get_mut(&t.destination) {
            use tokio::io::AsyncWriteExt;
            let mut framed = (t.contents.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&t.contents);
            let _ = writer.write_all(&framed).await;
        }
    }

    /// The next datagram or frame: (protocol, source, destination, bytes).
    async fn recv(
        &mut self,
        buf: &mut [u8],
    ) -> Option<(Protocol, SocketAddr, SocketAddr, Vec<u8>)> {
        let udp = async {
            match &self.udp {
                Some(s) => {
                    let local = s.local_addr().ok()?;
                    let (n, from) = s.recv_from(buf).await.ok()?;
                    Some((Protocol::Udp, from, local, buf[..n].to_vec()))
                }
                None => std::future::pending().await,
            }
        };
        let turn = async {
            match &mut self.turn {
                Some(turn) => match turn.client.recv_data(Duration::from_secs(3600)).await {
                    Ok(Some((from, bytes))) => Some((Protocol::Udp, from, turn.relayed, bytes)),
                    _ => None,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = udp => got,
            got = turn => got,
            Some((from, frame)) = self.tcp_in.recv() => Some((Protocol::Tcp, from, self.tcp_local, frame)),
        }
    }
}

/// What a call's media task records, shared with its [`CallMedia`].
#[derive(Debug, Clone, Default)]
struct Recording {
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Mutex<Vec<Instant>>>,
    sent_at: Arc<Mutex<Vec<Instant>>>,
    sent: Arc<Mutex<usize>>,
    connected: Arc<Mutex<bool>>,
}

async fn media_loop(mut rtc: Rtc, mut net: Net, payloads: Vec<Vec<u8>>, media: Recording) {
    let Recording {
        received,
        arrived,
        sent_at,
        sent,
        connected,
    } = media;
    let mut buf = vec![0u8; 2048];
    let mut mid: Option<Mid> = None;
    let mut next_send = Instant::now();
    let mut index = 0usize;
    loop {
        let deadline = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => net.send(&t).await,
                Ok(Output::Event(Event::MediaAdded(MediaAdded { mid: m, .. }))) => mid = Some(m),
                Ok(Output::Event(Event::Connected)) => *connected.lock().unwrap() = true,
                Ok(Output::Event(Event::RtpPacket(p))) => {
                    received
                        .lock()
                        .unwrap()
                        .push((*p.header.payload_type, p.payload.to_vec()));
                    arrived.lock().unwrap().push(Instant::now());
                }
                Ok(Output::Event(_)) => {}
                Err(_) => return,
            }
        };
        let is_connected = *connected.lock().unwrap();
        let wake = if is_connected && index < payloads.len() {
            deadline.min(next_send)
        } else {
            deadline
        };
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(wake));
        tokio::select! {
            r = net.recv(&mut buf) => {
                let Some((proto, from, local, bytes)) = r else { return };
                let Ok(contents) = bytes.as_slice().try_into() else { continue };
                let input = Input::Receive(Instant::now(), Receive {
                    proto, source: from, destination: local, contents,
                });
                if rtc.handle_input(input).is_err() {
                    return;
                }
            }
            () = sleep => {
                let now = Instant::now();
                if is_connected && index < payloads.len() && now >= next_send {
                    // The G.711 type the bridge offered (it offers only the caller's).
                    let remote = mid
                        .and_then(|m| rtc.media(m))
                        .map(|m| m.remote_pts().to_vec())
                        .unwrap_or_default();
                    let pt = rtc
                        .codec_config()
                        .find(|p| {
                            matches!(p.spec().codec, Codec::PCMA | Codec::PCMU)
                                && remote.contains(&p.pt())
                        })
                        .map(|p| p.pt());
                    if let (Some(m), Some(pt)) = (mid, pt)
                        && let Some(tx) = rtc.direct_api().stream_tx_by_mid(m, None)
                    {
                        let seq = index as u64 + 1;
                        let write = RtpWrite::new(pt, seq.into(), (index * 160) as u32, now, payloads[index].as_slice());
                        tx.write_rtp(write);
                        sent_at.lock().unwrap().push(now);
                        index += 1;
                        *sent.lock().unwrap() = index;
                    }
                    next_send += Duration::from_millis(20);
                } else if rtc.handle_input(Input::Timeout(now)).is_err() {
                    return;
                }
            }
        }
    }
}

/// `n` payloads for an agent to send, each marked `AGENT-<number>-` and filled to 160 bytes,
/// so that their echo can be told from the caller's audio.
pub fn marked_payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut p = format!("AGENT-{i:05}-").into_bytes();
            p.resize(160, (i % 200) as u8);
            p
        })
        .collect()
}

/// Audio both ways, complete and unchanged, for a call from a SIPp caller that played
/// g711a.pcap and the DTMF pcap and echoed what it got: every pcap packet reached the agent
/// in order, the digit came as telephone-event, and every marked packet the agent sent (of
/// `sent`) came back.
pub fn assert_pcap_and_echo(media: &CallMedia, sent: &[Vec<u8>]) {
    assert!(*media.connected.lock().unwrap(), "ICE and DTLS connected");
    let received = media.received.lock().unwrap().clone();
    let audio = pcap_rtp_payloads(Path::new("/usr/share/sip-tester/g711a.pcap"));
    let from_pcap: Vec<&Vec<u8>> = received
        .iter()
        .filter(|(pt, p)| *pt == 8 && !p.starts_with(b"AGENT-"))
        .map(|(_, p)| p)
        .collect();
    assert_eq!(from_pcap.len(), audio.len(), "every pcap packet arrived");
    for (i, (got, (_, _, want))) in from_pcap.iter().zip(&audio).enumerate() {
        assert_eq!(*got, want, "pcap packet {i}");
    }
    let digits = received.iter().filter(|(pt, _)| *pt == 101).count();
    assert!(digits > 0, "the DTMF digit crossed as telephone-event");
    // Agent → caller → (SIPp's echo) → agent.
    let echoed: Vec<&Vec<u8>> = received
        .iter()
        .filter(|(_, p)| p.starts_with(b"AGENT-"))
        .map(|(_, p)| p)
        .collect();
    let n = *media.sent.lock().unwrap();
    assert!(n >= 100, "the agent sent {n} packets");
    assert_eq!(
        echoed.len(),
        n,
        "each packet the agent sent reached the caller and came back"
    );
    for (got, want) in echoed.iter().zip(sent) {
        assert_eq!(*got, want);
    }
}

/// The RTP packets in a pcap file of RTP over UDP over IPv4 over Ethernet, in order:
/// (payload type, sequence number, payload).
pub fn pcap_rtp_payloads(path: &Path) -> Vec<(u8, u16, Vec<u8>)> {
    let data = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 24;
    while pos + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let frame = &data[pos + 16..(pos + 16 + caplen).min(data.len())];
        pos += 16 + caplen;
        // Ethernet (14) + IPv4 (IHL) + UDP (8).
        if frame.len() < 14 + 20 + 8 + 12 {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let rtp = &frame[14 + ihl + 8..];
        if rtp.len() >= 12 && rtp[0] >> 6 == 2 {
            let seq = u16::from_be_bytes([rtp[2], rtp[3]]);
            out.push((rtp[1] & 0x7f, seq, rtp[12..].to_vec()));
        }
    }
    out
}
