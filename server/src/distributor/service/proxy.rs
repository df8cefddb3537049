//! The record-routing proxy: in-dialog requests either way between a caller and the edge
//! behind the call, following the Record-Route the offer added, and their answers back.
//! What makes the way back possible lives here too: our Via on each request, the Contact we
//! stand in for the edge's, and the parameters in our own URIs that name the edge and the
//! caller's connection.

use std::net::SocketAddr;
use std::time::Instant;

use super::Distributor;
use super::calls::Proxied;
use crate::records::Side;
use crate::sip::transaction::{self, TxId};
use crate::sip::{ConnId, NameAddr, SipMessage, SipUri, Target, TransportKind, Via};

/// URI parameter naming the edge behind a Contact the distributor rewrote, so a caller's
/// in-dialog request finds its way back into the right tunnel.
const EDGE_PARAM: &str = "ae-edge";
/// Record-Route parameter naming the caller's stream connection, so requests towards the
/// caller reuse it (RFC 5626's flow idea, kept inside our own URI).
const FLOW_PARAM: &str = "ae-flow";

impl Distributor {
    /// Our Record-Route on an offer, for the caller's transport and connection: the edge's
    /// in-dialog requests come back through it.
    pub(super) fn record_route(&self, caller: &Target) -> String {
        let (addr, transport) = self.addrs.for_kind(caller.kind);
        let flow = caller
            .conn
            .map(|c| format!(";{FLOW_PARAM}={}", c.0))
            .unwrap_or_default();
        format!("<sip:{addr};transport={transport};lr{flow}>")
    }

    /// Max-Forwards down by one and our Via on top, for a request leaving on `kind`.
    pub(super) fn prepare_forward(&self, msg: &mut SipMessage, kind: TransportKind) {
        let mf = msg.max_forwards().map_or(70, |m| m.saturating_sub(1));
        msg.set_header("Max-Forwards", mf.to_string());
        let branch = transaction::new_branch();
        let via = if kind == TransportKind::Tunnel {
            format!("SIP/2.0/WSS {}.invalid;branch={branch}", self.config.id)
        } else {
            let (addr, _) = self.addrs.for_kind(kind);
            format!("SIP/2.0/{} {addr};branch={branch};rport", kind.token())
        };
        msg.push_header_front("Via", via);
    }

    /// Our own address, standing in for the edge's Contact on the caller's side.
    fn caller_contact(&self, kind: TransportKind, edge_id: &str) -> String {
        let (addr, transport) = self.addrs.for_kind(kind);
        format!("<sip:{addr};transport={transport};{EDGE_PARAM}={edge_id}>")
    }

    pub(super) fn rewrite_contact(&self, msg: &mut SipMessage, kind: TransportKind, edge_id: &str) {
        if msg.header("Contact").is_some() {
            msg.set_header("Contact", self.caller_contact(kind, edge_id));
        }
    }

    /// Removes the top Route when it is ours (loose routing, RFC 3261 §16.4) and returns it.
    fn pop_own_route(&self, msg: &mut SipMessage) -> Option<SipUri> {
        let top = msg.header("Route")?;
        let uri = NameAddr::parse(top).ok()?.sip_uri().ok()?;
        if self.addrs.is_ours(&uri) {
            msg.pop_header("Route");
            return Some(uri);
        }
        None
    }

    pub(super) fn proxy_to_edge(
        &mut self,
        tx: Option<TxId>,
        mut msg: SipMessage,
        from: &Target,
        now: Instant,
    ) {
        self.pop_own_route(&mut msg);
        let edge_id = msg
            .request_uri()
            .and_then(|u| SipUri::parse(u).ok())
            .and_then(|u| u.param(EDGE_PARAM).flatten().map(str::to_owned))
            .or_else(|| self.edge_of_dialog(&msg));
        let conn = edge_id.as_ref().and_then(|e| self.edge_ids.get(e)).copied();
        let (Some(edge_id), Some(conn)) = (edge_id, conn) else {
            if let Some(tx) = tx {
                self.respond(tx, &msg, 404, now);
            }
            return;
        };
        if msg.max_forwards() == Some(0) {
            if let Some(tx) = tx {
                self.respond(tx, &msg, 483, now);
            }
            return;
        }
        self.note_bye(&msg, Side::Caller, now);
        let target = self.edge_target(conn);
        self.prepare_forward(&mut msg, target.kind);
        self.forward(tx, msg, target, Some(from.kind), edge_id, now);
    }

    /// The edge of the call a request's Call-ID names, for a caller that ignored our
    /// Record-Route and Contact (its in-dialog request names neither our route nor the
    /// edge): trunk-facing elements route such requests by their own dialog state.
    fn edge_of_dialog(&self, msg: &SipMessage) -> Option<String> {
        let agent = self.acd.agent_of(msg.call_id()?)?;
        let conn = self.agents.edge_of(agent)?;
        self.edges.get(&conn).map(|e| e.id.clone())
    }

