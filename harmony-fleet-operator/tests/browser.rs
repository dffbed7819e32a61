//! Browser test of the dashboard: starts `serve-web --mock` on a free port and drives it with
//! Debian's Chromium through playwright-core (`web/tests/browser.mjs`): every page loads,
//! blacklisting swaps the row, log lines arrive live, `echo hi` in the shell prints `hi`,
//! pages fit a phone-width screen. Screenshots land in
//! `$CARGO_TARGET_TMPDIR/dashboard-screenshots/` (under `target/`, never committed).
//!
//! Needs `chromium` (Debian package), `node` and `npm ci` in `web/` — all installed by
//! `scripts/install-deps.sh`. Without them the test says so loudly and passes, unless
//! `CI=true`: there a missing browser fails it, so CI cannot go green without running it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn find_chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|name| find_on_path(name))
}

/// `GET /` answers 200.
fn serves(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// `CI=true` (or `1`): a missing browser fails the test instead of skipping it.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Chromium, or why the test cannot run (no Chromium, node or playwright-core).
fn browser(web: &Path) -> Result<PathBuf, String> {
    let chromium = find_chromium()
        .ok_or("no `chromium` on PATH: install it with `apt-get install chromium`")?;
    if find_on_path("node").is_none() {
        return Err("no `node` on PATH: install it with `apt-get install nodejs npm`".into());
    }
    if !web.join("node_modules/playwright-core").is_dir() {
        return Err(
            "playwright-core is not installed: run `npm ci` in harmony-fleet-operator/web".into(),
        );
    }
    Ok(chromium)
}

#[test]
fn dashboard_works_in_a_real_browser() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let chromium = match browser(&web) {
        Ok(chromium) => chromium,
        Err(why) if in_ci() => panic!("CI=true and the browser test cannot run: {why}"),
        Err(why) => {
            eprintln!(
                "\n!!!!!!!! SKIPPED the browser test: {why} (scripts/install-deps.sh installs it; \
                 CI=true makes this a failure) !!!!!!!!\n"
            );
            return;
        }
    };
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_harmony-fleet-operator"))
            .args(["serve-web", "--mock", "--listen", &addr.to_string()])
            .env_remove("FLEET_WEB_TOKEN")
            .env_remove("FLEET_WEB_BASIC_AUTH")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("serve-web starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serves(addr) {
        assert!(
            Instant::now() < deadline,
            "serve-web --mock did not answer GET / on {addr} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let output = Command::new("node")
        .current_dir(&web)
        .arg("tests/browser.mjs")
        .arg(format!("http://{addr}"))
        .arg(&shots)
        .arg(&chromium)
        .output()
        .expect("node runs (install nodejs)");
    drop(server);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}screenshots in {}", shots.display());
}
