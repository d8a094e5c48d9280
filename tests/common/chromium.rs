//! A real headless Chromium (Debian's `chromium`, installed by `.ci/run`) driven over the DevTools
//! protocol: load a page, collect what its console said, the exceptions it threw and every request it
//! made, and take a full-page screenshot.
//!
//! The protocol runs over `--remote-debugging-pipe` (fd 3 in, fd 4 out, NUL-terminated JSON), the
//! transport Puppeteer uses: no port, no WebSocket client. Two named pipes stand in for the fds, opened
//! by the shell that execs Chromium, because std's `Command` cannot place a descriptor without
//! `unsafe`. Requests are the page's own (`Network.requestWillBeSent`), not the browser's background
//! traffic (component updates, time queries), which a proxy would see mixed in.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

/// A page load takes a second or two; beyond this Chromium is stuck and is killed.
const DEADLINE: Duration = Duration::from_secs(120);

/// The `chromium` binary, or a panic that says how to install it: this test must not skip.
pub fn binary() -> PathBuf {
    let path =
        std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("chromium"), PathBuf::from);
    match Command::new(&path).arg("--version").output() {
        Ok(o) if o.status.success() => path,
        _ => panic!(
            "{} not found: this test renders the back-test page in a real headless browser. Install \
             Debian's chromium (`apt-get install -y chromium`; .ci/run does) or point $CHROMIUM at one.",
            path.display()
        ),
    }
}

/// What loading a page showed.
#[derive(Debug, Default)]
pub struct Visit {
    /// Console messages as `type: text` (every type: a page of ours logs nothing).
    pub console: Vec<String>,
    /// Uncaught exceptions, and browser log entries at level error (failed loads, CSP, ...).
    pub errors: Vec<String>,
    /// Every URL the page requested, the page itself first.
    pub requests: Vec<String>,
    /// `document.title` once loaded.
    pub title: String,
    /// Number of `<svg>` elements once loaded.
    pub svgs: u64,
}

struct Cdp {
    child: Child,
    /// Dropped once the child is reaped: stops the watchdog.
    #[allow(dead_code)]
    done: mpsc::Sender<()>,
    to: std::fs::File,
    from: BufReader<std::fs::File>,
    next_id: u64,
    session: Option<String>,
    /// Events read while waiting for a reply, in order.
    events: Vec<Value>,
}

