//! The agent page in Debian's Chromium, through chromedriver: sign-in, registration with the
//! bearer token over WSS, refusal of a bad token. Screenshots under
//! target/browser-screenshots/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agent_edge_tests::browser::Browser;
use agent_edge_tests::{System, WAIT, admin_key, http, issue_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_from_a_link_registers_the_agent_and_hides_the_token() {
    let mut sys = tokio::task::spawn_blocking(|| System::start(""))
        .await
        .unwrap();
    let dir = sys.path().to_owned();
    let token = tokio::task::spawn_blocking(move || issue_token(&dir, "alice"))
        .await
        .unwrap();
    let browser = Browser::start().await;
    let page = format!("https://127.0.0.1:{}/", sys.buffer_https.port());
    browser
        .client
        .goto(&format!("{page}?token={token}"))
        .await
        .unwrap();
    browser.wait_state("registered", "signed-in").await;
    browser.screenshot("signed-in").await;
    let url = browser.client.current_url().await.unwrap();
    assert!(
        !url.as_str().contains("token"),
        "the token left the address bar: {url}"
    );
    assert!(browser.text("#who").await.contains("alice"));
    assert_eq!(browser.text("#status").await, "registered");
    let line =
        tokio::task::spawn_blocking(move || sys.edge.wait_line("agent-up alice edge-1", WAIT))
            .await
            .unwrap();
    assert_eq!(line, "agent-up alice edge-1");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_and_the_page_says_so() {
    let mut sys = tokio::task::spawn_blocking(|| System::start(""))
        .await
        .unwrap();
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let dir = sys.path().to_owned();
    let token = tokio::task::spawn_blocking(move || issue_token(&dir, "mallory"))
        .await
        .unwrap();
    // The same claims with a signature that is not the distributor's.
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let forged = format!("{signed}.{}", signature.chars().rev().collect::<String>());
    let browser = Browser::start().await;
    let page = format!("https://127.0.0.1:{}/", sys.buffer_https.port());
    browser.client.goto(&page).await.unwrap();
    browser.wait_state("signed-out", "wrong-token").await;
    let field = browser
        .client
        .find(fantoccini::Locator::Css("#token"))
        .await
        .unwrap();
    field.send_keys(&forged).await.unwrap();
    browser.click("#signin-button").await;
    // It tries, is refused, and says so.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    browser.wait_state("signed-out", "wrong-token").await;
    let error = browser.text("#signin-error").await;
    browser.screenshot("wrong-token").await;
    assert!(error.contains("refused"), "{error}");
    let (_, live) =
        tokio::task::spawn_blocking(move || http(admin, "GET", "/live", Some(&key), None))
            .await
            .unwrap();
    let live: serde_json::Value = serde_json::from_str(&live).unwrap();
    assert_eq!(
        live["agents"],
        serde_json::json!([]),
        "nobody registered: {live}"
    );
    browser.close().await;
}

/// The tests that measure audio run one at a time, so two Chromiums decoding at once on a
/// 2-core machine do not starve each other.
static AUDIO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Signs `agent` in on a fresh page and waits until it is registered and known to the
/// distributor.
async fn signed_in(sys: &mut System, agent: &str) -> Browser {
    let (dir, name) = (sys.path().to_owned(), agent.to_owned());
    let token = tokio::task::spawn_blocking(move || issue_token(&dir, &name))
        .await
        .unwrap();
    let browser = Browser::start().await;
    let page = format!(
        "https://127.0.0.1:{}/?token={token}",
        sys.buffer_https.port()
    );
    browser.client.goto(&page).await.unwrap();
    browser.wait_state("registered", "signed-in").await;
    let _ = sys
        .edge
        .wait_line(&format!("agent-up {agent} edge-1"), WAIT);
    browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_call_carries_audio_both_ways_and_the_caller_hangs_up() {
    let _one_at_a_time = AUDIO.lock().await;
    let mut sys = tokio::task::spawn_blocking(|| System::start(""))
        .await
        .unwrap();
    let browser = signed_in(&mut sys, "alice").await;
    browser.screenshot("signed-in").await;
    // The caller plays G.711 from a pcap and echoes what it receives: audio the page sends
    // comes back only if SIPp received it.
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let call = tokio::task::spawn_blocking(move || {
        agent_edge_tests::caller("caller_pcap_audio.xml", &dir, "caller", dist)
            .arg(&["-m", "1", "-rtp_echo"])
            .run()
    });
    browser.wait_state("ringing", "ringing").await;
    assert_eq!(browser.text("#in-queue").await, "default");
    assert_eq!(browser.text("#in-type").await, "default");
    browser.screenshot("ringing").await;
    browser.click("#answer").await;
    browser.wait_state("in-call", "in-call").await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let stats = browser.audio_stats().await;
    browser.screenshot("in-call").await;
    let received = stats["packetsReceived"].as_u64().unwrap_or(0);
    let sent = stats["packetsSent"].as_u64().unwrap_or(0);
    assert!(sent > 100, "the page sent its microphone: {stats}");
    // Over 4 s the pcap brings about 130 packets; the echo of the page's audio as many again.
    assert!(
        received > 200,
        "audio from the caller and the echo: {stats}"
    );
    assert!(
        stats["totalAudioEnergy"].as_f64().unwrap_or(0.0) > 0.0,
        "{stats}"
    );
    call.await.unwrap().assert_ok("the caller hung up");
    browser
        .wait_state("registered", "after-caller-hangup")
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_up_from_the_page_ends_the_call_on_both_sides() {
    let _one_at_a_time = AUDIO.lock().await;
    let mut sys = tokio::task::spawn_blocking(|| System::start(""))
        .await
        .unwrap();
    let browser = signed_in(&mut sys, "alice").await;
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let call = tokio::task::spawn_blocking(move || {
        agent_edge_tests::caller("caller_call_wait_bye.xml", &dir, "caller", dist)
            .arg(&["-m", "1", "-rtp_echo"])
            .run()
    });
    browser.wait_state("ringing", "page-hangup").await;
    browser.click("#answer").await;
    browser.wait_state("in-call", "page-hangup").await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let stats = browser.audio_stats().await;
    assert!(
        stats["packetsReceived"].as_u64().unwrap_or(0) > 50,
        "the echo came back: {stats}"
    );
    browser.click("#hangup").await;
    browser.wait_state("registered", "page-hangup").await;
    call.await.unwrap().assert_ok("the caller got the BYE");
    browser.close().await;
}

/// Stores an agent with its skills through the admin API and returns a token for it.
fn stored_agent(
    admin: std::net::SocketAddr,
    key: &str,
    id: &str,
    skills: &str,
) -> (String, String) {
    let body = format!(r#"{{"id":"{id}","name":"{id}","skills":{skills},"max_calls":1}}"#);
    let (status, text) = http(admin, "POST", "/agents", Some(key), Some(&body));
    assert_eq!(status, 201, "{text}");
    let (status, text) = http(
        admin,
        "POST",
        &format!("/agents/{id}/tokens"),
        Some(key),
        None,
    );
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        v["token"].as_str().unwrap().to_owned(),
        v["jti"].as_str().unwrap().to_owned(),
    )
}

async fn open_page(https: std::net::SocketAddr, token: &str, shot: &str) -> Browser {
    let browser = Browser::start().await;
    let page = format!("https://127.0.0.1:{}/?token={token}", https.port());
    browser.client.goto(&page).await.unwrap();
    browser.wait_state("registered", shot).await;
    browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_while_signed_in_signs_the_page_out_with_the_reason() {
    let mut sys = tokio::task::spawn_blocking(|| System::start(""))
        .await
        .unwrap();
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let k = key.clone();
    let (token, jti) = tokio::task::spawn_blocking(move || stored_agent(admin, &k, "alice", "{}"))
        .await
        .unwrap();
    let browser = open_page(sys.buffer_https, &token, "revoked").await;
    let body = format!(r#"{{"jti":"{jti}"}}"#);
    let (status, _) = tokio::task::spawn_blocking(move || {
        http(admin, "POST", "/tokens/revoke", Some(&key), Some(&body))
    })
    .await
    .unwrap();
    assert_eq!(status, 204);
    browser.wait_state("signed-out", "revoked").await;
    browser.screenshot("revoked").await;
    let error = browser.text("#signin-error").await;
    assert!(error.contains("revoked"), "{error}");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_different_skills_each_get_calls_of_their_type() {
    let types = r#"
[[distributor.call_types]]
name = "billing"
queue = "billing"
request_user = { equals = "billing" }

[[distributor.call_types]]
name = "support"
queue = "support"
request_user = { equals = "support" }

[[distributor.queues]]
name = "billing"
skills = { billing = 10 }

[[distributor.queues]]
name = "support"
skills = { support = 10 }
"#;
    let mut sys = tokio::task::spawn_blocking(move || System::start(types))
        .await
        .unwrap();
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let (alice, bob) = tokio::task::spawn_blocking(move || {
        (
            stored_agent(admin, &key, "alice", r#"{"billing":50}"#).0,
            stored_agent(admin, &key, "bob", r#"{"support":50}"#).0,
        )
    })
    .await
    .unwrap();
    let alice = open_page(sys.buffer_https, &alice, "skills-alice").await;
    let bob = open_page(sys.buffer_https, &bob, "skills-bob").await;
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let calls = dir.join("types.csv");
    std::fs::write(&calls, "SEQUENTIAL\nsupport;\nbilling;\n").unwrap();
    let run = tokio::task::spawn_blocking(move || {
        agent_edge_tests::Sipp::new(
            "caller_typed.xml",
            agent_edge_tests::free_port(),
            &dir,
            "callers",
        )
        .arg(&["-inf", calls.to_str().unwrap()])
        .to(dist)
        .arg(&["-d", "1000", "-m", "2", "-l", "1"])
        .run()
    });
    for (page, name, kind) in [(&bob, "bob", "support"), (&alice, "alice", "billing")] {
        page.wait_state("ringing", &format!("skills-{name}")).await;
        assert_eq!(page.text("#in-type").await, kind);
        assert_eq!(page.text("#in-queue").await, kind);
        page.click("#answer").await;
        page.wait_state("in-call", &format!("skills-{name}")).await;
        page.wait_state("registered", &format!("skills-{name}"))
            .await;
    }
    run.await.unwrap().assert_ok("one call of each type");
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_after_a_buffer_restart_and_takes_the_next_call() {
    let dir = agent_edge_tests::test_dir();
    let (tunnel, https) = (agent_edge_tests::free_port(), agent_edge_tests::free_port());
    let d = dir.path().to_owned();
    let (mut dist, dist_udp) =
        tokio::task::spawn_blocking(move || agent_edge_tests::start_distributor(&d, tunnel))
            .await
            .unwrap();
    let d = dir.path().to_owned();
    let mut buffer = tokio::task::spawn_blocking(move || {
        let mut b = agent_edge_tests::start_buffer(&d, tunnel, Some(https), "buffer1.log");
        b.wait_line("tunnel-up edge-1", WAIT);
        b
    })
    .await
    .unwrap();
    let d = dir.path().to_owned();
    let token = tokio::task::spawn_blocking(move || issue_token(&d, "alice"))
        .await
        .unwrap();
    let page = open_page(
        std::net::SocketAddr::from(([127, 0, 0, 1], https)),
        &token,
        "restart",
    )
    .await;

    buffer.kill();
    page.wait_state("connecting", "restart-reconnecting").await;
    assert!(page.text("#banner").await.contains("reconnecting"));
    page.screenshot("reconnecting").await;
    let d = dir.path().to_owned();
    let (buffer, dist) = tokio::task::spawn_blocking(move || {
        let mut b = agent_edge_tests::start_buffer(&d, tunnel, Some(https), "buffer2.log");
        b.wait_line("tunnel-up edge-1", WAIT);
        // The page registers again by itself.
        dist.wait_line("agent-up alice edge-1", WAIT);
        dist.wait_line("agent-up alice edge-1", WAIT);
        (b, dist)
    })
    .await
    .unwrap();
    page.wait_state("registered", "restart-registered").await;
    let d = dir.path().to_owned();
    let call = tokio::task::spawn_blocking(move || {
        agent_edge_tests::caller("caller_call_hangup.xml", &d, "after-restart", dist_udp)
            .arg(&["-m", "1"])
            .run()
    });
    page.wait_state("ringing", "restart-ringing").await;
    page.click("#answer").await;
    call.await.unwrap().assert_ok("the call after the restart");
    page.wait_state("registered", "restart-after-call").await;
    page.close().await;
    drop((buffer, dist));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_from_the_page_steers_the_distributor_and_wrap_up_follows_a_call() {
    let queue = "[[distributor.queues]]\nname = \"default\"\nwrap_up_s = 3\n";
    let mut sys = tokio::task::spawn_blocking(move || System::start(queue))
        .await
        .unwrap();
    let admin = sys.edge.addr("distributor.admin");
    let key = admin_key(sys.path());
    let page = signed_in(&mut sys, "alice").await;
    page.wait_acd("available", "presence").await;
    // Away for lunch: the distributor agrees, and a caller waits instead of ringing.
    page.client
        .find(fantoccini::Locator::Css("#away-reason"))
        .await
        .unwrap()
        .select_by_label("Lunch")
        .await
        .unwrap();
    page.click("#go-away").await;
    page.wait_acd("away", "presence-away").await;
    assert_eq!(page.text("#acd-state").await, "away (Lunch)");
    page.screenshot("away").await;
    let k = key.clone();
    let live = tokio::task::spawn_blocking(move || http(admin, "GET", "/live", Some(&k), None))
        .await
        .unwrap();
    let live: serde_json::Value = serde_json::from_str(&live.1).unwrap();
    assert_eq!(live["agents"][0]["reason"], "Lunch", "{live}");
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let calls = dir.join("one.csv");
    std::fs::write(&calls, "SEQUENTIAL\nsupport;\n").unwrap();
    let run = tokio::task::spawn_blocking(move || {
        agent_edge_tests::Sipp::new(
            "caller_typed.xml",
            agent_edge_tests::free_port(),
            &dir,
            "caller",
        )
        .arg(&["-inf", calls.to_str().unwrap()])
        .to(dist)
        .arg(&["-d", "1000", "-m", "1"])
        .run()
    });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        page.text("#status").await,
        "registered",
        "no ringing while away"
    );
    // Back: the waiting call is offered at once.
    page.click("#go-available").await;
    page.wait_state("ringing", "presence-back").await;
    page.click("#answer").await;
    run.await.unwrap().assert_ok("the caller who waited");
    page.wait_acd("wrap-up", "presence-wrap-up").await;
    assert!(page.text("#wrap-up-left").await.contains("s left"));
    page.screenshot("wrap-up").await;
    page.wait_acd("available", "presence-after-wrap-up").await;
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_and_resume_from_the_page_reach_the_caller() {
    let mut sys = tokio::task::spawn_blocking(|| System::start(""))
        .await
        .unwrap();
    let page = signed_in(&mut sys, "alice").await;
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let call = tokio::task::spawn_blocking(move || {
        agent_edge_tests::caller("caller_hold.xml", &dir, "caller", dist)
            .arg(&["-m", "1"])
            .run()
    });
    page.wait_state("ringing", "hold").await;
    page.click("#answer").await;
    page.wait_state("in-call", "hold").await;
    // The caller sees a=sendonly, then a=sendrecv (its scenario checks each re-INVITE).
    page.click("#hold").await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    page.screenshot("on-hold").await;
    let pressed = page
        .client
        .find(fantoccini::Locator::Css("#hold"))
        .await
        .unwrap()
        .attr("aria-pressed")
        .await
        .unwrap();
    assert_eq!(pressed.as_deref(), Some("true"));
    page.click("#hold").await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    page.click("#hangup").await;
    page.wait_state("registered", "hold-after").await;
    let run = call.await.unwrap();
    run.assert_ok("the caller was held, resumed, then hung up on");
    // Each new description the caller got (the answer, then the hold and resume offers)
    // carries a higher `o=` version (RFC 3264 §8), or phones that honour it ignore the change.
    let mut distinct: Vec<&String> = Vec::new();
    for m in &run.received {
        // A retransmission is the same message again.
        if !distinct.contains(&m) {
            distinct.push(m);
        }
    }
    let versions: Vec<u64> = distinct
        .iter()
        .filter_map(|m| m.lines().find(|l| l.starts_with("o=agent-edge ")))
        .map(|o| o.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(versions.len(), 3, "answer, hold, resume: {versions:?}");
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "the o= version must go up: {versions:?}"
    );
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_call_goes_back_to_the_queue_and_enter_answers_the_next() {
    let mut sys = tokio::task::spawn_blocking(|| System::start(""))
        .await
        .unwrap();
    let page = signed_in(&mut sys, "alice").await;
    // Declined by the only agent: the queue has nobody else, and says so.
    let scenario = sys.path().join("caller_declined.xml");
    let text = std::fs::read_to_string(agent_edge_tests::scenario("caller_queue_timeout.xml"))
        .unwrap()
        .replace("response=\"503\"", "response=\"480\"")
        .replace(
            "cause=503 ;text=.queue timeout.",
            "cause=480 ;text=.no agent for the queue.",
        );
    assert!(text.contains("response=\"480\"") && text.contains("no agent"));
    std::fs::write(&scenario, text).unwrap();
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let declined = tokio::task::spawn_blocking(move || {
        agent_edge_tests::caller(scenario.to_str().unwrap(), &dir, "declined", dist)
            .arg(&["-m", "1"])
            .run()
    });
    page.wait_state("ringing", "decline").await;
    page.click("#decline").await;
    declined.await.unwrap().assert_ok("480 after the decline");
    page.wait_state("registered", "decline").await;
    // The next call: Answer has the focus, and Enter takes the call.
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let next = tokio::task::spawn_blocking(move || {
        agent_edge_tests::caller("caller_call_hangup.xml", &dir, "next", dist)
            .arg(&["-m", "1"])
            .run()
    });
    page.wait_state("ringing", "keyboard").await;
    let focused = page.client.active_element().await.unwrap();
    assert_eq!(focused.attr("id").await.unwrap().as_deref(), Some("answer"));
    focused.send_keys("\u{E007}").await.unwrap();
    page.wait_state("in-call", "keyboard").await;
    next.await
        .unwrap()
        .assert_ok("the call answered from the keyboard");
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_link_printed_at_start_signs_a_page_in() {
    let mut sys = tokio::task::spawn_blocking(|| System::start(""))
        .await
        .unwrap();
    let line = sys.edge.wait_line("demo agent: https://", WAIT);
    let link = line.trim_start_matches("demo agent: ").to_owned();
    assert!(link.contains("/?token="), "{line}");
    let browser = Browser::start().await;
    browser.client.goto(&link).await.unwrap();
    browser.wait_state("registered", "demo").await;
    assert!(browser.text("#who").await.contains("Demo agent"));
    browser.close().await;
}
