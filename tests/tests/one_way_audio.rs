//! One-way audio (issue 18): in a bridged call, when one direction carries no RTP for
//! `[buffer] one_way_audio_s` while the other still flows, the edge flags the call. A caller
//! whose SIPp plays a pcap and then sends nothing (no `-rtp_echo`) to an agent's page in
//! Chromium is flagged `caller-silent` within that time after its audio stops: on the admin
//! event stream, in `/live`, in `/metrics`, on the agent's page (a notice in the in-call
//! card), and in the call's record (`GET /calls` and `GET /calls.csv`). A call whose audio
//! flows both ways throughout is flagged nowhere. Screenshots under
//! target/browser-screenshots/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_edge_tests::browser::Browser;
use agent_edge_tests::{
    EventStream, System, WAIT, admin_key, caller, header_values, issue_token, metrics_text,
    parse_csv,
};
use serde_json::{Value, json};

/// The configured one-way audio time, in seconds, and the `[buffer]` line that sets it.
const ONE_WAY_S: u64 = 3;
const BUFFER: &str = "one_way_audio_s = 3";

/// How long after the last of the caller's audio the flag may come: the configured time,
/// the bridge's once-a-second check, and the report's way to the distributor and the stream.
const FLAG_WITHIN: Duration = Duration::from_millis(ONE_WAY_S * 1000 + 2500);

/// How long a record may take to show (an answered call's is written about 1 s after its BYE).
const RECORD_WAIT: Duration = Duration::from_secs(15);

/// What the page says when nothing comes from the caller.
const CALLER_SILENT_NOTICE: &str = "You cannot hear the caller: no audio arrives from their side.";

/// The tests that measure audio run one at a time, so two Chromiums decoding at once on a
/// 2-core machine do not starve each other (and the timings stay honest).
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

/// Runs blocking work (the admin API's plain TCP, waits on the event stream) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The admin API: where it listens and its key.
#[derive(Clone)]
struct Admin {
    addr: SocketAddr,
    key: String,
}

impl Admin {
    fn of(sys: &mut System) -> Admin {
        Admin {
            addr: sys.edge.addr("distributor.admin"),
            key: admin_key(sys.path()),
        }
    }

