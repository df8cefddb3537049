//! The one TOML configuration file: every key optional, unknown keys refused, parsed then
//! validated so an operator's typo is an error at start-up rather than a surprise on a call.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file named on the command line.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, bad address).
    #[error("invalid configuration: {0}")]
    Parse(#[from] toml::de::Error),
    /// The values parse but do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// SIP timers and bounds shared by every role.
    pub sip: SipConfig,
    /// Where TLS certificates come from.
    pub tls: TlsConfig,
    /// The caller-facing distributor.
    pub distributor: DistributorConfig,
    /// The agent-facing buffer server.
    pub buffer: BufferConfig,
    /// Agent tokens.
    pub identity: IdentityConfig,
    /// The distributor's admin HTTP API.
    pub admin: AdminConfig,
    /// What Ctrl-C or SIGTERM does to calls in progress.
    pub shutdown: ShutdownConfig,
    /// What one peer may hold.
    pub limits: LimitsConfig,
    /// The Prometheus metrics at the admin API's `/metrics`.
    pub metrics: MetricsConfig,
    /// Call records in the store (`[admin] db`), at the admin API's `/calls`.
    pub records: RecordsConfig,
}

/// How long call records are kept, and how many may wait while the store fails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsConfig {
    /// Off: no call is recorded (and `/calls` shows what was recorded before).
    pub enabled: bool,
    /// Records of calls that ended longer ago are deleted (checked at start and hourly).
    pub retention_days: u64,
    /// Records kept in memory while the store cannot be written, retried every 2 s; past
    /// this many the oldest are given up (and counted).
    pub max_pending: usize,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            enabled: true,
            retention_days: 90,
            max_pending: 100_000,
        }
    }
}

/// What the metrics count against.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Off: nothing is counted and `/metrics` answers 404.
    pub enabled: bool,
    /// Seconds within which an answered call counts as answered in target (the service
    /// level's threshold: 80 % of calls in 20 s is a common goal).
    pub service_level_s: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            service_level_s: 20,
        }
    }
}

/// Bounds on what one peer may hold, so one host cannot starve the others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Connections one address may hold open (TLS handshakes included) on each listener
    /// that accepts them: HTTPS (the distributor's public one, the edge's own) and SIP over
    /// TCP and TLS. Agents behind one office NAT share an address, so this is generous.
    pub connections_per_ip: usize,
    /// Seconds a client of an HTTPS listener has to send a request's headers, after the
    /// handshake or between requests on a kept-alive connection.
    pub header_read_s: u64,
    /// Seconds a SIP stream peer (TCP, TLS) has to finish a message it has begun.
    pub message_s: u64,
    /// Seconds a SIP WebSocket may stay silent after its upgrade (a page registers at once).
    pub ws_first_message_s: u64,
    /// Milliseconds of delay, beyond the quickest packet's, after which relayed caller
    /// media is dropped by its receiver (distributor and exposed edge).
    pub relay_max_age_ms: u64,
    /// TURN allocations one address may hold on the distributor's public port (a browser
    /// makes one per call; an office NAT shares an address). Beyond it: 486.
    pub turn_allocations_per_ip: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            connections_per_ip: 1024,
            header_read_s: 10,
            message_s: 10,
            ws_first_message_s: 30,
            relay_max_age_ms: 250,
            turn_allocations_per_ip: 256,
        }
    }
}

impl LimitsConfig {
    /// The deadlines the transports apply.
    pub fn deadlines(&self) -> crate::transport::Deadlines {
        use std::time::Duration;
        crate::transport::Deadlines {
            header_read: Duration::from_secs(self.header_read_s),
            message: Duration::from_secs(self.message_s),
            ws_first_message: Duration::from_secs(self.ws_first_message_s),
        }
    }
}

/// A graceful stop: new calls are refused with 503 at once, calls in progress get `grace_s`
/// to end by themselves, then both legs of each are hung up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Seconds calls in progress (and callers waiting in queues) are given to end.
    pub grace_s: u64,
    /// Seconds the BYEs sent after the grace wait for their answers before the process
    /// goes anyway (a caller that never answers cannot hold a shutdown).
    pub bye_wait_s: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_s: 30,
            bye_wait_s: 5,
        }
    }
}

