//! A small internet in Linux network namespaces, for the tests of an edge that accepts nothing
//! inbound (issue 16): built by the test with `ip netns`, veth pairs and nftables, and removed
//! when the [`Topology`] is dropped (on a panic too).
//!
//! ```text
//!   caller       203.0.113.20 ─┐
//!   distributor  203.0.113.10 ─┼─ bridge in `wan`: the internet, 203.0.113.0/24 (TEST-NET-3)
//!   gateway wan  203.0.113.30 ─┘
//!   gateway lan  192.168.77.1 ── bridge `lan` in the gateway ─┬─ edge   192.168.77.2
//!                                                            └─ agent  192.168.77.3
//!   home gateway wan 203.0.113.40 (on the internet's bridge too)
//!   home gateway lan 192.168.88.1 ── home agent 192.168.88.3
//! ```
//!
//! The home agent is a browser agent somewhere else (issue 17: a home network, a hotel): its
//! own NAT gateway lets out only new TCP connections to port 443, like the edge's, so its
//! WebRTC can reach the edge only over ICE-TCP through the distributor.
//!
//! The "public" side uses a TEST-NET range, not a private one: Chromium refuses ICE-TCP to
//! private addresses, which the next steps of issue 16 need. The edge and the browser agent
//! share the LAN behind the gateway, which forwards and masquerades for it with a firewall
//! (nftables, in the gateway's namespace) that lets out only new TCP connections to port 443:
//! no UDP out, no connection in. The caller and the distributor have a route to the LAN
//! through the gateway, as if the internet would carry their packets there: only the firewall
//! stops them, and its counters ([`Counters`]) say how often it did and that it never let one
//! through.
//!
//! Every name made here carries the test process's id and a counter, so tests run side by side
//! (and in parallel test binaries); namespaces left by a test process that no longer exists
//! (killed before its drops ran) are removed by the next [`Topology::start`]. The veth pairs
//! are created with both ends inside namespaces, never in the root one, so deleting the
//! namespaces deletes them, and the nftables table lives in the gateway's namespace.
//!
//! Processes run inside a namespace through `ip netns exec` ([`command_in`]); the test's own
//! sockets can be opened in one with [`in_netns`], which is how [`Forwarder`] lets the test
//! (in the root namespace) talk to a chromedriver inside the agent's namespace.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// The distributor's public address.
pub const DISTRIBUTOR: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
/// The caller's address on the internet.
pub const CALLER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20));
/// The gateway's public (masquerading) address.
pub const GATEWAY_WAN: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 30));
/// The gateway on the edge's LAN.
pub const GATEWAY_LAN: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 77, 1));
/// The edge (buffer server) on its LAN.
pub const EDGE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 77, 2));
/// The browser agent, on the edge's LAN.
pub const AGENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 77, 3));
/// The home gateway's public (masquerading) address.
pub const HOME_GATEWAY_WAN: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 40));
/// The home gateway on the home agent's LAN.
pub const HOME_GATEWAY_LAN: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 88, 1));
/// The home agent, behind the home gateway.
pub const HOME_AGENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 88, 3));
/// The home gateway's nftables table.
const HOME_TABLE: &str = "agent_edge_home";

