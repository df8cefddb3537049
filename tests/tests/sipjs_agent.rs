//! A second browser client: SIP.js 0.21 (from npm, bundled for this test only from
//! `tests/sipjs/`) in headless Chromium registers with a token, answers a SIPp caller with
//! audio both ways, signs out the way SIP.js does (an un-REGISTER without the token, on the
//! connection it registered on) and is then offered no call. The page is served by the test
//! on `http://127.0.0.1` (a secure context, so `getUserMedia` works) and its WebSocket goes
//! to the edge's `wss://…/sip`, whose test certificate Chromium is told to accept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agent_edge_tests::browser::Browser;
use agent_edge_tests::webrtc_agent::pcap_rtp_payloads;
use agent_edge_tests::{
    EventStream, System, WAIT, admin_key, caller, header_values, http, issue_token,
};
use serde_json::Value;

/// The SIP.js page's folder: `package.json`, `package-lock.json`, `index.html`, `src/`.
fn page_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sipjs")
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot start it ({e}). The SIP.js test page is bundled with Node.js and \
             npm; install them (Debian: apt-get install nodejs npm)."
        )
    });
    assert!(status.success(), "{what} failed ({status})");
}

/// Installs SIP.js and esbuild from the lock file when they are missing or older than it,
/// and bundles the page's script into `tests/sipjs/dist/agent.js` (git-ignored), once per
/// test process. Returns the bundle's folder.
fn bundle() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        let web = page_dir();
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        // npm ci writes node_modules/.package-lock.json: older than the lock, it is stale.
        let installed = modified(&web.join("node_modules/.package-lock.json"));
        let locked = modified(&web.join("package-lock.json"));
        let esbuild = web.join("node_modules/.bin/esbuild");
        if !esbuild.exists() || installed.is_none() || installed < locked {
            run(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&web),
                "npm ci (tests/sipjs)",
            );
        }
        let dist = web.join("dist");
        run(
            Command::new(&esbuild)
                .args([
                    "src/agent.js",
                    "--bundle",
                    "--format=iife",
                    "--target=es2020",
                    "--log-level=warning",
                    "--outfile=dist/agent.js",
                ])
                .current_dir(&web),
            "esbuild src/agent.js (tests/sipjs)",
        );
        dist
    })
}