/// The admin API: where it listens, where agents are stored, where its key is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Loopback by default: the API manages identities.
    pub listen: SocketAddr,
    /// The SQLite database of agents and revocations.
    pub db: PathBuf,
    /// The admin key when `AGENT_EDGE_ADMIN_KEY` is not set; generated (0600) when missing.
    pub key_file: PathBuf,
    /// Where agents open their page (e.g. `https://edge.example:8443/`): sign-in links the
    /// admin API and the console issue are this with `?token=`. The all-in-one system knows
    /// its own; a distributor alone issues bare tokens without it.
    pub agent_page_url: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            db: PathBuf::from(".agent-edge/agent-edge.db"),
            key_file: PathBuf::from(".agent-edge/admin-key"),
            agent_page_url: None,
        }
    }
}

/// Agent tokens: who signs them, for whom, for how long, and where the signing key lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Folder of the distributor's signing key (generated at first run, git-ignored).
    pub keys_dir: PathBuf,
    /// The `iss` of every token.
    pub issuer: String,
    /// The `aud` of every token.
    pub audience: String,
    /// Lifetime of a token issued without one, in seconds.
    pub token_ttl_s: u64,
    /// The `aud` of edge (buffer server) credentials, distinct from agents' so that an agent
    /// token can never open a tunnel.
    pub edge_audience: String,
    /// Lifetime of an edge credential issued without one, in seconds.
    pub edge_token_ttl_s: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            keys_dir: PathBuf::from(".agent-edge/keys"),
            issuer: "agent-edge".into(),
            audience: "agent-edge-agents".into(),
            token_ttl_s: 8 * 3600,
            edge_audience: "agent-edge-edges".into(),
            edge_token_ttl_s: 90 * 24 * 3600,
        }
    }
}

/// SIP timers (RFC 3261 section 17) and message bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// Round-trip estimate T1, in milliseconds.
    pub t1_ms: u64,
    /// Maximum retransmission interval T2, in milliseconds.
    pub t2_ms: u64,
    /// Maximum time a message stays in the network, T4, in milliseconds.
    pub t4_ms: u64,
    /// Largest SIP message accepted from any peer, in bytes.
    pub max_message_bytes: usize,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            max_message_bytes: 65_535,
        }
    }
}

impl SipConfig {
    /// The timers as the transaction layer wants them.
    pub fn timers(&self) -> crate::sip::transaction::Timers {
        crate::sip::transaction::Timers {
            t1: Duration::from_millis(self.t1_ms),
            t2: Duration::from_millis(self.t2_ms),
            t4: Duration::from_millis(self.t4_ms),
        }
    }
}

/// TLS material: operator-provided files, or development certificates generated into `dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Folder for generated development certificates.
    pub dir: PathBuf,
    /// Server certificate chain (PEM); with `key`, replaces the development certificate.
    pub cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub key: Option<PathBuf>,
    /// CA the buffer server trusts when dialling the distributor's tunnel.
    pub ca: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            dir: PathBuf::from(".agent-edge/certs"),
            cert: None,
            key: None,
            ca: None,
        }
    }
}

