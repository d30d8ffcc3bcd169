//! `cargo xtask demo`: the bundled leaky FastAPI app under load from wrk, recorded by leakprobe.

use std::{
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{root, setup::Tools};

const PORT: u16 = 8765;

/// Kills and reaps a background process when dropped.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something listens on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the app did not listen on 127.0.0.1:{port} within {timeout:?}")
}

/// Runs the demo; `record_args` replace the default recording options.
pub fn run(tools: &Tools, leakprobe: &Path, record_args: &[String]) -> Result<()> {
    let root = root();
    let app = Background(
        Command::new(&tools.python)
            .arg(root.join("demo/app.py"))
            .arg(PORT.to_string())
            .spawn()
            .context("cannot start the demo app")?,
    );
    wait_for_port(PORT, Duration::from_secs(30))?;
    let defaults = ["--duration".to_string(), "40s".into(), "--interval".into(), "2s".into()];
    // `cargo xtask demo -- --duration 2m` and `cargo xtask demo --duration 2m` mean the same.
    let record_args = record_args.strip_prefix(&["--".to_string()]).unwrap_or(record_args);
    let record_args: &[String] = if record_args.is_empty() { &defaults } else { record_args };
    // Load for longer than the recording; wrk stops itself even if we are killed.
    let load = Background(
        Command::new("wrk")
            .args(["-t1", "-c4", "-d600s", "-s"])
            .arg(root.join("demo/load.lua"))
            .arg(format!("http://127.0.0.1:{PORT}"))
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start wrk")?,
    );
    eprintln!("demo: FastAPI app (PID {}) under load from wrk; recording it with leakprobe", app.0.id());
    let status = Command::new(leakprobe)
        .arg("record")
        .arg("--pid")
        .arg(app.0.id().to_string())
        .args(record_args)
        .status()
        .context("cannot run leakprobe")?;
    drop(load);
    drop(app);
    if !status.success() && status.code() != Some(3) {
        bail!("leakprobe failed: {status}");
    }
    Ok(())
}
