//! A minimal TURN-over-TLS client (RFC 8656) for the end-to-end tests, on the server's own
//! codec ([`agent_edge::turn::stun`]).
//!
//! Every method returns `anyhow::Result<Result<T, u16>>`: the outer error is a connection or
//! protocol problem (I/O, no answer within [`RESPONSE_TIMEOUT`], an answer that does not
//! decode, a success without a valid MESSAGE-INTEGRITY), the inner `Err` is the ERROR-CODE
//! number of the server's error response.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agent_edge::turn::stun::{self, Class, Message, MessageBuilder};
use anyhow::{Context, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How long a request waits for its response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// One TLS connection to a TURN server: at most one allocation.
pub struct TurnClient {
    tls: TlsStream<TcpStream>,
    /// Bytes read and not yet cut into frames.
    buf: Vec<u8>,
    /// REALM and NONCE from the server's last challenge.
    realm: Option<String>,
    nonce: Option<String>,
    /// USERNAME and long-term key once [`TurnClient::allocate`] was given credentials.
    auth: Option<(String, [u8; 16])>,
    /// Data from peers read while waiting for a response, for [`TurnClient::recv_data`].
    data: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Channels bound, to name the peer of incoming ChannelData.
    channels: HashMap<u16, SocketAddr>,
    /// Transaction ids: a per-connection prefix, then a counter.
    prefix: [u8; 4],
    sent: u64,
}

impl std::fmt::Debug for TurnClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnClient")
            .field("realm", &self.realm)
            .field("nonce", &self.nonce)
            .field("username", &self.auth.as_ref().map(|(u, _)| u))
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl TurnClient {
    /// Connects with TLS to `addr`, accepting any server certificate.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<TurnClient> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .with_context(|| format!("TLS with {addr}"))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Ok(TurnClient {
            tls,
            buf: Vec::new(),
            realm: None,
            nonce: None,
            auth: None,
            data: VecDeque::new(),
            channels: HashMap::new(),
            prefix: nanos.to_be_bytes(),
            sent: 0,
        })
    }

    /// An Allocate for UDP: first without credentials; on the 401 challenge, with
    /// `credentials` (username, password) and the REALM and NONCE it gave, once more after a
    /// 438. The relayed address, or the error code (401 when `credentials` is None).
    pub async fn allocate(
        &mut self,
        credentials: Option<(&str, &str)>,
    ) -> anyhow::Result<Result<SocketAddr, u16>> {
        let udp =
            |b: MessageBuilder| b.attr(stun::REQUESTED_TRANSPORT, &[stun::TRANSPORT_UDP, 0, 0, 0]);
        let tx = self.next_transaction();
        let first = udp(MessageBuilder::new(Class::Request, stun::ALLOCATE, tx)).build();
        let (_, answer) = self.transact(&first, tx).await?;
        let answer = match (answer.class, error_code(&answer)) {
            (Class::Success, _) => answer,
            (_, 401) => {
                self.realm = Some(answer.realm().context("401 without REALM")?.to_owned());
                self.nonce = Some(answer.nonce().context("401 without NONCE")?.to_owned());
                let Some((username, password)) = credentials else {
                    return Ok(Err(401));
                };
                let realm = self.realm.as_deref().unwrap_or_default();
                let key = stun::long_term_key(username, realm, password);
                self.auth = Some((username.to_owned(), key));
                self.request(stun::ALLOCATE, udp).await?
            }
            (_, code) => return Ok(Err(code)),
        };
        if answer.class != Class::Success {
            return Ok(Err(error_code(&answer)));
        }
        let relayed = answer
            .xor_address(stun::XOR_RELAYED_ADDRESS)
            .context("Allocate success without XOR-RELAYED-ADDRESS")?;
        Ok(Ok(relayed))
    }

    /// A Refresh asking for `lifetime` seconds (0 deletes the allocation): the lifetime granted.
    pub async fn refresh(&mut self, lifetime: u32) -> anyhow::Result<Result<u32, u16>> {
        let answer = self
            .request(stun::REFRESH, |b| b.u32_attr(stun::LIFETIME, lifetime))
            .await?;
        if answer.class != Class::Success {
            return Ok(Err(error_code(&answer)));
        }
        Ok(Ok(answer
            .lifetime()
            .context("Refresh success without LIFETIME")?))
    }

    /// A CreatePermission for `peer`.
    pub async fn create_permission(&mut self, peer: SocketAddr) -> anyhow::Result<Result<(), u16>> {
        let answer = self
            .request(stun::CREATE_PERMISSION, |b| {
                b.xor_address(stun::XOR_PEER_ADDRESS, peer)
            })
            .await?;
        Ok(outcome(&answer))
    }

    /// A ChannelBind of `channel` (0x4000..=0x4FFF) to `peer`.
    pub async fn channel_bind(
        &mut self,
        channel: u16,
        peer: SocketAddr,
    ) -> anyhow::Result<Result<(), u16>> {
        let [high, low] = channel.to_be_bytes();
        let answer = self
            .request(stun::CHANNEL_BIND, |b| {
                b.attr(stun::CHANNEL_NUMBER, &[high, low, 0, 0])
                    .xor_address(stun::XOR_PEER_ADDRESS, peer)
            })
            .await?;
        let result = outcome(&answer);
        if result.is_ok() {
            self.channels.insert(channel, peer);
        }
        Ok(result)
    }

    /// `data` to `peer` in a Send indication (no answer either way).
    pub async fn send(&mut self, peer: SocketAddr, data: &[u8]) -> anyhow::Result<()> {
        let tx = self.next_transaction();
        let bytes = MessageBuilder::new(Class::Indication, stun::SEND, tx)
            .xor_address(stun::XOR_PEER_ADDRESS, peer)
            .attr(stun::DATA_ATTR, data)
            .build();
        self.send_raw(&bytes).await
    }

    /// `data` as ChannelData on `channel`.
    pub async fn send_channel(&mut self, channel: u16, data: &[u8]) -> anyhow::Result<()> {
        self.send_raw(&stun::encode_channel_data(channel, data))
            .await
    }

    /// The next data from a peer (a Data indication, or ChannelData on a bound channel), or
    /// None when none came within `timeout`.
    pub async fn recv_data(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Option<(SocketAddr, Vec<u8>)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(d) = self.data.pop_front() {
                return Ok(Some(d));
            }
            let Some(frame) = self.next_frame(deadline).await? else {
                return Ok(None);
            };
            self.absorb(&frame);
        }
    }

    /// A request of `method` with the attributes `attrs` adds, signed (USERNAME, REALM,
    /// NONCE, MESSAGE-INTEGRITY) once [`TurnClient::allocate`] had credentials, and sent
    /// again once with the new NONCE after a 438. The response, success or error; a success
    /// to a signed request must carry a valid MESSAGE-INTEGRITY.
    pub async fn request(
        &mut self,
        method: u16,
        attrs: impl Fn(MessageBuilder) -> MessageBuilder,
    ) -> anyhow::Result<Message> {
        let mut retried = false;
        loop {
            let tx = self.next_transaction();
            let b = attrs(MessageBuilder::new(Class::Request, method, tx));
            let key = match (&self.auth, &self.realm, &self.nonce) {
                (Some((username, key)), Some(realm), Some(nonce)) => Some((
                    b.clone()
                        .attr(stun::USERNAME, username.as_bytes())
                        .attr(stun::REALM, realm.as_bytes())
                        .attr(stun::NONCE, nonce.as_bytes())
                        .build_with_integrity(key),
                    *key,
                )),
                _ => None,
            };
            let (bytes, key) = match key {
                Some((bytes, key)) => (bytes, Some(key)),
                None => (b.build(), None),
            };
            let (raw, answer) = self.transact(&bytes, tx).await?;
            if answer.class == Class::Error && error_code(&answer) == 438 && !retried {
                self.nonce = Some(answer.nonce().context("438 without NONCE")?.to_owned());
                retried = true;
                continue;
            }
            if answer.class == Class::Success
                && let Some(key) = key
                && !stun::verify_integrity(&raw, &answer, &key)
            {
                bail!("a success to a signed request without a valid MESSAGE-INTEGRITY");
            }
            return Ok(answer);
        }
    }

    /// Ends the connection cleanly (TLS close_notify); dropping the client just closes it.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.tls.shutdown().await?;
        Ok(())
    }

    /// Writes `bytes` as they are (a STUN message or ChannelData of the test's own making).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.tls.write_all(bytes).await?;
        self.tls.flush().await?;
        Ok(())
    }

    /// A fresh transaction id for a request of the test's own making.
    pub fn next_transaction(&mut self) -> [u8; 12] {
        self.sent += 1;
        let mut tx = [0u8; 12];
        tx[..4].copy_from_slice(&self.prefix);
        tx[4..].copy_from_slice(&self.sent.to_be_bytes());
        tx
    }

    /// Sends `bytes` and waits for the response to transaction `tx` (its raw bytes, decoded),
    /// keeping the peers' data that arrives meanwhile.
    pub async fn transact(
        &mut self,
        bytes: &[u8],
        tx: [u8; 12],
    ) -> anyhow::Result<(Vec<u8>, Message)> {
        self.send_raw(bytes).await?;
        let deadline = tokio::time::Instant::now() + RESPONSE_TIMEOUT;
        loop {
            let frame = self
                .next_frame(deadline)
                .await?
                .ok_or_else(|| anyhow!("no response within {RESPONSE_TIMEOUT:?}"))?;
            if let Some(answer) = self.absorb(&frame)
                && answer.transaction == tx
            {
                return Ok((frame, answer));
            }
        }
    }

    /// Queues a frame's peer data; returns it when it is a response.
    fn absorb(&mut self, frame: &[u8]) -> Option<Message> {
        if frame.first().is_some_and(|b| b >> 6 == 0b01) {
            if let Some((channel, data)) = stun::decode_channel_data(frame)
                && let Some(peer) = self.channels.get(&channel)
            {
                self.data.push_back((*peer, data.to_vec()));
            }
            return None;
        }
        let msg = stun::decode(frame).ok()?;
        match msg.class {
            Class::Indication if msg.method == stun::DATA => {
                if let (Some(peer), Some(data)) = (
                    msg.xor_address(stun::XOR_PEER_ADDRESS),
                    msg.get(stun::DATA_ATTR),
                ) {
                    self.data.push_back((peer, data.to_vec()));
                }
                None
            }
            Class::Success | Class::Error => Some(msg),
            Class::Request | Class::Indication => None,
        }
    }

    /// The next whole frame, or None at `deadline`.
    async fn next_frame(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            if let Some(n) = stun::frame_len(&self.buf).context("the server's stream")? {
                return Ok(Some(self.buf.drain(..n).collect()));
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.tls.read(&mut chunk)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => bail!("the server closed the connection"),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }
}

/// The ERROR-CODE number of an error response (0 when it has none, or for a success).
fn error_code(answer: &Message) -> u16 {
    answer.error_code().map(|(code, _)| code).unwrap_or(0)
}

fn outcome(answer: &Message) -> Result<(), u16> {
    match answer.class {
        Class::Success => Ok(()),
        _ => Err(error_code(answer)),
    }
}

/// Trusts any certificate (the test servers' are self-signed), still checking that the
/// handshake is signed by the certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
