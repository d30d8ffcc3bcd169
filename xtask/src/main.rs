//! Project tasks: `cargo xtask <setup|build|test|demo|bench|deploy-check|gen-layouts>`.
//!
//! Everything the project needs on a fresh machine is installed here, idempotently, and cached
//! under `~/.cache/leakprobe` so a second run costs seconds.

mod bench;
mod bench_agent;
mod chroot;
mod demo;
mod deploy_checks;
mod layouts;
mod setup;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup    install what the build and the tests need (nightly rust-src, bpf-linker, wrk,
           a Python venv with FastAPI/uvicorn)
  build    setup, then build leakprobe (release) with its kernel programs
  test     build, then run the unit tests and the end-to-end tests (as root)
  demo     build, then record the bundled leaky FastAPI app under load and print the report
  bench    build, then measure what leakprobe and its peers cost the demo app under load
           (--rounds N, --seconds N); writes target/bench/results.{md,json}
  bench-agent
           build, then run the node agent over many churning Python processes and check its CPU
           and memory against the DaemonSet's caps (--processes 200, --seconds 60, --interval 5s);
           writes target/bench/agent.{md,json}
  deploy-check
           setup, then check deploy/ offline: the alert rules and their tests (promtool), the
           Kubernetes manifests (schemas, cross-references), the Dockerfile (also part of test);
           --fix first rewrites deploy/kubernetes/prometheusrule.yaml from the rules file
  gen-layouts
           regenerate leakprobe/src/python/layouts/v3_X.rs from the headers of every pyenv
           CPython 3.10+ installed here (compiles a small C program per version with cc)
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::install().map(|_| ()),
        Some("build") => build().map(|_| ()),
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("bench") => build().and_then(|tools| bench::run(&tools, &leakprobe_bin(), &args[1..])),
        Some("deploy-check") => deploy_check(&args[1..]),
        Some("gen-layouts") => layouts::run(),
        Some("bench-agent") => build().and_then(|tools| bench_agent::run(&tools, &leakprobe_bin(), &args[1..])),
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").into()
}

/// Runs a command, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// A `cargo` command with bpf-linker on PATH. Builds pass `--ignore-rust-version`: aya 0.16
/// declares rustc 1.98, which the nightly of `rust-toolchain.toml` (1.97) builds.
fn cargo(tools: &setup::Tools) -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root()).env("PATH", tools.path_env());
    cmd
}

fn build() -> Result<setup::Tools> {
    let tools = setup::install()?;
    run(cargo(&tools).args(["build", "--release", "--ignore-rust-version", "-p", "leakprobe"]))?;
    Ok(tools)
}

fn leakprobe_bin() -> PathBuf {
    root().join("target/release/leakprobe")
}

fn test(extra: &[String]) -> Result<()> {
    let tools = build()?;
    // Pure logic first: fast, no root needed (the interpreter tests read the same interpreters).
    run(cargo(&tools)
        .args([
            "test",
            "--release",
            "--ignore-rust-version",
            "-p",
            "leakprobe",
            "-p",
            "leakprobe-common",
            "-p",
            "xtask",
        ])
        .env("LEAKPROBE_PYTHON", &tools.python)
        .env("LEAKPROBE_EXTRA_PYTHONS", versioned_paths(&tools.extra_pythons)))?;
    deploy_checks::check(&tools, false)?;
    // End to end: real kernel programs on real processes; one at a time, they share kernel state.
    run(cargo(&tools)
        .args(["test", "--release", "--ignore-rust-version", "-p", "leakprobe-tests", "--"])
        .args(["--test-threads=1"])
        .args(extra)
        .env("LEAKPROBE_BIN", leakprobe_bin())
        .env("LEAKPROBE_PYTHON", &tools.python)
        .env("LEAKPROBE_EXTRA_PYTHONS", versioned_paths(&tools.extra_pythons))
        .env("LEAKPROBE_CHROOTS", versioned_paths(&tools.debian_roots))
        .env("LEAKPROBE_CHROOT_PYTHON", format!("{}/bin/python", chroot::VENV))
        .env("LEAKPROBE_PROMETHEUS", tools.promtool.with_file_name("prometheus")))
}

/// `3.12=/path,3.13=/path` for the tests.
fn versioned_paths(entries: &[(String, PathBuf)]) -> String {
    entries.iter().map(|(v, p)| format!("{v}={}", p.display())).collect::<Vec<_>>().join(",")
}

fn deploy_check(extra: &[String]) -> Result<()> {
    let fix = match extra {
        [] => false,
        [flag] if flag == "--fix" => true,
        _ => bail!("usage: cargo xtask deploy-check [--fix]"),
    };
    deploy_checks::check(&setup::install()?, fix)
}

fn demo(extra: &[String]) -> Result<()> {
    let tools = build()?;
    demo::run(&tools, &leakprobe_bin(), extra)
}
