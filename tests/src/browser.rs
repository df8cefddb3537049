//! Debian's Chromium driven through chromedriver (WebDriver, via fantoccini): headless, a fake
//! microphone, autoplay allowed, the development certificate accepted. Screenshots go under
//! `target/browser-screenshots/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::{WAIT, free_port};

/// A browser session and the chromedriver serving it (ended by its pid when dropped).
#[derive(Debug)]
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// Where screenshots are written: `target/browser-screenshots` of the workspace.
pub fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser-screenshots");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

impl Browser {
    pub async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is not installed: scripts/test.sh installs chromium-driver");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver never listened on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

    async fn wait_data(&self, key: &str, state: &str, shot: &str) {
        let script = format!("return document.body.dataset.{key} || ''");
        let deadline = Instant::now() + WAIT;
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