const LAN_NET: &str = "192.168.77.0/24";
/// The gateway's nftables table (inside the gateway's namespace, so the name needs no suffix).
const TABLE: &str = "agent_edge_gateway";
/// Namespaces made here are named `ae<pid>x<n>-<role>`.
const PREFIX: &str = "ae";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `program` as a command run inside network namespace `netns` (`ip netns exec NAME
/// program`), or as it is in the root namespace for `None`. `ip netns exec` replaces itself
/// with the program, so the child's pid is the program's own.
pub fn command_in(netns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs `f` on a thread of its own that has moved into network namespace `netns`: the sockets
/// it opens live there (and stay there when handed back), while the rest of the test process
/// stays in the root namespace.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let path = format!("/run/netns/{netns}");
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("entering network namespace {netns}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Whether this machine lets a test build namespaces: root, `ip netns` and `nft`. `Err` names
/// what is missing.
pub fn available() -> Result<(), String> {
    let uid = rustix::process::geteuid();
    if !uid.is_root() {
        return Err(format!("root rights (running as uid {})", uid.as_raw()));
    }
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !works("ip", &["netns", "list"]) {
        return Err("a working `ip netns` (iproute2: scripts/test.sh installs it)".into());
    }
    if !works("nft", &["--version"]) {
        return Err("`nft` (nftables: scripts/test.sh installs it)".into());
    }
    Ok(())
}

/// What the gateway's firewall counted since the topology was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// UDP packets from the edge toward the outside, dropped.
    pub udp_out_edge_dropped: u64,
    /// UDP packets from the rest of the LAN (the agent) toward the outside, dropped.
    pub udp_out_lan_dropped: u64,
    /// Packets opening a connection (or a UDP flow) from the outside into the LAN, dropped.
    pub inbound_new_dropped: u64,
    /// Packets opening a connection from the outside that reached the LAN: must stay 0.
    pub inbound_new_accepted: u64,
    /// New TCP connections from the LAN to port 443 outside, let through.
    pub tcp443_out_accepted: u64,
    /// Anything else the forward chain dropped.
    pub other_dropped: u64,
}

/// What the home gateway's firewall counted since the topology was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HomeCounters {
    /// UDP packets from the home agent toward the internet, dropped.
    pub udp_out_dropped: u64,
    pub inbound_new_dropped: u64,
    /// Must stay 0.
    pub inbound_new_accepted: u64,
    pub tcp443_out_accepted: u64,
    pub other_dropped: u64,
}

/// Every named counter of the nftables ruleset in `netns`.
fn read_counters(netns: &str) -> std::collections::HashMap<String, u64> {
    let out = output(
        command_in(Some(netns), "nft").args(["-j", "list", "counters"]),
        "reading a gateway's counters",
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let c = item.get("counter")?;
            Some((c["name"].as_str()?.to_owned(), c["packets"].as_u64()?))
        })
        .collect()
}

/// The home gateway's firewall: the same rule as the edge's (only new TCP to 443 out,
/// masqueraded; nothing in), for a browser agent on a network that blocks UDP.
fn home_ruleset() -> String {
    format!(
        r#"table inet {HOME_TABLE} {{
  counter udp_out_dropped {{ }}
  counter inbound_new_dropped {{ }}
  counter inbound_new_accepted {{ }}
  counter tcp443_out_accepted {{ }}
  counter other_dropped {{ }}
  chain forward_filter {{
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" meta l4proto udp counter name udp_out_dropped drop
    iifname "wan" oifname "lan" ct state new counter name inbound_new_dropped drop
    ct state established,related accept
    iifname "lan" oifname "wan" tcp dport 443 ct state new counter name tcp443_out_accepted accept
    counter name other_dropped drop
  }}
  chain lan_delivered {{
    type filter hook postrouting priority filter; policy accept;
    iifname "wan" oifname "lan" ct state new counter name inbound_new_accepted
  }}
  chain nat_out {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
  }}
}}
"#
    )
}

/// The namespaces of one test, removed when dropped. Drop it after the processes running in
/// it (declare it first in the test): a namespace outlives its `ip netns` name while a process
/// is still in it.
#[derive(Debug)]
pub struct Topology {
    /// `ae<pid>x<n>`: the start of every namespace name of this topology.
    pub id: String,
    /// The caller's namespace.
    pub caller: String,
    /// The distributor's namespace (the public address).
    pub distributor: String,
    /// The NAT gateway of the edge's LAN, where the firewall is.
    pub gateway: String,
    /// The edge's namespace, behind the gateway.
    pub edge: String,
    /// The browser agent's namespace, on the edge's LAN.
    pub agent: String,
    /// The home gateway, with its own firewall, and the home agent behind it.
    pub home_gateway: String,
    pub home_agent: String,
    /// The internet's bridge.
    wan: String,
    /// Every namespace made so far, in order, for Drop.
    made: Vec<String>,
}

impl Counters {
    /// UDP packets from the whole LAN toward the outside, dropped.
    pub fn udp_out_dropped(&self) -> u64 {
        self.udp_out_edge_dropped + self.udp_out_lan_dropped
    }
}

