//! One load agent: a WSS connection to the buffer server (subprotocol `sip`, real TLS), a
//! REGISTER with its own bearer token, then the calls offered to it, one at a time, answered
//! after `answer_after` and hung up `hold` after the ACK, as a browser agent would.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::sip;
use crate::stats::Stats;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a request of ours or the ACK of our 200 may take (64 × T1, RFC 3261 timer B/H).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);

/// What every agent of a run shares.
#[derive(Debug)]
pub struct Settings {
    /// `wss://HOST:PORT/sip` of the buffer server.
    pub url: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// The domain of the agents' addresses (the URL's host).
    pub domain: String,
    pub answer_after: Duration,
    pub hold: Duration,
    /// Registration lifetime asked for; refreshed at half of what the server grants.
    pub expires: u32,
}

/// Why an agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{agent}: WebSocket to {url}: {source}")]
    Connect {
        agent: String,
        url: String,
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("{agent}: the buffer server answered the REGISTER with: {first_line}")]
    Refused { agent: String, first_line: String },
    #[error("{agent}: the connection closed")]
    Closed { agent: String },
    #[error("{agent}: no answer to the REGISTER within {TRANSACTION_TIMEOUT:?}")]
    NoAnswer { agent: String },
}

/// Where the agent's one call is.
#[derive(Debug)]
enum Phase {
    /// 180 sent; the 200 goes at the instant.
    Ringing(Instant),
    /// 200 sent; waiting for the ACK until the instant.
    Answered(Instant),
    /// ACKed; the agent hangs up at the instant.
    Talking(Instant),
    /// BYE sent; waiting for its 200 until the instant.
    Ending(Instant),
}

#[derive(Debug)]
struct Call {
    invite: String,
    call_id: String,
    to_tag: String,
    arrived: Instant,
    phase: Phase,
}

/// A registered agent, ready for calls.
#[derive(Debug)]
pub struct Agent {
    id: String,
    token: String,
    ws: Ws,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    /// A name for this connection, as a browser makes one up (RFC 7118 §5.2).
    via_host: String,
    cseq: u32,
    call: Option<Call>,
    calls: u64,
    refresh_at: Instant,
}

