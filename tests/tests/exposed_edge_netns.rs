//! An exposed edge behind a NAT gateway that lets out only new TCP connections to port 443
//! (issue 16), on a network of Linux namespaces built by the test (`agent_edge_tests::netns`):
//! the caller and the distributor on the internet (TEST-NET-3), the edge and the browser agent
//! on a LAN behind the gateway. Root only: skipped elsewhere, failed on CI (`CI=true`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use agent_edge_tests::netns::{self, DISTRIBUTOR, EDGE, GATEWAY_WAN, Topology};

/// The namespaces of topology `id` that still exist.
fn left_over(id: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{id}-")))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_gateway_lets_the_edge_out_on_tcp_443_only_and_nothing_in() {
    let Some(net) = Topology::start() else { return };
    let id = net.id.clone();
    let short = Duration::from_secs(1);

    // The edge reaches the distributor's 443, seen from there as the gateway (masquerade).
    let public = SocketAddr::new(DISTRIBUTOR, 443);
    let listener = netns::in_netns(&net.distributor, || TcpListener::bind(public).unwrap());
    let mut out = netns::in_netns(&net.edge, || {
        std::net::TcpStream::connect_timeout(&public, short).unwrap()
    });
    let (mut seen, from) = listener.accept().unwrap();
    assert_eq!(from.ip(), GATEWAY_WAN, "the edge is masqueraded");
    out.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    seen.read_exact(&mut buf).unwrap();
    seen.write_all(b"pong").unwrap();
    out.read_exact(&mut buf).unwrap();
    assert_eq!(
        &buf, b"pong",
        "the answers of an outbound connection come back"
    );

    // Nothing else leaves: TCP to another port, UDP to anything.
    let other = netns::in_netns(&net.distributor, || {
        TcpListener::bind(SocketAddr::new(DISTRIBUTOR, 5061)).unwrap()
    });
    assert!(!netns::tcp_connects(
        &net.edge,
        other.local_addr().unwrap(),
        short
    ));
    let udp = netns::in_netns(&net.distributor, || {
        UdpSocket::bind(SocketAddr::new(DISTRIBUTOR, 5060)).unwrap()
    });
    udp.set_read_timeout(Some(short)).unwrap();
    netns::in_netns(&net.edge, || {
        let s = UdpSocket::bind(SocketAddr::new(EDGE, 0)).unwrap();
        for _ in 0..3 {
            s.send_to(b"rtp?", udp.local_addr().unwrap()).unwrap();
        }
    });
    assert!(
        udp.recv_from(&mut [0u8; 16]).is_err(),
        "a UDP datagram left the LAN"
    );

    // Nothing comes in, though the internet routes the LAN to the gateway.
    let own = netns::in_netns(&net.edge, || {
        TcpListener::bind(SocketAddr::new(EDGE, 0)).unwrap()
    });
    let own_addr = own.local_addr().unwrap();
    assert!(!netns::tcp_connects(&net.caller, own_addr, short));
    assert!(!netns::tcp_connects(&net.distributor, own_addr, short));
    // The agent, on the same LAN, does reach the edge.
    assert!(netns::tcp_connects(&net.agent, own_addr, short));

    let c = net.counters();
    assert_eq!(c.tcp443_out_accepted, 1, "{c:?}");
    assert_eq!(c.udp_out_dropped, 3, "{c:?}");
    assert!(c.inbound_new_dropped >= 2, "{c:?}");
    assert_eq!(c.inbound_new_accepted, 0, "{c:?}");
    assert!(c.other_dropped >= 1, "the SYN to port 5061: {c:?}");

    drop((out, seen, listener, other, udp, own));
    drop(net);
    assert_eq!(
        left_over(&id),
        Vec::<String>::new(),
        "namespaces left behind"
    );
}
