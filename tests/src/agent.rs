//! A running `leakprobe agent` for the end-to-end tests.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{eventually, http_get, leakprobe_bin};

/// A running agent: its stderr lines as they come, its address, SIGTERM on drop.
pub struct Agent {
    child: std::process::Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub addr: String,
}

impl Agent {
    pub fn start(extra: &[&str]) -> Agent {
        Agent::start_under(&[], extra)
    }

    /// The agent run by `wrapper` (e.g. `capsh ... --`), which is given the command line.
    pub fn start_under(wrapper: &[&str], extra: &[&str]) -> Agent {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(leakprobe_bin());
                cmd
            }
            None => Command::new(leakprobe_bin()),
        };
        let mut child = cmd
            .args(["agent", "--listen", "127.0.0.1:0", "--interval", "1s", "--rate-window", "8"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("leakprobe agent starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut agent = Agent { child, lines, addr: String::new() };
        let found = eventually(Duration::from_secs(30), || {
            agent.addr =
                agent.said("serving /metrics").and_then(|l| l.rsplit(' ').next().map(String::from)).unwrap_or_default();
            !agent.addr.is_empty()
        });
        assert!(found, "the agent never said where it serves; stderr:\n{}", agent.stderr());
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stderr line containing `text`.
    pub fn said(&self, text: &str) -> Option<String> {
        self.lines.lock().unwrap().iter().find(|l| l.contains(text)).cloned()
    }

    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn metrics(&self) -> String {
        let (status, body) = http_get(&self.addr, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The value of the sample whose name and labels contain all of `parts`.
    pub fn sample(&self, metrics: &str, parts: &[&str]) -> Option<f64> {
        metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut status = None;
        eventually(Duration::from_secs(20), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status.unwrap_or_else(|| {
            let _ = self.child.kill();
            self.child.wait().unwrap()
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
