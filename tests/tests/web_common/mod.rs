//! Helpers of the hirte-web integration tests (`mod web_common;`): hirte-web as a real process
//! against a cluster's manager bus, a minimal HTTP/1.1 client, and a WebDriver session on
//! headless Chromium through chromedriver. Not a test target (a directory with mod.rs).

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hirte_tests::Cluster;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::ctl_common::{parse_json, J};

/// Bound for hirte-web and chromedriver to start answering.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for one HTTP exchange of the tests.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One HTTP response, split.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

/// Parses a whole response read until the server closed the connection.
pub fn parse_response(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Resp {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Sends `request` as is to `addr` and reads the answer until the server closes.
pub fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    s.write_all(request)?;
    // Until the server closes, or the body its Content-Length announces is complete
    // (chromedriver keeps connections open whatever the request says).
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let r = parse_response(&raw);
            if let Some(len) = r
                .header("Content-Length")
                .and_then(|v| v.parse::<usize>().ok())
            {
                if raw.len() >= end + 4 + len {
                    return Ok(r);
                }
            }
        }
        match s.read(&mut chunk)? {
            0 => return Ok(parse_response(&raw)),
            n => raw.extend_from_slice(&chunk[..n]),
        }
    }
}

/// `METHOD path` with an optional JSON body, HTTP/1.1, `Connection: close`.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    exchange(addr, req.as_bytes()).unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