/// The distributor: where callers arrive and where buffer servers dial in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributorConfig {
    /// Name shown to buffer servers.
    pub id: String,
    /// SIP over UDP for callers.
    pub udp: SocketAddr,
    /// SIP over TCP for callers.
    pub tcp: SocketAddr,
    /// SIP over TLS for callers.
    pub tls: SocketAddr,
    /// The one public TLS listener (443 in production): buffer servers dial
    /// `wss://ADDR/tunnel`, and exposed edges' agents reach `https://ADDR/edge/<id>/`.
    /// `tunnel` is its former name.
    #[serde(alias = "tunnel")]
    pub public: SocketAddr,
    /// UDP address queue announcements are played from (early media), bound only when a
    /// queue has `ringback = "183"`. Its address is the one announced in SDP.
    pub early_media: SocketAddr,
    /// UDP ports the caller media relay takes for exposed edges' calls, `LOW-HIGH`; any free
    /// port when unset.
    pub media_ports: Option<PortRange>,
    /// The address announced to relayed callers instead of the public listener's.
    pub media_public_ip: Option<std::net::IpAddr>,
    /// Calls at once for an agent the admin store does not describe (its `max_calls`
    /// otherwise).
    pub agent_max_calls: u32,
    /// Milliseconds a new call's INVITE may have waited for the distributor before it is
    /// refused with 503 and `Retry-After` instead of served: that long behind (by default
    /// T1, when a caller sends its INVITE again), the distributor is overloaded, and serving
    /// it would let retransmissions pile up. 0: never (nor for a saturated core).
    pub overload_after_ms: u64,
    /// Queue of the calls no call type matches (implied with default settings when
    /// `queues` does not define it).
    pub default_queue: String,
    /// Call-type rules, tried in order.
    pub call_types: Vec<crate::acd::config::CallTypeConfig>,
    /// Queues.
    pub queues: Vec<crate::acd::config::QueueConfig>,
}

impl Default for DistributorConfig {
    fn default() -> Self {
        DistributorConfig {
            id: "dist-1".into(),
            udp: SocketAddr::from(([127, 0, 0, 1], 5060)),
            tcp: SocketAddr::from(([127, 0, 0, 1], 5060)),
            tls: SocketAddr::from(([127, 0, 0, 1], 5061)),
            public: SocketAddr::from(([127, 0, 0, 1], 7443)),
            early_media: SocketAddr::from(([127, 0, 0, 1], 16000)),
            media_ports: None,
            media_public_ip: None,
            agent_max_calls: 1,
            overload_after_ms: 500,
            default_queue: "default".into(),
            call_types: Vec::new(),
            queues: Vec::new(),
        }
    }
}

/// A buffer server: the edge where agents log in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// This edge's name, unique among the distributor's edges.
    pub id: String,
    /// The distributor's tunnel (all-in-one mode uses its own distributor instead).
    pub connect: String,
    /// SIP over UDP for agents on desk phones and test tools.
    pub udp: SocketAddr,
    /// SIP over TCP for agents on desk phones and test tools.
    pub tcp: SocketAddr,
    /// The agent page at `/` and SIP over WSS at `/sip`.
    pub https: SocketAddr,
    /// How agents reach this edge: `direct` on `https` only, or `tunnel`, also through the
    /// distributor's public listener at `/edge/<id>/` over the tunnel this edge dials, for an
    /// edge that accepts nothing inbound.
    pub expose: Expose,
    /// Longest registration granted, in seconds.
    pub max_expires: u32,
    /// The SIP Digest algorithms offered to desk phones that register without a token, in
    /// order of preference: `SHA-256` and `MD5` by default, `[]` for tokens only. Some old
    /// phones give up on a challenge they do not know instead of taking the next one (libre
    /// before 3.11, Debian 12's baresip among them): for those, `["MD5"]`.
    pub digest_algorithms: Vec<crate::sip::digest::Algorithm>,
    /// How the distributor hands calls to this edge: tunnel, uri, message or table.
    pub handoff: crate::handoff::Mode,
    /// Reach the distributor over plain SIP instead of the tunnel, for an edge with a public
    /// address: `udp:IP:PORT` or `tcp:IP:PORT`. Only the `uri` and `message` hand-offs.
    pub distributor_sip: Option<SipLink>,
    /// With `distributor_sip`: the distributor's public keys (its /.well-known/jwks.json), to
    /// verify agent tokens without a tunnel to learn them from.
    pub keys_file: Option<PathBuf>,
    /// File holding this edge's credential for the tunnel (an edge token). The environment
    /// variable `AGENT_EDGE_EDGE_TOKEN` takes precedence; never put the token itself here.
    pub token_file: Option<PathBuf>,
    /// The one UDP address for every browser agent's WebRTC media. Callers' RTP gets a port
    /// of its own per call on the same IP.
    pub media: SocketAddr,
    /// The IP announced in SDP instead of `media`'s (an edge behind 1:1 NAT).
    pub media_public_ip: Option<std::net::IpAddr>,
    /// Seconds without media either way (and not on hold) after which a call is ended with
    /// BYE on both legs.
    pub media_timeout_s: u64,
    /// Seconds one direction of a bridged call may carry nothing while the other flows
    /// before it is flagged as one-way audio (the page, the live view, the metrics and the
    /// call record say so).
    pub one_way_audio_s: u64,
    /// Seconds a SIP WebSocket has, from its first message, to register an agent; one that
    /// talks without registering is closed then.
    pub ws_register_s: u64,
    /// Anchor the media of agents on desk phones (registered over UDP, TCP or TLS) here too:
    /// the caller and the agent each get an SDP with one of this edge's per-call RTP ports,
    /// and the bridge relays RTP (and muxed RTCP) between them, so neither learns the
    /// other's address. Off: the caller's SDP goes to the phone unchanged, and the two
    /// exchange RTP directly.
    pub anchor_desk_phone_media: bool,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            id: "edge-1".into(),
            connect: "wss://127.0.0.1:7443/tunnel".into(),
            udp: SocketAddr::from(([127, 0, 0, 1], 5070)),
            tcp: SocketAddr::from(([127, 0, 0, 1], 5070)),
            https: SocketAddr::from(([127, 0, 0, 1], 8443)),
            expose: Expose::Direct,
            max_expires: 3600,
            digest_algorithms: crate::sip::digest::Algorithm::OFFERED.to_vec(),
            handoff: crate::handoff::Mode::Tunnel,
            distributor_sip: None,
            keys_file: None,
            token_file: None,
            media: SocketAddr::from(([127, 0, 0, 1], 16100)),
            media_public_ip: None,
            media_timeout_s: 60,
            one_way_audio_s: 5,
            ws_register_s: 30,
            anchor_desk_phone_media: true,
        }
    }
}

