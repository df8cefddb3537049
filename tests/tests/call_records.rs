//! Call records (issue 18): every call the distributor handles leaves one record in the
//! SQLite store, read back through the admin API's `GET /calls` (JSON, filtered and paged) and
//! `GET /calls.csv` (RFC 4180). SIPp makes a mixed run of calls one after another (answered,
//! abandoned in the queue, ring-no-answer then answered by the next agent, hung up by the
//! agent) and each record is checked against what SIPp did; the records survive a clean stop
//! (SIGTERM) and a start on the same store. A store on a full disk (a tmpfs of the test's,
//! filled up) stops no call: the records wait in memory, are counted in `/metrics` and logged,
//! and are written once there is room again. The tmpfs needs root: that test is skipped
//! elsewhere, and fails on CI (`CI=true`), which runs as root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_edge_tests::{
    Edge, Sipp, WAIT, admin_key, agent, free_port, header_values, http, issue_token, metrics_text,
    parse_csv, register, test_dir, write_config,
};
use serde_json::Value;

/// The default queue, whose offers ring 2 s before they are withdrawn.
const QUEUE: &str = "\n[[distributor.queues]]\nname = \"default\"\nring_timeout_s = 2\n";

/// How long a record may take to show (an answered call's is written about 1 s after its BYE).
const RECORD_WAIT: Duration = Duration::from_secs(15);

/// The CSV export's header row, as the contract gives it.
const CSV_HEADER: &str = "id,call_id,arrived,answered,ended,caller,caller_name,dialled,\
call_type,queue,priority,outcome,reason,hung_up_by,agent,edge,offers,wait_ms,ring_ms,talk_ms,\
wrap_up_ms,caller_packets,caller_lost,caller_jitter_ms,caller_mos,agent_packets,agent_lost,\
agent_jitter_ms,agent_mos,path,one_way_audio,disposition,notes";

/// One `agent-edge` (distributor and buffer server in one process) on a config of the test's.
struct Site {
    edge: Edge,
    dist_udp: SocketAddr,
    buffer_udp: SocketAddr,
    admin: SocketAddr,
    key: String,
}

impl Site {
    fn start(dir: &Path, config: &Path, log: &str) -> Site {
        let mut edge = Edge::start(&[], config, &dir.join(log));
        let dist_udp = edge.addr("distributor.udp");
        let buffer_udp = edge.addr("buffer.udp");
        let admin = edge.addr("distributor.admin");
        edge.wait_line("tunnel-up edge-1", WAIT);
        Site {
            edge,
            dist_udp,
            buffer_udp,
            admin,
            key: admin_key(dir),
        }
    }

    fn presence(&self, agent: &str, body: &str) {
        let path = format!("/agents/{agent}/presence");
        let (status, text) = http(self.admin, "PUT", &path, Some(&self.key), Some(body));
        assert_eq!(status, 204, "presence of {agent}: {text}");
    }

    /// `GET path` with the admin key: status, media type, body.
    fn get(&self, path: &str) -> (u16, String, String) {
        get(self.admin, path, Some(&self.key))
    }

