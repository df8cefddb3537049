//! Starting each role: bind its listeners, build its service, spawn its task. What the
//! program running it keeps is the addresses and the role's command channel.

use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use super::identity::{admin_key, edge_token_issuer, tls_files, token_issuer, unix_now};
use super::status::{Status, StatusSink};
use super::{BufferAddrs, Context, DistributorAddrs, StartError};
use crate::admin::api::AdminState;
use crate::admin::keys::KeyRing;
use crate::admin::store::Store;
use crate::admin::tokens::{TokenVerifier, VerifierSettings};
use crate::config::Expose;
use crate::config::{Config, DistributorConfig};
use crate::media::early::EarlyMedia;
use crate::transport::exposure::Exposures;
use crate::transport::media_relay::{MediaRelay, RelaySettings};
use crate::transport::per_source::PerSource;
use crate::transport::tls_listener::Demux;
use crate::transport::tunnel::{self, TunnelClientEvent, TunnelServerEvent};
use crate::transport::turn_tls::TurnServer;
use crate::transport::{self, Transports};
use crate::{buffer, distributor};

/// Room for SIP messages waiting for their role's task.
const EVENT_QUEUE: usize = 8192;
/// Room for the admin API's and the shutdown's requests to a role.
const COMMAND_QUEUE: usize = 64;
/// Calls one exposed edge's media connection may have relayed at once.
const MAX_RELAYED_PER_EDGE: usize = 4096;
/// Room for what an edge's media connection says (answers for callers' ports, the ICE-TCP
/// address).
const RELAY_EVENTS: usize = 1024;

fn relay_max_age(config: &Config) -> std::time::Duration {
    std::time::Duration::from_millis(config.limits.relay_max_age_ms)
}

/// A started distributor.
pub(super) struct Distributor {
    pub addrs: DistributorAddrs,
    pub commands: mpsc::Sender<distributor::service::Command>,
    /// The agent page's address for sign-in links, when the configuration did not say.
    pub agent_page: Arc<std::sync::OnceLock<String>>,
}

/// A started buffer server.
pub(super) struct Buffer {
    pub addrs: BufferAddrs,
    pub commands: mpsc::Sender<buffer::service::Command>,
    /// The agent page's address on the distributor, for an edge exposed through it.
    pub exposed_page: Option<String>,
}

/// The announcements of queues that play early media, read now so a bad file stops the
/// start, and the socket they are played from.
async fn queue_media(
    d: &DistributorConfig,
    status: &StatusSink,
) -> Result<Option<(distributor::service::QueueMedia, EarlyMedia)>, StartError> {
    use crate::media::announcement::Announcement;
    let mut announcements = std::collections::HashMap::new();
    for q in &d.queues {
        if let Some(path) = &q.announcement {
            let audio =
                Announcement::load(path).context(|| format!("queue {}'s announcement", q.name))?;
            announcements.insert(q.name.clone(), audio);
        }
    }
    if announcements.is_empty() {
        return Ok(None);
    }
    let player = EarlyMedia::bind(d.early_media)
        .await
        .context(|| format!("binding early media {}", d.early_media))?;
    status.emit(Status::Listening {
        name: "distributor.early_media",
        addr: player.local_addr(),
    });
    let media = distributor::service::QueueMedia {
        from: player.local_addr(),
        announcements,
    };
    Ok(Some((media, player)))
}

