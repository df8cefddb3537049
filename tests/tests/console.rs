//! The supervisor console (issue 18): the page on the distributor's admin listener, in Debian's
//! Chromium through chromedriver, against the real binary with SIPp callers and agents. A
//! supervisor signs in with the admin key (a wrong one is refused), watches calls wait on the
//! wallboard and an agent's state change with no reload, creates an agent, issues her a
//! sign-in link that a second browser opens, and signs her out again; the link's own Revoke
//! refuses a fresh link. Over plain HTTP: nothing private is served without the key or the
//! session cookie, the cookie's attributes, the console header a change needs, a tampered
//! cookie, and the cookie across restarts with the same admin key and with another one.
//! Screenshots under target/browser-screenshots/ (console-wallboard-waiting, console-after).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_edge_tests::browser::Browser;
use agent_edge_tests::{
    Edge, Sipp, System, WAIT, admin_key, agent, free_port, http, register, test_dir, write_config,
};
use base64::Engine as _;
use fantoccini::Locator;
use serde_json::Value;

/// How long the console may take to show a change: it refetches `/live` within about 300 ms
/// of each event, so this is slack for a loaded machine.
const SHOW: Duration = Duration::from_secs(10);

/// Where a failed wait leaves its screenshot.
const FAILED_SHOT: &str = "console-failed";

/// The default queue, where callers may wait a minute.
const QUEUE: &str = "[[distributor.queues]]\nname = \"default\"\nmax_wait_s = 60\n";

