//! A buffer server opens the distributor's tunnel only with a valid edge credential for its
//! own id; without one it is refused before any SIP passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use agent_edge_tests::{Edge, WAIT, issue_edge_token, issue_token, test_dir, write_config};

/// A distributor alone, and the tunnel URL edges dial.
fn distributor(dir: &Path) -> (Edge, String) {
    let config = write_config(dir, "", "");
    let mut dist = Edge::start(&["distributor"], &config, &dir.join("distributor.log"));
    let tunnel = dist.addr("distributor.public");
    (dist, format!("wss://{tunnel}/tunnel"))
}

fn buffer(dir: &Path, url: &str, token: Option<&str>, log: &str) -> Edge {
    let config = dir.join("agent-edge.toml");
    let env: Vec<(&str, &str)> = token
        .map(|t| ("AGENT_EDGE_EDGE_TOKEN", t))
        .into_iter()
        .collect();
    Edge::start_with_env(&["buffer", "--connect", url], &config, &dir.join(log), &env)
}

#[test]
fn a_buffer_without_a_credential_is_refused() {
    let dir = test_dir();
    let (_dist, url) = distributor(dir.path());
    let mut edge = buffer(dir.path(), &url, None, "buffer.log");
    let line = edge.wait_line("tunnel-refused edge-1", WAIT);
    assert_eq!(line, "tunnel-refused edge-1 HTTP 401");
}

#[test]
fn an_agent_token_is_not_an_edge_credential() {
    let dir = test_dir();
    let (_dist, url) = distributor(dir.path());
    let agent_token = issue_token(dir.path(), "edge-1");
    let mut edge = buffer(dir.path(), &url, Some(&agent_token), "buffer.log");
    let line = edge.wait_line("tunnel-refused edge-1", WAIT);
    assert_eq!(line, "tunnel-refused edge-1 HTTP 401");
}

#[test]
fn a_credential_for_another_edge_is_refused() {
    let dir = test_dir();
    let (_dist, url) = distributor(dir.path());
    let other = issue_edge_token(dir.path(), "edge-2");
    let mut edge = buffer(dir.path(), &url, Some(&other), "buffer.log");
    let line = edge.wait_line("tunnel-refused edge-1", WAIT);
    assert!(line.contains("edge-2"), "{line}");
}

#[test]
fn a_valid_credential_opens_the_tunnel() {
    let dir = test_dir();
    let (_dist, url) = distributor(dir.path());
    let token = issue_edge_token(dir.path(), "edge-1");
    let mut edge = buffer(dir.path(), &url, Some(&token), "buffer.log");
    edge.wait_line("tunnel-up edge-1", WAIT);
}
