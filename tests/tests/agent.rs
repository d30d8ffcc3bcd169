//! `leakprobe agent` on this machine: it finds the Python processes by itself, exports their
//! memory and verdicts as Prometheus metrics, flags only the leaker, escalates it to a bounded
//! recording that names the line, follows processes that start and end, and leaves nothing in
//! the kernel when it stops.

use std::{process::Command, time::Duration};

use leakprobe_tests::{agent::Agent, *};

#[test]
fn agent_flags_only_the_leaker_names_its_line_and_follows_process_churn() {
    let leak = spawn_python("py_leak.py");
    let steady = spawn_python("py_steady.py");
    let reports = scratch().join(format!("agent-reports-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&reports);
    let agent = Agent::start(&[
        "--reports-dir",
        reports.to_str().unwrap(),
        "--record-duration",
        "10s",
        "--record-max-overhead",
        "100",
        "--census-interval",
        "2s",
    ]);
    assert!(
        eventually(Duration::from_secs(20), || agent.said(&format!("watching PID {}", leak.pid())).is_some()
            && agent.said(&format!("watching PID {}", steady.pid())).is_some()),
        "the agent did not find both Python processes:\n{}",
        agent.stderr()
    );

    // A short-lived, churning Python process started after the agent: found from its exec
    // event, then let go when it ends.
    let short = spawn_ready(Command::new(python()).args([
        "-c",
        "import time\nprint('ready', flush=True)\nend = time.time() + 4\nwhile time.time() < end:\n    x = [str(i) * 50 for i in range(20000)]\n    del x\n",
    ]));
    let short_pid = short.pid();
    assert!(
        eventually(Duration::from_secs(10), || agent.said(&format!("watching PID {short_pid}")).is_some()),
        "the agent missed a new Python process:\n{}",
        agent.stderr()
    );

    let leak_labels = r#"command="python py_leak.py""#;
    let steady_labels = r#"command="python py_steady.py""#;
    let mut metrics = String::new();
    let leak_flagged = eventually(Duration::from_secs(60), || {
        metrics = agent.metrics();
        agent.sample(&metrics, &["leakprobe_process_verdict{", leak_labels, r#"verdict="leak""#]) == Some(1.0)
    });
    assert!(leak_flagged, "the leaker was never flagged:\n{metrics}\nstderr:\n{}", agent.stderr());
    assert_eq!(
        agent.sample(&metrics, &["leakprobe_process_verdict{", steady_labels, r#"verdict="leak""#]),
        Some(0.0),
        "{metrics}"
    );
    let growth = agent.sample(&metrics, &["leakprobe_process_growth_bytes_per_second{", leak_labels]).unwrap();
    assert!(growth > 50_000.0 && growth < 500_000.0, "growth {growth} B/s");
    assert!(agent.sample(&metrics, &["leakprobe_process_rss_bytes{", steady_labels]).unwrap() > 1e6);
    // The site the leaker's heap grows through, and the agent's own health.
    assert!(
        metrics.lines().any(|l| l.starts_with("leakprobe_leak_site_growth_bytes_per_second{")
            && l.contains(leak_labels)
            && l.contains("py_leak.py")),
        "{metrics}"
    );
    assert!(agent.sample(&metrics, &["leakprobe_agent_targets "]).unwrap() >= 2.0);
    assert!(agent.sample(&metrics, &["leakprobe_agent_probes_attached "]).unwrap() >= 10.0);
    assert!(agent.sample(&metrics, &["leakprobe_agent_resident_memory_bytes "]).unwrap() > 0.0);
    assert!(!metrics.contains("pid="), "PIDs must not be labels");
    // The heap censuses: the list the leaker appends to, flagged, and its GC.
    let holder_flagged = eventually(Duration::from_secs(40), || {
        metrics = agent.metrics();
        agent.sample(&metrics, &["leakprobe_python_holder_flagged{", leak_labels, r#"holder="__main__.HISTORY""#])
            == Some(1.0)
    });
    assert!(holder_flagged, "the leaker's list was never flagged:\n{metrics}\nstderr:\n{}", agent.stderr());
    assert!(agent.sample(&metrics, &["leakprobe_python_gc_tracked_objects{", leak_labels]).unwrap_or(0.0) > 1000.0);
    assert!(
        metrics.lines().any(|l| l.starts_with("leakprobe_python_gc_collections_total{") && l.contains(steady_labels)),
        "{metrics}"
    );
    let (status, body) = http_get(&agent.addr, "/healthz").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));

    // The short-lived process ended and was let go.
    assert!(
        eventually(Duration::from_secs(15), || agent.said(&format!("PID {short_pid} ended")).is_some()),
        "{}",
        agent.stderr()
    );
    drop(short);

    // The leak verdict escalated to a bounded recording, whose report names the leaking line.
    let mut report = None;
    eventually(Duration::from_secs(60), || {
        report = std::fs::read_dir(&reports).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "json") && p.with_extension("svg").exists())
        });
        report.is_some()
    });
    let report = report.unwrap_or_else(|| panic!("no report in {}:\n{}", reports.display(), agent.stderr()));
    let recorded = load_report(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(recorded.target.pid, leak.pid(), "only the leaker is recorded");
    let named = flagged(&recorded).iter().any(|s| python_frame(s, "py_leak.py").is_some());
    assert!(named, "the report does not name py_leak.py: {:#?}", recorded.stacks);
    let svg = std::fs::read_to_string(report.with_extension("svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("py_leak.py"));
    // Reports hold other people's command lines and source: root's eyes only.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&reports), 0o700, "{}", reports.display());
    assert_eq!((mode(&report), mode(&report.with_extension("svg"))), (0o600, 0o600), "{}", report.display());
    // What kind of leak, from the recording's advice, is exported for the leaker alone: a module-level
    // list appended to per request, at the marked line.
    let line = std::fs::read_to_string(fixture("py_leak.py"))
        .unwrap()
        .lines()
        .position(|l| l.contains("never trimmed: the leak"))
        .unwrap()
        + 1;
    let mut metrics = String::new();
    let diagnosed = eventually(Duration::from_secs(20), || {
        metrics = agent.metrics();
        metrics.lines().any(|l| {
            l.starts_with("leakprobe_leak_pattern_confidence{")
                && l.contains(r#"pattern="global_accumulation""#)
                && l.contains(&format!(r#"py_leak.py:{line}""#))
        })
    });
    assert!(diagnosed, "no leak pattern exported:\n{metrics}\n{}", agent.stderr());
    assert_eq!(metrics.matches("leakprobe_leak_pattern_confidence{").count(), 1, "{metrics}");

    let status = agent.stop();
    assert!(status.success(), "agent exit: {status:?}");
    assert!(leakprobe_programs_loaded().is_empty(), "{:?}", leakprobe_programs_loaded());
    let _ = std::fs::remove_dir_all(&reports);
}

/// The first Debian root with a CPython (`cargo xtask test` debootstraps them), and the Python in
/// it.
fn debian_root() -> Option<(std::path::PathBuf, String)> {
    let roots = std::env::var("LEAKPROBE_CHROOTS").ok()?;
    let root = roots.split(',').find_map(|entry| entry.split_once('=').map(|(_, p)| std::path::PathBuf::from(p)))?;
    Some((root, std::env::var("LEAKPROBE_CHROOT_PYTHON").ok()?))
}

/// A node in miniature: Python processes in their own cgroups (kubelet's cgroupfs and systemd
/// layouts) and mount namespaces, one of them in another root; one leaks, one is steady, one
/// lives a few seconds. The agent labels each with its pod and container, flags only the leaker
/// (with the time to its container's limit), and lets the short-lived one go.
#[test]
fn agent_on_a_simulated_node_labels_pods_and_flags_only_the_leaker() {
    use leakprobe_tests::node::{unique_container_id, unique_pod_uid, CgroupStyle, FakePod};
    let python_cmd = |script: &str| {
        let mut cmd = Command::new(python());
        cmd.arg("-u").arg(fixture(script));
        cmd
    };
    let (leak_pod, leak_id) = (unique_pod_uid(), unique_container_id());
    let leak =
        FakePod::start_ready(CgroupStyle::V1Cgroupfs, &leak_pod, &leak_id, Some(4 << 30), python_cmd("py_leak.py"));
    // The steady one runs Debian's own CPython from a debootstrap'd root when there is one.
    let steady_cmd = match debian_root() {
        Some((root, python)) => {
            std::fs::create_dir_all(root.join("app")).unwrap();
            std::fs::copy(fixture("py_steady.py"), root.join("app/py_steady.py")).unwrap();
            let mut cmd = Command::new("chroot");
            cmd.arg(&root).args([python.as_str(), "-u", "/app/py_steady.py"]);
            cmd
        }
        None => python_cmd("py_steady.py"),
    };
    let (steady_pod, steady_id) = (unique_pod_uid(), unique_container_id());
    let steady = FakePod::start_ready(CgroupStyle::V2Systemd, &steady_pod, &steady_id, None, steady_cmd);

    let agent = Agent::start(&["--no-escalation"]);
    let mut short_cmd = Command::new(python());
    short_cmd.args(["-c", "import time\nprint('ready', flush=True)\ntime.sleep(4)\n"]);
    let (short_pod, short_id) = (unique_pod_uid(), unique_container_id());
    let short = FakePod::start_ready(CgroupStyle::V1Cgroupfs, &short_pod, &short_id, None, short_cmd);
    let short_pid = short.pid();

    let leak_labels = format!(r#"pod="{leak_pod}",container="{}""#, &leak_id[..12]);
    let steady_labels = format!(r#"pod="{steady_pod}",container="{}""#, &steady_id[..12]);
    let mut metrics = String::new();
    let leak_flagged = eventually(Duration::from_secs(60), || {
        metrics = agent.metrics();
        agent.sample(&metrics, &["leakprobe_process_verdict{", &leak_labels, r#"verdict="leak""#]) == Some(1.0)
    });
    assert!(leak_flagged, "the leaker was never flagged:\n{metrics}\nstderr:\n{}", agent.stderr());
    assert_eq!(
        agent.sample(&metrics, &["leakprobe_process_verdict{", &steady_labels, r#"verdict="leak""#]),
        Some(0.0),
        "the steady pod is missing or flagged:\n{metrics}"
    );
    let limit = agent.sample(&metrics, &["leakprobe_process_memory_limit_bytes{", &leak_labels]);
    assert_eq!(limit, Some((4u64 << 30) as f64), "{metrics}");
    let ttl = agent.sample(&metrics, &["leakprobe_process_time_to_limit_seconds{", &leak_labels]).unwrap();
    assert!(ttl > 60.0, "time to limit {ttl}s");
    assert!(agent.said(&format!("watching PID {short_pid}")).is_some(), "{}", agent.stderr());
    assert!(
        eventually(Duration::from_secs(15), || agent.said(&format!("PID {short_pid} ended")).is_some()),
        "{}",
        agent.stderr()
    );
    drop(short);
    let metrics = agent.metrics();
    assert!(!metrics.contains(&short_pod), "an ended process is still exported:\n{metrics}");
    assert!(http_get(&agent.addr, "/healthz").unwrap().0 == 200);
    let status = agent.stop();
    assert!(status.success(), "agent exit: {status:?}");
    assert!(leakprobe_programs_loaded().is_empty());
    drop((leak, steady));
}

/// The capabilities docs/deploy.md documents (and the DaemonSet adds): the agent must do all its
/// work, escalated recordings included, with these alone.
const DOCUMENTED_CAPABILITIES: &[&str] =
    &["cap_bpf", "cap_perfmon", "cap_sys_ptrace", "cap_dac_read_search", "cap_sys_resource", "cap_sys_admin"];

/// Every capability this kernel and libcap know, from `capsh --print`'s bounding set.
fn all_capabilities() -> Vec<String> {
    let out = Command::new("capsh").arg("--print").output().expect("capsh runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("Bounding set =")).expect("capsh prints the bounding set");
    line.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect()
}

#[test]
fn agent_works_with_only_its_documented_capabilities() {
    let dropped: Vec<String> =
        all_capabilities().into_iter().filter(|c| !DOCUMENTED_CAPABILITIES.contains(&c.as_str())).collect();
    assert!(!dropped.is_empty());
    let leak = spawn_python("py_leak.py");
    let reports = scratch().join(format!("agent-caps-reports-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&reports);
    let drop_arg = format!("--drop={}", dropped.join(","));
    let agent = Agent::start_under(
        &["capsh", &drop_arg, "--", "-c", "exec \"$0\" \"$@\""],
        &["--reports-dir", reports.to_str().unwrap(), "--record-duration", "8s", "--record-max-overhead", "100"],
    );
    // It really runs with (at most) the documented set: every other capability we had is gone.
    let bounding = |pid: String| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim().to_string();
        u64::from_str_radix(&hex, 16).unwrap()
    };
    let (ours, theirs) = (bounding("self".into()), bounding(agent.pid().to_string()));
    assert!(theirs & !ours == 0 && theirs.count_ones() <= DOCUMENTED_CAPABILITIES.len() as u32, "{theirs:x}");
    assert!(ours.count_ones() > theirs.count_ones(), "nothing was dropped: {ours:x}");

    let labels = r#"command="python py_leak.py""#;
    let mut metrics = String::new();
    let leak_flagged = eventually(Duration::from_secs(60), || {
        metrics = agent.metrics();
        agent.sample(&metrics, &["leakprobe_process_verdict{", labels, r#"verdict="leak""#]) == Some(1.0)
    });
    assert!(leak_flagged, "not flagged:\n{metrics}\n{}", agent.stderr());
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("leakprobe_leak_site_growth_bytes_per_second{") && l.contains("py_leak.py")),
        "no Python site (process_vm_readv denied?):\n{metrics}"
    );
    // The escalated recording (uprobes, map_files) works with the same set.
    let written = eventually(Duration::from_secs(60), || {
        std::fs::read_dir(&reports)
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "svg"))))
    });
    assert!(written, "no report from the escalated recording:\n{}", agent.stderr());
    assert!(agent.stop().success());
    drop(leak);
    let _ = std::fs::remove_dir_all(&reports);
}

/// A tenant's process named to break the exposition (issue 14's reproduction: `exec -a` with a
/// quote, a newline and a forged series): the scrape keeps it inside one label value, forges
/// nothing, and stays valid for Prometheus' own parser.
#[test]
fn a_hostile_process_name_cannot_forge_or_break_the_metrics() {
    use std::os::unix::process::CommandExt;
    let hostile = "x\"} 1\nleakprobe_forged{namespace=\"prod\"} 60\n#";
    let target = spawn_ready(Command::new(python()).arg0(hostile).args([
        "-u",
        "-c",
        "import time\nprint('ready', flush=True)\ntime.sleep(120)\n",
    ]));
    let agent = Agent::start(&["--no-escalation"]);
    let mut metrics = String::new();
    let exported = eventually(Duration::from_secs(30), || {
        metrics = agent.metrics();
        metrics.contains("leakprobe_process_rss_bytes{") && metrics.contains("leakprobe_forged")
    });
    assert!(exported, "the hostile process was never exported:\n{metrics}\nstderr:\n{}", agent.stderr());
    assert!(agent.said(&format!("watching PID {}", target.pid())).is_some(), "{}", agent.stderr());
    assert!(!metrics.lines().any(|l| l.starts_with("leakprobe_forged")), "a series was forged:\n{metrics}");
    assert!(
        metrics.contains(r#"command="x\"} 1\nleakprobe_forged{namespace=\"prod\"} 60\n#""#),
        "the name is not one escaped label value:\n{metrics}"
    );
    // Prometheus' parser: exit 1 and "error while linting" on a scrape it cannot parse (3 is its
    // lint's style remarks, such as counters' help text).
    let Some(prometheus) = std::env::var_os("LEAKPROBE_PROMETHEUS") else {
        eprintln!("skipped the promtool check: LEAKPROBE_PROMETHEUS not set");
        return;
    };
    let promtool = std::path::PathBuf::from(prometheus).with_file_name("promtool");
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    use std::io::Write;
    check.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.code() != Some(1) && !said.contains("error while linting"), "promtool: {said}\n{metrics}");
}