impl Topology {
    /// Builds the topology, or returns `None` with a message on stderr when this machine
    /// cannot (not root, no `ip netns`, no `nft`). With `CI=true` that is a failure instead:
    /// CI runs as root and installs both.
    pub fn start() -> Option<Topology> {
        if let Err(why) = available() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("the network-namespace tests cannot run on CI without {why}");
            }
            eprintln!("skipped: the network-namespace tests need {why}");
            return None;
        }
        remove_stale();
        let id = format!(
            "{PREFIX}{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let name = |role: &str| format!("{id}-{role}");
        let mut t = Topology {
            caller: name("caller"),
            distributor: name("dist"),
            gateway: name("gw"),
            edge: name("edge"),
            agent: name("agent"),
            home_gateway: name("hgw"),
            home_agent: name("home"),
            wan: name("wan"),
            id,
            made: Vec::new(),
        };
        t.build();
        Some(t)
    }

    fn build(&mut self) {
        for ns in [
            &self.wan,
            &self.caller,
            &self.distributor,
            &self.gateway,
            &self.edge,
            &self.agent,
            &self.home_gateway,
            &self.home_agent,
        ] {
            ip(None, &["netns", "add", ns]);
            self.made.push(ns.clone());
            ip(Some(ns), &["link", "set", "lo", "up"]);
        }
        // The internet: a bridge, with the caller, the distributor and the gateway on it.
        let wan = self.wan.clone();
        ip(Some(&wan), &["link", "add", "br0", "type", "bridge"]);
        ip(Some(&wan), &["link", "set", "br0", "up"]);
        for (port, ns, iface, addr) in [
            ("caller", self.caller.clone(), "eth0", CALLER),
            ("dist", self.distributor.clone(), "eth0", DISTRIBUTOR),
            ("gw", self.gateway.clone(), "wan", GATEWAY_WAN),
            ("hgw", self.home_gateway.clone(), "wan", HOME_GATEWAY_WAN),
        ] {
            veth(&wan, port, &ns, iface);
            ip(Some(&wan), &["link", "set", port, "master", "br0"]);
            ip(Some(&wan), &["link", "set", port, "up"]);
            ip(
                Some(&ns),
                &["addr", "add", &format!("{addr}/24"), "dev", iface],
            );
            ip(Some(&ns), &["link", "set", iface, "up"]);
        }
        for ns in [&self.caller, &self.distributor] {
            ip(
                Some(ns),
                &["route", "add", LAN_NET, "via", &GATEWAY_WAN.to_string()],
            );
        }
        // The LAN: a bridge in the gateway, the edge and the agent on it.
        let gw = self.gateway.clone();
        ip(Some(&gw), &["link", "add", "lan", "type", "bridge"]);
        ip(
            Some(&gw),
            &["addr", "add", &format!("{GATEWAY_LAN}/24"), "dev", "lan"],
        );
        ip(Some(&gw), &["link", "set", "lan", "up"]);
        for (port, ns, addr) in [
            ("edge", self.edge.clone(), EDGE),
            ("agent", self.agent.clone(), AGENT),
        ] {
            veth(&gw, port, &ns, "eth0");
            ip(Some(&gw), &["link", "set", port, "master", "lan"]);
            ip(Some(&gw), &["link", "set", port, "up"]);
            ip(
                Some(&ns),
                &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
            );
            ip(Some(&ns), &["link", "set", "eth0", "up"]);
            ip(
                Some(&ns),
                &["route", "add", "default", "via", &GATEWAY_LAN.to_string()],
            );
        }
        run(
            command_in(Some(&gw), "sysctl").args(["-qw", "net.ipv4.ip_forward=1"]),
            "enabling forwarding on the gateway",
        );
        // Where br_netfilter is loaded, bridged frames would go through the firewall's
        // forward chain too: the LAN's own traffic (agent to edge) is not the firewall's.
        let bridge_nf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
        if in_netns(&gw, || std::path::Path::new(bridge_nf).exists()) {
            run(
                command_in(Some(&gw), "sysctl").args([
                    "-qw",
                    "net.bridge.bridge-nf-call-iptables=0",
                    "net.bridge.bridge-nf-call-ip6tables=0",
                ]),
                "keeping bridged LAN traffic out of the gateway's firewall",
            );
        }
        nft(&gw, &ruleset());
        // The home site: one agent behind a gateway of its own.
        let hgw = self.home_gateway.clone();
        let home = self.home_agent.clone();
        veth(&hgw, "lan", &home, "eth0");
        ip(
            Some(&hgw),
            &[
                "addr",
                "add",
                &format!("{HOME_GATEWAY_LAN}/24"),
                "dev",
                "lan",
            ],
        );
        ip(Some(&hgw), &["link", "set", "lan", "up"]);
        ip(
            Some(&home),
            &["addr", "add", &format!("{HOME_AGENT}/24"), "dev", "eth0"],
        );
        ip(Some(&home), &["link", "set", "eth0", "up"]);
        ip(
            Some(&home),
            &[
                "route",
                "add",
                "default",
                "via",
                &HOME_GATEWAY_LAN.to_string(),
            ],
        );
        run(
            command_in(Some(&hgw), "sysctl").args(["-qw", "net.ipv4.ip_forward=1"]),
            "enabling forwarding on the home gateway",
        );
        nft(&hgw, &home_ruleset());
    }

    /// What the home gateway's firewall counted so far.
    pub fn home_counters(&self) -> HomeCounters {
        let counts = read_counters(&self.home_gateway);
        let get = |name: &str| counts.get(name).copied().unwrap_or(0);
        HomeCounters {
            udp_out_dropped: get("udp_out_dropped"),
            inbound_new_dropped: get("inbound_new_dropped"),
            inbound_new_accepted: get("inbound_new_accepted"),
            tcp443_out_accepted: get("tcp443_out_accepted"),
            other_dropped: get("other_dropped"),
        }
    }

    /// What the gateway's firewall counted so far.
    pub fn counters(&self) -> Counters {
        let counts = read_counters(&self.gateway);
        let get = |name: &str| counts.get(name).copied().unwrap_or(0);
        Counters {
            udp_out_edge_dropped: get("udp_out_edge_dropped"),
            udp_out_lan_dropped: get("udp_out_lan_dropped"),
            inbound_new_dropped: get("inbound_new_dropped"),
            inbound_new_accepted: get("inbound_new_accepted"),
            tcp443_out_accepted: get("tcp443_out_accepted"),
            other_dropped: get("other_dropped"),
        }
    }

    /// Cuts the edge's TCP at the gateway, as a gateway that lost its NAT state would: the
    /// edge's packets are dropped, and the distributor's packets for the edge's connections
    /// are answered with a reset. The agent's own connections are left alone. Undone by
    /// [`Topology::restore_edge_tcp`].
    pub fn cut_edge_tcp(&self) {
        nft(
            &self.gateway,
            &format!(
                "add rule inet {TABLE} outage ip saddr {EDGE} meta l4proto tcp drop\n\
                 add rule inet {TABLE} outage ip daddr {EDGE} meta l4proto tcp reject with tcp reset\n"
            ),
        );
    }

    /// Changes the gateway for a measurement: `open_udp` lets UDP between the edge and the
    /// internet through both ways (the direct path a caller's RTP would take to an edge with
    /// a public address), and `uplink_loss` percent of the edge's packets out to the internet
    /// are dropped at random (nftables `numgen`), before any other rule. Replaces what an
    /// earlier call set, and [`Topology::cut_edge_tcp`].
    pub fn impair(&self, open_udp: bool, uplink_loss: u32) {
        let mut rules = format!("flush chain inet {TABLE} outage\n");
        if uplink_loss > 0 {
            rules.push_str(&format!(
                "add rule inet {TABLE} outage iifname \"lan\" oifname \"wan\" ip saddr {EDGE} \
                 numgen random mod 100 < {uplink_loss} drop\n"
            ));
        }
        if open_udp {
            rules.push_str(&format!(
                "add rule inet {TABLE} outage iifname \"lan\" oifname \"wan\" ip saddr {EDGE} meta l4proto udp accept\n\
                 add rule inet {TABLE} outage iifname \"wan\" oifname \"lan\" ip daddr {EDGE} meta l4proto udp accept\n"
            ));
        }
        nft(&self.gateway, &rules);
    }

    /// Drops `percent` of every packet an agent's namespace `ns` sends (its uplink), at
    /// random (nftables `numgen` in that namespace's output); 0 removes the rule.
    pub fn agent_uplink_loss(&self, ns: &str, percent: u32) {
        let table = "agent_edge_uplink";
        let mut rules = format!(
            "table inet {table} {{\n  chain out {{\n    type filter hook output priority filter; policy accept;\n  }}\n}}\n\
             flush chain inet {table} out\n"
        );
        if percent > 0 {
            rules.push_str(&format!(
                "add rule inet {table} out oifname \"eth0\" numgen random mod 100 < {percent} drop\n"
            ));
        }
        nft(ns, &rules);
    }

    /// Ends [`Topology::cut_edge_tcp`].
    pub fn restore_edge_tcp(&self) {
        nft(&self.gateway, &format!("flush chain inet {TABLE} outage\n"));
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of every veth pair, and so the pair, and the
        // nftables table in it.
        for ns in self.made.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The gateway's firewall: forward only new TCP to port 443 from the LAN (and what belongs to
/// such connections), masquerade it, count the rest. UDP from the LAN and new flows from the
/// outside are counted before the rule that accepts established traffic, so that nothing
/// of either kind can pass unseen; `inbound_new_accepted` counts, after the forward chain,
/// every packet from the outside that opens a flow into the LAN (not the gateway's own, such
/// as its IPv6 neighbour discovery on the LAN).
fn ruleset() -> String {
    format!(
        r#"table inet {TABLE} {{
  counter udp_out_edge_dropped {{ }}
  counter udp_out_lan_dropped {{ }}
  counter inbound_new_dropped {{ }}
  counter inbound_new_accepted {{ }}
  counter tcp443_out_accepted {{ }}
  counter other_dropped {{ }}
  chain outage {{ }}
  chain forward_filter {{
    type filter hook forward priority filter; policy drop;
    jump outage
    iifname "lan" oifname "wan" ip saddr {EDGE} meta l4proto udp counter name udp_out_edge_dropped drop
    iifname "lan" oifname "wan" meta l4proto udp counter name udp_out_lan_dropped drop
    iifname "wan" oifname "lan" ct state new counter name inbound_new_dropped drop
    ct state established,related accept
    iifname "lan" oifname "wan" tcp dport 443 ct state new counter name tcp443_out_accepted accept
    counter name other_dropped drop
  }}
  chain lan_delivered {{
    type filter hook postrouting priority filter; policy accept;
    iifname "wan" oifname "lan" ct state new counter name inbound_new_accepted
  }}
  chain nat_out {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
  }}
}}
"#
    )
}

