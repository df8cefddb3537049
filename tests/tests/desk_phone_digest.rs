//! Desk phones as agents, signed in with a SIP password (SIP Digest) instead of a token: a
//! real phone (baresip) registering and answering a SIPp caller with audio, a wrong password
//! refused, SHA-256 answers (RFC 8760), and revocation signing a phone out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_edge_tests::{
    System, WAIT, admin_key, caller, free_port, http, metrics_text, test_dir, write_config,
};
use serde_json::Value;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// An agent in the store, and a SIP password for her: (password, its id).
fn sip_password(admin: SocketAddr, key: &str, agent: &str) -> (String, String) {
    let body = format!(r#"{{"id":"{agent}","name":"{agent}"}}"#);
    let (status, text) = http(admin, "POST", "/agents", Some(key), Some(&body));
    assert!(status == 201 || status == 409, "{status} {text}");
    new_password(admin, key, agent)
}

fn new_password(admin: SocketAddr, key: &str, agent: &str) -> (String, String) {
    let path = format!("/agents/{agent}/sip-password");
    let (status, text) = http(admin, "POST", &path, Some(key), None);
    assert_eq!(status, 201, "{text}");
    let v = json(&text);
    assert_eq!(v["username"], agent);
    assert_eq!(v["realm"], "agent-edge");
    assert_eq!(v["algorithms"], serde_json::json!(["SHA-256", "MD5"]));
    let password = v["password"].as_str().unwrap().to_owned();
    assert!(password.len() >= 20, "{password}");
    (password, v["id"].as_str().unwrap().to_owned())
}

fn signed_in(admin: SocketAddr, key: &str) -> Vec<String> {
    let (status, text) = http(admin, "GET", "/live", Some(key), None);
    assert_eq!(status, 200, "{text}");
    json(&text)["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

/// baresip with one account, answering calls at once and sending back what it hears
/// (aubridge joins its player to its source), so audio flows both ways with no sound card.
struct Baresip {
    child: Child,
    log: std::path::PathBuf,
}

impl Baresip {
    fn start(dir: &Path, name: &str, agent: &str, password: &str, edge: SocketAddr) -> Baresip {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let port = free_port();
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{port}\nsip_trans_def udp\n\
             audio_player aubridge,{name}\naudio_source aubridge,{name}\n\
             audio_alert aubridge,{name}-alert\nmodule_path /usr/lib/baresip/modules\n\
             module stdio.so\nmodule g711.so\nmodule aubridge.so\nmodule_app account.so\n\
             module_app menu.so\n"
        );
        std::fs::write(home.join("config"), config).unwrap();
        let account = format!(
            "<sip:{agent}@{edge};transport=udp>;auth_pass={password};answermode=auto;regint=300\n"
        );
        std::fs::write(home.join("accounts"), account).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        // The call's status line (with its bit rates) goes to stderr.
        let err = out.try_clone().unwrap();
        let child = Command::new("baresip")
            .arg("-f")
            .arg(&home)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("baresip (Debian's baresip-core) is installed by scripts/test.sh");
        Baresip { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.output();
            if out.contains(text) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "baresip never printed {text:?}:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The highest receive and send bit rates baresip's status line showed during the call.
    fn peak_audio_bitrates(&self) -> (u64, u64) {
        let out = self.output();
        let mut peak = (0, 0);
        for part in out.split("audio=").skip(1) {
            let rates = part.split(" (bit/s)").next().unwrap_or("");
            if let Some((rx, tx)) = rates.split_once('/') {
                let (rx, tx) = (
                    rx.trim().parse().unwrap_or(0),
                    tx.trim().parse().unwrap_or(0),
                );
                peak = (peak.0.max(rx), peak.1.max(tx));
            }
        }
        peak
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"q\n");
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn baresip_signs_in_with_its_sip_password_and_answers_a_caller_with_audio() {
    // Debian 12's baresip (libre 1.1) knows only MD5 and gives up on a challenge it does not
    // know instead of taking the next, so this edge offers MD5 alone.
    let mut sys = System::start_with("", "digest_algorithms = [\"MD5\"]");
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let (password, _) = sip_password(admin, &key, "alice");

    let phone = Baresip::start(
        sys.path(),
        "alice-phone",
        "alice",
        &password,
        sys.buffer_udp,
    );
    phone.wait_for("200 OK");
    sys.edge.wait_line("agent-up alice edge-1", WAIT);
    assert_eq!(signed_in(admin, &key), vec!["alice"]);

    caller("caller_pcap_audio.xml", sys.path(), "caller", sys.dist_udp)
        .arg(&["-m", "1"])
        .run()
        .assert_ok("the caller's call, answered by the phone");
    let out = phone.wait_for("terminated");
    assert!(out.contains("Call established"), "{out}");
    let (rx, tx) = phone.peak_audio_bitrates();
    // PCMA is 64 kbit/s: the phone heard the caller's pcap and sent it back.
    assert!(
        rx >= 32_000,
        "the phone received the caller's audio at {rx} bit/s:\n{out}"
    );
    assert!(tx >= 32_000, "the phone sent audio at {tx} bit/s:\n{out}");
    // Both ways through the edge, which anchors the phone's media: the caller's pcap (236
    // packets) reached the phone, and the phone's audio came back to the caller.
    let record = agent_edge_tests::record_with_media(admin, &key);
    let media = &record["media"];
    let from_caller = media["caller"]["packets"].as_u64().unwrap();
    let from_phone = media["agent"]["packets"].as_u64().unwrap();
    assert!(from_caller >= 236, "{record}");
    assert!(from_phone >= 200, "{record}");

    // A wrong password: the phone is challenged again and says so, and is not signed in.
    sip_password(admin, &key, "bob");
    let wrong = Baresip::start(
        sys.path(),
        "bob-phone",
        "bob",
        "not-his-password",
        sys.buffer_udp,
    );
    let out = wrong.wait_for("401 wrong password");
    assert!(!out.contains("200 OK"), "{out}");
    assert_eq!(signed_in(admin, &key), vec!["alice"]);
    let (_, text) = metrics_text(admin, &key, "text/plain");
    assert!(
        text.contains("sip_digest_checks_total{result=\"wrong-password\"}"),
        "{text}"
    );
    assert!(
        text.contains("sip_digest_checks_total{result=\"verified\"} 1"),
        "{text}"
    );
}

/// A minimal SIP client over UDP that answers Digest challenges with SHA-256 itself (RFC 8760;
/// the computation written out here from RFC 7616 §3.4.1, apart from the server's).
struct Phone {
    socket: UdpSocket,
    edge: SocketAddr,
    call_id: String,
    cseq: u32,
}

fn sha256_hex(s: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn param<'a>(challenge: &'a str, name: &str) -> &'a str {
    let start = challenge
        .find(&format!("{name}=\""))
        .unwrap_or_else(|| panic!("no {name} in {challenge}"))
        + name.len()
        + 2;
    let len = challenge[start..].find('"').unwrap();
    &challenge[start..start + len]
}

impl Phone {
    fn new(edge: SocketAddr) -> Phone {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        Phone {
            socket,
            edge,
            call_id: format!("digest-{}", free_port()),
            cseq: 0,
        }
    }

    fn register(&mut self, agent: &str, authorization: Option<&str>) -> String {
        self.cseq += 1;
        let local = self.socket.local_addr().unwrap();
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "REGISTER sip:{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{cseq}x{call}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{agent}@{edge}>;tag=t{cseq}\r\nTo: <sip:{agent}@{edge}>\r\n\
             Call-ID: {call}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{agent}@{local}>\r\n\
             Expires: 300\r\n{auth}Content-Length: 0\r\n\r\n",
            edge = self.edge,
            cseq = self.cseq,
            call = self.call_id,
        );
        self.socket.send_to(request.as_bytes(), self.edge).unwrap();
        let mut buf = [0u8; 8192];
        loop {
            let (n, _) = self
                .socket
                .recv_from(&mut buf)
                .expect("an answer to REGISTER");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            // A 100 Trying is not the answer.
            if !text.starts_with("SIP/2.0 1") {
                return text;
            }
        }
    }

    fn answer(agent: &str, password: &str, challenge: &str, uri: &str) -> String {
        let (realm, nonce) = (param(challenge, "realm"), param(challenge, "nonce"));
        let ha1 = sha256_hex(&format!("{agent}:{realm}:{password}"));
        let ha2 = sha256_hex(&format!("REGISTER:{uri}"));
        let (nc, cnonce) = ("00000001", "0a4f113b");
        let response = sha256_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        format!(
            "Digest username=\"{agent}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=SHA-256, qop=auth, nc={nc}, cnonce=\"{cnonce}\""
        )
    }

    /// Registers with `password`, answering the SHA-256 challenge: the final answer.
    fn sign_in(&mut self, agent: &str, password: &str) -> String {
        let challenged = self.register(agent, None);
        assert!(challenged.starts_with("SIP/2.0 401"), "{challenged}");
        let challenges: Vec<&str> = challenged
            .lines()
            .filter_map(|l| l.strip_prefix("WWW-Authenticate: "))
            .collect();
        assert_eq!(
            challenges.len(),
            2,
            "SHA-256 then MD5, nothing else:\n{challenged}"
        );
        assert!(challenges[0].contains("algorithm=SHA-256"), "{challenged}");
        assert!(challenges[1].contains("algorithm=MD5"), "{challenged}");
        assert!(challenges[0].contains("qop=\"auth\""), "{challenged}");
        let uri = format!("sip:{}", self.edge);
        let answer = Phone::answer(agent, password, challenges[0], &uri);
        self.register(agent, Some(&answer))
    }
}

fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sha256_answers_sign_in_and_revoking_the_password_signs_out() {
    let mut sys = System::start("");
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let (password, id) = sip_password(admin, &key, "carol");
    let mut phone = Phone::new(sys.buffer_udp);

    let ok = phone.sign_in("carol", &password);
    assert_eq!(status(&ok), 200, "{ok}");
    assert!(ok.contains("Contact: <sip:carol@"), "{ok}");
    sys.edge.wait_line("agent-up carol edge-1", WAIT);
    // Her proof at the distributor is the password's id, as a token's jti would be.
    let (_, live) = http(admin, "GET", "/live", Some(&key), None);
    assert_eq!(json(&live)["agents"][0]["token"], id.as_str(), "{live}");

    // Wrong password: challenged again, with the reason.
    let mut other = Phone::new(sys.buffer_udp);
    let refused = other.sign_in("carol", "guess");
    assert_eq!(status(&refused), 401, "{refused}");
    assert!(
        refused.starts_with("SIP/2.0 401 wrong password"),
        "{refused}"
    );
    assert!(refused.contains("WWW-Authenticate: Digest"), "{refused}");

    // A nonce the edge never gave, and a password for another agent.
    let made_up = "Digest username=\"carol\", realm=\"agent-edge\", nonce=\"bm90LW91cnM\", \
                   uri=\"sip:x\", response=\"00\", algorithm=SHA-256, qop=auth, nc=00000001, cnonce=\"c\"";
    let refused = other.register("carol", Some(made_up));
    assert!(
        refused.starts_with("SIP/2.0 401 Unknown nonce"),
        "{refused}"
    );
    let challenged = other.register("dave", None);
    let challenge = challenged
        .lines()
        .find_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .unwrap();
    let for_carol = Phone::answer("carol", &password, challenge, "sip:x");
    let refused = other.register("dave", Some(&for_carol));
    assert!(
        refused.starts_with("SIP/2.0 403 Credentials for another agent"),
        "{refused}"
    );

    // The password removed: she is signed out at once, and it no longer signs in.
    let path = "/agents/carol/sip-password";
    let (status_code, text) = http(admin, "DELETE", path, Some(&key), None);
    assert_eq!(status_code, 204, "{text}");
    wait_until("carol signed out once her password is gone", || {
        signed_in(admin, &key).is_empty()
    });
    let refused = phone.sign_in("carol", &password);
    assert!(
        refused.starts_with("SIP/2.0 403 the agent has no SIP password"),
        "{refused}"
    );

    // A new password works; revoking its id (as the console's sign-out does) ends it too.
    let (password, id) = new_password(admin, &key, "carol");
    let ok = phone.sign_in("carol", &password);
    assert_eq!(status(&ok), 200, "{ok}");
    wait_until("carol signed in again", || {
        signed_in(admin, &key) == ["carol"]
    });
    let body = format!(r#"{{"jti":"{id}"}}"#);
    let (status_code, text) = http(admin, "POST", "/tokens/revoke", Some(&key), Some(&body));
    assert_eq!(status_code, 204, "{text}");
    wait_until("carol signed out by the revocation", || {
        signed_in(admin, &key).is_empty()
    });
    let refused = phone.sign_in("carol", &password);
    assert!(
        refused.starts_with("SIP/2.0 403 SIP password revoked"),
        "{refused}"
    );
}

#[test]
fn a_sip_password_is_shown_once_and_kept_only_as_hashes() {
    let dir = test_dir();
    let config = write_config(dir.path(), "", "");
    let mut edge = agent_edge_tests::Edge::start(&[], &config, &dir.path().join("agent-edge.log"));
    let admin = edge.addr("distributor.admin");
    edge.wait_line("tunnel-up edge-1", WAIT);
    let key = admin_key(dir.path());
    let (password, _) = sip_password(admin, &key, "erin");
    let (status_code, text) = http(admin, "GET", "/agents/erin", Some(&key), None);
    assert_eq!(status_code, 200);
    assert!(
        !text.contains(&password),
        "the agent record does not show it: {text}"
    );
    let (status_code, _) = http(
        admin,
        "POST",
        "/agents/nobody/sip-password",
        Some(&key),
        None,
    );
    assert_eq!(status_code, 404);
    let (status_code, _) = http(admin, "POST", "/agents/erin/sip-password", None, None);
    assert_eq!(status_code, 401, "the admin key is needed");
    edge.stop_cleanly();
    let db = std::fs::read(dir.path().join("agent-edge.db")).unwrap();
    let wal = std::fs::read(dir.path().join("agent-edge.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(
            !bytes
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "the password itself is nowhere in the database"
        );
    }
}