/// Runs blocking harness code (SIPp runs, HTTP, waiting for the binary's lines) without holding
/// up the runtime the WebDriver clients run on.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// `document.body.dataset.console`.
async fn console_state(b: &Browser) -> String {
    b.client
        .execute("return document.body.dataset.console || ''", vec![])
        .await
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn fail(b: &Browser, message: String) -> ! {
    b.screenshot(FAILED_SHOT).await;
    panic!("{message}\nthe page shows:\n{}", b.text("main").await);
}

async fn wait_console(b: &Browser, state: &str) {
    let deadline = Instant::now() + SHOW;
    loop {
        let now = console_state(b).await;
        if now == state {
            return;
        }
        if Instant::now() > deadline {
            fail(
                b,
                format!("the console never became `{state}` (it is `{now}`)"),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the text of the first element matching `css` until `ok` says yes, and returns it.
async fn wait_text(b: &Browser, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + SHOW;
    loop {
        let now = b.text(css).await;
        if ok(&now) {
            return now;
        }
        if Instant::now() > deadline {
            fail(
                b,
                format!("`{css}` never showed {what} within {SHOW:?}: it shows {now:?}"),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until exactly `n` elements match `css`.
async fn wait_count(b: &Browser, css: &str, n: usize) {
    let deadline = Instant::now() + SHOW;
    loop {
        let now = b
            .client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |v| v.len());
        if now == n {
            return;
        }
        if Instant::now() > deadline {
            fail(b, format!("{now} elements match `{css}`, not {n}")).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An input's current value (its `value` property, not the attribute it was loaded with).
async fn value(b: &Browser, css: &str) -> String {
    match b.client.find(Locator::Css(css)).await {
        Ok(e) => e.prop("value").await.ok().flatten().unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn wait_value(b: &Browser, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + SHOW;
    loop {
        let now = value(b, css).await;
        if ok(&now) {
            return now;
        }
        if Instant::now() > deadline {
            fail(b, format!("`{css}` never held {what}: it holds {now:?}")).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn classes(b: &Browser, css: &str) -> String {
    match b.client.find(Locator::Css(css)).await {
        Ok(e) => e.attr("class").await.ok().flatten().unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Types `text` into a field, replacing what it held.
async fn fill(b: &Browser, css: &str, text: &str) {
    let field = b
        .client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// A wait the wallboard shows, in seconds ("12 s", "1 min 05 s").
fn seconds(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Some(s) = t.strip_suffix(" s")
        && let Some((m, s)) = s.split_once(" min ")
    {
        return Some(m.trim().parse::<u64>().ok()? * 60 + s.trim().parse::<u64>().ok()?);
    }
    t.strip_suffix(" s")?.trim().parse().ok()
}

/// The `jti` claim of a JWT (not verified: the test only compares it).
fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("a JWT's claims are base64url");
    let claims: Value = serde_json::from_slice(&json).unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

/// `/live` through the admin key.
fn live(admin: SocketAddr, key: &str) -> Value {
    let (status, text) = http(admin, "GET", "/live", Some(key), None);
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_follows_the_wallboard_and_manages_an_agent() {
    let mut sys = blocking(|| System::start(QUEUE));
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let dir = sys.path().to_owned();

    // 1. Signing in: a wrong key is refused and said so; the admin key opens the board, whose
    // event stream is live.
    let console = Browser::start().await;
    console.client.set_window_size(1280, 1000).await.unwrap();
    console
        .client
        .goto(&format!("http://{admin}/console"))
        .await
        .unwrap();
    wait_console(&console, "signed-out").await;
    fill(&console, "#key", "not-the-admin-key-of-this-system").await;
    console.click("#signin-button").await;
    let error = wait_text(&console, "#signin-error", "an error", |t| !t.is_empty()).await;
    assert_eq!(
        console_state(&console).await,
        "signed-out",
        "a wrong key ({error})"
    );
    assert_eq!(console.text("#board").await, "", "the board stays hidden");
    fill(&console, "#key", &key).await;
    console.click("#signin-button").await;
    wait_console(&console, "signed-in").await;
    assert_eq!(console.text("#signin-error").await, "");
    wait_text(&console, "#connection", "live", |t| t == "live").await;

    // 2. The wallboard follows the distributor with no reload. Alice, a SIPp phone that
    // answers what she is offered, signs in; the console sets her away, so callers wait.
    let (port, phone) = agent("agent_answer.xml", &dir, "alice", 3, &[]);
    blocking(|| register(&mut sys.edge, &dir, sys.buffer_udp, "alice", port, false));
    let alice = "#agents tbody tr[data-agent=\"alice\"]";
    wait_text(&console, &format!("{alice} .state"), "available", |t| {
        t == "available"
    })
    .await;
    assert_eq!(console.text(&format!("{alice} .edge")).await, "edge-1");
    wait_text(&console, "#agents-summary .available", "1", |t| t == "1").await;
    console.click(&format!("{alice} .set-away")).await;
    wait_text(
        &console,
        &format!("{alice} .state"),
        "away (Supervisor)",
        |t| t == "away (Supervisor)",
    )
    .await;
    wait_text(&console, "#agents-summary .away", "1", |t| t == "1").await;
    assert_eq!(console.text("#agents-summary .available").await, "0");
    assert_eq!(
        live(admin, &key)["agents"][0]["reason"],
        "Supervisor",
        "the console's Away reached the distributor"
    );

    // Three callers wait (each gives up after 20 s unanswered; answered, each talks 2.5 s).
    let callers = Sipp::new("caller_wait_cancel.xml", free_port(), &dir, "callers")
        .to(sys.dist_udp)
        .arg(&["-s", "support", "-d", "2500", "-m", "3", "-l", "3"])
        .spawn();
    let card = ".queue[data-queue=\"default\"]";
    wait_text(&console, &format!("{card} .waiting"), "3 waiting", |t| {
        t == "3"
    })
    .await;
    assert!(
        classes(&console, card).await.contains("has-waiting"),
        "the card of a queue with calls waiting is marked"
    );
    wait_count(&console, "#calls tbody tr", 3).await;
    for row in console
        .client
        .find_all(Locator::Css("#calls tbody tr .state"))
        .await
        .unwrap()
    {
        assert_eq!(row.text().await.unwrap(), "queued");
    }
    assert_eq!(console.text("#calls tbody tr .queue").await, "default");
    let wait_css = format!("{card} .longest-wait");
    let first = seconds(&console.text(&wait_css).await);
    let grown = wait_text(&console, &wait_css, "a longer wait", |t| {
        seconds(t) > first && seconds(t) >= Some(2)
    })
    .await;
    console.screenshot("console-wallboard-waiting").await;

    // Back: the console sets her available, and she takes the calls one after another; the
    // board shows her on a call and the queue going down to nobody waiting.
    console.click(&format!("{alice} .set-available")).await;
    wait_text(&console, &format!("{alice} .state"), "on-call", |t| {
        t == "on-call"
    })
    .await;
    let waiting = console.text(&format!("{card} .waiting")).await;
    assert!(
        waiting.parse::<u32>().unwrap() < 3,
        "the call she took left the queue: {waiting} waiting"
    );
    // Her row names the call the calls table shows her on (read at one instant).
    let pair = "const row = document.querySelector(arguments[0]);\n\
        const call = document.querySelector('#calls tbody tr.state-connected');\n\
        return [row ? row.textContent : '', call ? call.dataset.call : '', \
        call ? call.querySelector('.agent').textContent : ''];";
    let mine_css = Value::String(format!("{alice} .call"));
    let deadline = Instant::now() + SHOW;
    loop {
        let now = console
            .client
            .execute(pair, vec![mine_css.clone()])
            .await
            .unwrap();
        let [mine, call, agent] = [0, 1, 2].map(|i| now[i].as_str().unwrap_or("").to_owned());
        if !call.is_empty() && mine == call && agent == "alice" {
            break;
        }
        if Instant::now() > deadline {
            fail(
                &console,
                format!("her row's call {mine:?}, the connected call {call:?} of {agent:?}"),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_text(&console, "#agents-summary .on-call", "1", |t| t == "1").await;
    let deadline = Instant::now() + Duration::from_secs(25);
    while console.text(&format!("{card} .waiting")).await != "0"
        || !console.text("#calls tbody tr").await.is_empty()
    {
        if Instant::now() > deadline {
            fail(&console, "the three calls were never all answered".into()).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!classes(&console, card).await.contains("has-waiting"));
    let run = blocking(|| callers.wait());
    run.assert_ok(&format!(
        "three callers who waited (the longest wait shown: {grown})"
    ));
    wait_text(
        &console,
        &format!("{card} .answered-today"),
        "3 answered",
        |t| t == "3",
    )
    .await;
    wait_text(&console, &format!("{alice} .state"), "available", |t| {
        t == "available"
    })
    .await;

    // 3. A new agent from the console: saved, listed, stored with her skills.
    fill(&console, "#agent-id", "carol").await;
    fill(&console, "#agent-name", "Carol").await;
    fill(&console, "#agent-skills", "support:50").await;
    console.click("#agent-save").await;
    wait_text(&console, "#agent-saved", "that carol is saved", |t| {
        t.contains("carol")
    })
    .await;
    assert_eq!(console.text("#agent-error").await, "");
    let listed = "#directory tbody tr[data-agent=\"carol\"]";
    wait_text(&console, &format!("{listed} .skills"), "support:50", |t| {
        t == "support:50"
    })
    .await;
    assert_eq!(console.text(&format!("{listed} .name")).await, "Carol");
    let (status, stored) = blocking(|| http(admin, "GET", "/agents/carol", Some(&key), None));
    assert_eq!(status, 200, "{stored}");
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["name"], "Carol", "{stored}");
    assert_eq!(
        stored["skills"],
        serde_json::json!({"support": 50}),
        "{stored}"
    );
    assert_eq!(stored["max_calls"], 1, "{stored}");

    // Her sign-in link, opened in a browser of her own, signs her in.
    console.click(&format!("{listed} .issue-link")).await;
    let page_url = format!("https://127.0.0.1:{}/?token=", sys.buffer_https.port());
    let link = wait_value(&console, "#link-output", "a sign-in link", |v| {
        v.starts_with(&page_url)
    })
    .await;
    assert!(console.text("#link-status").await.contains("carol"));
    let first_jti = jti_of(link.strip_prefix(&page_url).unwrap());
    let carol_page = Browser::start().await;
    carol_page.client.goto(&link).await.unwrap();
    carol_page
        .wait_state("registered", "console-carol-page")
        .await;
    assert!(carol_page.text("#who").await.contains("Carol"));
    let carol = "#agents tbody tr[data-agent=\"carol\"]";
    wait_text(&console, &format!("{carol} .state"), "available", |t| {
        t == "available"
    })
    .await;
    let token_of = |live: &Value| {
        live["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == "carol")
            .map(|a| a["token"].clone())
    };
    assert_eq!(
        blocking(|| token_of(&live(admin, &key))),
        Some(Value::String(first_jti.clone())),
        "/live names the token she signed in with"
    );

    // 4. Signing her out takes two clicks: the first only asks.
    let sign_out = format!("{carol} .sign-out");
    console.click(&sign_out).await;
    wait_text(&console, &sign_out, "the confirmation", |t| {
        t == "Confirm sign-out"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        carol_page
            .client
            .execute("return document.body.dataset.state", vec![])
            .await
            .unwrap(),
        "registered",
        "one click signs nobody out"
    );
    console.click(&sign_out).await;
    carol_page
        .wait_state("signed-out", "console-carol-signed-out")
        .await;
    let reason = carol_page.text("#signin-error").await;
    assert!(reason.contains("revoked"), "{reason}");
    wait_count(&console, carol, 0).await;
    assert!(
        console.text("#agents-status").await.contains("carol"),
        "{}",
        console.text("#agents-status").await
    );
    assert!(blocking(|| token_of(&live(admin, &key))).is_none());
    // Alice, whom nobody touched, is still there.
    assert_eq!(console.text(&format!("{alice} .state")).await, "available");

    // A fresh link revoked from the console before anyone used it is refused.
    console.click(&format!("{listed} .issue-link")).await;
    let second = wait_value(&console, "#link-output", "another link", |v| {
        v.starts_with(&page_url) && v != link
    })
    .await;
    assert_ne!(jti_of(second.strip_prefix(&page_url).unwrap()), first_jti);
    console.click("#link-revoke").await;
    wait_text(&console, "#link-status", "Revoked.", |t| t == "Revoked.").await;
    assert_eq!(
        value(&console, "#link-output").await,
        "",
        "the link is gone"
    );
    carol_page.client.goto(&second).await.unwrap();
    let deadline = Instant::now() + SHOW;
    loop {
        let error = carol_page.text("#signin-error").await;
        if error.contains("refused") {
            break;
        }
        if Instant::now() > deadline {
            carol_page.screenshot("console-revoked-link-failed").await;
            panic!(
                "the revoked link was not refused: the page is `{}` and says {error:?}",
                carol_page.text("#status").await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    carol_page
        .wait_state("signed-out", "console-revoked-link")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_count(&console, carol, 0).await;

    // 5. The board as it ends, whole: a window as tall as the page, scrolled to its top.
    let height = console
        .client
        .execute("return document.documentElement.scrollHeight", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(1000);
    let height = u32::try_from(height).unwrap_or(1000).clamp(1000, 2400) + 150;
    console.client.set_window_size(1280, height).await.unwrap();
    console
        .client
        .execute("window.scrollTo(0, 0)", vec![])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    console.screenshot("console-after").await;
    carol_page.close().await;
    console.close().await;
    blocking(|| phone.wait()).assert_ok("alice's phone answered the three calls");
}

/// One HTTP/1.0 exchange (so the body is not chunked), read whole.
struct Reply {
    status: u16,
    /// Header names in lowercase.
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or(""));
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = Vec::new();
    // An event stream never ends: what came within the timeout is enough.
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no end of the head in {response:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The `ae_console` value a `Set-Cookie` sets, and the attributes after it.
fn session_cookie(reply: &Reply) -> (String, Vec<String>) {
    let set = reply
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie in {:?}", reply.headers));
    let mut parts = set.split(';').map(str::trim);
    let (name, value) = parts.next().unwrap().split_once('=').unwrap();
    assert_eq!(name, "ae_console", "{set}");
    (value.to_owned(), parts.map(str::to_owned).collect())
}

/// One `agent-edge` on the folder `dir` (its config written there), with this admin key.
fn start(dir: &Path, admin_key: &str, log: &str) -> (Edge, SocketAddr) {
    let config = dir.join("agent-edge.toml");
    if !config.exists() {
        write_config(dir, "", "");
    }
    let mut edge = Edge::start_with_env(
        &[],
        &config,
        &dir.join(log),
        &[("AGENT_EDGE_ADMIN_KEY", admin_key)],
    );
    let admin = edge.addr("distributor.admin");
    edge.wait_line("tunnel-up edge-1", WAIT);
    (edge, admin)
}

#[test]
fn the_console_and_its_cookie_are_refused_without_the_key() {
    const KEY_A: &str = "console-test-admin-key-A-0123456789";
    const KEY_B: &str = "console-test-admin-key-B-9876543210";
    let dir = test_dir();
    let (edge, admin) = start(dir.path(), KEY_A, "agent-edge-1.log");

    // The page itself is public (it holds nothing); everything it shows is not.
    let page = request(admin, "GET", "/console", &[], None);
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.body.contains("signin-form"));
    assert_eq!(
        request(admin, "GET", "/console/console.js", &[], None).status,
        200
    );
    for path in ["/live", "/metrics", "/calls", "/events", "/agents"] {
        let reply = request(admin, "GET", path, &[], None);
        assert_eq!(reply.status, 401, "GET {path} with neither key nor cookie");
    }
    assert_eq!(
        request(admin, "GET", "/console/session", &[], None).status,
        401
    );
    let wrong = request(
        admin,
        "POST",
        "/console/session",
        &[],
        Some(r#"{"key":"console-test-admin-key-X-0000000000"}"#),
    );
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.header("set-cookie").is_none());
    let problem: Value = serde_json::from_str(&wrong.body).unwrap();
    assert_eq!(problem["status"], 401, "{problem}");
    let junk = request(admin, "POST", "/console/session", &[], Some("key=nope"));
    assert_eq!(junk.status, 400, "{}", junk.body);
    assert!(junk.header("set-cookie").is_none());

    // Signed in with the key: a cookie the page's script cannot read, sent to this site
    // alone, over plain HTTP here (so not Secure)...
    let body = format!(r#"{{"key":"{KEY_A}"}}"#);
    let signed = request(admin, "POST", "/console/session", &[], Some(&body));
    assert_eq!(signed.status, 204, "{}", signed.body);
    let (cookie, attributes) = session_cookie(&signed);
    assert!(!cookie.is_empty());
    for wanted in ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=43200"] {
        assert!(
            attributes.iter().any(|a| a == wanted),
            "{wanted} in {attributes:?}"
        );
    }
    assert!(
        !attributes.iter().any(|a| a.eq_ignore_ascii_case("secure")),
        "plain HTTP: {attributes:?}"
    );
    // ... and Secure behind a proxy that terminated TLS.
    let proxied = request(
        admin,
        "POST",
        "/console/session",
        &[("X-Forwarded-Proto", "https")],
        Some(&body),
    );
    assert_eq!(proxied.status, 204);
    let (_, attributes) = session_cookie(&proxied);
    assert!(attributes.iter().any(|a| a == "Secure"), "{attributes:?}");

    // The cookie reads; it changes something only with the console's header.
    let jar = format!("ae_console={cookie}");
    let with_cookie = [("Cookie", jar.as_str())];
    let read = request(admin, "GET", "/live", &with_cookie, None);
    assert_eq!(read.status, 200, "{}", read.body);
    assert!(
        serde_json::from_str::<Value>(&read.body).unwrap()["agents"].is_array(),
        "{}",
        read.body
    );
    assert_eq!(
        request(admin, "GET", "/console/session", &with_cookie, None).status,
        204
    );
    let revoke = Some(r#"{"jti":"0123456789abcdef0123456789abcdef"}"#);
    let bare = request(admin, "POST", "/tokens/revoke", &with_cookie, revoke);
    assert_eq!(bare.status, 403, "no X-AE-Console: {}", bare.body);
    let with_header = [("Cookie", jar.as_str()), ("X-AE-Console", "1")];
    let done = request(admin, "POST", "/tokens/revoke", &with_header, revoke);
    assert_eq!(done.status, 204, "with X-AE-Console: {}", done.body);

    // A cookie changed in its MAC, or in its expiry, is nobody's.
    let (expires, mac) = cookie.split_once('.').expect("expiry.MAC");
    let first = mac.chars().next().unwrap();
    let other = if first == 'A' { 'B' } else { 'A' };
    let tampered = format!("ae_console={expires}.{other}{}", &mac[1..]);
    let moved = format!("ae_console={}.{mac}", expires.parse::<u64>().unwrap() - 1);
    for forged in [&tampered, &moved] {
        let h = [("Cookie", forged.as_str())];
        assert_eq!(
            request(admin, "GET", "/live", &h, None).status,
            401,
            "{forged}"
        );
        assert_eq!(
            request(admin, "GET", "/console/session", &h, None).status,
            401,
            "{forged}"
        );
    }
    // Signing out tells the browser to forget it.
    let out = request(admin, "DELETE", "/console/session", &with_header, None);
    assert_eq!(out.status, 204);
    let (emptied, attributes) = session_cookie(&out);
    assert_eq!(emptied, "");
    assert!(
        attributes.iter().any(|a| a == "Max-Age=0"),
        "{attributes:?}"
    );

    // A restart with the same admin key keeps the session...
    edge.stop_cleanly();
    let (edge, admin) = start(dir.path(), KEY_A, "agent-edge-2.log");
    assert_eq!(
        request(admin, "GET", "/live", &with_cookie, None).status,
        200,
        "the same key after a restart"
    );
    assert_eq!(
        request(admin, "GET", "/console/session", &with_cookie, None).status,
        204
    );

    // ... and another admin key ends it: only the new key gets in.
    edge.stop_cleanly();
    let (_edge, admin) = start(dir.path(), KEY_B, "agent-edge-3.log");
    assert_eq!(
        request(admin, "GET", "/live", &with_cookie, None).status,
        401,
        "a session of the old key"
    );
    assert_eq!(
        request(admin, "GET", "/console/session", &with_cookie, None).status,
        401
    );
    assert_eq!(http(admin, "GET", "/live", Some(KEY_B), None).0, 200);
    assert_eq!(http(admin, "GET", "/live", Some(KEY_A), None).0, 401);
    let old = request(admin, "POST", "/console/session", &[], Some(&body));
    assert_eq!(old.status, 401, "signing in with the old key");
    let new_body = format!(r#"{{"key":"{KEY_B}"}}"#);
    let new = request(admin, "POST", "/console/session", &[], Some(&new_body));
    assert_eq!(new.status, 204);
    let (fresh, _) = session_cookie(&new);
    let jar = format!("ae_console={fresh}");
    assert_eq!(
        request(admin, "GET", "/live", &[("Cookie", jar.as_str())], None).status,
        200
    );
}
