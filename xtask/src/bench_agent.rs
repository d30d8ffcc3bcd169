//! `cargo xtask bench-agent`: the node agent watching many Python processes with churn (the
//! DaemonSet case) must keep to a CPU and memory cap. Starts N churning Python processes (one of
//! them leaking), runs `leakprobe agent` over them, and reports the agent's CPU share of one core
//! and its peak RSS against the caps the DaemonSet sets (docs/deploy.md), plus what it found.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{root, setup};

/// The DaemonSet's limits (deploy/kubernetes/daemonset.yaml): 500m CPU, 256 MiB.
const CPU_CAP_CORES: f64 = 0.5;
const MEMORY_CAP_BYTES: f64 = 256.0 * 1024.0 * 1024.0;

/// Each process: a request loop that builds and drops some objects ~20 times a second; the
/// first one (run as agent_leak.py, so that its metrics are its own) also keeps a little of each
/// request: the leak the agent must find among them.
const CHURN: &str = r#"
import sys, time
leak = sys.argv[0].endswith("agent_leak.py")
kept = []
print("ready", flush=True)
while True:
    body = [str(i) * 8 for i in range(300)]
    if leak:
        kept.append("x" * 20000)
    del body
    time.sleep(0.05)
"#;

struct Options {
    processes: usize,
    seconds: u64,
    interval: String,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options { processes: 200, seconds: 60, interval: "5s".into() };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = it.next().with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--processes" => o.processes = value.parse()?,
            "--seconds" => o.seconds = value.parse()?,
            "--interval" => o.interval = value.clone(),
            _ => bail!("unknown option {arg} (known: --processes N, --seconds N, --interval D)"),
        }
    }
    Ok(o)
}

/// Kills every child on drop.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// CPU seconds (user + system) of `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// A `/proc/PID/status` field in bytes (kB values).
fn status_bytes(pid: u32, field: &str) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix(" kB")?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        * 1024.0
}

fn get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn metric(text: &str, prefix: &str) -> Vec<String> {
    text.lines().filter(|l| l.starts_with(prefix)).map(String::from).collect()
}

pub fn run(tools: &setup::Tools, leakprobe: &Path, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let out_dir = root().join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let (churn, leak) = (out_dir.join("agent_churn.py"), out_dir.join("agent_leak.py"));
    fs::write(&churn, CHURN)?;
    fs::write(&leak, CHURN)?;
    eprintln!("bench-agent: starting {} Python processes", o.processes);
    let mut targets = Children(Vec::new());
    for i in 0..o.processes {
        let child = Command::new(&tools.python)
            .arg(if i == 0 { &leak } else { &churn })
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start a Python process")?;
        targets.0.push(child);
    }
    let targets_rss: f64 = {
        sleep(Duration::from_secs(3));
        targets.0.iter().map(|c| status_bytes(c.id(), "VmRSS:")).sum()
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut agent = Children(vec![Command::new(leakprobe)
        .args(["agent", "--listen", &addr, "--interval", &o.interval, "--no-escalation"])
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the agent")?]);
    let agent_pid = agent.0[0].id();
    // Start-up (inspecting every process) is measured apart from the steady state.
    let mut watched = 0.0;
    while started.elapsed() < Duration::from_secs(120) {
        sleep(Duration::from_secs(1));
        let text = get(&addr, "/metrics").unwrap_or_default();
        watched = metric(&text, "leakprobe_agent_targets ")
            .first()
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0);
        if watched >= o.processes as f64 {
            break;
        }
    }
    let startup_secs = started.elapsed().as_secs_f64();
    let startup_cpu = cpu_seconds(agent_pid);
    eprintln!("bench-agent: watching {watched} processes after {startup_secs:.1}s ({startup_cpu:.1} CPU s)");
    let t0 = Instant::now();
    let cpu0 = cpu_seconds(agent_pid);
    sleep(Duration::from_secs(o.seconds));
    let steady_cpu = (cpu_seconds(agent_pid) - cpu0) / t0.elapsed().as_secs_f64();
    let peak_rss = status_bytes(agent_pid, "VmHWM:");
    let text = get(&addr, "/metrics").unwrap_or_default();
    let flagged = |script: &str| {
        metric(&text, "leakprobe_process_verdict{")
            .iter()
            .any(|l| l.contains(script) && l.contains(r#"verdict="leak"} 1"#))
    };
    let (leaker_flagged, churn_flagged) = (flagged("agent_leak.py"), flagged("agent_churn.py"));
    let drops: f64 = metric(&text, "leakprobe_agent_drops_total{")
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let _ = agent.0[0].kill();
    drop(agent);
    drop(targets);

    let verdict = |ok: bool| if ok { "within" } else { "OVER" };
    let markdown = format!(
        "| | value | cap |\n|---|---|---|\n\
         | Python processes watched | {watched:.0} of {} (their RSS: {:.0} MiB) | |\n\
         | agent start-up (inspect all) | {startup_secs:.1} s, {startup_cpu:.1} CPU s | |\n\
         | agent CPU, steady (interval {}) | {:.2}% of a core | {verdict_cpu} {:.0}% |\n\
         | agent peak RSS | {:.1} MiB | {verdict_mem} {:.0} MiB |\n\
         | leak verdict: the leaker / any of the others | {leaker_flagged} / {churn_flagged} | |\n\
         | events dropped | {drops:.0} | |\n",
        o.processes,
        targets_rss / 1048576.0,
        o.interval,
        steady_cpu * 100.0,
        CPU_CAP_CORES * 100.0,
        peak_rss / 1048576.0,
        MEMORY_CAP_BYTES / 1048576.0,
        verdict_cpu = verdict(steady_cpu <= CPU_CAP_CORES),
        verdict_mem = verdict(peak_rss <= MEMORY_CAP_BYTES),
    );
    let json = serde_json::json!({
        "processes": o.processes, "watched": watched, "seconds": o.seconds, "interval": o.interval,
        "startup_seconds": startup_secs, "startup_cpu_seconds": startup_cpu,
        "steady_cpu_cores": steady_cpu, "peak_rss_bytes": peak_rss,
        "cpu_cap_cores": CPU_CAP_CORES, "memory_cap_bytes": MEMORY_CAP_BYTES,
        "leaker_flagged": leaker_flagged, "churners_flagged": churn_flagged, "drops": drops, "targets_rss_bytes": targets_rss,
    });
    fs::write(out_dir.join("agent.md"), &markdown)?;
    fs::write(out_dir.join("agent.json"), serde_json::to_string_pretty(&json)?)?;
    println!("{markdown}");
    if steady_cpu > CPU_CAP_CORES || peak_rss > MEMORY_CAP_BYTES {
        bail!("the agent exceeded its caps");
    }
    if !leaker_flagged || churn_flagged {
        bail!("the agent did not flag exactly the leaking process");
    }
    Ok(())
}