/// Binds the distributor's listeners and starts its task and its admin API.
pub(super) async fn start_distributor(
    config: &Config,
    ring: &Arc<RwLock<KeyRing>>,
    status: &StatusSink,
) -> Result<Distributor, StartError> {
    let d = &config.distributor;
    let tls = certs::server_config(&tls_files(config)?).context(|| "loading TLS".into())?;
    let (sip_tx, sip_rx) = mpsc::channel(EVENT_QUEUE);
    let transports = Transports::new(
        sip_tx,
        config.sip.max_message_bytes,
        config.limits.deadlines(),
    );
    let udp = transport::udp::listen(&transports, d.udp)
        .await
        .context(|| format!("binding distributor UDP {}", d.udp))?;
    let per_ip = |what| PerSource::new(config.limits.connections_per_ip, what);
    let tcp = transport::stream::listen_tcp(&transports, d.tcp, per_ip("distributor.tcp"))
        .await
        .context(|| format!("binding distributor TCP {}", d.tcp))?;
    let tls_addr =
        transport::stream::listen_tls(&transports, d.tls, tls.clone(), per_ip("distributor.tls"))
            .await
            .context(|| format!("binding distributor TLS {}", d.tls))?;
    let (tunnel_tx, tunnel_rx) = mpsc::channel::<TunnelServerEvent>(EVENT_QUEUE);
    let edges = edge_token_issuer(config, ring);
    let deadlines = config.limits.deadlines();
    let exposures = Exposures::new(config.sip.max_message_bytes, deadlines.ws_first_message);
    let relay = MediaRelay::new(
        RelaySettings {
            bind_ip: d.public.ip(),
            public_ip: d.media_public_ip,
            ports: d.media_ports.map(|r| (r.low, r.high)),
            max_age: relay_max_age(config),
            max_flows: MAX_RELAYED_PER_EDGE,
        },
        edge_token_issuer(config, ring),
    );
    let routes = tunnel::routes(&d.id, edges, tunnel_tx, exposures.clone())
        .merge(transport::exposure::routes(exposures.clone()))
        .merge(transport::media_relay::routes(relay.clone()));
    let turn = TurnServer::new(relay.clone(), config.limits.turn_allocations_per_ip);
    let demux = Demux {
        raw: Some(relay.ice_tcp_acceptor()),
        turn: Some(turn.acceptor()),
        first_bytes: None,
    };
    let public_addr = transport::public::listen(
        d.public,
        tls,
        routes,
        per_ip("distributor.public"),
        deadlines.header_read,
        demux,
    )
    .await
    .context(|| format!("binding the public listener {}", d.public))?;
    relay.set_public_port(public_addr.port());
    let issuer = token_issuer(config, ring);
    let identity =
        serde_json::to_string(&issuer.verifier_settings()).context(|| "token keys".into())?;
    let store = Arc::new(
        Store::open(&config.admin.db)
            .context(|| format!("opening {}", config.admin.db.display()))?,
    );
    let revoked = store
        .revoked(unix_now())
        .context(|| "reading revoked tokens".into())?;
    let (early_media, player) = queue_media(d, status).await?.unzip();
    let early_media_addr = early_media.as_ref().map(|m| m.from);
    let service_level = std::time::Duration::from_secs(config.metrics.service_level_s);
    let metrics = Arc::new(if config.metrics.enabled {
        crate::metrics::Metrics::new(service_level)
    } else {
        crate::metrics::Metrics::disabled(service_level)
    });
    let core = distributor::service::Distributor::new(
        d.clone(),
        &config.sip,
        distributor::service::BoundAddrs {
            udp,
            tcp,
            tls: tls_addr,
        },
        distributor::service::Identities {
            verifier: identity,
            revoked,
            edge_issuer: edge_token_issuer(config, ring),
            profiles: Some(store.clone()),
            sip_passwords: Some(store.clone()),
            agent_issuer: Some(issuer.clone()),
            clock: crate::admin::tokens::WallClock::read(),
        },
        early_media,
    )
    .with_metrics(metrics.clone())
    .with_records(config.records.enabled);
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let records = crate::records::RecordWriter::start(
        crate::records::WriterSettings {
            db: config.admin.db.clone(),
            retention_days: config.records.retention_days,
            max_pending: config.records.max_pending,
        },
        metrics.clone(),
    )
    .context(|| format!("opening the call records in {}", config.admin.db.display()))?;
    let mut shell = distributor::shell::DistributorShell::new(
        transports,
        sip_rx,
        tunnel_rx,
        command_rx,
        player,
        status.clone(),
    );
    if config.records.enabled {
        shell = shell.with_records(records);
    }
    tokio::spawn(shell.run(core));
    let agent_page = Arc::new(std::sync::OnceLock::new());
    if let Some(url) = &config.admin.agent_page_url {
        let _ = agent_page.set(url.clone());
    }
    let admin = AdminState {
        store,
        issuer,
        token_ttl_s: config.identity.token_ttl_s,
        admin_key: admin_key(config)?.into(),
        commands: commands.clone(),
        exposures,
        relay,
        turn,
        metrics,
        calls: crate::admin::calls_api::CallsDb::open(&config.admin.db)
            .context(|| format!("reading the call records in {}", config.admin.db.display()))?,
        agent_page: agent_page.clone(),
    };
    let admin_addr = crate::admin::api::listen(config.admin.listen, admin)
        .await
        .context(|| format!("binding the admin API {}", config.admin.listen))?;
    let addrs = DistributorAddrs {
        udp,
        tcp,
        tls: tls_addr,
        public: public_addr,
        admin: admin_addr,
        early_media: early_media_addr,
    };
    for (name, addr) in [
        ("distributor.udp", udp),
        ("distributor.tcp", tcp),
        ("distributor.tls", tls_addr),
        ("distributor.public", public_addr),
        ("distributor.admin", admin_addr),
    ] {
        status.emit(Status::Listening { name, addr });
    }
    Ok(Distributor {
        addrs,
        commands,
        agent_page,
    })
}

