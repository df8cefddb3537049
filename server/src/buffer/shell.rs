//! The buffer server's IO: the agents' SIP transports, the tunnel it dials, the media
//! sockets and the shutdown's commands, around the sans-IO [`Buffer`] core.

use std::time::Instant;

use proto_tunnel::Frame;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::media::MediaIn;
use super::media_io::MediaSockets;
use super::relay_link::RelayEvent;
use super::service::{Buffer, Command, Input, Output};
use crate::app::status::StatusSink;
use crate::driver::Shell;
use crate::sip::ConnId;
use crate::transport::tunnel::TunnelClientEvent;
use crate::transport::{TransportEvent, Transports};

/// Everything the buffer server's core does not own.
#[derive(Debug)]
pub struct BufferShell {
    transports: Transports,
    sip: mpsc::Receiver<TransportEvent>,
    tunnel: mpsc::Receiver<TunnelClientEvent>,
    media_in: mpsc::Receiver<MediaIn>,
    relay: mpsc::Receiver<RelayEvent>,
    commands: mpsc::Receiver<Command>,
    /// The tunnel's writer while it is up.
    tunnel_tx: Option<(ConnId, mpsc::Sender<Frame>)>,
    media: MediaSockets,
    status: StatusSink,
}

/// The receiving ends a buffer server's shell reads.
#[derive(Debug)]
pub struct Sources {
    pub sip: mpsc::Receiver<TransportEvent>,
    pub tunnel: mpsc::Receiver<TunnelClientEvent>,
    pub media: mpsc::Receiver<MediaIn>,
    /// What the distributor's media connection says (callers' ports, the ICE-TCP address);
    /// closed for an edge without a tunnel.
    pub relay: mpsc::Receiver<RelayEvent>,
    pub commands: mpsc::Receiver<Command>,
}

impl BufferShell {
    pub fn new(
        transports: Transports,
        sources: Sources,
        media: MediaSockets,
        status: StatusSink,
    ) -> BufferShell {
        BufferShell {
            transports,
            sip: sources.sip,
            tunnel: sources.tunnel,
            media_in: sources.media,
            relay: sources.relay,
            commands: sources.commands,
            tunnel_tx: None,
            media,
            status,
        }
    }

    /// Serves until the transports stop.
    pub async fn run(self, core: Buffer) {
        crate::driver::run(core, self).await;
    }
}

impl Shell<Buffer> for BufferShell {
    async fn next_input(&mut self) -> Option<Input> {
        tokio::select! {
            ev = self.sip.recv() => ev.map(Input::from),
            // Without a tunnel (a plain-SIP edge) this source is simply closed.
            Some(ev) = self.tunnel.recv() => Some(match ev {
                TunnelClientEvent::Up { conn, sender } => {
                    self.tunnel_tx = Some((conn, sender));
                    Input::TunnelUp { conn }
                }
                TunnelClientEvent::Down { conn } => {
                    if self.tunnel_tx.as_ref().is_some_and(|(c, _)| *c == conn) {
                        self.tunnel_tx = None;
                    }
                    Input::TunnelDown { conn }
                }
                TunnelClientEvent::Frame { conn, frame } => Input::Frame { conn, frame },
            }),
            Some(input) = self.media_in.recv() => Some(Input::Media(input)),
            Some(event) = self.relay.recv() => Some(match event {
                RelayEvent::Port { flow, result } => Input::CallerPort { call: flow, result },
                RelayEvent::IceTcp(addr) => Input::IceTcp { addr },
            }),
            Some(command) = self.commands.recv() => Some(Input::Command(command)),
        }
    }

    fn perform(&mut self, output: Output, _now: Instant) -> Option<Input> {
        match output {
            Output::Sip { to, bytes } => {
                let failed = crate::driver::send_sip(&self.transports, to, bytes);
                return failed.map(|to| Input::SendFailed { to });
            }
            Output::Frame { conn, frame } => match &self.tunnel_tx {
                Some((c, sender)) if *c == conn => {
                    if sender.try_send(frame).is_err() {
                        warn!("tunnel queue full; frame dropped");
                    }
                }
                _ => debug!("tunnel down; frame to the distributor dropped"),
            },
            Output::Close { conn } => self.transports.close(conn),
            Output::OpenCallerPort {
                call,
                remote,
                ice_ufrag,
                agent,
            } => {
                if let Some(ufrag) = ice_ufrag {
                    self.media.ice_session(call, ufrag, agent);
                }
                return match self.media.open(call, remote) {
                    Ok(Some(addr)) => Some(Input::CallerPort {
                        call,
                        result: Ok(addr),
                    }),
                    Ok(None) => None,
                    Err(e) => Some(Input::CallerPort {
                        call,
                        result: Err(e),
                    }),
                };
            }
            Output::OpenAgentPort { call } => {
                let result = self.media.open_agent(call).map_err(|e| e.to_string());
                return Some(Input::AgentPort { call, result });
            }
            Output::CloseCallerPort { call } => self.media.close(call),
            Output::Datagram(d) => self.media.send(d.via, d.to, &d.bytes),
            Output::Status(status) => self.status.emit(status),
        }
        None
    }
}
