//! A real browser for the token pages: Debian's headless Chromium, driven through its chromedriver (WebDriver) with
//! `fantoccini`. Each [`Browser`] has its own chromedriver on a free port and a fresh profile.
//!
//! A missing chromium or chromedriver makes the test fail with what to install, unless `CONDAGATE_SKIP_BROWSER=1`
//! asks for a skip, which is reported as one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

/// A browser session, ended by [`Browser::close`] (or, failing that, when dropped).
pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

fn find(var: &str, default: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default));
    p.is_file().then_some(p)
}

/// Where the tests' screenshots go: `target/web-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().map(Path::to_path_buf).unwrap_or_default();
    target.join("web-screenshots")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `None` (reported) when `CONDAGATE_SKIP_BROWSER=1`.
    pub async fn start() -> Option<Self> {
        if std::env::var("CONDAGATE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
            super::report_skip("CONDAGATE_SKIP_BROWSER=1 (this test needs chromium and chromedriver)");
            return None;
        }
        let install = "install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; \
                       scripts/test does), set CHROMIUM and CHROMEDRIVER to other paths, or set \
                       CONDAGATE_SKIP_BROWSER=1 to skip the browser tests";
        let chromium = find("CHROMIUM", "/usr/bin/chromium").unwrap_or_else(|| panic!("no chromium: {install}"));
        let driver_bin =
            find("CHROMEDRIVER", "/usr/bin/chromedriver").unwrap_or_else(|| panic!("no chromedriver: {install}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = tokio::process::Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_bin.display()));
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not listen within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::Builder::new().prefix("condagate-chromium-").tempdir().unwrap();
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    "--window-size=1200,900", format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let caps = caps.as_object().unwrap().clone();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("chromedriver would not start chromium ({}): {e}", chromium.display()));
        Some(Browser { client, driver, _profile: profile })
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }

    /// Opens `url`.
    pub async fn go(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// The page's HTML as the browser holds it.
    pub async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// The page's visible text.
    pub async fn text(&self) -> String {
        self.client.find(Locator::Css("body")).await.unwrap().text().await.unwrap()
    }

    /// The current path (and query) of the page.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Types `text` into the field matching `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        let el = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        el.clear().await.unwrap();
        el.send_keys(text).await.unwrap();
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let el = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        el.click().await.unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
    }

    /// Clicks the element matching `css`, which leads to another page (a link, a form's button), and waits until
    /// that page has loaded: chromedriver may answer a click before the navigation it starts has begun.
    pub async fn follow(&self, css: &str) {
        self.mark().await;
        self.click(css).await;
        self.wait_for_next_page(css).await;
    }

    /// Like [`Browser::follow`] for an element found by an XPath expression.
    pub async fn follow_xpath(&self, xpath: &str) {
        self.mark().await;
        let el = self.client.find(Locator::XPath(xpath)).await.unwrap_or_else(|e| panic!("no {xpath}: {e}"));
        el.click().await.unwrap_or_else(|e| panic!("cannot click {xpath}: {e}"));
        self.wait_for_next_page(xpath).await;
    }

    /// Runs `script`, which submits a form or otherwise navigates, and waits for the next page.
    pub async fn run_to_next_page(&self, script: &str) {
        self.mark().await;
        self.run(script).await;
        self.wait_for_next_page("the script").await;
    }

    /// Marks the page open now, so that [`Browser::wait_for_next_page`] can tell when another has replaced it.
    async fn mark(&self) {
        self.run("window.__condagateOld = true; return true;").await;
    }

    async fn wait_for_next_page(&self, what: &str) {
        let started = Instant::now();
        loop {
            // While the old document unloads a script may fail; that only means "not yet".
            let ready = self
                .client
                .execute("return window.__condagateOld !== true && document.readyState === 'complete';", Vec::new())
                .await;
            if matches!(ready, Ok(serde_json::Value::Bool(true))) {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no new page within 10 s after {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether an element matches `css`.
    pub async fn has(&self, css: &str) -> bool {
        !self.client.find_all(Locator::Css(css)).await.unwrap().is_empty()
    }

    /// The text of the element matching `css`.
    pub async fn text_of(&self, css: &str) -> String {
        let el = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        el.text().await.unwrap()
    }

    /// Runs `script` in the page and returns its value.
    pub async fn run(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, Vec::new()).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Saves a screenshot as `target/web-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// The browser's `Cookie` header for this site (every cookie it holds for the page open).
    pub async fn cookie_header(&self) -> String {
        let cookies = self.client.get_all_cookies().await.unwrap();
        cookies.iter().map(|c| format!("{}={}", c.name(), c.value())).collect::<Vec<_>>().join("; ")
    }

    /// Signs in at `admin` (the `/admin` URL) with `token`, and checks it worked.
    pub async fn sign_in(&self, admin: &str, token: &str) {
        self.go(&format!("{admin}/sign-in")).await;
        self.fill("#token", token).await;
        self.follow("form button[type=submit]").await;
        assert_eq!(self.path().await, path_of(&format!("{admin}/tokens")), "signed in: {}", self.text().await);
    }

    /// Creates a token through the form: `scopes` ticked, `expires` preset, `channels` ticked; returns the secret
    /// shown once.
    pub async fn create_token(
        &self,
        admin: &str,
        name: &str,
        scopes: &[&str],
        expires: &str,
        channels: &[&str],
    ) -> String {
        self.go(&format!("{admin}/tokens/new")).await;
        self.fill("#name", name).await;
        for s in scopes {
            self.click(&format!("input[name=scopes][value=\"{s}\"]")).await;
        }
        self.click(&format!("input[name=expires][value=\"{expires}\"]")).await;
        for c in channels {
            self.click(&format!("input[name=channels][value=\"{c}\"]")).await;
        }
        self.follow("#create button[type=submit]").await;
        assert_eq!(self.path().await, path_of(&format!("{admin}/tokens/created")), "created: {}", self.text().await);
        self.text_of("#secret").await
    }
}

/// The path part of an absolute URL.
pub fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/').map_or_else(|| "/".to_owned(), |i| rest[i..].to_owned())
}