/// A TCP forwarder from the root namespace's loopback into a namespace: every connection to
/// [`Forwarder::addr`] is joined to a connection to `target` opened inside the namespace. It
/// stops accepting when dropped; joined connections end when either side closes.
///
/// This is how the test drives a chromedriver that runs in the agent's namespace (so that
/// Chromium and all its traffic are there): chromedriver listens on that namespace's own
/// loopback, where only the forwarder reaches it, and the agent's namespace gets no extra
/// interface or route that its browser could use.
#[derive(Debug)]
pub struct Forwarder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    /// Forwards to `target` in namespace `netns`.
    pub fn start(netns: &str, target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let netns = netns.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let netns = netns.clone();
                std::thread::spawn(move || {
                    let Ok(server) = in_netns(&netns, || TcpStream::connect(target)) else {
                        return;
                    };
                    join(client, server);
                });
            }
        });
        Forwarder { addr, stop }
    }

    /// Where the test connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether something listens at `target` in the namespace yet.
    pub fn target_ready(netns: &str, target: SocketAddr) -> bool {
        in_netns(netns, || TcpStream::connect(target).is_ok())
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies both ways until either side closes, then closes both.
fn join(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
        let _ = from.shutdown(std::net::Shutdown::Both);
    };
    let t = std::thread::spawn(move || copy(a, b2));
    copy(b, a2);
    let _ = t.join();
}

