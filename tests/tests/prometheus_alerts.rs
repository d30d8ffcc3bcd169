//! A real Prometheus server (Debian's) scrapes a running agent with the project's own alert
//! rules: the leak alert fires for the leaking Python process and not for the steady one. The
//! rules' `for:` durations are shortened to seconds so the test does not wait minutes; the
//! expressions, metric names and labels are the shipped ones.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use leakprobe_tests::{agent::Agent, *};

/// A Prometheus server with its data in a scratch directory; killed on drop.
struct Prometheus {
    child: std::process::Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_prometheus(binary: &str, agent_addr: &str, dir: &std::path::Path) -> Prometheus {
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/leakprobe-rules.yml")).unwrap();
    let fast: String = rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: 3s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("rules.yml"), fast).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: leakprobe\n    honor_labels: true\n    static_configs:\n      - targets: ['{agent_addr}']\n"
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(binary)
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus starts");
    Prometheus { child, addr }
}

/// The firing alerts: (alert name, command label).
fn firing(prometheus: &Prometheus) -> Vec<(String, String)> {
    let Ok((200, body)) = http_get(&prometheus.addr, "/api/v1/alerts") else { return Vec::new() };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else { return Vec::new() };
    json["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap_or_default().to_string(),
                a["labels"]["command"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn prometheus_fires_the_leak_alert_for_the_leaker_only() {
    let Ok(binary) = std::env::var("LEAKPROBE_PROMETHEUS") else {
        eprintln!("SKIPPED: no Prometheus server (run with `cargo xtask test`)");
        return;
    };
    let _leak = spawn_python("py_leak.py");
    let _steady = spawn_python("py_steady.py");
    let agent = Agent::start(&["--no-escalation"]);
    let dir = scratch().join(format!("prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prometheus = start_prometheus(&binary, &agent.addr, &dir);

    let leak_alert = ("LeakprobeLeakDetected".to_string(), "python py_leak.py".to_string());
    let mut alerts = Vec::new();
    let fired = eventually(Duration::from_secs(90), || {
        alerts = firing(&prometheus);
        alerts.contains(&leak_alert)
    });
    let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    assert!(fired, "no leak alert; firing: {alerts:?}\nagent:\n{}\nprometheus:\n{log}", agent.stderr());
    assert!(
        !alerts.iter().any(|(_, command)| command == "python py_steady.py"),
        "an alert fired for the steady process: {alerts:?}"
    );
    drop(prometheus);
    assert!(agent.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}