/// How agents reach an edge (`[buffer] expose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expose {
    /// On the edge's own HTTPS listener.
    Direct,
    /// Also through the distributor, over the edge's tunnel.
    Tunnel,
}

/// A range of UDP ports, written `LOW-HIGH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(text: String) -> Result<PortRange, String> {
        let bad = || format!("{text:?} is not LOW-HIGH with 1 <= LOW <= HIGH <= 65535");
        let (low, high) = text.split_once('-').ok_or_else(bad)?;
        let low: u16 = low.trim().parse().map_err(|_| bad())?;
        let high: u16 = high.trim().parse().map_err(|_| bad())?;
        if low == 0 || low > high {
            return Err(bad());
        }
        Ok(PortRange { low, high })
    }
}

/// Where an edge without a tunnel reaches its distributor over plain SIP: written
/// `udp:IP:PORT` or `tcp:IP:PORT`, checked when the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SipLink {
    pub kind: crate::sip::TransportKind,
    pub addr: SocketAddr,
}

impl TryFrom<String> for SipLink {
    type Error = String;

    fn try_from(text: String) -> Result<SipLink, String> {
        let bad = || format!("{text:?} is not udp:IP:PORT or tcp:IP:PORT");
        let (kind, addr) = text.split_once(':').ok_or_else(bad)?;
        let kind = match kind {
            "udp" => crate::sip::TransportKind::Udp,
            "tcp" => crate::sip::TransportKind::Tcp,
            _ => return Err(bad()),
        };
        let addr = addr.parse().map_err(|_| bad())?;
        Ok(SipLink { kind, addr })
    }
}

impl SipLink {
    /// Where the transaction layer sends to the distributor.
    pub fn target(self) -> crate::sip::Target {
        crate::sip::Target {
            kind: self.kind,
            addr: self.addr,
            conn: None,
        }
    }
}