/// Tries a TCP connection to `to` from inside namespace `netns`: whether it was accepted
/// within `timeout` (a firewall that drops the SYN makes it time out).
pub fn tcp_connects(netns: &str, to: SocketAddr, timeout: Duration) -> bool {
    in_netns(netns, || TcpStream::connect_timeout(&to, timeout).is_ok())
}

/// Removes the namespaces of test processes that are gone (killed before their drops ran).
fn remove_stale() {
    let Ok(list) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in list.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A veth pair made with both ends already in their namespaces (so no name is ever taken in
/// the root namespace): `a` in `ns_a`, `b` in `ns_b`.
fn veth(ns_a: &str, a: &str, ns_b: &str, b: &str) {
    ip(
        None,
        &[
            "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b,
        ],
    );
}

fn ip(netns: Option<&str>, args: &[&str]) {
    let mut c = Command::new("ip");
    if let Some(ns) = netns {
        c.args(["-n", ns]);
    }
    c.args(args);
    run(&mut c, &format!("ip {}", args.join(" ")));
}

/// Loads nftables commands or a ruleset into namespace `netns`.
fn nft(netns: &str, text: &str) {
    let mut child = command_in(Some(netns), "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft is not installed: scripts/test.sh installs nftables");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {netns} refused:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(c: &mut Command, what: &str) {
    output(c, what);
}

fn output(c: &mut Command, what: &str) -> String {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The system split across a [`Topology`]: `agent-edge distributor` in the distributor's
/// namespace (SIP and every listener on [`DISTRIBUTOR`], its public listener on port 443) and
/// `agent-edge buffer --connect wss://203.0.113.10:443/tunnel` with `expose = "tunnel"` in
/// the edge's, listening on [`EDGE`]. Both read one test folder; its development certificate
/// also covers the public address, so the edge's tunnel verifies it.
#[derive(Debug)]
pub struct Exposed {
    /// The distributor's process.
    pub distributor: crate::Edge,
    /// The buffer server's process.
    pub buffer: crate::Edge,
    /// The distributor's SIP over UDP, where callers call.
    pub sip: SocketAddr,
    /// The distributor's public listener.
    pub public: SocketAddr,
    /// The edge's own HTTPS listener (on its LAN).
    pub buffer_https: SocketAddr,
    /// Config, keys, certificates, logs and SIPp traces (last: removed after the processes).
    pub dir: tempfile::TempDir,
}

impl Exposed {
    /// Starts both roles and waits until the distributor serves the edge's page, as seen from
    /// the agent's namespace.
    pub fn start(net: &Topology) -> Exposed {
        Exposed::start_with(net, "expose = \"tunnel\"")
    }

    /// The same with `buffer_extra` in the edge's `[buffer]` section instead: with
    /// `expose = "direct"` only the tunnel goes through the distributor (no page, no relay).
    pub fn start_with(net: &Topology, buffer_extra: &str) -> Exposed {
        let exposed = buffer_extra.contains("expose = \"tunnel\"");
        let dir = crate::test_dir();
        let d = dir.path();
        // The edge's own listener is reached at its LAN address when it is not exposed.
        let names = [DISTRIBUTOR.to_string(), EDGE.to_string()];
        certs::ensure_dev_certs_for(&d.join("certs"), &[&names[0], &names[1]]).unwrap();
        let public = SocketAddr::new(DISTRIBUTOR, 443);
        let (distributor, sip) =
            crate::start_distributor_in(d, Some(&net.distributor), DISTRIBUTOR, public.port());
        let mut buffer = crate::start_buffer_in(
            d,
            Some(&net.edge),
            EDGE,
            public,
            None,
            "buffer.log",
            buffer_extra,
        );
        let buffer_https = buffer.addr("buffer.https");
        buffer.wait_line("tunnel-up edge-1", crate::WAIT);
        if exposed {
            buffer.wait_line("media-relay-up edge-1", crate::WAIT);
        }
        let sys = Exposed {
            distributor,
            buffer,
            sip,
            public,
            buffer_https,
            dir,
        };
        if exposed {
            sys.wait_exposed(net);
        }
        sys
    }

    /// Waits until the distributor serves the edge's page to the agent's namespace.
    pub fn wait_exposed(&self, net: &Topology) {
        let deadline = std::time::Instant::now() + crate::WAIT;
        let (dir, public) = (self.dir.path(), self.public);
        while in_netns(&net.agent, || {
            crate::https::get(dir, public, "/edge/edge-1/").status
        }) != 200
        {
            assert!(
                std::time::Instant::now() < deadline,
                "edge-1 never exposed on {public}\n{}",
                self.buffer.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent page through the distributor, signing in with `token`.
    pub fn page(&self, token: &str) -> String {
        format!("https://{}/edge/edge-1/?token={token}", DISTRIBUTOR)
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}
