//! The distributor's early-media player: one UDP socket, one task per queued caller sending
//! the queue's announcement as 20 ms RTP packets until the call leaves the queue. What the
//! callers send to this socket is read and dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::announcement::Law;
use super::rtp::{LoopPlayer, RtpStream};

/// Players running, by call.
#[derive(Debug)]
pub struct EarlyMedia {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    players: HashMap<String, JoinHandle<()>>,
}

impl EarlyMedia {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<EarlyMedia> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let local = socket.local_addr()?;
        let drain = socket.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while drain.recv_from(&mut buf).await.is_ok() {}
        });
        Ok(EarlyMedia {
            socket,
            local,
            players: HashMap::new(),
        })
    }

    /// The address announced in SDP.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Starts playing `audio` (encoded in `law`) to `to` for `call`, looped.
    pub fn start(&mut self, call: &str, to: SocketAddr, audio: Arc<[u8]>, law: Law) {
        let stream = RtpStream::new(
            law.payload_type(),
            rand::random(),
            rand::random(),
            rand::random(),
        );
        let mut player = LoopPlayer::new(audio, stream);
        let socket = self.socket.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = socket.send_to(&player.next_packet(), to).await {
                    tracing::debug!(%to, error = %e, "early media send failed");
                }
            }
        });
        if let Some(old) = self.players.insert(call.to_owned(), task) {
            old.abort();
        }
    }

    /// Stops the call's player, if it has one.
    pub fn stop(&mut self, call: &str) {
        if let Some(task) = self.players.remove(call) {
            task.abort();
        }
    }

    pub fn playing(&self) -> usize {
        self.players.len()
    }
}

impl Drop for EarlyMedia {
    fn drop(&mut self) {
        for task in self.players.values() {
            task.abort();
        }
    }
}
