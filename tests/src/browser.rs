//! Debian's Chromium driven through chromedriver (WebDriver, via fantoccini): headless, a fake
//! microphone, autoplay allowed, the development certificate accepted. Screenshots go under
//! `target/browser-screenshots/`.
//!
//! [`Browser::start_in`] runs chromedriver, and so Chromium and all its traffic, inside a
//! network namespace. chromedriver listens on that namespace's loopback only, and the test
//! reaches it through a [`Forwarder`] on the root namespace's loopback that opens each
//! connection from inside the namespace: no extra interface, route or `--allowed-ips` that
//! the browser could use or that would widen what chromedriver accepts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::netns::{Forwarder, command_in};
use crate::{WAIT, free_port};

/// A browser session and the chromedriver serving it (ended by its pid when dropped).
#[derive(Debug)]
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Into the namespace chromedriver runs in, for a browser started with `start_in`.
    _forwarder: Option<Forwarder>,
}

/// Where screenshots are written: `target/browser-screenshots` of the workspace.
pub fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser-screenshots");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

impl Browser {
    pub async fn start() -> Browser {
        Browser::start_in(None).await
    }

    /// A browser whose chromedriver and Chromium run in network namespace `netns` (the root
    /// one for `None`).
    pub async fn start_in(netns: Option<&str>) -> Browser {
        let port = free_port();
        let driver = command_in(netns, "chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: scripts/test.sh installs chromium-driver");
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let listening = || match netns {
            Some(ns) => Forwarder::target_ready(ns, target),
            None => std::net::TcpStream::connect(target).is_ok(),
        };
        let deadline = Instant::now() + WAIT;
        while !listening() {
            assert!(
                Instant::now() < deadline,
                "chromedriver never listened on {target} (namespace {netns:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let forwarder = netns.map(|ns| Forwarder::start(ns, target));
        let addr = forwarder.as_ref().map_or(target, Forwarder::addr);
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert("acceptInsecureCerts".into(), json!(true));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--use-fake-device-for-media-stream",
                    "--use-fake-ui-for-media-stream",
                    "--autoplay-policy=no-user-gesture-required",
                    "--ignore-certificate-errors",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-quic",
                    "--no-first-run",
                    "--window-size=900,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::rustls()
            .expect("TLS roots for the WebDriver client")
            .capabilities(caps)
            .connect(&format!("http://{addr}"))
            .await
            .expect("a Chromium session through chromedriver");
        Browser {
            client,
            driver,
            _profile: profile,
            _forwarder: forwarder,
        }
    }

    /// Saves a screenshot as `target/browser-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(screenshot_dir().join(format!("{name}.png")), png);
        }
    }

    /// Waits until the page's `document.body.dataset.state` is `state`; on a timeout, saves a
    /// screenshot named after the wait and panics with what the page shows.
    pub async fn wait_state(&self, state: &str, shot: &str) {
        self.wait_data("state", state, shot).await;
    }

    /// Waits until the page shows the distributor's view of the agent as `state`
    /// (`document.body.dataset.acd`).
    pub async fn wait_acd(&self, state: &str, shot: &str) {
        self.wait_data("acd", state, shot).await;
    }

    /// [`Browser::wait_state`] with a longer or shorter wait than [`WAIT`] (the page's own
    /// reconnection back-off grows to 30 s).
    pub async fn wait_state_within(&self, state: &str, shot: &str, timeout: Duration) {
        self.wait_data_within("state", state, shot, timeout).await;
    }

    async fn wait_data(&self, key: &str, state: &str, shot: &str) {
        self.wait_data_within(key, state, shot, WAIT).await;
    }

    async fn wait_data_within(&self, key: &str, state: &str, shot: &str, timeout: Duration) {
        let script = format!("return document.body.dataset.{key} || ''");
        let deadline = Instant::now() + timeout;
        loop {
            let now = self
                .client
                .execute(&script, vec![])
                .await
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            if now == state {
                return;
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("{shot}-failed")).await;
                let text = self.text("main").await;
                panic!("the page's {key} never became `{state}` (it is `{now}`): {text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// What the page's WebRTC stats say about the call's audio (`null` outside a call).
    pub async fn audio_stats(&self) -> serde_json::Value {
        self.client
            .execute_async(
                "const done = arguments[0]; window.agentEdge.audioStats().then(done, () => done(null));",
                vec![],
            )
            .await
            .unwrap()
    }

    /// Ends the browser session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
