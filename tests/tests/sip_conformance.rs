//! RFC 3261 conformance at the edges of the system, table-driven: each row is a raw request
//! and the status a strict peer must get for it from the distributor's and the buffer
//! server's SIP ports, over UDP and over TCP, and from the buffer server's SIP over secure
//! WebSocket (`/sip`, one SIP message per WebSocket message). Requests the grammar allows (folding, white
//! space around separators, escapes) are answered like their plain forms; broken ones get the
//! status that says why (400 with a reason naming the problem, 416, 420 with `Unsupported`,
//! 505), never silence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agent_edge_tests::{Edge, System, issue_token, test_dir, write_config};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

/// How long a row waits for its answer: well beyond a loopback round trip, so "no answer"
/// means none was sent.
const ANSWER_WAIT: Duration = Duration::from_millis(1500);

/// One request and what each SIP port must answer (0: that port is not probed).
struct Row {
    name: &'static str,
    /// The request, `\n` for CRLF. `{T}` is the transport (`UDP`/`TCP`), `{host}` and
    /// `{lport}` the sender's address, `{n}` a number unique to this send (for branches,
    /// tags and Call-IDs), `{token}` a valid token for agent alice.
    request: &'static str,
    distributor: u16,
    buffer: u16,
    /// Text the reason phrase must contain (case-insensitive), when not empty.
    reason: &'static str,
    /// The `Unsupported` header a 420 must carry, when not empty.
    unsupported: &'static str,
    /// Only where a message arrives whole (a UDP datagram, a WebSocket message): a stream
    /// frames by Content-Length, so there the rule cannot arise.
    whole_only: bool,
}

const fn row(name: &'static str, request: &'static str, distributor: u16, buffer: u16) -> Row {
    Row {
        name,
        request,
        distributor,
        buffer,
        reason: "",
        unsupported: "",
        whole_only: false,
    }
}

impl Row {
    const fn reason(mut self, text: &'static str) -> Row {
        self.reason = text;
        self
    }

    const fn unsupported(mut self, tags: &'static str) -> Row {
        self.unsupported = tags;
        self
    }

    const fn whole_only(mut self) -> Row {
        self.whole_only = true;
        self
    }
}