impl BufferConfig {
    /// The distributor's plain-SIP address, when the edge has no tunnel.
    pub fn link_target(&self) -> Option<crate::sip::Target> {
        self.distributor_sip.map(SipLink::target)
    }
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |why: &str| Err(ConfigError::Invalid(why.into()));
        let sip = &self.sip;
        if sip.t1_ms == 0 || sip.t2_ms < sip.t1_ms || sip.t4_ms == 0 {
            return invalid("sip timers need 0 < t1_ms <= t2_ms and t4_ms > 0");
        }
        if !(1024..=16 * 1024 * 1024).contains(&sip.max_message_bytes) {
            return invalid("sip.max_message_bytes must be between 1024 and 16 MiB");
        }
        let d = &self.distributor;
        if !(1..=100).contains(&d.agent_max_calls) {
            return invalid("distributor.agent_max_calls must be 1-100");
        }
        crate::acd::config::validate(&d.call_types, &d.queues, &d.default_queue)
            .map_err(|why| ConfigError::Invalid(format!("distributor: {why}")))?;
        for id in [&d.id, &self.buffer.id] {
            if !proto_tunnel::valid_id(id, 128) {
                return invalid("distributor.id and buffer.id must be 1-128 visible characters");
            }
        }
        if !self.buffer.connect.starts_with("wss://") {
            return invalid("buffer.connect must be a wss:// URL: the tunnel is always TLS");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls.cert and tls.key go together");
        }
        let id = &self.identity;
        if id.issuer.is_empty() || id.audience.is_empty() || id.edge_audience.is_empty() {
            return invalid("identity.issuer, audience and edge_audience must not be empty");
        }
        if id.audience == id.edge_audience {
            return invalid("identity.audience and edge_audience must differ");
        }
        if !(60..=31 * 24 * 3600).contains(&self.identity.token_ttl_s) {
            return invalid("identity.token_ttl_s must be between 60 s and 31 days");
        }
        if self.buffer.distributor_sip.is_some() {
            if self.buffer.expose == Expose::Tunnel {
                return invalid("buffer.expose = \"tunnel\" needs the tunnel, not distributor_sip");
            }
            if !matches!(
                self.buffer.handoff,
                crate::handoff::Mode::Uri | crate::handoff::Mode::Message
            ) {
                return invalid("over buffer.distributor_sip the hand-off is uri or message");
            }
            if self.buffer.keys_file.is_none() {
                return invalid("buffer.distributor_sip needs buffer.keys_file (the JWK set)");
            }
        }
        if !(2..=600).contains(&self.buffer.one_way_audio_s) {
            return invalid("buffer.one_way_audio_s must be 2-600 seconds");
        }
        if !(5..=3600).contains(&self.buffer.media_timeout_s) {
            return invalid("buffer.media_timeout_s must be 5-3600 seconds");
        }
        if self.shutdown.grace_s > 3600 || !(1..=60).contains(&self.shutdown.bye_wait_s) {
            return invalid("shutdown.grace_s must be at most 3600 and bye_wait_s 1-60 seconds");
        }
        let l = &self.limits;
        if l.connections_per_ip == 0 || l.turn_allocations_per_ip == 0 {
            return invalid(
                "limits.connections_per_ip and turn_allocations_per_ip must be at least 1",
            );
        }
        if [l.header_read_s, l.message_s, l.ws_first_message_s]
            .iter()
            .any(|s| !(1..=3600).contains(s))
        {
            return invalid(
                "limits.header_read_s, message_s and ws_first_message_s must be 1-3600",
            );
        }
        if !(1..=36_500).contains(&self.records.retention_days) {
            return invalid("records.retention_days must be 1-36500 days");
        }
        if self.records.max_pending == 0 {
            return invalid("records.max_pending must be at least 1");
        }
        if !(1..=3600).contains(&self.metrics.service_level_s) {
            return invalid("metrics.service_level_s must be 1-3600 seconds");
        }
        if !(20..=5000).contains(&l.relay_max_age_ms) {
            return invalid("limits.relay_max_age_ms must be 20-5000");
        }
        if !(1..=3600).contains(&self.buffer.ws_register_s) {
            return invalid("buffer.ws_register_s must be 1-3600 seconds");
        }
        if self.buffer.max_expires < 60 {
            return invalid("buffer.max_expires must be at least 60 seconds");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_the_defaults() {
        let text = include_str!("../../config/agent-edge.example.toml");
        let parsed = Config::parse(text).unwrap();
        let default = Config::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.distributor.udp.port(), 5060);
        assert_eq!(c.buffer.https.port(), 8443);
    }