fn wait_connectable(addr: SocketAddr, what: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "{what} exited ({st}) before listening on {addr}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} not listening on {addr} after {START_TIMEOUT:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, a grace period, then SIGKILL; always reaps.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// hirte-web running on the host against the cluster's manager bus, on its own port.
pub struct Web {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Web {
    /// Starts hirte-web with `--listen 127.0.0.1:<free port>`, logging to `<cluster>/web.log`;
    /// `HIRTE_CONFIG_DIR` is an empty directory of the cluster, so the host's
    /// `/etc/hirte/web.conf` does not count.
    pub fn start(c: &Cluster) -> Web {
        Web::start_args(c, &[])
    }

    pub fn start_args(c: &Cluster, extra: &[&str]) -> Web {
        let bin = c.bin_dir().join("hirte-web");
        let mut cmd = Command::new(bin);
        cmd.args(extra);
        Web::start_command(c, cmd)
    }

    /// [`Web::start`] with `cmd` as the program (e.g. hirte-web wrapped to run as another
    /// user); the listen, log and bus settings are added.
    pub fn start_command(c: &Cluster, mut cmd: Command) -> Web {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let etc = c.dir().join("web-etc");
        std::fs::create_dir_all(&etc).unwrap();
        let log = c.dir().join("web.log");
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut child = cmd
            .args(["--listen", &addr.to_string(), "--log-target", "stderr"])
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env("DBUS_SYSTEM_BUS_ADDRESS", c.bus_address())
            .env("HIRTE_CONFIG_DIR", &etc)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning hirte-web");
        wait_connectable(addr, "hirte-web", &mut child, &log);
        Web { child, addr, log }
    }

    pub fn get(&self, path: &str) -> Resp {
        request(self.addr, "GET", path, None)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it with SIGTERM; its exit status.
    pub fn stop(mut self) -> Option<i32> {
        stop_child(&mut self.child, Duration::from_secs(5));
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

// ----- JSON text for WebDriver requests -----------------------------------------------------

/// `s` as a JSON string literal.
pub fn js(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Standard base64 (with padding) to bytes: WebDriver screenshots.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

// ----- headless Chromium through chromedriver (W3C WebDriver) --------------------------------

/// Chromium's binary (the Debian package's; `/usr/bin/chromium` is a wrapper script).
pub fn chromium_binary() -> Option<PathBuf> {
    ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A chromedriver process and one browser session. Dropping it ends the session, kills
/// chromedriver's process group and any process still using the session's profile
/// directory, and removes that directory.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    profile: PathBuf,
    pub log: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile in `dir`, window
    /// `width` x `height`.
    pub fn start(dir: &Path, width: u32, height: u32) -> Browser {
        let binary = chromium_binary().expect("chromium is installed (ci/setup)");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        let log = dir.join("chromedriver.log");
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut driver = Command::new("chromedriver")
            .arg(format!("--port={}", addr.port()))
            // Its own process group: Drop kills the driver and every browser process at once.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning chromedriver (Debian package chromium-driver)");
        wait_connectable(addr, "chromedriver", &mut driver, &log);
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
            profile,
            log,
        };
        let args = [
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--no-first-run".to_string(),
            "--no-default-browser-check".to_string(),
            format!("--user-data-dir={}", b.profile.display()),
            format!("--window-size={width},{height}"),
        ];
        let args: Vec<String> = args.iter().map(|a| js(a)).collect();
        let caps = format!(
            r#"{{"capabilities":{{"alwaysMatch":{{"browserName":"chrome","goog:chromeOptions":{{"binary":{},"args":[{}]}},"goog:loggingPrefs":{{"browser":"ALL"}}}}}}}}"#,
            js(&binary.display().to_string()),
            args.join(",")
        );
        let v = b.call("POST", "/session", Some(&caps));
        b.session = match v.get("sessionId") {
            Some(J::Str(s)) => s.clone(),
            other => panic!("no session: {other:?}\n{}", b.driver_log()),
        };
        b
    }

    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A WebDriver command; its `value`. Panics on a WebDriver error.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> J {
        let r = request(self.addr, method, path, body);
        let v = parse_json(r.body.trim())
            .unwrap_or_else(|e| panic!("{method} {path}: bad JSON ({e}): {}", r.body));
        let value = v.get("value").cloned().unwrap_or(J::Null);
        if r.status != 200 {
            panic!("{method} {path}: HTTP {}: {value:?}", r.status);
        }
        value
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn navigate(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(&format!("{{\"url\":{}}}", js(url))),
        );
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> J {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(&format!("{{\"script\":{},\"args\":[]}}", js(script))),
        )
    }

    /// [`Browser::eval`] of a script returning a string.
    pub fn eval_str(&self, script: &str) -> String {
        match self.eval(script) {
            J::Str(s) => s,
            J::Null => String::new(),
            other => format!("{other:?}"),
        }
    }

    /// Polls `script` until it returns `true`; panics with `what` after `timeout`.
    pub fn wait_true(&self, what: &str, timeout: Duration, script: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(script) == J::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; page text:\n{}",
                self.eval_str("return document.body ? document.body.innerText : ''")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn set_window(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &self.session_path("/window/rect"),
            Some(&format!("{{\"width\":{width},\"height\":{height}}}")),
        );
    }

    /// PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        match self.call("GET", &self.session_path("/screenshot"), None) {
            J::Str(b64) => base64_decode(&b64),
            other => panic!("screenshot: {other:?}"),
        }
    }

    /// The browser console's entries since the last call (`level`, `message`).
    pub fn console(&self) -> Vec<(String, String)> {
        let v = self.call(
            "POST",
            &self.session_path("/se/log"),
            Some(r#"{"type":"browser"}"#),
        );
        v.arr()
            .iter()
            .map(|e| (e.s("level").to_string(), e.s("message").to_string()))
            .collect()
    }

    /// PIDs of processes whose command line names this session's profile directory.
    pub fn profile_processes(&self) -> Vec<i32> {
        let needle = self.profile.display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = self.session_path("");
            let _ = exchange(
                self.addr,
                format!(
                    "DELETE {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.addr
                )
                .as_bytes(),
            );
        }
        let pgid = Pid::from_raw(self.driver.id() as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        stop_child(&mut self.driver, Duration::from_secs(3));
        let _ = killpg(pgid, Signal::SIGKILL);
        // A browser process that left the group still names the profile on its command line.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.profile_processes();
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