const ROWS: &[Row] = &[
    // ---- What the grammar allows is accepted ----
    row(
        "plain OPTIONS (the reference)",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        200,
        200,
    ),
    row(
        "folded header lines (RFC 3261 §7.3.1)",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T}\n   {host}:{lport};branch=z9hG4bK-c{n}\n\
         From:\n\t<sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         Subject: a subject\n  that goes on\nCSeq: 1\n OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        200,
        200,
    ),
    row(
        "white space around separators (Via : SIP / 2.0 / UDP, CSeq:  1   OPTIONS)",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\n\
         Via : SIP / 2.0 / {T} {host} : {lport} ; branch = z9hG4bK-c{n} ; rport\n\
         From:<sip:tester@127.0.0.1> ; tag = f{n}\nTo :   <sip:support@127.0.0.1>\n\
         Call-ID :conf-{n}\nCSeq:  1   OPTIONS\nMax-Forwards :70\nContent-Length :  0\n\n",
        200,
        200,
    ),
    row(
        "tabs as white space",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia:\tSIP/2.0/{T}\t{host}:{lport};branch=z9hG4bK-c{n}\n\
         From:\t<sip:tester@127.0.0.1>;tag=f{n}\nTo:\t<sip:support@127.0.0.1>\nCall-ID:\tconf-{n}\n\
         CSeq:\t1\tOPTIONS\nMax-Forwards:\t70\nContent-Length:\t0\n\n",
        200,
        200,
    ),
    row(
        "compact and lower-case header names",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nv: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         f: <sip:tester@127.0.0.1>;tag=f{n}\nt: <sip:support@127.0.0.1>\ni: conf-{n}\n\
         cseq: 1 OPTIONS\nmax-forwards: 70\nl: 0\n\n",
        200,
        200,
    ),
    row(
        "escaped characters in the Request-URI",
        "OPTIONS sip:%73upp%6Frt@127.0.0.1;x=%20y SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:test%65r@127.0.0.1>;tag=f{n}\nTo: <sip:%73upport@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        200,
        200,
    ),
    row(
        "quoted display names with escaped quotes and commas",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: \"Doe, \\\"J\\\" <x>\" <sip:tester@127.0.0.1>;tag=f{n}\nTo: \"Support, Inc\" <sip:support@127.0.0.1>\n\
         Call-ID: conf-{n}\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        200,
        200,
    ),
    row(
        "a comma in an unquoted display name is not a second value",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: Doe, John <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\n\
         Call-ID: conf-{n}\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        200,
        200,
    ),
    row(
        "an IPv6 reference and user parameters in the Request-URI",
        "OPTIONS sip:support;phone-context=x@[::1]:5060;transport=udp SIP/2.0\n\
         Via: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        200,
        200,
    ),
    row(
        "a sips: Request-URI",
        "OPTIONS sips:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        200,
        200,
    ),
    row(
        "REGISTER whose To user is escaped (%61lice is alice)",
        "REGISTER sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:%61lice@127.0.0.1>;tag=f{n}\nTo: <sip:%61lice@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 REGISTER\nContact: <sip:alice@{host}:{lport}>\nExpires: 60\n\
         Authorization: Bearer {token}\nMax-Forwards: 70\nContent-Length: 0\n\n",
        0,
        200,
    ),
    row(
        "REGISTER Contact: * with Expires: 0 (remove all bindings)",
        "REGISTER sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:alice@127.0.0.1>;tag=f{n}\nTo: <sip:alice@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 REGISTER\nContact: *\nExpires: 0\n\
         Authorization: Bearer {token}\nMax-Forwards: 70\nContent-Length: 0\n\n",
        401,
        200,
    ),
    row(
        "Proxy-Require is for proxies: a request we answer ourselves ignores it",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nProxy-Require: no-such-ext\nMax-Forwards: 70\nContent-Length: 0\n\n",
        200,
        200,
    ),
    // ---- 416: a Request-URI scheme we do not serve (§8.2.2.1) ----
    row(
        "tel: Request-URI",
        "OPTIONS tel:+15551234567 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <tel:+15551234567>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        416,
        416,
    ),
    row(
        "http: Request-URI on an INVITE",
        "INVITE http://127.0.0.1/support SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 INVITE\nContact: <sip:tester@{host}:{lport}>\nMax-Forwards: 70\nContent-Length: 0\n\n",
        416,
        416,
    ),
    // ---- 420: option tags we do not support (§8.2.2.3, §16.3) ----
    row(
        "Require on OPTIONS",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nRequire: no-such-ext\nMax-Forwards: 70\nContent-Length: 0\n\n",
        420,
        420,
    )
    .unsupported("no-such-ext"),
    row(
        "Require with several tags on two lines",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nRequire: foo\nRequire: 100rel , bar\nMax-Forwards: 70\nContent-Length: 0\n\n",
        420,
        420,
    )
    .unsupported("foo, 100rel, bar"),
    row(
        "Require on REGISTER (before authentication)",
        "REGISTER sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:alice@127.0.0.1>;tag=f{n}\nTo: <sip:alice@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 REGISTER\nContact: <sip:alice@{host}:{lport}>\nExpires: 60\nRequire: gruu\n\
         Max-Forwards: 70\nContent-Length: 0\n\n",
        420,
        420,
    )
    .unsupported("gruu"),
    row(
        "Require on a new INVITE to the distributor",
        "INVITE sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 INVITE\nContact: <sip:tester@{host}:{lport}>\nRequire: precondition\n\
         Max-Forwards: 70\nContent-Length: 0\n\n",
        420,
        0,
    )
    .unsupported("precondition"),
    row(
        "Require on a method we do not serve: 405 comes first (§8.2.1)",
        "SUBSCRIBE sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 SUBSCRIBE\nEvent: presence\nContact: <sip:tester@{host}:{lport}>\nRequire: foo\n\
         Max-Forwards: 70\nContent-Length: 0\n\n",
        405,
        405,
    ),
    row(
        "Proxy-Require on an INVITE the distributor proxies",
        "INVITE sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 INVITE\nContact: <sip:tester@{host}:{lport}>\nProxy-Require: sec-agree\n\
         Max-Forwards: 70\nContent-Length: 0\n\n",
        420,
        0,
    )
    .unsupported("sec-agree"),
    // ---- 505: a SIP version other than 2.0 ----
    row(
        "SIP/3.0",
        "OPTIONS sip:support@127.0.0.1 SIP/3.0\nVia: SIP/3.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        505,
        505,
    ),
    row(
        "SIP/1.0",
        "OPTIONS sip:support@127.0.0.1 SIP/1.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        505,
        505,
    ),
    // ---- 400: the request is broken, and the reason says how ----
    row(
        "Content-Length beyond the end of the datagram or WebSocket message (§18.3)",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Type: text/plain\nContent-Length: 200\n\nhello",
        400,
        400,
    )
    .reason("Content-Length")
    .whole_only(),
    row(
        "two Call-ID headers",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         Call-ID: other-{n}\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("Call-ID"),
    row(
        "Call-ID and its compact form i:",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         i: conf-{n}\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("Call-ID"),
    row(
        "two values in one Call-ID",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}, other-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("Call-ID"),
    row(
        "two CSeq headers",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("CSeq"),
    row(
        "two From headers",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nFrom: <sip:other@127.0.0.1>;tag=g{n}\n\
         To: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\nCSeq: 1 OPTIONS\nMax-Forwards: 70\n\
         Content-Length: 0\n\n",
        400,
        400,
    )
    .reason("From"),
    row(
        "two values in one From",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}, <sip:other@127.0.0.1>;tag=g{n}\n\
         To: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\nCSeq: 1 OPTIONS\nMax-Forwards: 70\n\
         Content-Length: 0\n\n",
        400,
        400,
    )
    .reason("From"),
    row(
        "two To headers",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nt: <sip:other@127.0.0.1>\n\
         Call-ID: conf-{n}\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("To"),
    row(
        "two Max-Forwards headers",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nMax-Forwards: 69\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("Max-Forwards"),
    row(
        "two Content-Length headers",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\nl: 0\n\n",
        400,
        400,
    )
    .reason("Content-Length"),
    row(
        "Content-Length that is not a number",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: zero\n\n",
        400,
        400,
    )
    .reason("Content-Length"),
    row(
        "a bad IPv6 reference in a REGISTER's Request-URI (400, not 401)",
        "REGISTER sip:[::1@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:alice@127.0.0.1>;tag=f{n}\nTo: <sip:alice@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 REGISTER\nContact: <sip:alice@{host}:{lport}>\nExpires: 60\nMax-Forwards: 70\n\
         Content-Length: 0\n\n",
        400,
        400,
    )
    .reason("Request-URI"),
    row(
        "a bad IPv6 address in an OPTIONS Request-URI",
        "OPTIONS sip:support@[::zz]:5060 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("Request-URI"),
    row(
        "a broken escape in the Request-URI",
        "OPTIONS sip:sup%zzport@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("Request-URI"),
    row(
        "REGISTER Contact: * with a non-zero Expires (§10.3)",
        "REGISTER sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:alice@127.0.0.1>;tag=f{n}\nTo: <sip:alice@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 REGISTER\nContact: *\nExpires: 3600\nAuthorization: Bearer {token}\n\
         Max-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("Contact: *"),
    row(
        "REGISTER Contact: * with no Expires",
        "REGISTER sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:alice@127.0.0.1>;tag=f{n}\nTo: <sip:alice@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 REGISTER\nContact: *\nAuthorization: Bearer {token}\n\
         Max-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("Contact: *"),
    row(
        "REGISTER Contact: * beside another Contact",
        "REGISTER sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:alice@127.0.0.1>;tag=f{n}\nTo: <sip:alice@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 REGISTER\nContact: *\nContact: <sip:alice@{host}:{lport}>\nExpires: 0\n\
         Authorization: Bearer {token}\nMax-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("Contact: *"),
    row(
        "a request line with two spaces",
        "OPTIONS  sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("request line"),
    row(
        "a header line without a colon",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 OPTIONS\nThis line has no colon\nMax-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("colon"),
    row(
        "a CSeq method that is not the request's",
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{T} {host}:{lport};branch=z9hG4bK-c{n}\n\
         From: <sip:tester@127.0.0.1>;tag=f{n}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{n}\n\
         CSeq: 1 INVITE\nMax-Forwards: 70\nContent-Length: 0\n\n",
        400,
        400,
    )
    .reason("CSeq"),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Udp,
    Tcp,
    /// SIP over secure WebSocket (RFC 7118): the buffer server's `/sip` only.
    Wss,
}

type Wss = tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// A WebSocket to the buffer server's `/sip`, offering subprotocol sip as agents do.
fn wss(sys: &System) -> Wss {
    let config = certs::client_config(&sys.path().join("certs").join("ca.pem")).unwrap();
    let tcp = TcpStream::connect(sys.buffer_https).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut request = format!("wss://127.0.0.1:{}/sip", sys.buffer_https.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "sip".parse().unwrap());
    let (ws, _) = tungstenite::client(request, rustls::StreamOwned::new(conn, tcp)).unwrap();
    ws
}

/// What came back for one request.
#[derive(Debug)]
struct Answer {
    status: u16,
    reason: String,
    head: String,
}

impl Answer {
    fn parse(text: &str) -> Option<Answer> {
        let (head, _) = text.split_once("\r\n\r\n")?;
        let first = head.lines().next()?;
        let rest = first.strip_prefix("SIP/2.0 ")?;
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        Some(Answer {
            status: code.parse().ok()?,
            reason: reason.to_owned(),
            head: head.to_owned(),
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Fills in a row's placeholders.
fn render(template: &str, transport: Transport, local: SocketAddr, token: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = match transport {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
        Transport::Wss => "WSS",
    };
    template
        .replace('\n', "\r\n")
        .replace("{T}", t)
        .replace("{host}", &local.ip().to_string())
        .replace("{lport}", &local.port().to_string())
        .replace("{n}", &n.to_string())
        .replace("{token}", token)
}

/// The ACK for a non-2xx final answer to an INVITE (RFC 3261 §17.1.1.3), so the server's
/// transaction ends instead of retransmitting at us.
fn ack_for(request: &str, answer: &Answer) -> Option<String> {
    let first = request.lines().next()?;
    if !first.starts_with("INVITE ") {
        return None;
    }
    let uri = first.split(' ').nth(1)?;
    let get = |name: &str| {
        request.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let cseq = get("CSeq")?;
    let seq = cseq.split_whitespace().next()?;
    Some(format!(
        "ACK {uri} SIP/2.0\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {seq} ACK\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        get("Via")?,
        get("From")?,
        answer.header("To")?,
        get("Call-ID")?
    ))
}

/// Sends one request over a fresh WebSocket and returns its final answer.
fn exchange_wss(sys: &System, template: &str, token: &str) -> Option<Answer> {
    let mut ws = wss(sys);
    let local = ws.get_ref().sock.local_addr().unwrap();
    let request = render(template, Transport::Wss, local, token);
    ws.send(Message::text(request.clone())).unwrap();
    ws.get_mut()
        .sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + ANSWER_WAIT;
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                if let Some(answer) = Answer::parse(&text)
                    && answer.status >= 200
                {
                    if let Some(ack) = ack_for(&request, &answer) {
                        let _ = ws.send(Message::text(ack));
                    }
                    return Some(answer);
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                if Instant::now() > deadline {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

/// Sends one request and returns its final answer (1xx skipped), or None when nothing came
/// within [`ANSWER_WAIT`].
fn exchange(to: SocketAddr, transport: Transport, template: &str, token: &str) -> Option<Answer> {
    match transport {
        Transport::Wss => unreachable!("WebSocket probes go through exchange_wss"),
        Transport::Udp => {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let request = render(template, transport, socket.local_addr().unwrap(), token);
            socket.send_to(request.as_bytes(), to).unwrap();
            let deadline = Instant::now() + ANSWER_WAIT;
            let mut buf = vec![0u8; 65_536];
            loop {
                let left = deadline.checked_duration_since(Instant::now())?;
                socket.set_read_timeout(Some(left)).unwrap();
                let n = match socket.recv_from(&mut buf) {
                    Ok((n, _)) => n,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        return None;
                    }
                    Err(e) => panic!("UDP receive: {e}"),
                };
                let Some(answer) = Answer::parse(&String::from_utf8_lossy(&buf[..n])) else {
                    continue;
                };
                if answer.status >= 200 {
                    if let Some(ack) = ack_for(&request, &answer) {
                        socket.send_to(ack.as_bytes(), to).unwrap();
                    }
                    return Some(answer);
                }
            }
        }
        Transport::Tcp => {
            let mut stream = TcpStream::connect(to).unwrap();
            let request = render(template, transport, stream.local_addr().unwrap(), token);
            stream.write_all(request.as_bytes()).unwrap();
            let deadline = Instant::now() + ANSWER_WAIT;
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                // Every whole message received so far; the first final one is the answer.
                let text = String::from_utf8_lossy(&got).into_owned();
                let mut rest = text.as_str();
                while let Some((head, after)) = rest.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            let n = n.trim();
                            (n.eq_ignore_ascii_case("Content-Length") || n == "l")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if after.len() < len {
                        break;
                    }
                    if let Some(answer) = Answer::parse(&format!("{head}\r\n\r\n"))
                        && answer.status >= 200
                    {
                        if let Some(ack) = ack_for(&request, &answer) {
                            let _ = stream.write_all(ack.as_bytes());
                        }
                        return Some(answer);
                    }
                    rest = &after[len..];
                }
                let left = deadline.checked_duration_since(Instant::now())?;
                stream.set_read_timeout(Some(left)).unwrap();
                match stream.read(&mut buf) {
                    Ok(0) => return None,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        return None;
                    }
                    Err(_) => return None,
                }
            }
        }
    }
}

/// What is wrong with `answer` for a row expecting `want`, if anything.
fn mismatch(row: &Row, want: u16, answer: Option<&Answer>) -> Option<String> {
    let Some(answer) = answer else {
        return Some(format!("expected {want}, got no answer"));
    };
    if answer.status != want {
        return Some(format!(
            "expected {want}, got {} {}",
            answer.status, answer.reason
        ));
    }
    if !row.reason.is_empty()
        && !answer
            .reason
            .to_ascii_lowercase()
            .contains(&row.reason.to_ascii_lowercase())
    {
        return Some(format!(
            "expected a reason naming {:?}, got {} {}",
            row.reason, answer.status, answer.reason
        ));
    }
    if !row.unsupported.is_empty() && answer.header("Unsupported") != Some(row.unsupported) {
        return Some(format!(
            "expected Unsupported: {}, got {:?}",
            row.unsupported,
            answer.header("Unsupported")
        ));
    }
    None
}

/// A datagram over `[sip] max_message_bytes` is answered 513 when its head is a request
/// (it used to be dropped without a word).
#[test]
fn an_oversized_datagram_gets_513() {
    let dir = test_dir();
    let config = write_config(dir.path(), "", "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("[sip]\nmax_message_bytes = 2048\n{text}")).unwrap();
    let mut edge = Edge::start(&[], &config, &dir.path().join("agent-edge.log"));
    let dist = edge.addr("distributor.udp");
    let buffer = edge.addr("buffer.udp");
    let big = format!(
        "OPTIONS sip:support@127.0.0.1 SIP/2.0\nVia: SIP/2.0/{{T}} {{host}}:{{lport}};branch=z9hG4bK-c{{n}}\n\
         From: <sip:tester@127.0.0.1>;tag=f{{n}}\nTo: <sip:support@127.0.0.1>\nCall-ID: conf-{{n}}\n\
         CSeq: 1 OPTIONS\nMax-Forwards: 70\nX-Padding: {}\nContent-Length: 0\n\n",
        "a".repeat(3000)
    );
    for (port, addr) in [("distributor", dist), ("buffer", buffer)] {
        let answer = exchange(addr, Transport::Udp, &big, "");
        assert_eq!(
            answer.as_ref().map(|a| a.status),
            Some(513),
            "{port}: {answer:?}\n{}",
            edge.log_tail()
        );
    }
}

/// Every row against the SIP ports of one transport (the distributor's and the buffer
/// server's for UDP and TCP, the buffer server's `/sip` for WSS); all mismatches are
/// reported at once.
fn every_row(transport: Transport) {
    let sys = System::start("");
    let token = issue_token(sys.path(), "alice");
    let ports = match transport {
        Transport::Udp => vec![
            ("distributor", Some(sys.dist_udp)),
            ("buffer", Some(sys.buffer_udp)),
        ],
        Transport::Tcp => vec![
            ("distributor", Some(sys.dist_tcp)),
            ("buffer", Some(sys.buffer_tcp)),
        ],
        Transport::Wss => vec![("buffer", None)],
    };
    let mut failures = Vec::new();
    let mut checked = 0;
    for row in ROWS {
        if row.whole_only && transport == Transport::Tcp {
            continue;
        }
        for &(port, addr) in &ports {
            let want = match port {
                "distributor" => row.distributor,
                _ => row.buffer,
            };
            if want == 0 {
                continue;
            }
            checked += 1;
            let answer = match addr {
                Some(addr) => exchange(addr, transport, row.request, &token),
                None => exchange_wss(&sys, row.request, &token),
            };
            if let Some(why) = mismatch(row, want, answer.as_ref()) {
                failures.push(format!("{transport:?} {port}: {}: {why}", row.name));
            }
        }
    }
    assert!(checked > 35, "only {checked} probes ran");
    assert!(
        failures.is_empty(),
        "{} of {checked} probes got the wrong answer:\n  {}\n{}",
        failures.len(),
        failures.join("\n  "),
        sys.edge.log_tail()
    );
}

#[test]
fn every_rule_over_udp() {
    every_row(Transport::Udp);
}

#[test]
fn every_rule_over_tcp() {
    every_row(Transport::Tcp);
}

#[test]
fn every_rule_over_secure_websocket() {
    every_row(Transport::Wss);
}