impl Agent {
    /// Connects and registers; returns once the buffer server has answered 200.
    pub async fn register(
        id: String,
        token: String,
        settings: Arc<Settings>,
        stats: Arc<Stats>,
    ) -> Result<Agent, AgentError> {
        let mut request = settings
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| connect_error(&id, &settings.url, e))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("sip"));
        // A small read buffer: tungstenite zero-fills all of it (128 KiB by default).
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(tokio_tungstenite::Connector::Rustls(settings.tls.clone())),
        )
        .await
        .map_err(|e| connect_error(&id, &settings.url, e))?;
        let via_host = format!("{id}.load.invalid");
        let mut agent = Agent {
            id,
            token,
            ws,
            settings,
            stats,
            via_host,
            cseq: 0,
            call: None,
            calls: 0,
            refresh_at: Instant::now(),
        };
        agent.send_register().await?;
        let deadline = Instant::now() + TRANSACTION_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, agent.next())
                .await
                .map_err(|_| AgentError::NoAnswer {
                    agent: agent.id.clone(),
                })??;
            if sip::cseq_method(&msg) == Some("REGISTER") {
                agent.registered(&msg)?;
                return Ok(agent);
            }
        }
    }

    async fn send_register(&mut self) -> Result<(), AgentError> {
        self.cseq += 1;
        let text = sip::register(
            &self.id,
            &self.settings.domain,
            &self.via_host,
            self.cseq,
            self.settings.expires,
            &self.token,
        );
        self.send(text).await
    }

    /// Reads the REGISTER's response: 200 schedules the refresh, anything else is an error.
    fn registered(&mut self, response: &str) -> Result<(), AgentError> {
        if sip::status(response) != Some(200) {
            return Err(AgentError::Refused {
                agent: self.id.clone(),
                first_line: response.lines().next().unwrap_or_default().to_owned(),
            });
        }
        let granted = sip::header(response, "Contact")
            .and_then(|c| c.split("expires=").nth(1))
            .and_then(|e| e.split([';', ',', ' ']).next()?.parse().ok())
            .or_else(|| sip::header(response, "Expires")?.parse().ok())
            .unwrap_or(self.settings.expires)
            .max(2);
        self.refresh_at = Instant::now() + Duration::from_secs(u64::from(granted / 2));
        Ok(())
    }

    async fn send(&mut self, text: String) -> Result<(), AgentError> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|_| AgentError::Closed {
                agent: self.id.clone(),
            })
    }

    /// The next SIP message (text or binary frame).
    async fn next(&mut self) -> Result<String, AgentError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Binary(b))) => return Ok(String::from_utf8_lossy(&b).into()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    return Err(AgentError::Closed {
                        agent: self.id.clone(),
                    });
                }
                Some(Ok(_)) => {} // pings are answered by tungstenite
            }
        }
    }

    /// Serves calls until the connection closes.
    pub async fn serve(mut self) -> AgentError {
        loop {
            let wake = self.call.as_ref().map_or(self.refresh_at, |c| {
                let due = match c.phase {
                    Phase::Ringing(t)
                    | Phase::Answered(t)
                    | Phase::Talking(t)
                    | Phase::Ending(t) => t,
                };
                due.min(self.refresh_at)
            });
            let step = tokio::select! {
                msg = self.next() => match msg {
                    Ok(msg) => self.on_message(msg).await,
                    Err(e) => Err(e),
                },
                () = tokio::time::sleep_until(wake) => self.on_timer().await,
            };
            if let Err(e) = step {
                if self.call.take().is_some() {
                    self.stats.failed();
                }
                self.stats.disconnected();
                return e;
            }
        }
    }

    async fn on_message(&mut self, msg: String) -> Result<(), AgentError> {
        let Some(method) = sip::method(&msg).map(str::to_owned) else {
            return self.on_response(&msg);
        };
        let same_call = |c: &Call| Some(c.call_id.as_str()) == sip::header(&msg, "Call-ID");
        match method.as_str() {
            "INVITE" if self.call.as_ref().is_some_and(same_call) => Ok(()), // retransmission
            "INVITE" if self.call.is_some() => {
                self.stats.refused_busy();
                self.reply(&msg, 486, "Busy Here", "busy", None).await
            }
            "INVITE" => self.on_invite(msg).await,
            "ACK" => {
                if let Some(c) = self.call.as_mut().filter(|c| same_call(c))
                    && let Phase::Answered(_) = c.phase
                {
                    self.stats.answered(c.arrived.elapsed());
                    c.phase = Phase::Talking(Instant::now() + self.settings.hold);
                }
                Ok(())
            }
            "BYE" | "CANCEL" => {
                let tag = self.call.as_ref().map(|c| c.to_tag.clone());
                self.reply(&msg, 200, "OK", tag.as_deref().unwrap_or("none"), None)
                    .await?;
                if method == "BYE" {
                    if self.call.take_if(|c| same_call(c)).is_some() {
                        self.stats.completed();
                    }
                } else if let Some(c) = self
                    .call
                    .take_if(|c| same_call(c) && matches!(c.phase, Phase::Ringing(_)))
                {
                    self.stats.failed();
                    self.reply(&c.invite, 487, "Request Terminated", &c.to_tag, None)
                        .await?;
                }
                Ok(())
            }
            // MESSAGE (the ACD's view of the agent), OPTIONS, NOTIFY: acknowledged.
            _ => self.reply(&msg, 200, "OK", "load", None).await,
        }
    }

    async fn on_invite(&mut self, invite: String) -> Result<(), AgentError> {
        self.stats.offered();
        self.calls += 1;
        let to_tag = format!("{}-{}", self.id, self.calls);
        let Some(call_id) = sip::header(&invite, "Call-ID").map(str::to_owned) else {
            return self.reply(&invite, 400, "No Call-ID", &to_tag, None).await;
        };
        self.reply(&invite, 180, "Ringing", &to_tag, None).await?;
        self.call = Some(Call {
            invite,
            call_id,
            to_tag,
            arrived: Instant::now(),
            phase: Phase::Ringing(Instant::now() + self.settings.answer_after),
        });
        if self.settings.answer_after.is_zero() {
            self.on_timer().await?;
        }
        Ok(())
    }

    fn on_response(&mut self, msg: &str) -> Result<(), AgentError> {
        match sip::cseq_method(msg) {
            Some("REGISTER") => self.registered(msg),
            Some("BYE") => {
                let ours = self
                    .call
                    .as_ref()
                    .is_some_and(|c| Some(c.call_id.as_str()) == sip::header(msg, "Call-ID"));
                if ours && sip::status(msg).is_some_and(|s| s >= 200) {
                    self.call = None;
                    if sip::status(msg) == Some(200) {
                        self.stats.completed();
                    } else {
                        self.stats.failed();
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whatever is due now: a registration refresh, the answer, the hang-up, a timeout.
    async fn on_timer(&mut self) -> Result<(), AgentError> {
        let now = Instant::now();
        if now >= self.refresh_at {
            // Not refreshed again until the 200 says for how long.
            self.refresh_at = now + TRANSACTION_TIMEOUT;
            self.send_register().await?;
        }
        let Some(call) = self.call.as_mut() else {
            return Ok(());
        };
        match call.phase {
            Phase::Ringing(t) if now >= t => {
                call.phase = Phase::Answered(now + TRANSACTION_TIMEOUT);
                let invite = call.invite.clone();
                let tag = call.to_tag.clone();
                let contact = format!(
                    "Contact: <sip:{}@{};transport=ws>\r\n",
                    self.id, self.via_host
                );
                match sip::webrtc_answer(sip::body(&invite)) {
                    Some(sdp) => {
                        self.reply(&invite, 200, "OK", &tag, Some((&contact, &sdp)))
                            .await
                    }
                    None => {
                        self.call = None;
                        self.stats.failed();
                        self.reply(&invite, 488, "Not Acceptable Here", &tag, None)
                            .await
                    }
                }
            }
            Phase::Talking(t) if now >= t => {
                call.phase = Phase::Ending(now + TRANSACTION_TIMEOUT);
                let branch = format!("{}x{}", call.to_tag, self.cseq);
                match sip::bye(&call.invite, &call.to_tag, &branch, &self.via_host) {
                    Some(bye) => self.send(bye).await,
                    None => {
                        self.call = None;
                        self.stats.failed();
                        Ok(())
                    }
                }
            }
            Phase::Answered(t) | Phase::Ending(t) if now >= t => {
                // No ACK, or no answer to our BYE: the call is lost.
                self.call = None;
                self.stats.failed();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn reply(
        &mut self,
        request: &str,
        code: u16,
        reason: &str,
        to_tag: &str,
        answer: Option<(&str, &str)>,
    ) -> Result<(), AgentError> {
        let (extra, sdp) = answer.map_or(("", None), |(c, s)| (c, Some(s)));
        match sip::response(request, code, reason, to_tag, extra, sdp) {
            Some(text) => self.send(text).await,
            None => Ok(()), // a request without the headers to answer it: ignored
        }
    }
}

fn connect_error(agent: &str, url: &str, e: tokio_tungstenite::tungstenite::Error) -> AgentError {
    AgentError::Connect {
        agent: agent.to_owned(),
        url: url.to_owned(),
        source: Box::new(e),
    }
}