    /// Sends a proxied request on: statefully when it has a server transaction (its answers
    /// come back through [`Proxied`], kept with the call its Call-ID names: a proxy leaves the
    /// Call-ID as the caller chose it), else (an ACK) statelessly.
    fn forward(
        &mut self,
        tx: Option<TxId>,
        msg: SipMessage,
        target: Target,
        caller_kind: Option<TransportKind>,
        edge_id: String,
        now: Instant,
    ) {
        match tx {
            Some(tx) => {
                let call_id = msg.call_id().unwrap_or_default().to_owned();
                let client_tx = self.layer.send_request(msg, target, now);
                let proxied = Proxied {
                    server_tx: tx,
                    caller_kind,
                    edge_id,
                };
                self.calls.add_proxied(&call_id, client_tx, proxied);
            }
            None => self.layer.send_stateless(msg, target),
        }
    }

    pub(super) fn request_from_edge(
        &mut self,
        tx: Option<TxId>,
        mut msg: SipMessage,
        from: Target,
        now: Instant,
    ) {
        let Some(edge_id) = self
            .edge_conn_of(&from)
            .and_then(|c| self.edges.get(&c))
            .map(|e| e.id.clone())
        else {
            return;
        };
        let route = self.pop_own_route(&mut msg);
        let dest = msg.request_uri().and_then(|u| SipUri::parse(u).ok());
        let (Some(route), Some(dest)) = (route, dest) else {
            // Edges only send in-dialog requests, which always carry our Record-Route.
            if let Some(tx) = tx {
                self.respond(tx, &msg, 403, now);
            }
            return;
        };
        let kind = match route.transport().as_str() {
            "TCP" => TransportKind::Tcp,
            "TLS" => TransportKind::Tls,
            _ => TransportKind::Udp,
        };
        let ip = dest
            .host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>();
        let Ok(ip) = ip else {
            if let Some(tx) = tx {
                self.respond(tx, &msg, 404, now);
            }
            return;
        };
        let flow = route
            .param(FLOW_PARAM)
            .flatten()
            .and_then(|f| f.parse::<u64>().ok())
            .map(ConnId);
        let target = Target {
            kind,
            addr: SocketAddr::new(ip, dest.port.unwrap_or(5060)),
            conn: flow,
        };
        self.note_bye(&msg, Side::Agent, now);
        self.rewrite_contact(&mut msg, kind, &edge_id);
        self.prepare_forward(&mut msg, kind);
        self.forward(tx, msg, target, None, edge_id, now);
    }

    /// A response no transaction waits for: a 2xx retransmitted after its transaction ended.
    /// It is forwarded by its next Via, as a stateless proxy would.
    pub(super) fn on_stray_response(&mut self, mut resp: SipMessage, from: &Target) {
        let Some(conn) = self.edge_conn_of(from) else {
            return;
        };
        if !resp.status().is_some_and(|c| (200..300).contains(&c)) {
            return;
        }
        resp.pop_header("Via");
        let Ok(via) = resp.top_via() else {
            return;
        };
        if let Some(target) = self.via_target(&via) {
            if let Some(edge_id) = self.edges.get(&conn).map(|e| e.id.clone()) {
                self.rewrite_contact(&mut resp, target.kind, &edge_id);
            }
            self.layer.send_stateless(resp, target);
        }
    }

    /// Where a response goes by its Via (RFC 3261 §18.2.2, with RFC 3581 rport).
    fn via_target(&self, via: &Via) -> Option<Target> {
        let kind = match via.transport.to_ascii_uppercase().as_str() {
            "TCP" => TransportKind::Tcp,
            "TLS" => TransportKind::Tls,
            "UDP" => TransportKind::Udp,
            _ => return None,
        };
        let host = via.received.as_deref().unwrap_or(&via.host);
        let ip = host.trim_matches(['[', ']']).parse().ok()?;
        let port = via.rport.flatten().or(via.port).unwrap_or(5060);
        let addr = SocketAddr::new(ip, port);
        // A stream's connection is found by its address when the message is sent.
        Some(Target {
            kind,
            addr,
            conn: None,
        })
    }

    /// An answer to a proxied request (its Via already popped), back where the request came
    /// from.
    pub(super) fn on_proxied_response(&mut self, tx: TxId, mut resp: SipMessage, now: Instant) {
        let Some(p) = self.calls.proxied(tx) else {
            return;
        };
        let server_tx = p.server_tx;
        if let Some(kind) = p.caller_kind {
            let edge_id = p.edge_id.clone();
            self.rewrite_contact(&mut resp, kind, &edge_id);
        }
        let _ = self.layer.send_response(server_tx, resp, now);
    }

    /// A proxied request got no answer or lost its connection (already gone from its call):
    /// 408 to whoever sent it.
    pub(super) fn on_proxied_failed(&mut self, p: Proxied, now: Instant) {
        if let Some(req) = self.layer.server_request(p.server_tx).cloned() {
            self.respond(p.server_tx, &req, 408, now);
        }
    }
}
