//! `leakprobe agent`: every Python process on the node, watched continuously at almost no cost
//! (memory-syscall tracepoints and /proc, as `watch`), exported as Prometheus metrics; a leak
//! verdict escalates to a bounded `record` that names the line.
//!
//! Processes are found by a /proc scan at start, then from the kernel's exec/fork/exit events
//! (with a slow rescan as a safety net for lost events). Each is labelled with its container and
//! pod from its cgroup path. The agent's memory stays bounded: `--max-targets` processes, a
//! bounded history and `process::MAX_STACKS` stacks each, and fixed kernel tables; whatever is
//! dropped is counted and exported.

pub mod containers;
pub mod discovery;
pub mod escalation;
pub mod kube;
pub mod metrics;
mod node;
pub mod node_probes;
pub mod process;
mod server;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use leakprobe_common::ProcessEvent;

use crate::{
    kernel::TableSizes,
    sampling_loop::{Event, Ticks},
    target,
};
use escalation::EscalationPolicy;
use node::Agent;
use node_probes::NodeProbes;

pub struct AgentOptions {
    pub listen: SocketAddr,
    pub interval: Duration,
    /// Samples kept per process (the verdict's window).
    pub history: usize,
    /// Samples the growth rate is measured over.
    pub rate_window: usize,
    pub max_targets: usize,
    /// Leak sites exported per process, and in all.
    pub sites_per_process: usize,
    pub max_sites: usize,
    /// Time between two heap censuses of one Python process; `None`: no censuses.
    pub census_interval: Option<Duration>,
    /// `None`: never escalate.
    pub escalation: Option<EscalationPolicy>,
    /// Stop after this long (tests); until SIGINT/SIGTERM otherwise.
    pub duration: Option<Duration>,
    pub tables: TableSizes,
    /// Names pods and containers through the Kubernetes API (in-cluster), for this node.
    pub kubernetes_node: Option<String>,
}

/// How often the node's pods are listed again (with `--kubernetes`).
const KUBE_REFRESH: Duration = Duration::from_secs(30);
/// Full /proc rescans, to catch what lost events missed.
const RESCAN_EVERY: Duration = Duration::from_secs(60);
/// The agent refreshes thread states less often than record and watch
/// (`sampling_loop::THREAD_REFRESH`): each refresh walks the thread list of every watched
/// interpreter, reading each process's memory, so across a node's processes it costs more; a new
/// thread's stacks lack Python frames for at most this long.
const THREAD_REFRESH: Duration = Duration::from_secs(2);

/// What only the agent wakes up for.
enum AgentTick {
    Rescan,
    /// Exec, fork and exit events from the kernel's ring buffer.
    ProcessEvents(Result<Vec<ProcessEvent>>),
}

pub async fn run(opts: AgentOptions) -> Result<()> {
    target::check_privileges()?;
    let mut probes = NodeProbes::load(opts.tables)?;
    if probes.mounted_tracefs {
        eprintln!("leakprobe agent: mounted tracefs on /sys/kernel/tracing");
    }
    let pods = match &opts.kubernetes_node {
        Some(node) => Some(kube::PodDirectory::start(kube::ApiConfig::in_cluster()?, node.clone(), KUBE_REFRESH)?),
        None => None,
    };
    let shared = Arc::new(Mutex::new(server::Shared::default()));
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    eprintln!("leakprobe agent: serving /metrics and /healthz on {}", listener.local_addr()?);
    tokio::spawn(server::serve(listener, shared.clone(), opts.interval));

    let mut ticks = Ticks::new(opts.interval, opts.duration)?.thread_refresh(THREAD_REFRESH);
    let mut agent = Agent::new(&opts, pods, ticks.started());
    let mut rescan = tokio::time::interval(RESCAN_EVERY);
    rescan.tick().await;
    loop {
        let agent_tick = async {
            tokio::select! {
                _ = rescan.tick() => AgentTick::Rescan,
                events = process_events(&mut probes) => AgentTick::ProcessEvents(events),
            }
        };
        match ticks.next(agent_tick).await {
            Event::Sample => {
                // A failed tick (a kernel map unreadable for a moment) is said, not fatal: the
                // agent must outlive its targets' and the node's hiccups.
                if let Err(e) = agent.tick(&mut probes) {
                    eprintln!("leakprobe agent: sampling failed: {e:#}");
                }
                let snapshot = agent.snapshot(&probes);
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                s.snapshot = snapshot;
                s.last_tick = Some(Instant::now());
            }
            Event::RefreshThreads => agent.refresh_threads(&mut probes),
            Event::Mode(AgentTick::Rescan) => agent.rescan(),
            Event::Mode(AgentTick::ProcessEvents(events)) => {
                for event in events? {
                    agent.on_event(event);
                }
            }
            Event::Stop => break,
        }
        if ticks.past_deadline() {
            break;
        }
    }
    eprintln!("leakprobe agent: stopping; detaching from {} processes", agent.watching());
    Ok(())
}

/// The process events waiting in the ring buffer, once there are some. Cancel-safe: nothing is
/// read until the buffer is readable, and then all of it at once.
async fn process_events(probes: &mut NodeProbes) -> Result<Vec<ProcessEvent>> {
    let mut guard = probes.events.readable_mut().await.context("process events")?;
    let out = guard.get_inner_mut().drain();
    guard.clear_ready();
    Ok(out)
}

/// Where reports go by default.
pub fn default_reports_dir() -> PathBuf {
    PathBuf::from("/var/lib/leakprobe/reports")
}
