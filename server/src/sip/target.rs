//! Where a SIP message came from or goes to, in the terms the SIP layer needs: is the
//! transport reliable (which switches retransmission timers off), and which connection a
//! response must go back on (RFC 3261 §18.2.2, RFC 7118 §5: responses follow the connection).

use std::net::SocketAddr;

/// The transports a message can travel on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
    /// The distributor <-> buffer server tunnel (a WSS connection carrying tunnel frames).
    Tunnel,
}

impl TransportKind {
    /// Reliable transports get no retransmissions and zero-length wait timers (D, I, J, K).
    pub fn is_reliable(self) -> bool {
        !matches!(self, TransportKind::Udp)
    }

    /// The transport token used in Via and in `;transport=` URI parameters.
    pub fn token(self) -> &'static str {
        match self {
            TransportKind::Udp => "UDP",
            TransportKind::Tcp => "TCP",
            TransportKind::Tls => "TLS",
            TransportKind::Ws => "WS",
            TransportKind::Wss | TransportKind::Tunnel => "WSS",
        }
    }
}

/// A connection owned by the transport layer; stream transports route by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A peer address plus the connection to use, when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub kind: TransportKind,
    pub addr: SocketAddr,
    /// The connection a stream message arrived on or must leave on. `None` for UDP, and for a
    /// stream target the transport layer must connect to first.
    pub conn: Option<ConnId>,
}

impl Target {
    pub fn udp(addr: SocketAddr) -> Target {
        Target {
            kind: TransportKind::Udp,
            addr,
            conn: None,
        }
    }

    pub fn is_reliable(&self) -> bool {
        self.kind.is_reliable()
    }
}