    /// One GET over HTTP/1.0 (so the body is not chunked), read whole: status and body.
    fn get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            self.addr, self.key
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let response = String::from_utf8(response).expect("the response is UTF-8");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("GET {path}: no end of the head in {response:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, body.to_owned())
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The live view's entry for the call `call_id`, if it has one.
    fn live_call(&self, call_id: &str) -> Option<Value> {
        let live = self.json("/live");
        live["calls"]
            .as_array()
            .unwrap_or_else(|| panic!("/live has no calls array: {live}"))
            .iter()
            .find(|c| c["call"] == call_id)
            .cloned()
    }

    /// The Call-ID of the one call in the live view, once there is one.
    fn the_live_call(&self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let live = self.json("/live");
            if let Some(id) = live["calls"][0]["call"].as_str() {
                return id.to_owned();
            }
            assert!(Instant::now() < deadline, "no call in /live: {live}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (up to `within`) until the live view's `media` of the call says `one_way`.
    fn wait_live_one_way(&self, call_id: &str, want: &Value, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let call = self.live_call(call_id);
            let media = call.as_ref().map(|c| &c["media"]);
            if let Some(m) = media
                && m.is_object()
                && m.get("one_way").unwrap_or(&Value::Null) == want
            {
                return m.clone();
            }
            assert!(
                Instant::now() < deadline,
                "/live never said one_way {want} for {call_id} within {within:?}: {call:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A series of `/metrics` (Prometheus text), `None` when it is not exposed.
    fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = metrics_text(self.addr, &self.key, "text/plain");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(name, _)| *name == series)
            .map(|(_, v)| v.trim().parse().unwrap())
    }

    /// `agent_edge_one_way_audio_total{silent="<side>"}`, an absent series read as 0.
    fn one_way_count(&self, side: &str) -> f64 {
        self.metric(&format!(
            "agent_edge_one_way_audio_total{{silent=\"{side}\"}}"
        ))
        .unwrap_or(0.0)
    }

    /// The record of the call `call_id` from `GET /calls`, once it is written.
    fn wait_record(&self, call_id: &str) -> Value {
        let deadline = Instant::now() + RECORD_WAIT;
        loop {
            let page = self.json("/calls");
            let calls = page["calls"]
                .as_array()
                .unwrap_or_else(|| panic!("/calls has no calls array: {page}"));
            if let Some(r) = calls.iter().find(|r| r["call_id"] == call_id) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no record of {call_id} within {RECORD_WAIT:?}: {page}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The `one_way_audio` column of the call's row in `GET /calls.csv`, checking that the
    /// column comes right after `path`.
    fn csv_one_way(&self, call_id: &str) -> String {
        let (status, body) = self.get("/calls.csv");
        assert_eq!(status, 200, "GET /calls.csv: {body}");
        let rows = parse_csv(&body);
        let header = &rows[0];
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .unwrap_or_else(|| panic!("no {name} column in {header:?}"))
        };
        assert_eq!(col("one_way_audio"), col("path") + 1, "{header:?}");
        let row = rows[1..]
            .iter()
            .find(|r| r[col("call_id")] == call_id)
            .unwrap_or_else(|| panic!("no CSV row of {call_id}: {body}"));
        assert_eq!(row.len(), header.len(), "{row:?}");
        row[col("one_way_audio")].clone()
    }
}

/// The `one-way-audio` events the stream has carried so far.
fn one_way_events(events: &EventStream) -> Vec<Value> {
    events
        .all()
        .into_iter()
        .filter(|e| e["type"] == "one-way-audio")
        .collect()
}

/// The page's quality notice as it stands.
#[derive(Debug)]
struct Notice {
    /// The element's `hidden`, and whether it takes up room on the page.
    hidden: bool,
    shown: bool,
    text: String,
    /// Inside the in-call card, as a warning an assistive technology reads out.
    in_card: bool,
    class: String,
    role: String,
}

async fn notice(browser: &Browser) -> Notice {
    let v = browser
        .client
        .execute(
            "const n = document.getElementById('quality-notice');
             if (!n) return null;
             return { hidden: n.hidden, shown: n.offsetParent !== null && n.getClientRects().length > 0,
                      text: n.textContent, in_card: n.closest('#incall') !== null,
                      class: n.className, role: n.getAttribute('role') || '' };",
            vec![],
        )
        .await
        .unwrap();
    assert!(v.is_object(), "the page has no #quality-notice");
    Notice {
        hidden: v["hidden"].as_bool().unwrap(),
        shown: v["shown"].as_bool().unwrap(),
        text: v["text"].as_str().unwrap_or_default().to_owned(),
        in_card: v["in_card"].as_bool().unwrap(),
        class: v["class"].as_str().unwrap_or_default().to_owned(),
        role: v["role"].as_str().unwrap_or_default().to_owned(),
    }
}

/// Asserts the notice is hidden and says nothing.
async fn assert_no_notice(browser: &Browser, when: &str) {
    let n = notice(browser).await;
    assert!(
        n.hidden && !n.shown && n.text.is_empty(),
        "{when}: the quality notice shows: {n:?}"
    );
}

fn packets_received(stats: &Value) -> Option<u64> {
    stats["packetsReceived"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_stops_sending_is_flagged_everywhere_and_the_page_says_so() {
    let _one_at_a_time = AUDIO.lock().await;
    let mut sys = blocking(|| System::start_with("", BUFFER)).await;
    let admin = Admin::of(&mut sys);
    let browser = signed_in(&mut sys, "alice").await;
    let a = admin.clone();
    let events = blocking(move || EventStream::subscribe(a.addr, &a.key)).await;

    // 500 ms after its ACK the caller plays 7.05 s of PCMA, then is silent about 8 s, then
    // hangs up. No echo: nothing comes from its side once the pcap is over.
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let call = tokio::task::spawn_blocking(move || {
        caller("caller_pcap_then_silent.xml", &dir, "silent-caller", dist)
            .arg(&["-m", "1"])
            .run()
    });
    browser.wait_state("ringing", "one-way-ringing").await;
    browser.click("#answer").await;
    let answered = Instant::now();
    browser.wait_state("in-call", "one-way-in-call").await;
    let a = admin.clone();
    let call_id = blocking(move || a.the_live_call()).await;

    // The flag, as soon as the stream carries it.
    let stream = events.clone();
    let id = call_id.clone();
    let flagged = tokio::task::spawn_blocking(move || {
        let e = stream.wait_for("one-way audio", |e| {
            e["type"] == "one-way-audio" && e["call"] == id.as_str()
        });
        (Instant::now(), e)
    });

    // While the pcap plays the page hears the caller, and nothing is flagged; the last time
    // its packet count grew is when the caller's audio stopped.
    let mut last = 0;
    let mut last_growth = None;
    let mut checks_while_playing = 0;
    let mut next_check = Instant::now();
    while !flagged.is_finished() {
        assert!(
            answered.elapsed() < Duration::from_secs(25),
            "no one-way audio event 25 s after the answer: {:#?}",
            events.all()
        );
        let stats = browser.audio_stats().await;
        if let Some(n) = packets_received(&stats)
            && n > last
        {
            last = n;
            last_growth = Some(Instant::now());
            if Instant::now() >= next_check && one_way_events(&events).is_empty() {
                assert_no_notice(&browser, "while the caller's audio plays").await;
                checks_while_playing += 1;
                next_check = Instant::now() + Duration::from_secs(1);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (event_at, event) = flagged.await.unwrap();
    let audio_end = last_growth.expect("the page never received the caller's audio");
    let to_flag = event_at.saturating_duration_since(audio_end);
    eprintln!(
        "caller's audio: {last} packets on the page, stopped {:?} after the answer; \
         one-way audio event {to_flag:?} after that ({:?} after the answer)",
        audio_end - answered,
        event_at - answered
    );
    assert!(
        last > 150,
        "the page received the caller's 236 packets: {last}"
    );
    assert!(
        checks_while_playing >= 3,
        "the notice was checked while the audio played ({checks_while_playing} times)"
    );
    assert!(
        audio_end - answered > Duration::from_secs(6),
        "the pcap plays 7 s, yet the page's audio stopped {:?} after the answer",
        audio_end - answered
    );
    assert!(
        event_at > audio_end + Duration::from_secs(ONE_WAY_S - 1),
        "flagged before the caller was quiet for {ONE_WAY_S} s: {to_flag:?} after its audio \
         stopped"
    );
    assert!(
        to_flag <= FLAG_WITHIN,
        "flagged {to_flag:?} after the caller's audio stopped, more than {FLAG_WITHIN:?}"
    );
    assert_eq!(
        event,
        json!({
            "type": "one-way-audio",
            "call": call_id,
            "agent": "alice",
            "edge": "edge-1",
            "one_way": "caller-silent",
        }),
        "the event"
    );

    // The live view says so under the call's media.
    let (a, id) = (admin.clone(), call_id.clone());
    let media = blocking(move || a.wait_live_one_way(&id, &json!("caller-silent"), WAIT)).await;
    assert!(
        media["from_caller"]["packets"].as_u64().unwrap_or(0) > 150,
        "{media}"
    );
    // The page tells the agent, inside the in-call card.
    let deadline = Instant::now() + Duration::from_secs(3);
    let shown = loop {
        let n = notice(&browser).await;
        if n.shown || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    browser.screenshot("one-way").await;
    assert!(!shown.hidden && shown.shown, "the notice shows: {shown:?}");
    assert_eq!(shown.text, CALLER_SILENT_NOTICE, "{shown:?}");
    assert!(
        shown.in_card && shown.class == "warning" && shown.role == "alert",
        "{shown:?}"
    );
    assert_eq!(browser.text("#quality-notice").await, CALLER_SILENT_NOTICE);
    assert_eq!(browser.text("#status").await, "in a call");
    // Counted once, on the caller's side.
    let a = admin.clone();
    let (caller_count, agent_count) =
        blocking(move || (a.one_way_count("caller"), a.one_way_count("agent"))).await;
    assert_eq!(caller_count, 1.0, "one caller-silent flag counted");
    assert_eq!(agent_count, 0.0, "no agent-silent flag counted");
    // Still nothing from the caller (the page really hears nothing).
    let stats = browser.audio_stats().await;
    assert_eq!(
        packets_received(&stats),
        Some(last),
        "nothing came from the caller after its pcap: {stats}"
    );

    // The caller hangs up: the page is back to registered and the notice is gone.
    let run = call.await.unwrap();
    run.assert_ok("the silent caller hung up");
    browser
        .wait_state("registered", "one-way-after-hangup")
        .await;
    assert_no_notice(&browser, "after the call").await;
    let sipp_call_id = header_values(&run.received, "Call-ID")
        .first()
        .map(|v| v.to_string())
        .expect("a Call-ID in what SIPp received");
    assert_eq!(
        sipp_call_id, call_id,
        "the event named the caller's Call-ID"
    );

    // The record says it, in JSON and in the CSV export.
    let a = admin.clone();
    let id = call_id.clone();
    let (record, csv) = blocking(move || {
        let r = a.wait_record(&id);
        (r, a.csv_one_way(&id))
    })
    .await;
    assert_eq!(record["outcome"], "answered", "{record:#}");
    assert_eq!(record["agent"], "alice", "{record:#}");
    assert_eq!(
        record["one_way_audio"],
        json!(["caller-silent"]),
        "{record:#}"
    );
    assert_eq!(csv, "caller-silent");
    // One flag, never cleared (the caller stayed silent to its BYE), and no other.
    let flags = one_way_events(&events);
    assert_eq!(flags, vec![event], "the one-way audio events");
    let a = admin.clone();
    let counts = blocking(move || (a.one_way_count("caller"), a.one_way_count("agent"))).await;
    assert_eq!(counts, (1.0, 0.0), "the counts after the call");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_call_is_not_flagged() {
    let _one_at_a_time = AUDIO.lock().await;
    let mut sys = blocking(|| System::start_with("", BUFFER)).await;
    let admin = Admin::of(&mut sys);
    let browser = signed_in(&mut sys, "alice").await;
    let a = admin.clone();
    let events = blocking(move || EventStream::subscribe(a.addr, &a.key)).await;

    // 1 s after its ACK the caller plays 7.05 s of PCMA, then the digit 5, and hangs up 9.5 s
    // after its ACK; throughout it echoes what it gets (the page's microphone), so its side
    // never goes quiet.
    let (dir, dist) = (sys.path().to_owned(), sys.dist_udp);
    let call = tokio::task::spawn_blocking(move || {
        caller("caller_pcap_audio.xml", &dir, "normal-caller", dist)
            .arg(&["-m", "1", "-rtp_echo"])
            .run()
    });
    browser.wait_state("ringing", "two-way-ringing").await;
    browser.click("#answer").await;
    let answered = Instant::now();
    browser.wait_state("in-call", "two-way-in-call").await;
    let a = admin.clone();
    let call_id = blocking(move || a.the_live_call()).await;

    // Until the caller's BYE: the page hears the caller without a gap near the configured
    // time, the notice stays hidden, and nothing is flagged anywhere.
    let mut last = 0;
    let mut last_growth: Option<Instant> = None;
    let mut longest_gap = Duration::ZERO;
    let mut notice_checks = 0;
    let mut live_checks = 0;
    let mut next_check = Instant::now();
    loop {
        assert!(
            answered.elapsed() < Duration::from_secs(20),
            "the 9.5 s call never ended"
        );
        let stats = browser.audio_stats().await;
        if stats.is_null() {
            break; // the call is over on the page
        }
        let now = Instant::now();
        if let Some(n) = packets_received(&stats)
            && n > last
        {
            if let Some(t) = last_growth {
                longest_gap = longest_gap.max(now - t);
            }
            last = n;
            last_growth = Some(now);
        }
        assert_eq!(
            one_way_events(&events),
            Vec::<Value>::new(),
            "{:?} after the answer",
            answered.elapsed()
        );
        if now >= next_check {
            let n = notice(&browser).await;
            assert!(
                n.hidden && !n.shown && n.text.is_empty(),
                "{:?} after the answer: {n:?}",
                answered.elapsed()
            );
            notice_checks += 1;
            let (a, id) = (admin.clone(), call_id.clone());
            if let Some(media) = blocking(move || a.live_call(&id))
                .await
                .map(|c| c["media"].clone())
                && media.is_object()
            {
                assert_eq!(
                    media.get("one_way"),
                    None,
                    "{:?} after the answer: {media}",
                    answered.elapsed()
                );
                live_checks += 1;
            }
            next_check = now + Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "normal call: {last} packets on the page, longest gap {longest_gap:?}, notice checked \
         {notice_checks} times, /live media {live_checks} times"
    );
    assert!(
        last > 300,
        "the page heard the pcap and the echo of its microphone: {last}"
    );
    assert!(
        longest_gap < Duration::from_secs(1),
        "the caller's side went quiet for {longest_gap:?}: not a two-way call"
    );
    assert!(
        notice_checks >= 5,
        "the notice checked {notice_checks} times"
    );
    assert!(live_checks >= 3, "/live media checked {live_checks} times");

    let run = call.await.unwrap();
    run.assert_ok("the normal caller hung up");
    browser
        .wait_state("registered", "two-way-after-hangup")
        .await;
    assert_no_notice(&browser, "after the call").await;
    let a = admin.clone();
    let id = call_id.clone();
    let (record, csv, counts) = blocking(move || {
        let r = a.wait_record(&id);
        (
            r,
            a.csv_one_way(&id),
            (a.one_way_count("caller"), a.one_way_count("agent")),
        )
    })
    .await;
    assert_eq!(record["outcome"], "answered", "{record:#}");
    assert_eq!(record["one_way_audio"], json!([]), "{record:#}");
    for side in ["caller", "agent"] {
        assert!(
            record["media"][side]["packets"].as_u64().unwrap_or(0) > 200,
            "a bridged call with audio both ways: {record:#}"
        );
    }
    assert_eq!(csv, "");
    assert_eq!(counts, (0.0, 0.0), "no one-way audio counted");
    // The call's media in the metrics, per leg, as its record sums it up.
    let a = admin.clone();
    let media_metrics = blocking(move || {
        ["caller", "agent"].map(|leg| {
            let packets = a.metric(&format!(
                "agent_edge_call_media_packets_total{{leg=\"{leg}\"}}"
            ));
            let mos = a.metric(&format!("agent_edge_call_media_mos_count{{leg=\"{leg}\"}}"));
            (packets, mos)
        })
    })
    .await;
    for ((packets, mos), side) in media_metrics.into_iter().zip(["caller", "agent"]) {
        assert_eq!(
            packets,
            record["media"][side]["packets"].as_f64(),
            "{side}'s packets in the metrics and the record"
        );
        assert_eq!(mos, Some(1.0), "{side}'s MOS observed once");
    }
    assert_eq!(
        one_way_events(&events),
        Vec::<Value>::new(),
        "no one-way audio event"
    );
    browser.close().await;
}