/// Binds the buffer server's listeners, starts its task and its tunnel dialler (or, with
/// `buffer.distributor_sip`, its plain-SIP link to the distributor).
pub(super) async fn start_buffer(
    config: &Config,
    connect: String,
    token: Option<String>,
    status: &StatusSink,
) -> Result<Buffer, StartError> {
    let b = &config.buffer;
    let files = tls_files(config)?;
    let tls = certs::server_config(&files).context(|| "loading TLS".into())?;
    let ca = config.tls.ca.clone().unwrap_or(files.ca);
    let client_tls: Arc<rustls::ClientConfig> =
        certs::client_config(&ca).context(|| format!("loading the CA {}", ca.display()))?;
    let (sip_tx, sip_rx) = mpsc::channel(EVENT_QUEUE);
    let transports = Transports::new(
        sip_tx,
        config.sip.max_message_bytes,
        config.limits.deadlines(),
    );
    let udp = transport::udp::listen(&transports, b.udp)
        .await
        .context(|| format!("binding buffer UDP {}", b.udp))?;
    let per_ip = |what| PerSource::new(config.limits.connections_per_ip, what);
    let tcp = transport::stream::listen_tcp(&transports, b.tcp, per_ip("buffer.tcp"))
        .await
        .context(|| format!("binding buffer TCP {}", b.tcp))?;
    let https = transport::https::listen(&transports, b.https, tls, per_ip("buffer.https"))
        .await
        .context(|| format!("binding buffer HTTPS {}", b.https))?;
    let (tunnel_tx, tunnel_rx) = mpsc::channel::<TunnelClientEvent>(EVENT_QUEUE);
    // An edge with a public address may skip the tunnel and reach the distributor over SIP.
    let link = match b.link_target() {
        Some(target) => {
            let token = token.clone().ok_or_else(|| {
                StartError::msg(
                    "buffer.distributor_sip needs the edge credential (AGENT_EDGE_EDGE_TOKEN)",
                )
            })?;
            let path = b
                .keys_file
                .clone()
                .ok_or_else(|| StartError::msg("buffer.keys_file is required"))?;
            let jwks =
                std::fs::read_to_string(&path).context(|| format!("reading {}", path.display()))?;
            let settings = VerifierSettings {
                issuer: config.identity.issuer.clone(),
                audience: config.identity.audience.clone(),
                jwks: serde_json::from_str(&jwks)
                    .context(|| format!("{} is not a JWK set", path.display()))?,
            };
            Some(buffer::service::Link {
                target,
                token,
                verifier: TokenVerifier::new(&settings),
            })
        }
        None => None,
    };
    let linked = link.is_some();
    let (mut sockets, media_rx) = buffer::media_io::MediaSockets::bind(b.media, b.media_public_ip)
        .await
        .context(|| format!("binding buffer media {}", b.media))?;
    let (relay_tx, relay_rx) = mpsc::channel(RELAY_EVENTS);
    if link.is_none() {
        // Beside the tunnel, the media connection: agents' ICE-TCP through the distributor,
        // and callers' RTP too when the edge is exposed.
        let dial = buffer::relay_link::RelayDial {
            url: beside_tunnel(&connect, "/media")?,
            tls: client_tls.clone(),
            token: token.clone(),
            edge_id: b.id.clone(),
            max_age: relay_max_age(config),
            status: status.clone(),
        };
        let relay_link =
            buffer::relay_link::RelayLink::spawn(dial, sockets.media_sender(), relay_tx);
        sockets.link_to(relay_link, b.expose == Expose::Tunnel);
    } else {
        drop(relay_tx);
    }
    let media_addr = sockets.webrtc_addr();
    let mut media = buffer::media::CallMedia::new(
        media_addr,
        std::time::Duration::from_secs(b.media_timeout_s),
    );
    media.set_one_way_after(std::time::Duration::from_secs(b.one_way_audio_s));
    let core = buffer::service::Buffer::new(
        b.clone(),
        &config.sip,
        buffer::service::BoundAddrs { udp, tcp, https },
        link,
        Some(media),
        std::time::Instant::now(),
    )
    // Browsers' TURN credentials are minted with the credential the media connection shows.
    .with_turn_secret(token.clone().filter(|_| !linked));
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let sources = buffer::shell::Sources {
        sip: sip_rx,
        tunnel: tunnel_rx,
        media: media_rx,
        relay: relay_rx,
        commands: command_rx,
    };
    let exposed = (b.expose == Expose::Tunnel).then(|| transports.clone());
    let shell = buffer::shell::BufferShell::new(transports, sources, sockets, status.clone());
    tokio::spawn(shell.run(core));
    let exposed_page = match &exposed {
        Some(_) => Some(exposed_page_url(&connect, &b.id)?),
        None => None,
    };
    if !linked {
        let dial = tunnel::DialSettings {
            url: connect,
            tls: client_tls,
            edge_id: b.id.clone(),
            handoffs: vec![b.handoff.as_str().to_owned()],
            token,
            status: status.clone(),
            expose: exposed,
        };
        tunnel::spawn_dialler(dial, tunnel_tx);
    }
    for (name, addr) in [
        ("buffer.media", media_addr),
        ("buffer.udp", udp),
        ("buffer.tcp", tcp),
        ("buffer.https", https),
    ] {
        status.emit(Status::Listening { name, addr });
    }
    status.emit(Status::AgentPage {
        url: format!("https://{https}/"),
    });
    if let Some(url) = &exposed_page {
        status.emit(Status::AgentPage { url: url.clone() });
    }
    let addrs = BufferAddrs {
        udp,
        tcp,
        https,
        media: media_addr,
    };
    Ok(Buffer {
        addrs,
        commands,
        exposed_page,
    })
}

/// Where the distributor serves an exposed edge's page: its public listener is the host the
/// edge dials (`wss://HOST:PORT/tunnel` → `https://HOST:PORT/edge/<id>/`).
fn exposed_page_url(connect: &str, edge: &str) -> Result<String, StartError> {
    Ok(format!("https://{}/edge/{edge}/", tunnel_host(connect)?))
}

/// Another endpoint of the distributor's public listener the edge dials (`/media`).
fn beside_tunnel(connect: &str, path: &str) -> Result<String, StartError> {
    Ok(format!("wss://{}{path}", tunnel_host(connect)?))
}

fn tunnel_host(connect: &str) -> Result<String, StartError> {
    let uri: axum::http::Uri = connect
        .parse()
        .map_err(|_| StartError::msg(&format!("buffer.connect {connect} is not a URL")))?;
    let host = uri
        .authority()
        .ok_or_else(|| StartError::msg(&format!("buffer.connect {connect} names no host")))?;
    Ok(host.to_string())
}
