//! What a REGISTER asks for, and where its contact is reached: read the same way by a buffer
//! server registering its agents and by the distributor registering edges without a tunnel.
//! Pure.

use crate::sip::{NameAddr, SipError, SipMessage, SipUri, Target, TransportKind};

/// Registration lifetime when the REGISTER names none (RFC 3261 §10.2.1.1 suggests 3600).
const DEFAULT_EXPIRES: u32 = 3600;

/// What a REGISTER asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterRequest {
    /// Bind (or refresh) the agent at a contact for `expires` seconds.
    Bind {
        agent: String,
        contact: String,
        expires: u32,
    },
    /// Remove the agent's binding (Expires 0, or `Contact: *`).
    Unbind { agent: String },
    /// No Contact: the agent asks what is bound.
    Fetch { agent: String },
}

impl RegisterRequest {
    /// The agent (address-of-record user) the REGISTER is about.
    pub fn agent(&self) -> &str {
        match self {
            RegisterRequest::Bind { agent, .. }
            | RegisterRequest::Unbind { agent }
            | RegisterRequest::Fetch { agent } => agent,
        }
    }
}

/// Reads a REGISTER. The agent is the To user (the address-of-record).
pub fn parse_register(msg: &SipMessage, max_expires: u32) -> Result<RegisterRequest, SipError> {
    let to = NameAddr::parse(msg.header("To").unwrap_or_default())?;
    // Users compare unescaped (RFC 3261 §19.1.4): `sip:%61lice@…` is alice's record.
    let agent = to
        .sip_uri()?
        .user_unescaped()
        .filter(|u| proto_tunnel::valid_id(u, 128))
        .ok_or_else(|| SipError::bad_request("To names no agent"))?;
    let header_expires = match msg.header("Expires") {
        Some(v) => Some(
            v.trim()
                .parse::<u32>()
                .map_err(|_| SipError::bad_request("bad Expires"))?,
        ),
        None => None,
    };
    let Some(contact) = msg.header("Contact") else {
        return Ok(RegisterRequest::Fetch { agent });
    };
    if contact.trim() == "*" {
        return Ok(RegisterRequest::Unbind { agent });
    }
    let contact = NameAddr::parse(contact)?;
    let param_expires = match contact.param("expires") {
        Some(Some(v)) => Some(
            v.parse::<u32>()
                .map_err(|_| SipError::bad_request("bad expires"))?,
        ),
        _ => None,
    };
    let expires = param_expires.or(header_expires).unwrap_or(DEFAULT_EXPIRES);
    if expires == 0 {
        return Ok(RegisterRequest::Unbind { agent });
    }
    SipUri::parse(&contact.uri)?;
    Ok(RegisterRequest::Bind {
        agent,
        contact: contact.uri,
        expires: expires.min(max_expires),
    })
}

/// Where to send to a contact that arrived from `from`. Connection-oriented agents are
/// reached on the connection they registered on (RFC 5626's idea, without its headers); a
/// TCP agent whose connection is gone is dialled at its Contact; UDP goes to the contact's
/// address when it is a literal IP, else to the source address (a NAT in between).
pub fn target_for(contact: &str, from: &Target) -> Target {
    match from.kind {
        TransportKind::Udp => {
            let addr = SipUri::parse(contact).ok().and_then(|u| {
                let ip = u.host.trim_matches(['[', ']']).parse().ok()?;
                Some(std::net::SocketAddr::new(ip, u.port.unwrap_or(5060)))
            });
            Target::udp(addr.unwrap_or(from.addr))
        }
        TransportKind::Tcp => {
            let addr = SipUri::parse(contact).ok().and_then(|u| {
                let ip = u.host.trim_matches(['[', ']']).parse().ok()?;
                Some(std::net::SocketAddr::new(ip, u.port.unwrap_or(5060)))
            });
            Target {
                kind: TransportKind::Tcp,
                addr: addr.unwrap_or(from.addr),
                conn: from.conn,
            }
        }
        _ => from.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::ConnId;

    fn register(extra: &str) -> SipMessage {
        let text = format!(
            "REGISTER sip:127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK1\r\n\
From: <sip:alice@127.0.0.1:5070>;tag=1\r\nTo: <sip:alice@127.0.0.1:5070>\r\nCall-ID: r1\r\n\
CSeq: 1 REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        SipMessage::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn register_forms() {
        assert_eq!(
            parse_register(
                &register("Contact: <sip:alice@127.0.0.1:6000>\r\nExpires: 60\r\n"),
                3600
            )
            .unwrap(),
            RegisterRequest::Bind {
                agent: "alice".into(),
                contact: "sip:alice@127.0.0.1:6000".into(),
                expires: 60
            }
        );
        assert_eq!(
            parse_register(
                &register("Contact: <sip:alice@127.0.0.1:6000>;expires=99999\r\n"),
                3600
            )
            .unwrap(),
            RegisterRequest::Bind {
                agent: "alice".into(),
                contact: "sip:alice@127.0.0.1:6000".into(),
                expires: 3600
            }
        );
        assert_eq!(
            parse_register(&register("Contact: *\r\nExpires: 0\r\n"), 3600).unwrap(),
            RegisterRequest::Unbind {
                agent: "alice".into()
            }
        );
        assert_eq!(
            parse_register(
                &register("Contact: <sip:alice@127.0.0.1:6000>;expires=0\r\n"),
                3600
            )
            .unwrap(),
            RegisterRequest::Unbind {
                agent: "alice".into()
            }
        );
        assert_eq!(
            parse_register(&register(""), 3600).unwrap(),
            RegisterRequest::Fetch {
                agent: "alice".into()
            }
        );
        assert!(
            parse_register(&register("Contact: <sip:a@h>\r\nExpires: soon\r\n"), 3600).is_err()
        );
    }

    #[test]
    fn targets_follow_the_transport_the_agent_used() {
        let from = Target::udp("127.0.0.1:7000".parse().unwrap());
        assert_eq!(target_for("sip:a@127.0.0.1:6000", &from).addr.port(), 6000);
        assert_eq!(target_for("sip:a@phone.invalid", &from).addr.port(), 7000);
        let tcp = Target {
            kind: TransportKind::Tcp,
            addr: "127.0.0.1:40000".parse().unwrap(),
            conn: Some(ConnId(3)),
        };
        let t = target_for("sip:a@127.0.0.1:6000;transport=tcp", &tcp);
        assert_eq!((t.addr.port(), t.conn), (6000, Some(ConnId(3))));
    }
}
