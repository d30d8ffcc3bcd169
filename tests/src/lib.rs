//! Helpers for leakprobe's end-to-end tests: real kernel programs attached to real processes.
//! Every side effect (a child process) is wrapped in a guard that undoes it, so a failing test
//! leaves nothing running.

pub mod agent;
pub mod cpython;
pub mod node;

pub use cpython::CPython;

use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

pub use leakprobe::{
    advice::{PatternId, Relation},
    report::{Report, StackReport},
    symbolize::{Frame, FrameKind},
    verdict::VerdictKind,
};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The leakprobe binary under test (`cargo xtask test` builds it and sets LEAKPROBE_BIN).
pub fn leakprobe_bin() -> PathBuf {
    let bin =
        std::env::var_os("LEAKPROBE_BIN").map(PathBuf::from).unwrap_or_else(|| root().join("target/release/leakprobe"));
    assert!(bin.exists(), "{} is missing: run the tests with `cargo xtask test`", bin.display());
    bin
}

/// The Python interpreter for the Python targets (the project's venv under `cargo xtask test`).
pub fn python() -> PathBuf {
    std::env::var_os("LEAKPROBE_PYTHON").map(PathBuf::from).unwrap_or_else(|| "python3".into())
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// The line (1-based) of the fixture `file` that carries `marker`.
pub fn line_of(file: &str, marker: &str) -> u64 {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    text.lines().position(|l| l.contains(marker)).map(|i| i as u64 + 1).expect("marker present")
}

/// Scratch directory for built fixtures.
pub fn scratch() -> PathBuf {
    let dir = root().join("target/e2e");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles a C fixture with gcc; returns the executable.
pub fn compile_c(source: &str, flags: &[&str]) -> PathBuf {
    let out = scratch().join(source.trim_end_matches(".c"));
    let status = Command::new("gcc").args(flags).arg("-o").arg(&out).arg(fixture(source)).status().expect("gcc runs");
    assert!(status.success(), "gcc failed on {source}");
    out
}

/// A child process killed (SIGKILL) and reaped when the guard drops.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        ChildGuard(Some(child))
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child is held")
    }

    /// Waits for the child to exit on its own and returns its output.
    pub fn wait_with_output(mut self) -> Output {
        self.0.take().expect("child is held").wait_with_output().expect("child output")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Spawns `cmd` and waits until it prints a line starting with "ready".
pub fn spawn_ready(cmd: &mut Command) -> ChildGuard {
    let mut child = ChildGuard::new(cmd.stdout(Stdio::piped()).spawn().expect("target starts"));
    let stdout = child.child().stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("target prints ready");
    assert!(line.starts_with("ready"), "target said {line:?}");
    child
}

/// Starts a Python fixture script.
pub fn spawn_python(script: &str) -> ChildGuard {
    spawn_ready(Command::new(python()).arg("-u").arg(fixture(script)))
}

/// `leakprobe record --pid PID --format json` for `duration`, returning the process output and
/// the loaded report. Every allocation is hooked (`--max-overhead 100`) unless `extra` sets a
/// budget: these tests check exact accounting; the sampling tests say so.
pub fn record_json(pid: u32, duration: &str, interval: &str, extra: &[&str]) -> (Output, Report) {
    record_json_env(pid, duration, interval, extra, &[])
}

/// As `record_json`, with `env` set for leakprobe (e.g. `LEAKPROBE_UPROBE_LINKS`).
pub fn record_json_env(
    pid: u32,
    duration: &str,
    interval: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Output, Report) {
    let full: &[&str] = if extra.contains(&"--max-overhead") { &[] } else { &["--max-overhead", "100"] };
    let mut args = vec!["--interval", interval];
    args.extend(full.iter().chain(extra));
    run_record(pid, duration, &args, env)
}

/// `leakprobe record --pid PID --duration DURATION --format json` with every other setting left at
/// its default, as a person runs it in production (a 5% budget, sampling windows).
pub fn record_default_json(pid: u32, duration: &str) -> (Output, Report) {
    run_record(pid, duration, &[], &[])
}

fn run_record(pid: u32, duration: &str, args: &[&str], env: &[(&str, &str)]) -> (Output, Report) {
    let out = Command::new(leakprobe_bin())
        .args(["record", "--pid", &pid.to_string(), "--duration", duration, "--format", "json"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("leakprobe runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || out.status.code() == Some(3),
        "leakprobe failed: {:?}\nstderr:\n{stderr}",
        out.status
    );
    // Kept for a failing test's post-mortem (CI prints only the assertion).
    let _ = std::fs::write(scratch().join(format!("record-{pid}.json")), &out.stdout);
    let report = load_report(&out.stdout).unwrap_or_else(|e| panic!("{e:#}; stderr:\n{stderr}"));
    (out, report)
}

/// A JSON report (`--format json`) read back with leakprobe's own loader, as `leakprobe report`
/// reads it: a report of another schema version, or one missing a field, is an error.
pub fn load_report(json: &[u8]) -> anyhow::Result<Report> {
    let text = std::str::from_utf8(json).map_err(|e| anyhow::anyhow!("report is not UTF-8 ({e})"))?;
    leakprobe::report::load::from_str(text)
}

/// Names of the BPF programs of leakprobe's that the kernel still has loaded. The list is every
/// program of the kernel object (`leakprobe_common::names::programs`, checked against the built
/// object by leakprobe's unit tests), so a new program cannot be left out.
pub fn leakprobe_programs_loaded() -> Vec<String> {
    // The kernel keeps the first 15 bytes of a program's name.
    let ours: Vec<&str> = leakprobe_common::names::programs().map(|name| &name[..name.len().min(15)]).collect();
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|name| ours.iter().any(|ours| name.starts_with(ours)))
        .collect()
}

/// The body of `GET http://addr/path` (a minimal HTTP/1.0 client: the tests need nothing more).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// Waits until `f` holds, up to `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The flagged stacks of a report.
pub fn flagged(report: &Report) -> Vec<&StackReport> {
    report.stacks.iter().filter(|s| s.flagged).collect()
}

/// What a failing test prints of a report: the budget, the sample liveness counters, the first
/// stacks (flagged or not, with their innermost Python frame and the reason) and the first holders.
pub fn digest(report: &Report) -> String {
    let mut out = format!(
        "ended: {}; warnings: {:?}\nbudget: {:?}\nsample liveness: {:?}\n",
        report.ended_because, report.warnings, report.budget, report.sample_liveness
    );
    for s in report.stacks.iter().take(8) {
        let frame = s.frames.iter().find(|f| f.kind == FrameKind::Python);
        let at = frame.map_or("-".to_string(), |f| format!("{}:{}", f.function, f.line.unwrap_or(0)));
        out += &format!(
            "  stack {} flagged={} live={} {:.0} B/s at {at}: {}\n",
            s.id, s.flagged, s.live_allocations, s.growth_bytes_per_sec, s.reason
        );
    }
    for h in report.holders.iter().take(5) {
        out += &format!("  holder {} flagged={} {:.0} B/s: {}\n", h.path, h.flagged, h.growth_bytes_per_sec, h.reason);
    }
    out
}

/// Whether any frame of the stack is the function `name`.
pub fn has_frame(stack: &StackReport, name: &str) -> bool {
    stack.frames.iter().any(|f| f.function == name)
}

/// The first frame of the stack (innermost first) that is Python code in a file ending with
/// `file_suffix`.
pub fn python_frame<'a>(stack: &'a StackReport, file_suffix: &str) -> Option<&'a Frame> {
    stack
        .frames
        .iter()
        .find(|f| f.kind == FrameKind::Python && f.file.as_deref().is_some_and(|p| p.ends_with(file_suffix)))
}

/// The innermost Python frame in the app file, as (function, line).
pub fn innermost_app_frame(stack: &StackReport, app_file: &str) -> Option<(String, u64)> {
    python_frame(stack, app_file).map(|f| (f.function.clone(), f.line.map_or(0, u64::from)))
}

/// Starts a web app (`command` takes the port as its last argument) and waits until it accepts
/// connections.
pub fn serve_fastapi(mut command: Command, port: u16) -> ChildGuard {
    let app = ChildGuard::new(command.arg(port.to_string()).spawn().unwrap());
    assert!(
        eventually(Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "app did not start"
    );
    app
}

/// wrk running the Lua script `script` (a fixture) against `127.0.0.1:port` for `seconds`, with
/// one thread and four connections; stopped when the guard is dropped.
pub fn wrk_load(script: &str, port: u16, seconds: u32) -> ChildGuard {
    ChildGuard::new(
        Command::new("wrk")
            .args(["-t1", "-c4", &format!("-d{seconds}s"), "-s"])
            .arg(fixture(script))
            .arg(format!("http://127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("wrk runs"),
    )
}
