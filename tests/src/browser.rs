//! A headless Chromium driven over WebDriver (`/usr/bin/chromedriver` + `fantoccini`) for
//! the dashboard's browser tests. Each [`Browser`] has its own chromedriver on a free
//! loopback port, a fresh profile directory and a disposable `TMPDIR`; dropping it kills
//! chromedriver's whole process group, so no Chromium outlives a failed test.

use crate::fleet::free_port;
use crate::{skip_or_fail, workspace_root};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the system's Chromium and chromedriver live (Debian's `chromium`, `chromium-driver`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A browser session.
#[derive(Debug)]
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    _tmp: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started share its process group.
        let pid = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `None` (after a loud skip, or a failure
    /// under `FLEETUP_TEST_REQUIRE_ALL=1`) when they are not installed.
    pub async fn start(test: &str) -> Option<Browser> {
        if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
            skip_or_fail(
                test,
                "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
            );
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(tmp.path().join("chromedriver.log")).unwrap();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd.spawn().expect("spawning chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1400,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), serde_json::json!({ "binary": CHROMIUM, "args": args }));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a WebDriver session with headless Chromium");
        Some(Browser { client, driver, _profile: profile, _tmp: tmp })
    }

    /// Ends the session (Chromium exits).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    /// Saves a PNG screenshot as `target/screenshots/NAME.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = workspace_root().join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Logs in through the form.
    pub async fn login(&self, base: &str, user: &str, password: &str) {
        self.client.goto(&format!("{base}/login")).await.unwrap();
        self.client.find(Locator::Id("username")).await.unwrap().send_keys(user).await.unwrap();
        self.client.find(Locator::Id("password")).await.unwrap().send_keys(password).await.unwrap();
        self.client.find(Locator::Id("login")).await.unwrap().click().await.unwrap();
        self.wait_text("the rollouts page after login", "h1", "Rollouts", Duration::from_secs(20)).await;
    }

    /// Waits until the element matching `css` contains `needle`, or panics with the page.
    pub async fn wait_text(&self, what: &str, css: &str, needle: &str, deadline: Duration) -> String {
        self.wait_for(what, deadline, async || {
            let els = self.client.find_all(Locator::Css(css)).await.ok()?;
            for e in els {
                if let Ok(t) = e.text().await
                    && t.contains(needle)
                {
                    return Some(t);
                }
            }
            None
        })
        .await
    }

    /// Finds the element matching `css` and runs `act` on it; when the page replaced the
    /// element in between (a live update re-rendered its panel: a stale element), finds it
    /// again, for up to 20 s.
    pub async fn with_element<T>(
        &self,
        what: &str,
        css: &str,
        mut act: impl AsyncFnMut(fantoccini::elements::Element) -> Result<T, fantoccini::error::CmdError>,
    ) -> T {
        self.wait_for(what, Duration::from_secs(20), async || {
            let e = self.client.find(Locator::Css(css)).await.ok()?;
            act(e).await.ok()
        })
        .await
    }

    /// Polls `check` until it gives `Some`, or panics after `deadline` with the page source.
    pub async fn wait_for<T>(&self, what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if start.elapsed() > deadline {
                let src = self.client.source().await.unwrap_or_default();
                panic!("timed out after {deadline:?} waiting for {what}; page:\n{src}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
