//! `cargo xtask bench`: what leakprobe costs the service it watches, against its peers, measured
//! in one run. The bundled FastAPI app (uvicorn, 1 worker) is driven by wrk with a fixed load;
//! each mode's throughput and latency are reported as ratios to the baseline measured in the same
//! run, with the modes interleaved (A B C ... A B C ...) so drift hits them all alike.
//!
//! Writes `target/bench/results.json` and `target/bench/results.md`.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::{
    demo::{wait_for_port, Background},
    root, setup,
};

const PORT: u16 = 8799;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Baseline,
    /// `leakprobe record` with its default overhead budget.
    LeakprobeRecord,
    /// The same with one link per site (`LEAKPROBE_UPROBE_LINKS=per_site`), as on kernels
    /// without uprobe_multi links: what those links save.
    LeakprobeRecordPerSite,
    /// `leakprobe record --max-overhead 100`: every allocation, all the time.
    LeakprobeFull,
    /// `leakprobe watch`: memory syscalls only, continuous.
    LeakprobeWatch,
    /// `leakprobe census` every second: heap reads only, no probe.
    LeakprobeCensus,
    Memray,
    Tracemalloc,
    PySpy,
}

impl Mode {
    const ALL: [Mode; 9] = [
        Mode::Baseline,
        Mode::LeakprobeRecord,
        Mode::LeakprobeRecordPerSite,
        Mode::LeakprobeWatch,
        Mode::LeakprobeCensus,
        Mode::LeakprobeFull,
        Mode::Memray,
        Mode::Tracemalloc,
        Mode::PySpy,
    ];

    /// Short name for `--modes`.
    fn key(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::LeakprobeRecord => "record",
            Mode::LeakprobeRecordPerSite => "record-per-site",
            Mode::LeakprobeFull => "record-full",
            Mode::LeakprobeWatch => "watch",
            Mode::LeakprobeCensus => "census",
            Mode::Memray => "memray",
            Mode::Tracemalloc => "tracemalloc",
            Mode::PySpy => "py-spy",
        }
    }

    fn is_leakprobe(self) -> bool {
        matches!(
            self,
            Mode::LeakprobeRecord
                | Mode::LeakprobeRecordPerSite
                | Mode::LeakprobeFull
                | Mode::LeakprobeWatch
                | Mode::LeakprobeCensus
        )
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline (nothing attached)",
            Mode::LeakprobeRecord => "leakprobe record (default budget, --max-overhead 5)",
            Mode::LeakprobeRecordPerSite => "leakprobe record, one uprobe link per site (no uprobe_multi)",
            Mode::LeakprobeFull => "leakprobe record --max-overhead 100 (every allocation)",
            Mode::LeakprobeWatch => "leakprobe watch (memory syscalls only; detects the leak, no line)",
            Mode::LeakprobeCensus => "leakprobe census every 1 s (heap reads only, 200 holders; no probe)",
            Mode::Memray => "memray run",
            Mode::Tracemalloc => "tracemalloc, 1 frame",
            Mode::PySpy => "py-spy record (CPU, reference)",
        }
    }
}

/// One measured run.
#[derive(Debug, Default, Clone)]
struct Sample {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// leakprobe only: its CPU seconds per wall second, peak RSS, and whether it named the line.
    tool_cpu_share: Option<f64>,
    tool_peak_rss_mb: Option<f64>,
    named_leak_line: Option<bool>,
    /// When leakprobe would first have flagged the leaking line (seconds into its recording).
    flagged_after_secs: Option<f64>,
    /// `record` with windows: how long a closed window's links took to go, on average (ms).
    detach_tail_ms: Option<f64>,
    /// `record`: allocations recorded (sampled, in windows) per minute of recording.
    samples_per_min: Option<f64>,
    /// `record`: the overhead its budget estimated (`budget.estimated_overhead_percent`).
    estimated_overhead_percent: Option<f64>,
}

