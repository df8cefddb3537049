//! Bundles the agent page's script (JsSIP from npm and our `agent-web/src`) with esbuild, so
//! the binary serves a working page with no extra step. Nobody else's code is committed: npm
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
    ] {
        println!("cargo:rerun-if-changed={}", web.join(watched).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("app.js");
    let esbuild = web.join("node_modules/.bin/esbuild");
    if !esbuild.exists() {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&web),
            "npm ci (agent-web)",
        );
    }
    run(
        Command::new(&esbuild)
            .args([
                "src/app.js",
                "--bundle",
                "--minify",
                "--format=iife",
                "--target=es2020",
                "--log-level=warning",
            ])
            .arg(format!("--outfile={}", out.display()))
            .current_dir(&web),
        "esbuild (agent-web)",
    );
}
