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
    assert_eq!(browser.text("#status").await, "available");
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