/// Serves the page (`/`, whatever the query) and its bundle (`/agent.js`) on
/// `127.0.0.1:<any port>`, one request per connection, for as long as the test runs.
fn serve_page() -> SocketAddr {
    let html = std::fs::read(page_dir().join("index.html")).unwrap();
    let script = std::fs::read(bundle().join("agent.js")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(WAIT));
            let mut request = Vec::new();
            let mut buf = [0; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&request);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let path = path.split('?').next().unwrap_or("");
            let (status, kind, body): (&str, &str, &[u8]) = match path {
                "/" | "/index.html" => ("200 OK", "text/html; charset=utf-8", &html),
                "/agent.js" => ("200 OK", "text/javascript; charset=utf-8", &script),
                _ => ("404 Not Found", "text/plain", b"not found"),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                 Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    addr
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// What the page says of itself: its state, the Registerer's and the call's, and how many
/// invitations it has seen.
async fn page_state(browser: &Browser) -> Value {
    browser
        .client
        .execute("return window.sipjsAgent.state()", vec![])
        .await
        .unwrap()
}

/// The call's audio from the page's WebRTC stats (`null` outside a call).
async fn audio_stats(browser: &Browser) -> Value {
    browser
        .client
        .execute_async(
            "const done = arguments[0]; window.sipjsAgent.audioStats().then(done, () => done(null));",
            vec![],
        )
        .await
        .unwrap()
}

/// The admin API's `GET path`, as JSON.
fn admin_json(admin: SocketAddr, key: &str, path: &str) -> Value {
    let (status, body) = http(admin, "GET", path, Some(key), None);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sip_js_agent_takes_a_call_with_audio_and_after_signing_out_is_offered_none() {
    let page = blocking(serve_page).await;
    let mut sys = blocking(|| System::start("")).await;
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let k = key.clone();
    let events = blocking(move || EventStream::subscribe(admin, &k)).await;
    let dir = sys.path().to_owned();
    let token = blocking(move || issue_token(&dir, "alice")).await;

    // Signed in: SIP.js registers with its bearer token and the distributor shows her.
    let browser = Browser::start().await;
    let wss = format!("wss://127.0.0.1:{}/sip", sys.buffer_https.port());
    browser
        .client
        .goto(&format!("http://{page}/?wss={wss}&token={token}"))
        .await
        .unwrap();
    browser.wait_state("registered", "sipjs-registered").await;
    browser.screenshot("sipjs-registered").await;
    sys.edge.wait_line("agent-up alice edge-1", WAIT);
    let e = events.clone();
    blocking(move || {
        e.wait_for("alice available", |e| {
            e["type"] == "agent" && e["agent"] == "alice" && e["state"] == "available"
        })
    })
    .await;
    let k = key.clone();
    let live = blocking(move || admin_json(admin, &k, "/live")).await;
    assert_eq!(live["agents"][0]["id"], "alice", "{live}");
    assert_eq!(live["agents"][0]["state"], "available", "{live}");

    // A caller plays G.711 from a pcap and echoes what it receives; the page answers.
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let call = tokio::task::spawn_blocking(move || {
        caller("caller_pcap_audio.xml", &dir, "caller", dist)
            .arg(&["-m", "1", "-rtp_echo"])
            .run()
    });
    browser.wait_state("ringing", "sipjs-ringing").await;
    assert!(
        browser
            .text("#caller")
            .await
            .starts_with("Call from Caller"),
        "{}",
        browser.text("main").await
    );
    browser.click("#answer").await;
    browser.wait_state("in-call", "sipjs-in-call").await;
    // Audio both ways: the page sends its microphone, and hears the caller's pcap and the
    // echo of its own audio. The call lasts about 9 s after the answer.
    let deadline = Instant::now() + Duration::from_secs(8);
    let stats = loop {
        let stats = audio_stats(&browser).await;
        let received = stats["packetsReceived"].as_u64().unwrap_or(0);
        let sent = stats["packetsSent"].as_u64().unwrap_or(0);
        let energy = stats["totalAudioEnergy"].as_f64().unwrap_or(0.0);
        if received > 200 && sent > 100 && energy > 0.0 {
            break stats;
        }
        if Instant::now() > deadline {
            browser.screenshot("sipjs-audio-failed").await;
            panic!("the page's audio within 8 s of the answer: {stats}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    browser.screenshot("sipjs-in-call").await;
    eprintln!("SIP.js page in the call: {stats}");
    call.await
        .unwrap()
        .assert_ok("the caller answered by the SIP.js page hung up");
    browser.wait_state("registered", "sipjs-after-hangup").await;
    // The edge's view of the call: the agent's audio reached the caller, and SIPp sent back
    // more than its two pcaps hold, which only its echo of the page's audio adds.
    let pcaps: usize = ["g711a.pcap", "dtmf_2833_5.pcap"]
        .iter()
        .map(|f| pcap_rtp_payloads(&Path::new("/usr/share/sip-tester").join(f)).len())
        .sum();
    let k = key.clone();
    let record = blocking(move || {
        let deadline = Instant::now() + WAIT;
        loop {
            let calls = admin_json(admin, &k, "/calls");
            if let Some(r) = calls["calls"]
                .as_array()
                .and_then(|c| c.iter().find(|r| r["agent"] == "alice"))
            {
                return r.clone();
            }
            assert!(Instant::now() < deadline, "no record of the call: {calls}");
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await;
    assert_eq!(record["outcome"], "answered", "{record:#}");
    assert_eq!(record["hung_up_by"], "caller", "{record:#}");
    let from_caller = record["media"]["caller"]["packets"].as_u64().unwrap_or(0);
    let from_agent = record["media"]["agent"]["packets"].as_u64().unwrap_or(0);
    assert!(from_agent > 200, "the page's audio: {record:#}");
    assert!(
        from_caller as usize > pcaps + 100,
        "the caller's pcaps ({pcaps} packets) and its echo of the page: {record:#}"
    );

    // Signed out: SIP.js sends its un-REGISTER without the token, the edge accepts it on
    // the connection she registered on, and the distributor shows her gone.
    browser.click("#signout").await;
    browser.wait_state("signed-out", "sipjs-signed-out").await;
    browser.screenshot("sipjs-signed-out").await;
    sys.edge.wait_line("agent-down alice edge-1", WAIT);
    let e = events.clone();
    blocking(move || {
        e.wait_for("alice offline", |e| {
            e["type"] == "agent" && e["agent"] == "alice" && e["state"] == "offline"
        })
    })
    .await;
    let k = key.clone();
    let live = blocking(move || admin_json(admin, &k, "/live")).await;
    assert_eq!(live["agents"], serde_json::json!([]), "{live}");
    let state = page_state(&browser).await;
    assert_eq!(state["registerer"], "Unregistered", "{state}");
    assert_eq!(state["error"], "", "{state}");
    // As SIP.js sends them: every REGISTER with the token, the un-REGISTER without.
    let registers = state["registers"].as_array().unwrap();
    let (unregister, registered) = registers.split_last().unwrap();
    assert_eq!(
        unregister,
        &serde_json::json!({"token": false, "expires": 0}),
        "{state}"
    );
    assert!(
        !registered.is_empty()
            && registered
                .iter()
                .all(|r| r == &serde_json::json!({"token": true, "expires": 300})),
        "{state}"
    );

    // The next caller finds nobody to take the call, and the page is offered nothing.
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let next = blocking(move || {
        caller("caller_expect_480.xml", &dir, "after-sign-out", dist)
            .arg(&["-m", "1"])
            .run()
    })
    .await;
    next.assert_ok("480 with nobody signed in");
    let reasons = header_values(&next.received, "Reason");
    assert!(
        reasons.iter().any(|r| r.contains("no agent for the queue")),
        "{reasons:?}"
    );
    let e = events.clone();
    let ended = blocking(move || {
        e.wait_for("the second call's end", |e| {
            e["type"] == "call-ended" && e["outcome"] == "refused"
        })
    })
    .await;
    assert_eq!(ended["reason"], "no agent for the queue", "{ended}");
    let offers: Vec<Value> = events
        .all()
        .into_iter()
        .filter(|e| e["type"] == "call-offered")
        .collect();
    assert_eq!(
        offers.len(),
        1,
        "only the first call was offered: {offers:?}"
    );
    assert_eq!(offers[0]["agent"], "alice");
    assert_ne!(offers[0]["call"], ended["call"]);
    let state = page_state(&browser).await;
    assert_eq!(
        state["invitations"], 1,
        "the page saw one invitation: {state}"
    );
    assert_eq!(state["page"], "signed-out", "{state}");
    assert_eq!(
        state["connected"], true,
        "signed out, the page kept its WebSocket: {state}"
    );
    browser.close().await;
}
