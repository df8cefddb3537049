//! Bundles the agent page's script (JsSIP from npm and our `agent-web/src`) and the
//! supervisor console's (uPlot from npm) with esbuild, so the binary serves both pages with no
//! extra step. Nobody else's code is committed: npm
//! installs it from `agent-web/package-lock.json` into the git-ignored `node_modules`.
//! A build script fails by panicking, with the reason: that is how cargo reports it.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("{what}: cannot start it ({e}). The agent page is built with Node.js and npm; install them (Debian: apt-get install nodejs npm).")
    });
    assert!(status.success(), "{what} failed ({status})");
}

fn main() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent-web");
    for watched in [
        "src",
        "package.json",
        "package-lock.json",
        "index.html",
        "style.css",
        "console.html",
        "console.css",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(watched).display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let esbuild = web.join("node_modules/.bin/esbuild");
    if !esbuild.exists() || !web.join("node_modules/uplot").exists() {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&web),
            "npm ci (agent-web)",
        );
    }
    // The console's charts' own style sheet, served beside its script.
    std::fs::copy(
        web.join("node_modules/uplot/dist/uPlot.min.css"),
        out_dir.join("uPlot.min.css"),
    )
    .expect("uPlot's style sheet (npm ci installs it)");
    for (entry, bundle) in [("src/app.js", "app.js"), ("src/console.js", "console.js")] {
        run(
            Command::new(&esbuild)
                .args([
                    entry,
                    "--bundle",
                    "--minify",
                    "--format=iife",
                    "--target=es2020",
                    "--log-level=warning",
                ])
                .arg(format!("--outfile={}", out_dir.join(bundle).display()))
                .current_dir(&web),
            &format!("esbuild {entry} (agent-web)"),
        );
    }
}