    #[test]
    fn every_listener_is_on_loopback_by_default() {
        let c = Config::default();
        for addr in [
            c.distributor.udp,
            c.distributor.tcp,
            c.distributor.tls,
            c.distributor.public,
            c.distributor.early_media,
            c.buffer.udp,
            c.buffer.tcp,
            c.buffer.https,
            c.buffer.media,
            c.admin.listen,
        ] {
            assert!(addr.ip().is_loopback(), "{addr}");
        }
    }

    #[test]
    fn a_port_range_is_read_and_checked() {
        let c = Config::parse("[distributor]\nmedia_ports = \"40000-40009\"\n").unwrap();
        let range = c.distributor.media_ports.unwrap();
        assert_eq!((range.low, range.high), (40000, 40009));
        for bad in ["40009-40000", "0-10", "40000", "a-b", "1-70000"] {
            let text = format!("[distributor]\nmedia_ports = \"{bad}\"\n");
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains("LOW-HIGH"), "{bad}: {err}");
        }
    }

    #[test]
    fn desk_phone_media_is_anchored_unless_switched_off() {
        assert!(Config::default().buffer.anchor_desk_phone_media);
        let off = Config::parse("[buffer]\nanchor_desk_phone_media = false\n").unwrap();
        assert!(!off.buffer.anchor_desk_phone_media);
        let err = Config::parse("[buffer]\nanchor_desk_phone_media = \"yes\"\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse(_)), "{err}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = Config::parse("[sip]\nt1 = 5\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn nonsense_values_are_refused() {
        for text in [
            "[sip]\nt1_ms = 0\n",
            "[sip]\nt1_ms = 5000\nt2_ms = 100\n",
            "[distributor]\nagent_max_calls = 0\n",
            "[[distributor.queues]]\nname = \"q\"\ntimeout_status = 200\n",
            "[[distributor.call_types]]\nname = \"t\"\nqueue = \"nowhere\"\n",
            "[buffer]\nid = \"edge 1\"\n",
            "[buffer]\nconnect = \"ws://127.0.0.1:1/tunnel\"\n",
            "[tls]\ncert = \"a.pem\"\n",
            "[buffer]\ndistributor_sip = \"udp:127.0.0.1:5060\"\nhandoff = \"table\"\nkeys_file = \"k\"\n",
            "[buffer]\ndistributor_sip = \"udp:127.0.0.1:5060\"\nhandoff = \"uri\"\n",
        ] {
            assert!(
                matches!(Config::parse(text), Err(ConfigError::Invalid(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn hand_off_and_link_are_typed_when_the_file_is_read() {
        for (text, says) in [
            ("[buffer]\nhandoff = \"fax\"\n", "unknown variant `fax`"),
            (
                "[buffer]\ndistributor_sip = \"sctp:127.0.0.1:5060\"\nhandoff = \"uri\"\n",
                "is not udp:IP:PORT or tcp:IP:PORT",
            ),
            (
                "[buffer]\ndistributor_sip = \"udp:somewhere\"\nhandoff = \"uri\"\n",
                "is not udp:IP:PORT or tcp:IP:PORT",
            ),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(
                matches!(err, ConfigError::Parse(_)) && err.to_string().contains(says),
                "{text}: {err}"
            );
        }
        let c = Config::parse(
            "[buffer]\ndistributor_sip = \"tcp:127.0.0.1:5060\"\nhandoff = \"message\"\nkeys_file = \"k\"\n",
        )
        .unwrap();
        assert_eq!(c.buffer.handoff, crate::handoff::Mode::Message);
        let target = c.buffer.link_target().unwrap();
        assert_eq!(target.kind, crate::sip::TransportKind::Tcp);
        assert_eq!(target.addr, SocketAddr::from(([127, 0, 0, 1], 5060)));
    }
}
