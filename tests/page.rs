//! The live page (`GET /` on the admin listener) in a real headless Chromium, driven through
//! chromedriver (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs): the token
//! form, the live count, one row per connection, paging, sorting and the peer filter, a kick
//! from the page's button (gone from the table, present under closed as `kicked`), the closes
//! chart, a non-empty detection-delay chart, and no request to anything but the admin listener.
//!
//! `page_with_many_connections` (ignored: run it by name) takes the screenshot in `docs/` and
//! times the page's refresh with `PAGE_CONNS` live connections.

use connwarden_test_common as common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Admin, Proc};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// Longest wait for the page to show what the server did: a few refreshes of one second.
const PAGE_BOUND: Duration = Duration::from_secs(15);

/// A chromedriver with its Chromium, in a process group of their own, killed as a whole on drop
/// (so no browser outlives a failed test).
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        use std::os::unix::process::CommandExt;
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver)");
        let port = driver_port(driver.stdout.take().expect("piped stdout"));
        let profile = tempfile::tempdir().expect("profile dir");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1400,1700",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session through chromedriver");
        Browser {
            driver,
            client: Some(client),
            _profile: profile,
        }
    }

    fn page(&self) -> &Client {
        self.client.as_ref().expect("open session")
    }

    /// Ends the session (closing Chromium) before the driver is killed.
    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }

    /// Runs `script` (a function body) in the page.
    async fn eval(&self, script: &str) -> Value {
        self.page()
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns something truthy, and returns it.
    async fn wait_for(&self, what: &str, script: &str) -> Value {
        self.wait_for_within(PAGE_BOUND, what, script).await
    }

    /// Like [`Browser::wait_for`], failing after `bound`.
    async fn wait_for_within(&self, bound: Duration, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + bound;
        loop {
            let value = self.eval(script).await;
            let truthy = !matches!(value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let state = self
                    .eval("return document.body.dataset.state + ' ' + document.getElementById('status').textContent")
                    .await;
                panic!("the page did not show {what} within {bound:?} (page: {state})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the page's next completed refresh after now.
    async fn next_refresh(&self) {
        let now = self
            .eval("return Number(document.body.dataset.refreshes)")
            .await;
        let script = format!("return Number(document.body.dataset.refreshes) > {now}");
        self.wait_for("another refresh", &script).await;
    }

    /// Clicks the element `css` selects. A refresh may replace a table's rows between finding
    /// one and clicking it: then it is found again.
    async fn click(&self, css: &str) {
        for _ in 0..10 {
            let element = self
                .page()
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"));
            match element.click().await {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() => continue,
                Err(e) => panic!("click {css}: {e}"),
            }
        }
        panic!("{css} was replaced before every one of 10 clicks");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let field = self
            .page()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    /// Waits for the form the page shows when the API answers 401.
    async fn wait_for_token_form(&self) {
        self.wait_for(
            "the token form",
            "return document.body.dataset.state === 'login'",
        )
        .await;
    }

    /// Types `token` into the page's token form and submits it.
    async fn submit_token(&self, token: &str) {
        self.type_into("#token", token).await;
        self.click("#login-submit").await;
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.page().screenshot().await.expect("screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: killpg(2) on the process group this struct's driver leads.
        unsafe { libc::killpg(self.driver.id() as i32, libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

/// The port chromedriver announces on its standard output.
fn driver_port(stdout: std::process::ChildStdout) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                let _ = tx.send(rest.trim_end_matches('.').parse::<u16>().ok());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("chromedriver started within 20 s")
        .expect("chromedriver's port")
}

/// `serve` with the admin API on a token and a heartbeat of 1 s × 2 (so a client that says
/// hello and never answers a ping is closed as `heartbeat_timeout`, a bounded reason).
fn serve_with_token(dir: &Path, token: &str, extra: &[&str]) -> (Proc, Admin, String) {
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let args = [
        "--admin-token-file",
        token_file.to_str().expect("utf-8 path"),
        "--heartbeat-interval",
        "1s",
        "--heartbeat-misses",
        "2",
    ];
    let mut server = common::serve()
        .sink_file(&dir.join("items.ndjson"))
        .args(&args)
        .args(extra)
        .spawn();
    let mut admin = Admin::of(&mut server);
    admin.token = Some(token.to_owned());
    let page = server.wait_log(&format!("live page at http://{}/", admin.addr));
    assert_eq!(
        page.expect("live page logged")["url"],
        format!("http://{}/", admin.addr)
    );
    let listening = server.wait_log("listening").expect("listening");
    let addr = listening["addr"].as_str().expect("addr").to_owned();
    (server, admin, addr)
}

/// `n` connections that each send `i + 1` items.
fn open_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            let item = format!("{{\"ip\":\"10.0.{}.{}\",\"n\":{i}}}\n", i / 250, i % 250);
            stream
                .write_all(item.repeat(i % 5 + 1).as_bytes())
                .expect("send items");
            stream
        })
        .collect()
}

/// Says `hello` and never answers a ping: closed as `heartbeat_timeout` after about 2 s.
fn silent_heartbeat_client(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(b"{\"type\":\"hello\",\"client\":\"page-test\"}\n")
        .expect("hello");
    stream
}

fn ids_in(value: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = value
        .as_array()
        .expect("array of ids")
        .iter()
        .map(|v| v.as_str().expect("id").parse().expect("number"))
        .collect();
    ids.sort_unstable();
    ids
}

const ROW_IDS: &str =
    "return [...document.querySelectorAll('#conn-table tbody tr[data-id]')].map(r => r.dataset.id)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_page_shows_connections_closes_and_kicks_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, admin, addr) = serve_with_token(dir.path(), "page-test-token", &[]);
    let origin = format!("http://{}/", admin.addr);

    let mut streams = open_connections(&addr, 30);
    let _silent = silent_heartbeat_client(&addr);
    let closed = server.wait_log("connection closed").expect("close logged");
    assert_eq!(closed["reason"], "heartbeat_timeout", "{closed}");
    common::poll_until(common::PROMPT, "30 live connections", || {
        admin.json("/connections?limit=1")["total"] == 30
    });

    // The page and its assets need no token and say where they may fetch from; data does.
    for path in ["", "ui/app.js", "ui/style.css"] {
        let response = ureq::get(&format!("{origin}{path}"))
            .call()
            .unwrap_or_else(|e| panic!("GET /{path}: {e}"));
        let csp = response
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
            "/{path}: {csp:?}"
        );
    }
    let anonymous = Admin {
        addr: admin.addr.clone(),
        token: None,
    };
    assert_eq!(anonymous.request("GET", "/connections").0, 401);
    assert_eq!(anonymous.request("GET", "/metrics").0, 401);

    let browser = Browser::start().await;
    browser.page().goto(&origin).await.expect("open the page");

    // Without the token the API answers 401, and the page asks for it; a wrong one is refused.
    browser.wait_for_token_form().await;
    assert_eq!(
        browser
            .eval("return document.getElementById('main').hidden")
            .await,
        json!(true),
        "no data shown without the token"
    );
    browser.submit_token("not-the-token").await;
    browser
        .wait_for(
            "the refusal of a wrong token",
            "return document.getElementById('login-error').textContent.includes('refused')",
        )
        .await;
    browser.submit_token("page-test-token").await;
    browser
        .wait_for("the page", "return document.body.dataset.state === 'ok'")
        .await;

    // The live count, one row per connection (page size 25 of 30, then the next page).
    browser
        .wait_for(
            "30 live connections",
            "return document.getElementById('live-count').textContent === '30'",
        )
        .await;
    let api_ids: Vec<u64> = admin.json("/connections?limit=100")["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| c["id"].as_u64().expect("id"))
        .collect();
    let page_size = browser
        .page()
        .find(Locator::Css("#page-size"))
        .await
        .expect("page size");
    page_size.select_by_value("25").await.expect("25 rows");
    browser
        .wait_for("25 rows", &format!("{ROW_IDS}.length === 25"))
        .await;
    let mut shown = ids_in(&browser.eval(ROW_IDS).await);
    assert_eq!(
        browser
            .eval("return document.getElementById('page-range').textContent")
            .await,
        json!("1–25 of 30")
    );
    browser.click("#next-page").await;
    browser
        .wait_for("the second page", &format!("{ROW_IDS}.length === 5"))
        .await;
    shown.extend(ids_in(&browser.eval(ROW_IDS).await));
    shown.sort_unstable();
    let mut expected = api_ids;
    expected.sort_unstable();
    assert_eq!(shown, expected, "one row per live connection");
    browser.click("#prev-page").await;
    browser
        .wait_for("the first page", &format!("{ROW_IDS}.length === 25"))
        .await;

    // Sorting by id ascending puts the first accepted connection on top.
    browser.click("#conn-table th[data-sort='id']").await;
    let first = format!(
        "return document.querySelector('#conn-table tbody tr').dataset.id === '{}'",
        expected[0]
    );
    browser.wait_for("the table sorted by id", &first).await;

    // The peer filter: one connection's address, then a malformed one (the API's message shown).
    let peer = streams[7].local_addr().expect("local addr").to_string();
    browser.type_into("#peer-filter", &peer).await;
    browser.click("#filter-form button").await;
    let one_row = format!("{ROW_IDS}.length === 1");
    browser.wait_for("one filtered row", &one_row).await;
    browser.type_into("#peer-filter", "not-an-address").await;
    browser.click("#filter-form button").await;
    browser
        .wait_for(
            "the filter's error",
            "return document.getElementById('filter-error').textContent.includes('peer=')",
        )
        .await;
    browser.type_into("#peer-filter", "").await;
    browser.click("#filter-form button").await;
    browser
        .wait_for("the unfiltered table", &format!("{ROW_IDS}.length === 25"))
        .await;

    // A non-empty detection-delay chart: the heartbeat close, with its bound drawn.
    let delay = browser
        .wait_for(
            "the heartbeat_timeout delay chart",
            "const f = document.querySelector('#delay-charts figure[data-reason=heartbeat_timeout]'); \
             return f && f.dataset.count === '1' && f.querySelectorAll('rect.bar').length > 0 \
               && f.querySelector('line.bound') !== null && f.textContent",
        )
        .await;
    assert!(
        delay.as_str().expect("caption").contains("bound 2 s"),
        "{delay}"
    );

    // Kick one connection from its row's button, confirmed in the dialog.
    let victim = expected[3];
    let victim_stream = streams.remove(3);
    browser
        .click(&format!("#conn-table button.kick[data-id='{victim}']"))
        .await;
    browser
        .wait_for(
            "the confirmation dialog",
            "return document.getElementById('kick-dialog').open",
        )
        .await;
    browser.click("#kick-confirm").await;
    let kicked = loop {
        let closed = server.wait_log("connection closed").expect("close logged");
        if closed["conn_id"] == victim {
            break closed;
        }
    };
    assert_eq!(kicked["reason"], "kicked", "{kicked}");
    browser
        .wait_for(
            "the kicked connection gone and listed as kicked",
            &format!(
                "return document.querySelector(\"#conn-table tr[data-id='{victim}']\") === null \
                 && document.querySelector(\"#closed-table tr[data-id='{victim}'][data-reason='kicked']\") !== null \
                 && document.getElementById('live-count').textContent === '29'"
            ),
        )
        .await;
    let mut rest = Vec::new();
    let mut reader = victim_stream;
    reader
        .set_read_timeout(Some(common::PROMPT))
        .expect("read timeout");
    assert_eq!(
        reader.read_to_end(&mut rest).expect("kicked: EOF"),
        rest.len()
    );
    browser
        .wait_for(
            "a closes series",
            "return Number(document.getElementById('closes-chart').dataset.series) >= 1",
        )
        .await;
    browser.next_refresh().await;

    // A paced drain shows while it tells its connections (29 live: 15 chosen, one each 4 s).
    let (status, body) = admin.request("POST", "/drain?fraction=0.5&over=60s");
    assert_eq!(status, 202, "{body}");
    let shown = browser
        .wait_for(
            "the drain under way",
            "const d = document.getElementById('drain').textContent; \
             return d.startsWith('drain under way: ') && d",
        )
        .await;
    assert!(
        shown
            .as_str()
            .is_some_and(|d| d.ends_with("still to be told goaway")),
        "{shown}"
    );
    let (status, body) = admin.request("DELETE", "/drain");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"state\":\"cancelled\""), "{body}");
    browser
        .wait_for(
            "the cancelled drain no longer shown",
            "return document.getElementById('drain').textContent === ''",
        )
        .await;

    // Nothing but the admin listener was asked for anything.
    let requests = browser
        .eval(
            "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]",
        )
        .await;
    let requests: Vec<&str> = requests
        .as_array()
        .expect("urls")
        .iter()
        .map(|u| u.as_str().expect("url"))
        .collect();
    assert!(
        requests.iter().any(|u| u.contains("/metrics")),
        "{requests:?}"
    );
    let elsewhere: Vec<&&str> = requests
        .iter()
        .filter(|u| !u.starts_with(&origin))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "requests beyond {origin}: {elsewhere:?}"
    );

    let shot = screenshot_dir().join("live-page.png");
    browser.screenshot(&shot).await;
    eprintln!("screenshot: {}", shot.display());
    browser.close().await;
    drop(streams);
}

/// Where the tests' screenshots go: cargo's temporary folder for integration tests.
fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// With `PAGE_CONNS` live connections (default 1,000) and some traffic (items on 20 of them,
/// orderly closes, resets, heartbeat timeouts, kicks): the page's refresh time over 20 refreshes
/// (median and worst, as the page measures it: its four requests and the rendering), sorted by
/// age (the default) and by rtt (which reads `TCP_INFO` of every connection), and a screenshot
/// to `PAGE_SCREENSHOT` (default the tests' temporary folder).
///
/// `PAGE_SCREENSHOT=docs/live-page.png cargo test --release --test page -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes the docs/ screenshot and times the page; run it by name"]
async fn page_with_many_connections() {
    let n: usize = std::env::var("PAGE_CONNS")
        .ok()
        .map_or(1000, |v| v.parse().expect("PAGE_CONNS"));
    let dir = tempfile::tempdir().expect("tempdir");
    let most = (n + 100).to_string();
    let (mut server, admin, addr) =
        serve_with_token(dir.path(), "page-test-token", &["--max-connections", &most]);
    let mut streams = open_connections(&addr, n);
    let silent: Vec<TcpStream> = (0..3).map(|_| silent_heartbeat_client(&addr)).collect();
    for _ in 0..3 {
        let closed = server.wait_log("connection closed").expect("close logged");
        assert_eq!(closed["reason"], "heartbeat_timeout");
    }
    let wanted = Value::from(n);
    common::poll_until(Duration::from_secs(60), "all connections live", || {
        admin.json("/connections?limit=1")["total"] == wanted
    });
    // Traffic on 20 connections; 30 others closed one by one, some reset, some kicked.
    let talkers: Vec<TcpStream> = streams.drain(..20.min(streams.len())).collect();
    let leaving: Vec<TcpStream> = streams.drain(..30.min(streams.len())).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let activity = std::thread::spawn({
        let (admin, stop) = (admin.clone(), stop.clone());
        move || traffic(talkers, leaving, &admin, &stop)
    });
    let live_after = n - 30.min(n.saturating_sub(20));

    let browser = Browser::start().await;
    browser
        .page()
        .goto(&format!("http://{}/", admin.addr))
        .await
        .expect("open the page");
    browser.wait_for_token_form().await;
    browser.submit_token("page-test-token").await;
    // The last of `leaving` goes after 30 × 750 ms.
    browser
        .wait_for_within(
            Duration::from_secs(60),
            "the live count",
            &format!(
                "return document.getElementById('live-count').textContent === '{}'",
                live_after
                    .to_string()
                    .as_bytes()
                    .rchunks(3)
                    .rev()
                    .map(|c| std::str::from_utf8(c).expect("digits"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )
        .await;
    let by_age = refresh_times(&browser).await;
    browser.click("#conn-table th[data-sort='rtt']").await;
    browser.next_refresh().await;
    let by_rtt = refresh_times(&browser).await;
    browser.click("#conn-table th[data-sort='age']").await;
    browser.next_refresh().await;
    eprintln!(
        "{live_after} live connections: page refresh (part, median, worst of 20, ms):\n  sorted by age {by_age:?}\n  sorted by rtt {by_rtt:?}"
    );
    let shot = std::env::var_os("PAGE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| screenshot_dir().join("live-page-many.png"));
    browser.screenshot(&shot).await;
    eprintln!("screenshot: {}", shot.display());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    activity.join().expect("traffic");
    browser.close().await;
    drop((streams, silent));
}

/// The page's own measure of its refresh over 20 refreshes: the whole (requests in parallel,
/// then rendering) and each part, median and worst, in milliseconds.
async fn refresh_times(browser: &Browser) -> Vec<(String, f64, f64)> {
    let mut times: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for _ in 0..20 {
        browser.next_refresh().await;
        let sample = browser
            .eval("return { total: Number(document.body.dataset.refreshMs), ...JSON.parse(document.body.dataset.timings) }")
            .await;
        for (part, ms) in sample.as_object().expect("timings") {
            times
                .entry(part.clone())
                .or_default()
                .push(ms.as_f64().expect("ms"));
        }
    }
    times
        .into_iter()
        .map(|(part, mut ms)| {
            ms.sort_by(f64::total_cmp);
            (part, ms[ms.len() / 2], ms[ms.len() - 1])
        })
        .collect()
}

/// Until `stop`: an item (with an id, so acked) every 250 ms on each talker; every 750 ms one of
/// `leaving` goes, in turn closed in order, reset (`SO_LINGER` 0) or kicked through the admin
/// API.
fn traffic(
    mut talkers: Vec<TcpStream>,
    mut leaving: Vec<TcpStream>,
    admin: &Admin,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut tick = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for (i, stream) in talkers.iter_mut().enumerate() {
            let id = tick * 100 + i as u64;
            let item = format!("{{\"ip\":\"192.0.2.{i}\",\"id\":{id}}}\n");
            stream.write_all(item.as_bytes()).expect("item");
        }
        if tick.is_multiple_of(3) {
            if let Some(stream) = leaving.pop() {
                match (tick / 3) % 3 {
                    0 => drop(stream),
                    1 => {
                        socket2::SockRef::from(&stream)
                            .set_linger(Some(Duration::ZERO))
                            .expect("linger 0");
                        drop(stream);
                    }
                    _ => {
                        let peer = stream.local_addr().expect("local addr");
                        let page = admin.json(&format!("/connections?peer={peer}"));
                        let id = page["items"][0]["id"].as_u64().expect("id");
                        let (status, body) = admin.request("DELETE", &format!("/connections/{id}"));
                        assert_eq!(status, 200, "{body}");
                    }
                }
            }
        }
        tick += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
}