impl Cdp {
    fn start(chromium: &Path, dir: &Path) -> Cdp {
        let (to_path, from_path) = (dir.join("cdp-in"), dir.join("cdp-out"));
        for p in [&to_path, &from_path] {
            let ok = Command::new("mkfifo").arg(p).status().unwrap().success();
            assert!(ok, "mkfifo {}", p.display());
        }
        let log = std::fs::File::create(dir.join("chromium.log")).unwrap();
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<"$CDP_IN" 4>"$CDP_OUT""#)
            .arg(chromium)
            .args([
                "--headless=new",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-extensions",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1100,900",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .env("CDP_IN", &to_path)
            .env("CDP_OUT", &from_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        // A stuck browser is killed, which closes its pipe: the reader then fails instead of hanging.
        let pid = child.id();
        let (done, done_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            // Dropping `done` after the child was reaped ends the wait without a kill (a pid is
            // only ours until then).
            if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(DEADLINE) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        });
        // The shell opens its end of each pipe in this order before exec: the opens pair up.
        let to = std::fs::OpenOptions::new()
            .write(true)
            .open(&to_path)
            .unwrap();
        let from = BufReader::new(std::fs::File::open(&from_path).unwrap());
        Cdp {
            child,
            done,
            to,
            from,
            next_id: 0,
            session: None,
            events: Vec::new(),
        }
    }

    fn send(&mut self, method: &str, params: Value, session: bool) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let (Some(s), true) = (&self.session, session) {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        id
    }

    /// Asks the browser to quit and waits for it (it may close the pipe before replying).
    fn close(&mut self) {
        self.send("Browser.close", json!({}), false);
        let _ = self.child.wait();
    }

    /// Sends a command (to the page's session once attached) and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, true);
        loop {
            let m = self.read();
            if m["id"] == json!(id) {
                if let Some(e) = m.get("error") {
                    panic!("{method}: {e}");
                }
                return m["result"].clone();
            }
            if m.get("method").is_some() {
                self.events.push(m);
            }
        }
    }

    fn read(&mut self) -> Value {
        let mut buf = Vec::new();
        let n = self.from.read_until(0, &mut buf).unwrap();
        assert!(
            n > 0 && buf.last() == Some(&0),
            "Chromium closed the DevTools pipe (crashed, or killed after {DEADLINE:?})"
        );
        buf.pop();
        serde_json::from_slice(&buf).unwrap()
    }

    /// Reads events until one named `method` arrives (or was read already).
    fn wait_for(&mut self, method: &str) {
        if self.events.iter().any(|e| e["method"] == json!(method)) {
            return;
        }
        loop {
            let m = self.read();
            let found = m["method"] == json!(method);
            if m.get("method").is_some() {
                self.events.push(m);
            }
            if found {
                return;
            }
        }
    }
}

/// Loads `page` (a file) in a fresh headless Chromium, and writes a full-page PNG to `screenshot`.
pub fn visit(page: &Path, screenshot: &Path, work: &Path) -> Visit {
    let chromium = binary();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let mut cdp = Cdp::start(&chromium, work);
    let target = cdp.call("Target.createTarget", json!({"url": "about:blank"}));
    let attached = cdp.call(
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    for domain in ["Page", "Runtime", "Log", "Network"] {
        cdp.call(&format!("{domain}.enable"), json!({}));
    }
    cdp.events.clear();
    cdp.call("Page.navigate", json!({"url": url}));
    cdp.wait_for("Page.loadEventFired");
    let eval = |cdp: &mut Cdp, expr: &str| {
        cdp.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        )["result"]["value"]
            .clone()
    };
    let title = eval(&mut cdp, "document.title");
    let svgs = eval(&mut cdp, "document.querySelectorAll('svg').length");
    let height = eval(&mut cdp, "document.documentElement.scrollHeight")
        .as_u64()
        .unwrap_or(900);
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1100, "height": height, "deviceScaleFactor": 1, "mobile": false}),
    );
    let shot = cdp.call(
        "Page.captureScreenshot",
        json!({"format": "png", "captureBeyondViewport": true}),
    );
    std::fs::write(screenshot, decode_base64(shot["data"].as_str().unwrap())).unwrap();
    cdp.close();

    let mut v = Visit {
        title: title.as_str().unwrap_or_default().to_string(),
        svgs: svgs.as_u64().unwrap_or(0),
        ..Visit::default()
    };
    for e in &cdp.events {
        let p = &e["params"];
        match e["method"].as_str().unwrap_or_default() {
            "Runtime.consoleAPICalled" => v.console.push(format!(
                "{}: {}",
                p["type"].as_str().unwrap_or_default(),
                p["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a["value"].to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
            "Runtime.exceptionThrown" => v.errors.push(format!(
                "exception: {}",
                p["exceptionDetails"]["exception"]["description"]
                    .as_str()
                    .or(p["exceptionDetails"]["text"].as_str())
                    .unwrap_or_default()
            )),
            "Log.entryAdded" if p["entry"]["level"] == json!("error") => v.errors.push(format!(
                "log: {} {}",
                p["entry"]["text"].as_str().unwrap_or_default(),
                p["entry"]["url"].as_str().unwrap_or_default()
            )),
            "Network.requestWillBeSent" => v
                .requests
                .push(p["request"]["url"].as_str().unwrap_or_default().to_string()),
            _ => {}
        }
    }
    v
}

impl Drop for Cdp {
    /// A failed test leaves no browser behind (then `done` drops and the watchdog ends).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c:?}"),
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        acc = (acc << 6 | value(c) as u32) & 0xff_ffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