struct Options {
    rounds: usize,
    seconds: u64,
    modes: Vec<Mode>,
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options { rounds: 2, seconds: 15, modes: Mode::ALL.to_vec() };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = it.next().with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--rounds" => options.rounds = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--modes" => {
                options.modes = value
                    .split(',')
                    .map(|key| {
                        Mode::ALL.into_iter().find(|m| m.key() == key).with_context(|| format!("unknown mode {key}"))
                    })
                    .collect::<Result<_>>()?;
                if !options.modes.contains(&Mode::Baseline) {
                    options.modes.insert(0, Mode::Baseline);
                }
            }
            _ => bail!("unknown bench option {arg} (known: --rounds N, --seconds N, --modes a,b,...)"),
        }
    }
    Ok(options)
}

pub fn run(tools: &setup::Tools, leakprobe: &Path, args: &[String]) -> Result<()> {
    let options = parse_options(args)?;
    let cache = setup::cache_dir();
    let mut packages: Vec<&str> = setup::PIP_PACKAGES.to_vec();
    packages.extend(["memray==1.*", "py-spy==0.4.*"]);
    let base = tools.python.canonicalize().unwrap_or_else(|_| tools.python.clone());
    let python = setup::venv_with(&cache.join("venv-bench"), &base, &packages)?;
    let out_dir = root().join("target/bench");
    fs::create_dir_all(&out_dir)?;

    let mut samples: Vec<(Mode, Sample)> = Vec::new();
    for round in 1..=options.rounds {
        for &mode in &options.modes {
            eprintln!("bench: round {round}/{}: {}", options.rounds, mode.name());
            let sample = measure(mode, &python, leakprobe, &out_dir, options.seconds)
                .with_context(|| format!("measuring {}", mode.name()))?;
            eprintln!(
                "bench:   {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                sample.requests_per_sec, sample.p50_ms, sample.p99_ms
            );
            samples.push((mode, sample));
        }
    }
    let (markdown, json) = summarize(&samples, &options);
    fs::write(out_dir.join("results.md"), &markdown)?;
    fs::write(out_dir.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    println!("{markdown}");
    eprintln!("bench: wrote {}", out_dir.join("results.{md,json}").display());
    Ok(())
}

fn start_app(mode: Mode, python: &Path, out_dir: &Path) -> Result<Background> {
    let app = root().join("demo/app.py");
    let mut cmd = Command::new(python);
    match mode {
        Mode::Memray => {
            cmd.args(["-m", "memray", "run", "--force", "-q", "-o"]).arg(out_dir.join("memray.bin")).arg(&app);
        }
        Mode::Tracemalloc => {
            cmd.env("PYTHONTRACEMALLOC", "1").arg(&app);
        }
        _ => {
            cmd.arg(&app);
        }
    }
    let child = cmd.arg(PORT.to_string()).stdout(Stdio::null()).spawn().context("cannot start the app")?;
    let app = Background(child);
    wait_for_port(PORT, Duration::from_secs(30))?;
    Ok(app)
}

fn wrk(seconds: u64) -> Result<String> {
    let out = Command::new("wrk")
        .args(["-t1", "-c8", &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(root().join("demo/load.lua"))
        .arg(format!("http://127.0.0.1:{PORT}"))
        .output()
        .context("cannot run wrk")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits for `child` and returns its CPU seconds and peak RSS (KiB).
fn wait_rusage(child: Child) -> (f64, f64) {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `usage` is a valid out-pointer.
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime) + secs(usage.ru_stime), usage.ru_maxrss as f64)
}

fn measure(mode: Mode, python: &Path, leakprobe: &Path, out_dir: &Path, seconds: u64) -> Result<Sample> {
    let app = start_app(mode, python, out_dir)?;
    let pid = app.0.id().to_string();
    wrk(2)?; // warm-up: imports, caches, first requests
    let report = out_dir.join("leakprobe.json");
    let tool = match mode {
        Mode::LeakprobeRecord | Mode::LeakprobeRecordPerSite | Mode::LeakprobeFull => Some(
            Command::new(leakprobe)
                .args(["record", "--pid", &pid, "--interval", "1s", "--format", "json", "--quiet", "--output"])
                .arg(&report)
                .args(if mode == Mode::LeakprobeFull { &["--max-overhead", "100"][..] } else { &[] })
                .env("LEAKPROBE_UPROBE_LINKS", if mode == Mode::LeakprobeRecordPerSite { "per_site" } else { "" })
                .args(["--duration", &format!("{}s", seconds + 4)])
                .spawn()
                .context("cannot start leakprobe")?,
        ),
        Mode::LeakprobeWatch => Some(
            Command::new(leakprobe)
                .args(["watch", "--pid", &pid, "--interval", "2s", "--json", "--duration"])
                .arg(format!("{}s", seconds + 4))
                .stdout(fs::File::create(&report)?)
                .spawn()
                .context("cannot start leakprobe watch")?,
        ),
        Mode::LeakprobeCensus => Some(
            Command::new(leakprobe)
                .args(["census", "--pid", &pid, "--interval", "1s", "--holders", "200", "--format", "json", "--count"])
                .arg((seconds + 4).to_string())
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start leakprobe census")?,
        ),
        Mode::PySpy => Some(
            Command::new(python.with_file_name("py-spy"))
                .args(["record", "--pid", &pid, "--duration", &(seconds + 4).to_string(), "-o"])
                .arg(out_dir.join("py-spy.svg"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start py-spy")?,
        ),
        _ => None,
    };
    let started = Instant::now();
    if tool.is_some() {
        std::thread::sleep(Duration::from_secs(3)); // attach
    }
    let output = wrk(seconds)?;
    let mut sample = parse_wrk(&output).with_context(|| format!("cannot read wrk's output:\n{output}"))?;
    if let Some(tool) = tool {
        let (cpu, peak_kb) = wait_rusage(tool);
        if mode.is_leakprobe() {
            sample.tool_cpu_share = Some(cpu / started.elapsed().as_secs_f64());
            sample.tool_peak_rss_mb = Some(peak_kb / 1024.0);
            match mode {
                Mode::LeakprobeWatch => {
                    sample.flagged_after_secs = watch_detected_after(&report).unwrap_or(None);
                    sample.named_leak_line = Some(sample.flagged_after_secs.is_some());
                }
                Mode::LeakprobeRecord | Mode::LeakprobeRecordPerSite | Mode::LeakprobeFull => {
                    // An unreadable report names nothing, as before.
                    let recorded = read_report(&report).unwrap_or_default();
                    sample.detach_tail_ms = detach_tail_ms(&recorded);
                    sample.samples_per_min = samples_per_min(&recorded);
                    sample.estimated_overhead_percent = recorded["budget"]["estimated_overhead_percent"].as_f64();
                    sample.flagged_after_secs = flagged_leak_after(&recorded).unwrap_or(None);
                    let by_holder = holder_names_leak_line(&recorded).unwrap_or(false);
                    sample.named_leak_line = Some(sample.flagged_after_secs.is_some() || by_holder);
                }
                _ => {}
            }
        }
    }
    drop(app);
    Ok(sample)
}

fn read_report(report: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&fs::read_to_string(report)?)?)
}

/// A recording's mean window detach tail, in ms (`budget.detach_tail_mean_seconds`).
fn detach_tail_ms(report: &serde_json::Value) -> Option<f64> {
    report["budget"]["detach_tail_mean_seconds"].as_f64().map(|s| s * 1000.0)
}

/// The measured overhead of a run at `rps` against the baseline's `base_rps`: the share of the
/// (CPU-bound) target's time that did no request's work, in percent, as the budget's estimate
/// (the share of the target's CPU time the probes took) claims to bound.
fn measured_overhead_percent(rps: f64, base_rps: f64) -> f64 {
    100.0 * (1.0 - rps / base_rps)
}

/// "5.6% / 9.8% (1.75x)": the estimate against the measured overhead; the estimate is honest
/// when the ratio is within 1.5x either way (issue 12).
fn estimate_against_measured(estimated: f64, measured: f64) -> String {
    let ratio = measured.max(0.0) / estimated;
    let verdict = if (1.0 / 1.5..=1.5).contains(&ratio) { "within 1.5x" } else { "off by more than 1.5x" };
    format!("{estimated:.1}% / {measured:.1}% ({ratio:.2}x, {verdict})")
}

/// A recording's allocations recorded (its `allocations` counter) per minute.
fn samples_per_min(report: &serde_json::Value) -> Option<f64> {
    let counters = report["counters"].as_array().cloned().unwrap_or_default();
    let allocations = counters.iter().find(|c| c["name"] == "allocations").and_then(|c| c["value"].as_f64());
    let minutes = report["duration_seconds"].as_f64().map(|s| s / 60.0).filter(|m| *m > 0.0);
    allocations.zip(minutes).map(|(n, m)| n / m)
}

/// `leakprobe watch --json` output: when its verdict first said leak (and kept saying it).
fn watch_detected_after(snapshots: &Path) -> Result<Option<f64>> {
    let mut detected = None;
    for line in fs::read_to_string(snapshots)?.lines() {
        let snapshot: serde_json::Value = serde_json::from_str(line)?;
        match (snapshot["verdict"] == "leak", detected) {
            (true, None) => detected = snapshot["t_secs"].as_f64(),
            (false, _) => detected = None,
            _ => {}
        }
    }
    Ok(detected)
}

/// Whether a flagged stack's innermost frame in demo/app.py is the leaking line, and when the
/// first such stack would have been flagged.
fn flagged_leak_after(report: &serde_json::Value) -> Result<Option<f64>> {
    let leak_line = demo_leak_line()?;
    let stacks = report["stacks"].as_array().cloned().unwrap_or_default();
    let at_leak = |s: &&serde_json::Value| {
        s["frames"]
            .as_array()
            .and_then(|frames| {
                frames.iter().find(|f| f["file"].as_str().is_some_and(|file| file.ends_with("demo/app.py")))
            })
            .is_some_and(|f| f["line"].as_u64() == Some(leak_line))
    };
    Ok(stacks
        .iter()
        .filter(|s| s["flagged"] == true)
        .filter(at_leak)
        .map(|s| s["flagged_after_secs"].as_f64().unwrap_or(f64::NAN))
        .reduce(f64::min))
}

/// Whether the report's first flagged holder (the heap census's answer) is added to at the
/// leaking line of demo/app.py.
fn holder_names_leak_line(report: &serde_json::Value) -> Result<bool> {
    let leak_line = demo_leak_line()?;
    let holders = report["holders"].as_array().cloned().unwrap_or_default();
    Ok(holders.iter().find(|h| h["flagged"] == true).is_some_and(|h| {
        h["file"].as_str().is_some_and(|f| f.ends_with("demo/app.py")) && h["line"].as_u64() == Some(leak_line)
    }))
}

fn demo_leak_line() -> Result<u64> {
    let app_source = fs::read_to_string(root().join("demo/app.py"))?;
    app_source.lines().position(|l| l.contains("# the leak")).map(|i| i as u64 + 1).context("leak marker")
}

/// Requests/sec and the 50th/99th latency percentiles from `wrk --latency`.
fn parse_wrk(output: &str) -> Option<Sample> {
    let mut sample = Sample::default();
    for line in output.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            sample.requests_per_sec = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("50%") {
            sample.p50_ms = millis(v.trim())?;
        } else if let Some(v) = line.strip_prefix("99%") {
            sample.p99_ms = millis(v.trim())?;
        }
    }
    (sample.requests_per_sec > 0.0).then_some(sample)
}

fn millis(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn summarize(samples: &[(Mode, Sample)], options: &Options) -> (String, serde_json::Value) {
    let of = |mode: Mode| samples.iter().filter(move |(m, _)| *m == mode).map(|(_, s)| s);
    let base_rps = mean(of(Mode::Baseline).map(|s| s.requests_per_sec));
    let base_p99 = mean(of(Mode::Baseline).map(|s| s.p99_ms));
    let mut md = format!(
        "| mode | req/s (per round) | throughput vs baseline | p50 ms | p99 ms | p99 vs baseline | tool CPU (share of a core) | tool peak RSS | named the leaking line | flagged after | window detach tail | allocations sampled /min | overhead estimated / measured |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    let mut rows = Vec::new();
    for &mode in &options.modes {
        let runs: Vec<&Sample> = of(mode).collect();
        let rps = mean(runs.iter().map(|s| s.requests_per_sec));
        let p50 = mean(runs.iter().map(|s| s.p50_ms));
        let p99 = mean(runs.iter().map(|s| s.p99_ms));
        let per_round: Vec<String> = runs.iter().map(|s| format!("{:.0}", s.requests_per_sec)).collect();
        let cpu = runs.iter().filter_map(|s| s.tool_cpu_share).reduce(f64::max);
        let rss = runs.iter().filter_map(|s| s.tool_peak_rss_mb).reduce(f64::max);
        let named: Vec<bool> = runs.iter().filter_map(|s| s.named_leak_line).collect();
        let flagged_after: Vec<f64> = runs.iter().filter_map(|s| s.flagged_after_secs).collect();
        let tails: Vec<f64> = runs.iter().filter_map(|s| s.detach_tail_ms).collect();
        let samples: Vec<f64> = runs.iter().filter_map(|s| s.samples_per_min).collect();
        let estimates: Vec<f64> = runs.iter().filter_map(|s| s.estimated_overhead_percent).collect();
        let estimated = (!estimates.is_empty()).then(|| mean(estimates.iter().copied()));
        let measured = measured_overhead_percent(rps, base_rps);
        md.push_str(&format!(
            "| {} | {} | {:.1}% | {:.2} | {:.2} | {:.2}x | {} | {} | {} | {} | {} | {} | {} |\n",
            mode.name(),
            per_round.join(", "),
            100.0 * rps / base_rps,
            p50,
            p99,
            p99 / base_p99,
            cpu.map_or("-".into(), |c| format!("{:.0}%", c * 100.0)),
            rss.map_or("-".into(), |r| format!("{r:.0} MB")),
            if named.is_empty() {
                "-".into()
            } else {
                format!("{}/{}", named.iter().filter(|n| **n).count(), named.len())
            },
            if flagged_after.is_empty() {
                "-".into()
            } else {
                flagged_after.iter().map(|t| format!("{t:.0} s")).collect::<Vec<_>>().join(", ")
            },
            if tails.is_empty() { "-".into() } else { format!("{:.0} ms", mean(tails.iter().copied())) },
            if samples.is_empty() { "-".into() } else { format!("{:.0}", mean(samples.iter().copied())) },
            estimated.map_or("-".into(), |e| estimate_against_measured(e, measured)),
        ));
        rows.push(json!({
            "mode": mode.name(),
            "requests_per_sec": per_round,
            "throughput_ratio": rps / base_rps,
            "p50_ms": p50,
            "p99_ms": p99,
            "p99_ratio": p99 / base_p99,
            "tool_cpu_share": cpu,
            "tool_peak_rss_mb": rss,
            "named_leak_line": named,
            "flagged_after_secs": flagged_after,
            "detach_tail_ms": tails,
            "samples_per_min": samples,
            "estimated_overhead_percent": estimated,
            "measured_overhead_percent": measured,
        }));
    }
    md.push_str(&format!(
        "\n{} rounds of {} s per mode, interleaved; wrk -t1 -c8 with demo/load.lua against demo/app.py (uvicorn, 1 worker).\n",
        options.rounds, options.seconds
    ));
    (md, json!({ "rounds": options.rounds, "seconds": options.seconds, "modes": rows }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_judged_against_the_measured_overhead() {
        // 5% estimated; the app kept 90.6% of its throughput: 9.4% of its time lost.
        let measured = measured_overhead_percent(906.0, 1000.0);
        assert!((measured - 9.4).abs() < 0.01, "{measured}");
        assert_eq!(estimate_against_measured(5.0, measured), "5.0% / 9.4% (1.88x, off by more than 1.5x)");
        assert_eq!(estimate_against_measured(5.0, 6.0), "5.0% / 6.0% (1.20x, within 1.5x)");
    }

    #[test]
    fn reads_wrk_output() {
        let out = "Running 10s test\n  Latency Distribution\n     50%  812.00us\n     75%    1.20ms\n     99%   12.50ms\n  1000 requests in 10.00s\nRequests/sec:    100.25\n";
        let s = parse_wrk(out).unwrap();
        assert_eq!(s.requests_per_sec, 100.25);
        assert!((s.p50_ms - 0.812).abs() < 1e-9);
        assert_eq!(s.p99_ms, 12.5);
        assert!(parse_wrk("garbage").is_none());
        assert_eq!(millis("1.5s"), Some(1500.0));
    }
}
