//! The distributor's IO: the callers' SIP transports, the edges' tunnels, the early-media
//! player and the admin API's commands, around the sans-IO [`Distributor`] core.

use std::collections::HashMap;
use std::time::Instant;

use proto_tunnel::Frame;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::service::{Command, Distributor, Input, Output};
use crate::app::status::StatusSink;
use crate::driver::Shell;
use crate::media::early::EarlyMedia;
use crate::records::RecordWriter;
use crate::sip::ConnId;
use crate::transport::tunnel::TunnelServerEvent;
use crate::transport::{TransportEvent, Transports};

/// Everything the distributor's core does not own.
#[derive(Debug)]
pub struct DistributorShell {
    transports: Transports,
    sip: mpsc::Receiver<TransportEvent>,
    tunnel: mpsc::Receiver<TunnelServerEvent>,
    commands: mpsc::Receiver<Command>,
    /// Each connected edge's tunnel writer.
    tunnels: HashMap<ConnId, mpsc::Sender<Frame>>,
    /// Plays queue announcements, when a queue has one.
    player: Option<EarlyMedia>,
    status: StatusSink,
    /// Writes call records (none: they are not kept, as in the core's own tests).
    records: Option<RecordWriter>,
}

impl DistributorShell {
    pub fn new(
        transports: Transports,
        sip: mpsc::Receiver<TransportEvent>,
        tunnel: mpsc::Receiver<TunnelServerEvent>,
        commands: mpsc::Receiver<Command>,
        player: Option<EarlyMedia>,
        status: StatusSink,
    ) -> DistributorShell {
        DistributorShell {
            transports,
            sip,
            tunnel,
            commands,
            tunnels: HashMap::new(),
            player,
            status,
            records: None,
        }
    }

    /// Call records go to `writer`.
    pub fn with_records(mut self, writer: RecordWriter) -> DistributorShell {
        self.records = Some(writer);
        self
    }

    /// Serves until the transports or the tunnel endpoint stop.
    pub async fn run(self, core: Distributor) {
        crate::driver::run(core, self).await;
    }
}

impl Shell<Distributor> for DistributorShell {
    async fn next_input(&mut self) -> Option<Input> {
        tokio::select! {
            ev = self.sip.recv() => ev.map(Input::from),
            ev = self.tunnel.recv() => match ev? {
                TunnelServerEvent::Up {
                    conn,
                    edge_id,
                    sender,
                    handoffs,
                } => {
                    self.tunnels.insert(conn, sender);
                    Some(Input::EdgeUp {
                        conn,
                        edge_id,
                        handoffs,
                    })
                }
                TunnelServerEvent::Down { conn } => {
                    self.tunnels.remove(&conn);
                    Some(Input::EdgeDown { conn })
                }
                TunnelServerEvent::Frame { conn, frame } => Some(Input::Frame { conn, frame }),
            },
            Some(command) = self.commands.recv() => Some(Input::Command(command)),
            else => None,
        }
    }

    fn perform(&mut self, output: Output, _now: Instant) -> Option<Input> {
        match output {
            Output::Sip { to, bytes } => {
                let failed = crate::driver::send_sip(&self.transports, to, bytes);
                return failed.map(|to| Input::SendFailed { to });
            }
            Output::Frame { conn, frame } => match self.tunnels.get(&conn) {
                Some(sender) => {
                    if sender.try_send(frame).is_err() {
                        warn!(?conn, "tunnel queue full; frame dropped");
                    }
                }
                None => debug!(?conn, "tunnel gone; frame dropped"),
            },
            Output::EarlyMediaStart {
                call,
                to,
                audio,
                law,
            } => {
                if let Some(player) = self.player.as_mut() {
                    player.start(&call, to, audio, law);
                }
            }
            Output::EarlyMediaStop { call } => {
                if let Some(player) = self.player.as_mut() {
                    player.stop(&call);
                }
            }
            Output::Status(status) => self.status.emit(status),
            Output::Record(record) => {
                if let Some(writer) = &self.records {
                    writer.send(record);
                }
            }
            Output::RecordsFlushed { reply } => match &self.records {
                Some(writer) => writer.flush(reply),
                None => {
                    let _ = reply.send(());
                }
            },
        }
        None
    }
}