    /// `GET /calls?query`, which must answer 200 with JSON: its `calls` and `next`.
    fn calls(&self, query: &str) -> (Vec<Value>, Value) {
        let (status, media_type, body) = self.get(&format!("/calls{query}"));
        assert_eq!(
            status,
            200,
            "GET /calls{query}: {body}\n{}",
            self.edge.log_tail()
        );
        assert!(
            media_type.starts_with("application/json"),
            "GET /calls{query}: {media_type}"
        );
        let json: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("/calls{query}: {e}: {body}"));
        let calls = json["calls"]
            .as_array()
            .unwrap_or_else(|| panic!("/calls{query} has no calls array: {body}"))
            .clone();
        assert!(
            json.get("next").is_some(),
            "/calls{query} has no next: {body}"
        );
        (calls, json["next"].clone())
    }

    /// The records' ids for `query`, in the order given, checking no further page is offered.
    fn ids(&self, query: &str) -> Vec<String> {
        let (calls, next) = self.calls(query);
        assert_eq!(next, Value::Null, "/calls{query}: all on one page");
        calls.iter().map(|c| s(&c["id"])).collect()
    }

    /// Waits (up to `within`) until `GET /calls` holds exactly `n` records, and returns them.
    fn wait_calls(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let (status, _, body) = self.get("/calls");
            if status == 200 {
                let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if let Some(calls) = json["calls"].as_array()
                    && calls.len() == n
                {
                    return calls.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "GET /calls never held {n} records within {within:?}; last it said {status}: \
                 {body}\n{}",
                self.edge.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `/metrics` in the Prometheus text format.
    fn metrics(&self) -> String {
        metrics_text(self.admin, &self.key, "text/plain").1
    }

    /// Waits until the series `series` (name with its labels, as exposed) reads `want`.
    fn wait_metric(&self, series: &str, want: f64) {
        let deadline = Instant::now() + RECORD_WAIT;
        loop {
            let text = self.metrics();
            if metric(&text, series) == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} never read {want} (it reads {:?}):\n{}",
                metric(&text, series),
                text.lines()
                    .filter(|l| l.contains("call_record"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One caller's SIPp call (`-m 1`) dialling `support`; it must succeed.
    fn call(&self, dir: &Path, scenario_file: &str, name: &str) -> Made {
        let port = free_port();
        let run = Sipp::new(scenario_file, port, dir, name)
            .to(self.dist_udp)
            .arg(&["-s", "support", "-d", "200", "-m", "1"])
            .run();
        run.assert_ok(name);
        let call_id = header_values(&run.received, "Call-ID")
            .first()
            .map(|v| v.to_string())
            .unwrap_or_else(|| panic!("{name}: no Call-ID in what SIPp received"));
        Made {
            call_id,
            caller: format!("sip:caller1@127.0.0.1:{port}"),
        }
    }
}

/// What a caller's SIPp run tells of its call.
#[derive(Debug, Clone)]
struct Made {
    call_id: String,
    /// The From URI it sent (`caller[call_number]`, the first and only call of its run).
    caller: String,
}

/// What one call's record must say.
struct Expected<'a> {
    made: &'a Made,
    outcome: &'a str,
    reason: &'a str,
    hung_up_by: Option<&'a str>,
    /// Who answered.
    agent: Option<&'a str>,
    /// (agent, result) of every offer, in order.
    offers: &'a [(&'a str, &'a str)],
}

/// One GET over HTTP/1.0 (so the body is not chunked), read whole: status, media type
/// (lowercase), body.
fn get(admin: SocketAddr, path: &str, key: Option<&str>) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {admin}\r\n{auth}\r\n").unwrap();
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
    let media_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, media_type, body.to_owned())
}

/// A query string from pairs, the values percent-encoded (a cursor is opaque).
fn query(pairs: &[(&str, &str)]) -> String {
    let encode = |v: &str| -> String {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    format!("?{}", parts.join("&"))
}

/// The value of one series in a Prometheus text exposition, e.g.
/// `agent_edge_call_ring_seconds_count{queue="default"}`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, v)| v.trim().parse().ok())
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_owned()
}

/// Milliseconds since the Unix epoch of an RFC 3339 time in UTC with milliseconds
/// (`2026-12-07T14:05:00.123Z`), the one form the records use.
fn unix_ms(t: &str) -> i64 {
    let b = t.as_bytes();
    let shape = b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z';
    assert!(shape, "not RFC 3339 in UTC with milliseconds: {t:?}");
    let n = |from: usize, to: usize| -> i64 {
        t[from..to]
            .parse()
            .unwrap_or_else(|_| panic!("not RFC 3339: {t:?}"))
    };
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    assert!((1..=12).contains(&m) && (1..=31).contains(&d), "{t:?}");
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60 + n(17, 19)) * 1000 + n(20, 23)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Checks a record against the call it is of.
fn check_record(r: &Value, e: &Expected<'_>, dist_udp: SocketAddr) {
    let what = format!("the record of {}: {r:#}", e.made.call_id);
    let id = s(&r["id"]);
    assert!(!id.is_empty(), "{what}");
    assert_eq!(s(&r["call_id"]), e.made.call_id, "{what}");
    assert_eq!(s(&r["caller"]), e.made.caller, "{what}");
    assert!(s(&r["caller"]).starts_with("sip:"), "{what}");
    assert_eq!(
        r["caller_name"], "Caller 1",
        "the From's display name: {what}"
    );
    assert_eq!(
        s(&r["dialled"]),
        format!("sip:support@{dist_udp}"),
        "the request-URI: {what}"
    );
    assert_eq!(r["call_type"], "default", "{what}");
    assert_eq!(r["queue"], "default", "{what}");
    assert_eq!(r["priority"], 0, "{what}");
    assert_eq!(r["outcome"], e.outcome, "{what}");
    assert_eq!(r["reason"], e.reason, "{what}");
    assert_eq!(r["hung_up_by"], json_opt(e.hung_up_by), "{what}");
    assert_eq!(r["agent"], json_opt(e.agent), "{what}");
    let answered = e.outcome == "answered";
    assert_eq!(
        r["edge"],
        json_opt(answered.then_some("edge-1")),
        "the answering agent's edge: {what}"
    );
    // Desk phones' media is anchored at the edge (`[buffer] anchor_desk_phone_media`), so
    // an answered call has its media summed up; these SIPp peers send no RTP: nothing
    // measured either way. An unanswered call has none.
    if answered {
        for leg in ["caller", "agent"] {
            assert_eq!(r["media"][leg]["packets"], 0, "{what}");
            assert_eq!(r["media"][leg]["mos"], Value::Null, "{what}");
        }
        assert_eq!(r["media"]["path"], Value::Null, "{what}");
    } else {
        assert_eq!(r["media"], Value::Null, "{what}");
    }
    assert_eq!(r["one_way_audio"], serde_json::json!([]), "{what}");
    assert_eq!(r["disposition"], Value::Null, "{what}");
    assert_eq!(r["notes"], Value::Null, "{what}");
    assert!(
        r["wrap_up_ms"].is_null() || r["wrap_up_ms"].is_u64(),
        "{what}"
    );

    // The times: arrived ≤ answered ≤ ended, and the durations between them.
    let arrived = unix_ms(&s(&r["arrived"]));
    let ended = unix_ms(&s(&r["ended"]));
    assert!(arrived <= ended, "{what}");
    let wait_ms = r["wait_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("wait_ms: {what}")) as i64;
    let close = |a: i64, b: i64| (a - b).abs() <= 5;
    if answered {
        let at = unix_ms(&s(&r["answered"]));
        assert!(arrived <= at && at <= ended, "{what}");
        assert!(
            close(wait_ms, at - arrived),
            "wait_ms, arrival to answer: {what}"
        );
        let talk_ms = r["talk_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("talk_ms: {what}")) as i64;
        assert!(close(talk_ms, ended - at), "talk_ms, answer to end: {what}");
        let ring_ms = r["ring_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("ring_ms: {what}")) as i64;
        let last_offered = unix_ms(&s(&r["offers"][e.offers.len() - 1]["offered"]));
        assert!(
            close(ring_ms, at - last_offered),
            "ring_ms, the answering offer's ringing: {what}"
        );
    } else {
        assert_eq!(r["answered"], Value::Null, "{what}");
        assert_eq!(r["talk_ms"], Value::Null, "{what}");
        assert_eq!(r["ring_ms"], Value::Null, "{what}");
        assert!(
            close(wait_ms, ended - arrived),
            "wait_ms, arrival to end: {what}"
        );
    }

    // The offers, in the order made.
    let offers = r["offers"]
        .as_array()
        .unwrap_or_else(|| panic!("offers: {what}"));
    let made: Vec<(String, String)> = offers
        .iter()
        .map(|o| (s(&o["agent"]), s(&o["result"])))
        .collect();
    let want: Vec<(String, String)> = e
        .offers
        .iter()
        .map(|(a, r)| (a.to_string(), r.to_string()))
        .collect();
    assert_eq!(made, want, "{what}");
    let mut previous = arrived;
    for o in offers {
        assert_eq!(o["edge"], "edge-1", "{what}");
        let (offered, over) = (unix_ms(&s(&o["offered"])), unix_ms(&s(&o["ended"])));
        assert!(previous <= offered && offered <= over, "{what}");
        assert!(over <= ended, "{what}");
        previous = offered;
    }
}

fn json_opt(v: Option<&str>) -> Value {
    v.map_or(Value::Null, Value::from)
}

/// `GET /calls.csv?query`: its rows, the header first, checked against the contract's.
fn csv(site: &Site, query: &str) -> Vec<Vec<String>> {
    let (status, media_type, body) = site.get(&format!("/calls.csv{query}"));
    assert_eq!(status, 200, "GET /calls.csv{query}: {body}");
    assert_eq!(
        media_type, "text/csv; charset=utf-8",
        "GET /calls.csv{query}"
    );
    let rows = parse_csv(&body);
    let header: Vec<String> = CSV_HEADER.split(',').map(str::to_owned).collect();
    assert_eq!(rows.first(), Some(&header), "the header row");
    for row in &rows {
        assert_eq!(row.len(), header.len(), "a row of every column: {row:?}");
    }
    rows
}

/// A 400 with an RFC 9457 problem document.
fn assert_problem(site: &Site, path: &str) {
    let (status, media_type, body) = site.get(path);
    assert_eq!(status, 400, "GET {path}: {body}");
    assert!(
        media_type.starts_with("application/problem+json"),
        "GET {path}: {media_type}"
    );
    let problem: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
    assert!(
        problem["title"].as_str().is_some_and(|t| !t.is_empty()),
        "GET {path}: {body}"
    );
    assert!(problem["detail"].is_string(), "GET {path}: {body}");
    assert_eq!(problem["status"], 400, "GET {path}: {body}");
}

/// Registers `id` again at `port` (another SIPp): the buffer server replaces the agent's
/// contact, and the agent stays signed in as she was.
fn register_again(site: &Site, dir: &Path, id: &str, port: u16) {
    Sipp::new(
        "agent_register.xml",
        free_port(),
        dir,
        &format!("register-again-{id}-{port}"),
    )
    .to(site.buffer_udp)
    .token_file(dir, &issue_token(dir, id))
    .key("agent", id)
    .key("contact_port", &port.to_string())
    .key("contact_transport", "")
    .arg(&["-m", "1"])
    .run()
    .assert_ok("registering again at another contact");
}

#[test]
fn a_mixed_run_leaves_one_correct_record_per_call_and_they_survive_a_restart() {
    let dir = test_dir();
    let d = dir.path().to_owned();
    let config = write_config(&d, QUEUE, "");
    let mut site = Site::start(&d, &config, "agent-edge.log");
    let started = now_ms();

    // 1. `quick` (the only agent) answers; the caller hangs up.
    let (quick_port, quick) = agent("agent_answer.xml", &d, "quick", 2, &[]);
    register(
        &mut site.edge,
        &d,
        site.buffer_udp,
        "quick",
        quick_port,
        false,
    );
    let c1 = site.call(&d, "caller_call_hangup.xml", "call1");

    // 2. `quick` is at lunch: the caller waits in the queue, and gives up.
    site.presence("quick", r#"{"state":"away","reason":"lunch"}"#);
    let c2 = site.call(&d, "caller_cancel.xml", "call2");

    // 3. `slow` signs in, then `quick` is back: `slow` is idle longest and rings first, never
    // answers, and after the queue's 2 s the call goes to `quick`, who answers.
    let (slow_port, slow) = agent("agent_ring_cancel.xml", &d, "slow", 1, &[]);
    register(
        &mut site.edge,
        &d,
        site.buffer_udp,
        "slow",
        slow_port,
        false,
    );
    site.presence("quick", r#"{"state":"available"}"#);
    let c3 = site.call(&d, "caller_call_hangup.xml", "call3");

    // 4. `slow` is away now (no answer); `quick`'s phone (another SIPp, her contact moved
    // there) answers and hangs up itself.
    let (hangup_port, hangup) = agent("agent_answer_hangup.xml", &d, "quick-hangs-up", 1, &[]);
    register_again(&site, &d, "quick", hangup_port);
    let c4 = site.call(&d, "caller_call_wait_bye.xml", "call4");
    hangup
        .wait()
        .assert_ok("quick's second phone: answered, hung up");
    slow.wait()
        .assert_ok("slow: rang, then the offer was withdrawn");
    quick.wait().assert_ok("quick: answered calls 1 and 3");
    let finished = now_ms();

    // One record per call, newest first.
    let records = site.wait_calls(4, RECORD_WAIT);
    let expected = [
        Expected {
            made: &c4,
            outcome: "answered",
            reason: "agent hung up",
            hung_up_by: Some("agent"),
            agent: Some("quick"),
            offers: &[("quick", "answered")],
        },
        Expected {
            made: &c3,
            outcome: "answered",
            reason: "caller hung up",
            hung_up_by: Some("caller"),
            agent: Some("quick"),
            offers: &[("slow", "no-answer"), ("quick", "answered")],
        },
        Expected {
            made: &c2,
            outcome: "abandoned",
            reason: "caller hung up",
            hung_up_by: None,
            agent: None,
            offers: &[],
        },
        Expected {
            made: &c1,
            outcome: "answered",
            reason: "caller hung up",
            hung_up_by: Some("caller"),
            agent: Some("quick"),
            offers: &[("quick", "answered")],
        },
    ];
    for (r, e) in records.iter().zip(&expected) {
        check_record(r, e, site.dist_udp);
    }
    let ids: Vec<String> = records.iter().map(|r| s(&r["id"])).collect();
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "distinct record ids: {ids:?}");
    let mut call_ids: Vec<&str> = [&c1, &c2, &c3, &c4]
        .iter()
        .map(|c| c.call_id.as_str())
        .collect();
    call_ids.sort_unstable();
    call_ids.dedup();
    assert_eq!(call_ids.len(), 4, "SIPp's four calls had four Call-IDs");
    // One call after another: each arrived after the one before had ended, all of them
    // while the test ran (the times are the wall clock's, in UTC).
    let time = |r: &Value, field: &str| unix_ms(&s(&r[field]));
    for pair in records.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        assert!(
            time(older, "ended") <= time(newer, "arrived"),
            "{older:#}\nended before\n{newer:#}"
        );
    }
    let oldest = &records[3];
    assert!(
        started - 1000 <= time(oldest, "arrived") && time(&records[0], "ended") <= finished + 1000,
        "the calls were made between {started} and {finished} (unix ms): {records:#?}"
    );
    // Call 3 rang `slow` for the queue's 2 s before `quick` had it.
    let slow_offer = &records[1]["offers"][0];
    assert!(
        time(slow_offer, "ended") - time(slow_offer, "offered") >= 1900,
        "{slow_offer}"
    );
    assert!(
        records[1]["wait_ms"].as_u64().unwrap() >= 1900,
        "{:#}",
        records[1]
    );

    // The metrics of the records, and the ring and talk times of the three answered calls.
    site.wait_metric("agent_edge_call_records_written_total", 4.0);
    site.wait_metric("agent_edge_call_records_pending", 0.0);
    site.wait_metric("agent_edge_call_record_write_failures_total", 0.0);
    site.wait_metric(
        r#"agent_edge_call_ring_seconds_count{queue="default"}"#,
        3.0,
    );
    site.wait_metric(
        r#"agent_edge_call_talk_seconds_count{queue="default"}"#,
        3.0,
    );

    // Filters.
    let (id4, id3, id2, id1) = (
        ids[0].as_str(),
        ids[1].as_str(),
        ids[2].as_str(),
        ids[3].as_str(),
    );
    assert_eq!(site.ids(""), ids, "no filter");
    assert_eq!(site.ids("?outcome=answered"), [id4, id3, id1]);
    assert_eq!(site.ids("?outcome=abandoned"), [id2]);
    assert_eq!(site.ids("?outcome=timed-out"), Vec::<String>::new());
    assert_eq!(site.ids("?outcome=refused"), Vec::<String>::new());
    assert_eq!(site.ids("?agent=slow"), [id3], "offered to slow");
    assert_eq!(
        site.ids("?agent=quick"),
        [id4, id3, id1],
        "offered to quick"
    );
    assert_eq!(site.ids("?agent=nobody"), Vec::<String>::new());
    assert_eq!(site.ids("?queue=default"), ids);
    assert_eq!(site.ids("?queue=billing"), Vec::<String>::new());
    assert_eq!(site.ids("?outcome=answered&agent=slow"), [id3]);
    assert_eq!(site.ids("?limit=1000"), ids);
    // Arrival times: `from` inclusive, `to` exclusive, in RFC 3339 or unix milliseconds.
    let arrived3 = s(&records[1]["arrived"]);
    let arrived3_ms = unix_ms(&arrived3).to_string();
    let arrived2 = s(&records[2]["arrived"]);
    let arrived4 = s(&records[0]["arrived"]);
    assert_eq!(site.ids(&query(&[("from", &arrived3)])), [id4, id3]);
    assert_eq!(site.ids(&query(&[("to", &arrived3)])), [id2, id1]);
    assert_eq!(site.ids(&query(&[("from", &arrived3_ms)])), [id4, id3]);
    assert_eq!(site.ids(&query(&[("to", &arrived3_ms)])), [id2, id1]);
    assert_eq!(
        site.ids(&query(&[("from", &arrived2), ("to", &arrived4)])),
        [id3, id2]
    );
    let later = (now_ms() + 3_600_000).to_string();
    assert_eq!(site.ids(&query(&[("from", &later)])), Vec::<String>::new());
    assert_eq!(
        site.ids(&query(&[("from", "2999-01-01T00:00:00Z")])),
        Vec::<String>::new()
    );
    assert_eq!(site.ids(&query(&[("to", &later)])), ids);

    // Pages: `next` until it is null.
    let (page, next) = site.calls("?limit=2");
    let page: Vec<String> = page.iter().map(|c| s(&c["id"])).collect();
    assert_eq!(page, [id4, id3], "the first page");
    let next = next
        .as_str()
        .unwrap_or_else(|| panic!("a next page after 2 of 4: {next}"))
        .to_owned();
    let (page, after) = site.calls(&query(&[("limit", "2"), ("cursor", &next)]));
    let page: Vec<String> = page.iter().map(|c| s(&c["id"])).collect();
    assert_eq!(page, [id2, id1], "the second page");
    assert_eq!(after, Value::Null, "no page after the last");
    let (page, next) = site.calls("?outcome=answered&limit=2");
    let page: Vec<String> = page.iter().map(|c| s(&c["id"])).collect();
    assert_eq!(page, [id4, id3], "answered, the first page");
    let next = s(&next);
    let (page, after) = site.calls(&query(&[
        ("outcome", "answered"),
        ("limit", "2"),
        ("cursor", &next),
    ]));
    let page: Vec<String> = page.iter().map(|c| s(&c["id"])).collect();
    assert_eq!(page, [id1], "answered, the second page");
    assert_eq!(after, Value::Null);

    // The CSV export: the same records, in the same order.
    let rows = csv(&site, "");
    assert_eq!(rows.len(), 5, "the header and four records: {rows:?}");
    let col = |name: &str| CSV_HEADER.split(',').position(|h| h == name).unwrap();
    for (row, r) in rows[1..].iter().zip(&records) {
        let text = |v: &Value| match v {
            Value::Null => String::new(),
            Value::String(t) => t.clone(),
            other => other.to_string(),
        };
        for field in [
            "id",
            "call_id",
            "arrived",
            "answered",
            "ended",
            "caller",
            "caller_name",
            "dialled",
            "call_type",
            "queue",
            "priority",
            "outcome",
            "reason",
            "hung_up_by",
            "agent",
            "edge",
            "wait_ms",
            "ring_ms",
            "talk_ms",
            "wrap_up_ms",
            "disposition",
            "notes",
        ] {
            assert_eq!(
                row[col(field)],
                text(&r[field]),
                "CSV {field}: {row:?}\n{r:#}"
            );
        }
        // Answered: anchored media with nothing measured (no RTP from these peers).
        let measured = if r["media"].is_null() { "" } else { "0" };
        for (field, want) in [
            ("caller_packets", measured),
            ("caller_lost", measured),
            ("caller_jitter_ms", measured),
            ("caller_mos", ""),
            ("agent_packets", measured),
            ("agent_lost", measured),
            ("agent_jitter_ms", measured),
            ("agent_mos", ""),
            ("path", ""),
            ("one_way_audio", ""),
        ] {
            assert_eq!(row[col(field)], want, "CSV {field}: {row:?}");
        }
    }
    let offers: Vec<&str> = rows[1..]
        .iter()
        .map(|r| r[col("offers")].as_str())
        .collect();
    assert_eq!(
        offers,
        [
            "quick:answered",
            "slow:no-answer;quick:answered",
            "",
            "quick:answered"
        ]
    );
    let rows = csv(&site, "?outcome=answered");
    let csv_ids: Vec<&str> = rows[1..].iter().map(|r| r[col("id")].as_str()).collect();
    assert_eq!(csv_ids, [id4, id3, id1], "CSV, answered");
    let rows = csv(&site, "?limit=1");
    assert_eq!(rows.len(), 2, "CSV, limit=1: {rows:?}");
    assert_eq!(rows[1][col("id")], id4);

    // Filters that do not parse, and no key.
    for bad in [
        "/calls?from=yesterday",
        "/calls?to=yesterday",
        "/calls?limit=abc",
        "/calls?limit=0",
        "/calls?cursor=garbage",
        "/calls?outcome=nonsense",
        "/calls.csv?from=yesterday",
        "/calls.csv?outcome=nonsense",
    ] {
        assert_problem(&site, bad);
    }
    for path in ["/calls", "/calls.csv"] {
        let (status, _, body) = get(site.admin, path, None);
        assert_eq!(status, 401, "GET {path} without the key: {body}");
        let (status, _, body) = get(site.admin, path, Some("not-the-admin-key-at-all"));
        assert_eq!(status, 401, "GET {path} with a wrong key: {body}");
    }

    // A clean stop, a start on the same store: the same records. A fifth call ends just
    // before the stop, its record not yet written (that waits about a second for the last
    // media statistics): the drain writes it.
    let (before, _) = site.calls("");
    let dist_udp_before = site.dist_udp;
    let (port, last) = agent("agent_answer.xml", &d, "quick-last", 1, &[]);
    register_again(&site, &d, "quick", port);
    let c5 = site.call(&d, "caller_call_hangup.xml", "call5");
    site.edge.stop_cleanly();
    last.wait().assert_ok("quick's last call");
    let site = Site::start(&d, &config, "agent-edge-restarted.log");
    let (after, next) = site.calls("");
    assert_eq!(next, Value::Null);
    assert_eq!(after.len(), 5, "{after:#?}");
    assert_eq!(after[1..], before[..], "the four records after a restart");
    check_record(
        &after[0],
        &Expected {
            made: &c5,
            outcome: "answered",
            reason: "caller hung up",
            hung_up_by: Some("caller"),
            agent: Some("quick"),
            offers: &[("quick", "answered")],
        },
        // It was dialled before the restart, on the listener of then.
        dist_udp_before,
    );
}

/// A tmpfs of the test's, unmounted (lazily) when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a 2 MiB tmpfs on `dir`, or says why it cannot (`None` then: skipped, unless
    /// on CI, where the test runs as root and must run).
    fn mount(dir: &Path) -> Option<Tmpfs> {
        let why = if !rustix::process::geteuid().is_root() {
            Some(format!(
                "root rights (running as uid {})",
                rustix::process::geteuid().as_raw()
            ))
        } else {
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
                .arg(dir)
                .output();
            match out {
                Ok(o) if o.status.success() => None,
                Ok(o) => Some(format!(
                    "mount -t tmpfs to work ({})",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Some(format!("mount(8): {e}")),
            }
        };
        match why {
            None => Some(Tmpfs {
                dir: dir.to_owned(),
            }),
            Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("the full-disk test cannot run on CI without {why}")
            }
            Some(why) => {
                eprintln!("skipped: the full-disk test needs {why}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Fills the file system `file` is on: writes until there is no space left, in ever smaller
/// pieces so that not a byte is left.
fn fill(file: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(file).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    for size in [64 * 1024, 4096, 512, 1] {
        loop {
            match f.write(&chunk[..size]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {}: {e}", file.display()),
            }
        }
    }
    let _ = f.sync_all();
    // Nothing more fits.
    let probe = file.with_extension("probe");
    let wrote = std::fs::write(&probe, [0u8; 8192]);
    let _ = std::fs::remove_file(&probe);
    assert!(wrote.is_err(), "{} is not full", file.display());
}

#[test]
fn a_store_that_cannot_be_written_does_not_stop_calls_and_is_reported() {
    // Dropped in reverse: the processes end, then the tmpfs goes, then the folder.
    let dir = test_dir();
    let d = dir.path().to_owned();
    let store = d.join("store");
    std::fs::create_dir(&store).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&store) else {
        return;
    };
    let config = write_config(&d, "", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let db = |p: &Path| format!("db = \"{}\"", p.join("agent-edge.db").display());
    let moved = text.replace(&db(&d), &db(&store));
    assert_ne!(
        moved,
        text,
        "the store is configured in {}",
        config.display()
    );
    std::fs::write(&config, moved).unwrap();
    let mut site = Site::start(&d, &config, "agent-edge.log");

    let (port, alice) = agent("agent_answer.xml", &d, "alice", 3, &[]);
    register(&mut site.edge, &d, site.buffer_udp, "alice", port, false);
    let c1 = site.call(&d, "caller_call_hangup.xml", "call1");
    let records = site.wait_calls(1, RECORD_WAIT);
    assert_eq!(s(&records[0]["call_id"]), c1.call_id);
    site.wait_metric("agent_edge_call_records_written_total", 1.0);

    // The disk is full: calls go on.
    let filler = store.join("filler");
    fill(&filler);
    let c2 = site.call(&d, "caller_call_hangup.xml", "call2");
    let c3 = site.call(&d, "caller_call_hangup.xml", "call3");
    alice.wait().assert_ok("alice answered all three calls");

    // Their records wait, counted and logged once; what was written can still be read.
    site.wait_metric("agent_edge_call_records_pending", 2.0);
    let metrics = site.metrics();
    let failures = metric(&metrics, "agent_edge_call_record_write_failures_total");
    assert!(failures.is_some_and(|f| f >= 1.0), "failures: {failures:?}");
    assert_eq!(
        metric(&metrics, "agent_edge_call_records_written_total"),
        Some(1.0)
    );
    let log = std::fs::read_to_string(d.join("agent-edge.log")).unwrap();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("call records not written"))
        .collect();
    assert_eq!(
        said.len(),
        1,
        "`call records not written` once, at the first failure: {said:#?}\n{}",
        site.edge.log_tail()
    );
    let lower = said[0].to_ascii_lowercase();
    assert!(
        lower.contains("full") || lower.contains("space"),
        "the log names the error: {}",
        said[0]
    );
    let (calls, _) = site.calls("");
    let ids: Vec<String> = calls.iter().map(|c| s(&c["call_id"])).collect();
    assert_eq!(
        ids,
        [c1.call_id.as_str()],
        "only the first call's record is stored"
    );

    // Room again: the waiting records are written within a few retries (every 2 s).
    std::fs::remove_file(&filler).unwrap();
    let records = site.wait_calls(3, Duration::from_secs(10));
    let ids: Vec<String> = records.iter().map(|c| s(&c["call_id"])).collect();
    assert_eq!(
        ids,
        [
            c3.call_id.as_str(),
            c2.call_id.as_str(),
            c1.call_id.as_str()
        ]
    );
    for r in &records {
        assert_eq!(r["outcome"], "answered", "{r:#}");
        assert_eq!(r["agent"], "alice", "{r:#}");
    }
    site.wait_metric("agent_edge_call_records_pending", 0.0);
    site.wait_metric("agent_edge_call_records_written_total", 3.0);
}
