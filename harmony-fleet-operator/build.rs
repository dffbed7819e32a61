//! Builds the dashboard's assets (feature `web-frontend`) into `$OUT_DIR/assets`, where
//! `src/web/assets.rs` embeds them with `include_bytes!`:
//! - `app.css` from `web/src/app.css` with the Tailwind v4 CLI of `web/node_modules`;
//! - htmx, its SSE extension and xterm.js copied from `web/node_modules`;
//! - `dashboard.js`, our glue, from `web/src`.
//!
//! Third-party files come from the npm registry (`web/package.json` + lockfile; `npm ci` in
//! `scripts/install-deps.sh`) and are never committed. When they are missing the build still
//! succeeds with a cargo warning and placeholders: the dashboard serves unstyled pages and
//! says in the browser console what to install.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

/// (output name, path under `web/node_modules`)
const VENDORED: &[(&str, &str)] = &[
    ("htmx.min.js", "htmx.org/dist/htmx.min.js"),
    ("sse.js", "htmx-ext-sse/dist/sse.js"),
    ("xterm.js", "@xterm/xterm/lib/xterm.js"),
    ("xterm.css", "@xterm/xterm/css/xterm.css"),
    ("addon-fit.js", "@xterm/addon-fit/lib/addon-fit.js"),
];

const INSTALL_HINT: &str =
    "run `npm ci` in harmony-fleet-operator/web (scripts/install-deps.sh does it)";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_WEB_FRONTEND").is_none() {
        return;
    }
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let web = manifest.join("web");
    let modules = web.join("node_modules");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("assets");
    if let Err(e) = fs::create_dir_all(&out) {
        panic!("cannot create {}: {e}", out.display());
    }
    for watched in [
        web.join("src"),
        web.join("package-lock.json"),
        modules.join(".package-lock.json"),
        manifest.join("src/web"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }

    let mut hasher = DefaultHasher::new();
    let css = out.join("app.css");
    if !build_css(&web, &css) {
        write(&css, b"/* Tailwind CLI missing: unstyled dashboard */\n");
    }
    for (name, source) in VENDORED {
        let target = out.join(name);
        if fs::copy(modules.join(source), &target).is_err() {
            println!("cargo:warning=dashboard asset {source} is missing: {INSTALL_HINT}");
            let placeholder = if name.ends_with(".js") {
                format!(
                    "console.warn(\"harmony fleet: {name} was not built in: {INSTALL_HINT}\");\n"
                )
            } else {
                String::new()
            };
            write(&target, placeholder.as_bytes());
        }
    }
    if fs::copy(web.join("src/dashboard.js"), out.join("dashboard.js")).is_err() {
        panic!("web/src/dashboard.js is part of the repository and must exist");
    }
    let mut names: Vec<_> = fs::read_dir(&out)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.sort();
    for path in names {
        fs::read(&path).unwrap_or_default().hash(&mut hasher);
    }
    println!(
        "cargo:rustc-env=FLEET_WEB_ASSETS_VERSION={:016x}",
        hasher.finish()
    );
}

/// Runs the Tailwind CLI; `false` (with a warning) when it is missing or fails.
fn build_css(web: &Path, css: &Path) -> bool {
    let cli = web.join("node_modules/.bin/tailwindcss");
    if !cli.exists() {
        println!(
            "cargo:warning=Tailwind CLI not found at {}: the dashboard will be unstyled; {INSTALL_HINT}",
            cli.display()
        );
        return false;
    }
    let status = Command::new(&cli)
        .current_dir(web)
        .args(["--input", "src/app.css", "--output"])
        .arg(css)
        .arg("--minify")
        .status();
    match status {
        Ok(s) if s.success() => true,
        Ok(s) => {
            println!("cargo:warning=Tailwind CLI failed ({s}): the dashboard will be unstyled");
            false
        }
        Err(e) => {
            println!(
                "cargo:warning=cannot run the Tailwind CLI ({e}; is node installed?): the dashboard will be unstyled"
            );
            false
        }
    }
}

fn write(path: &Path, bytes: &[u8]) {
    if let Err(e) = fs::write(path, bytes) {
        panic!("cannot write {}: {e}", path.display());
    }
}
