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
pub mod node_probes;
pub mod process;
mod server;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use leakprobe_common::{AllocFunction, Counter, ProcessEventKind, StackCounters};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    assess, cgroup,
    kernel::TableSizes,
    process_memory,
    python::{self, resolver::PythonResolver},
    target::{self, Target},
    verdict::VerdictKind,
};
use escalation::{EscalationPolicy, Escalations};
use metrics::{Labels, ProcessMetrics, SiteMetric, Snapshot};
use node_probes::NodeProbes;
use process::ProcessHistory;

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
    /// `None`: never escalate.
    pub escalation: Option<EscalationPolicy>,
    /// Stop after this long (tests); until SIGINT/SIGTERM otherwise.
    pub duration: Option<Duration>,
    pub tables: TableSizes,
    /// Names pods and containers through the Kubernetes API (in-cluster), for this node.
    pub kubernetes_node: Option<String>,
}

/// A process being watched.
struct Watched {
    labels: Labels,
    python: Option<PythonResolver>,
    history: ProcessHistory,
    verdict: VerdictKind,
    last: Option<process::Assessment>,
    /// The leak patterns its last escalated recording found.
    diagnoses: Vec<escalation::Diagnosis>,
}

/// A process seen but not (yet) watched: not Python after all, or not ready.
struct Pending {
    attempts: u32,
}

const INSPECT_ATTEMPTS: u32 = 5;
/// How often the node's pods are listed again (with `--kubernetes`).
const KUBE_REFRESH: Duration = Duration::from_secs(30);
/// Full /proc rescans, to catch what lost events missed.
const RESCAN_EVERY: Duration = Duration::from_secs(60);

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

    let mut agent = Agent {
        own_pid: std::process::id(),
        opts: &opts,
        watched: HashMap::new(),
        pending: HashMap::new(),
        rejected: HashSet::new(),
        stack_owner: HashMap::new(),
        ended: HashSet::new(),
        evictions: HashMap::new(),
        escalations: opts.escalation.clone().map(Escalations::new),
        start: Instant::now(),
        pods,
    };
    for pid in discovery::scan(agent.own_pid) {
        agent.pending.insert(pid, Pending { attempts: 0 });
    }

    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut ticker = tokio::time::interval(opts.interval);
    let mut threads = tokio::time::interval(Duration::from_secs(2));
    let mut rescan = tokio::time::interval(RESCAN_EVERY);
    rescan.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
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
            _ = threads.tick() => agent.refresh_threads(&mut probes),
            _ = rescan.tick() => {
                // Rejected PIDs that are gone may come back as other processes.
                agent.rejected.retain(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
                for pid in discovery::scan(agent.own_pid) {
                    agent.notice(pid);
                }
            }
            ready = probes.events.readable_mut() => {
                let mut guard = ready.context("process events")?;
                let events = guard.get_inner_mut().drain();
                guard.clear_ready();
                for event in events {
                    agent.on_event(event);
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
        if opts.duration.is_some_and(|d| agent.start.elapsed() >= d) {
            break;
        }
    }
    eprintln!("leakprobe agent: stopping; detaching from {} processes", agent.watched.len());
    Ok(())
}

struct Agent<'a> {
    own_pid: u32,
    opts: &'a AgentOptions,
    watched: HashMap<u32, Watched>,
    pending: HashMap<u32, Pending>,
    /// Seen and not Python (forgotten when they end or exec, so a reused PID is looked at again).
    rejected: HashSet<u32>,
    /// stack id -> process, for the kernel's stacks.
    stack_owner: HashMap<u64, u32>,
    /// Watched processes that ended, released at the next tick.
    ended: HashSet<u32>,
    evictions: HashMap<&'static str, u64>,
    escalations: Option<Escalations>,
    start: Instant,
    pods: Option<kube::PodDirectory>,
}

impl Agent<'_> {
    fn notice(&mut self, pid: u32) {
        if pid != self.own_pid && !self.watched.contains_key(&pid) && !self.rejected.contains(&pid) {
            self.pending.entry(pid).or_insert(Pending { attempts: 0 });
        }
    }

    fn on_event(&mut self, event: leakprobe_common::ProcessEvent) {
        let comm = discovery::comm_str(&event.comm);
        match event.kind {
            k if k == ProcessEventKind::Exec as u32 => {
                // A PID that execs is a new program: whatever we knew of it is stale.
                self.rejected.remove(&event.pid);
                if self.watched.contains_key(&event.pid) {
                    self.ended.insert(event.pid);
                }
                if discovery::is_candidate(&comm, None, None) || discovery::looks_like_python(event.pid) {
                    self.pending.insert(event.pid, Pending { attempts: 0 });
                }
            }
            k if k == ProcessEventKind::Fork as u32 => {
                if discovery::is_process(event.pid) {
                    self.notice(event.pid);
                }
            }
            k if k == ProcessEventKind::Exit as u32 => {
                if self.watched.contains_key(&event.pid) {
                    self.ended.insert(event.pid);
                }
                self.pending.remove(&event.pid);
            }
            _ => {}
        }
    }

    /// Tries to start watching the pending processes.
    fn inspect_pending(&mut self, probes: &mut NodeProbes) {
        let pids: Vec<u32> = self.pending.keys().copied().collect();
        for pid in pids {
            if self.watched.len() >= self.opts.max_targets {
                *self.evictions.entry("targets").or_default() += self.pending.len() as u64;
                self.pending.clear();
                return;
            }
            match self.inspect(pid) {
                Ok(Some(watched)) => {
                    self.pending.remove(&pid);
                    let python = watched.python.as_ref().map(|r| r.runtime());
                    if let Err(e) = probes.add_target(pid, python) {
                        eprintln!("leakprobe agent: {e:#}");
                        continue;
                    }
                    eprintln!(
                        "leakprobe agent: watching PID {pid} ({}{})",
                        watched.labels.command,
                        if watched.labels.container.is_empty() {
                            String::new()
                        } else {
                            format!(", container {}", watched.labels.container)
                        }
                    );
                    self.watched.insert(pid, watched);
                }
                Ok(None) => {
                    self.pending.remove(&pid);
                    self.rejected.insert(pid);
                }
                Err(_) => {
                    let p = self.pending.entry(pid).or_insert(Pending { attempts: 0 });
                    p.attempts += 1;
                    if p.attempts >= INSPECT_ATTEMPTS || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                        self.pending.remove(&pid);
                        self.rejected.insert(pid);
                    }
                }
            }
        }
    }

    /// Ok(None): not a CPython process. Err: not ready (or gone); try again later.
    fn inspect(&self, pid: u32) -> Result<Option<Watched>> {
        let target = Target::inspect(pid)?;
        let python = match python::runtime::detect(&target) {
            Ok(Some(python)) => python,
            Ok(None) => return Ok(None),
            Err(e) => anyhow::bail!(e),
        };
        let labels = self.labels(pid);
        Ok(Some(Watched {
            labels,
            python: Some(PythonResolver::new(python)),
            history: ProcessHistory::new(self.opts.history, self.opts.rate_window),
            verdict: VerdictKind::Inconclusive,
            last: None,
            diagnoses: Vec::new(),
        }))
    }

    /// Pod UID and short container id from the cgroup path; namespace and names from the API
    /// when it is on and knows them.
    fn labels(&self, pid: u32) -> Labels {
        let container = containers::read(pid);
        let mut labels = Labels {
            namespace: String::new(),
            pod: container.as_ref().and_then(|c| c.pod_uid.clone()).unwrap_or_default(),
            container: container.as_ref().map(|c| c.short_id().to_string()).unwrap_or_default(),
            command: discovery::command_label(pid),
        };
        let named = match (&self.pods, &container) {
            (Some(pods), Some(c)) => c.pod_uid.as_deref().and_then(|uid| pods.lookup(uid, &c.container_id)),
            _ => None,
        };
        if let Some(info) = named {
            labels.namespace = info.namespace;
            labels.pod = info.pod;
            if !info.container.is_empty() {
                labels.container = info.container;
            }
        }
        labels
    }

    /// Labels of processes seen before the API answered, named now.
    fn rename(&mut self) {
        if self.pods.is_none() {
            return;
        }
        let unnamed: Vec<u32> =
            self.watched.iter().filter(|(_, w)| w.labels.namespace.is_empty()).map(|(pid, _)| *pid).collect();
        for pid in unnamed {
            let labels = self.labels(pid);
            if let Some(w) = self.watched.get_mut(&pid) {
                w.labels = labels;
            }
        }
    }

    fn refresh_threads(&mut self, probes: &mut NodeProbes) {
        let threads: Vec<(u32, u64)> =
            self.watched.values().filter_map(|w| w.python.as_ref()).flat_map(|r| r.runtime().thread_states()).collect();
        if let Err(e) = probes.kernel_mut().set_thread_states(&threads) {
            eprintln!("leakprobe agent: cannot update thread states: {e:#}");
        }
    }

    fn release_ended(&mut self, probes: &mut NodeProbes) -> Result<()> {
        for (&pid, _) in self.watched.iter() {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                self.ended.insert(pid);
            }
        }
        if self.ended.is_empty() {
            return Ok(());
        }
        let ended = std::mem::take(&mut self.ended);
        let stacks: Vec<u64> =
            self.stack_owner.iter().filter(|(_, pid)| ended.contains(pid)).map(|(id, _)| *id).collect();
        probes.remove_targets(&ended, &stacks)?;
        for id in &stacks {
            self.stack_owner.remove(id);
        }
        for pid in &ended {
            if self.watched.remove(pid).is_some() {
                eprintln!("leakprobe agent: PID {pid} ended");
            }
            if let Some(e) = self.escalations.as_mut() {
                e.forget(*pid);
            }
        }
        Ok(())
    }

    fn tick(&mut self, probes: &mut NodeProbes) -> Result<()> {
        self.release_ended(probes)?;
        self.inspect_pending(probes);
        self.rename();
        let t = self.start.elapsed().as_secs_f64();
        let mut by_process: HashMap<u32, Vec<(u64, StackCounters)>> = HashMap::new();
        for (id, counters) in probes.kernel().stack_counters()? {
            let owner = match self.stack_owner.get(&id) {
                Some(pid) => *pid,
                None => {
                    let Some(trace) = probes.kernel().stack_trace(id) else { continue };
                    self.stack_owner.insert(id, trace.tgid);
                    trace.tgid
                }
            };
            by_process.entry(owner).or_default().push((id, counters));
        }
        let mut newly_leaking = Vec::new();
        for (&pid, w) in self.watched.iter_mut() {
            let Some(memory) = process_memory::read(pid) else {
                self.ended.insert(pid);
                continue;
            };
            let counters = by_process.remove(&pid).unwrap_or_default();
            let python = &mut w.python;
            w.history.push(t, memory, &counters, |id| describe(probes, python.as_mut(), id));
            let limit = cgroup::memory_limit(pid).ok().flatten().map(|l| (l.limit_bytes, l.usage_bytes));
            let Some(a) = w.history.assess(limit, self.opts.sites_per_process) else { continue };
            if a.verdict != w.verdict {
                eprintln!(
                    "leakprobe agent: PID {pid} ({}) is now {}: {}",
                    w.labels.command,
                    a.verdict.as_str(),
                    a.reason
                );
                if a.verdict == VerdictKind::Leak {
                    newly_leaking.push(pid);
                }
                w.verdict = a.verdict;
            }
            w.last = Some(a);
        }
        let evicted: u64 = self.watched.values().map(|w| w.history.evicted_stacks).sum();
        self.evictions.insert("stacks", evicted);
        self.escalate(newly_leaking);
        Ok(())
    }

    /// Starts a bounded recording on a leaking process (the first that the limits allow), and
    /// collects a finished one.
    fn escalate(&mut self, newly_leaking: Vec<u32>) {
        let Some(escalations) = self.escalations.as_mut() else { return };
        if let Some((pid, report)) = escalations.poll() {
            eprintln!("leakprobe agent: report written to {}", report.display());
            match escalation::diagnoses(&report) {
                Ok(found) => {
                    for d in &found {
                        eprintln!(
                            "leakprobe agent: PID {pid}: {} at {} (confidence {:.2})",
                            d.pattern, d.site, d.confidence
                        );
                    }
                    if let Some(w) = self.watched.get_mut(&pid) {
                        w.diagnoses = found;
                    }
                }
                Err(e) => eprintln!("leakprobe agent: cannot read {}: {e:#}", report.display()),
            }
        }
        // Still-leaking processes get their turn when the recorder is free or their cooldown ends.
        let mut leaking: Vec<u32> =
            self.watched.iter().filter(|(_, w)| w.verdict == VerdictKind::Leak).map(|(pid, _)| *pid).collect();
        leaking.sort_by_key(|pid| !newly_leaking.contains(pid));
        for pid in leaking {
            if escalations.is_running() {
                break;
            }
            let labels = &self.watched[&pid].labels;
            let name = [&labels.namespace, &labels.pod, &labels.command]
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("-");
            match escalations.consider(pid, &name) {
                Ok(true) => eprintln!("leakprobe agent: recording PID {pid} ({}) to name the leak", labels.command),
                Ok(false) => {}
                Err(e) => eprintln!("leakprobe agent: cannot record PID {pid}: {e:#}"),
            }
        }
    }

    fn snapshot(&self, probes: &NodeProbes) -> Snapshot {
        let mut processes = Vec::new();
        let mut sites = Vec::new();
        let mut diagnoses = Vec::new();
        for w in self.watched.values() {
            let Some(a) = &w.last else { continue };
            processes.push(ProcessMetrics {
                labels: w.labels.clone(),
                rss_bytes: a.memory.rss_bytes,
                swap_bytes: a.memory.swap_bytes,
                growth_bytes_per_sec: a.growth_bytes_per_sec,
                verdict: a.verdict,
                time_to_limit_seconds: a.time_to_limit_seconds,
                memory_limit_bytes: a.memory_limit_bytes,
                heap: a.heap.iter().map(|(k, v)| (*k, *v)).collect(),
            });
            diagnoses.extend(w.diagnoses.iter().map(|d| metrics::DiagnosisMetric {
                labels: w.labels.clone(),
                pattern: d.pattern,
                site: d.site.clone(),
                confidence: d.confidence,
            }));
            sites.extend(a.top.iter().map(|s| SiteMetric {
                labels: w.labels.clone(),
                site: s.site.clone(),
                kind: s.kind,
                growth_bytes_per_sec: s.growth_bytes_per_sec,
            }));
        }
        // The fastest-growing sites node-wide; the others are counted as evicted.
        sites.sort_by(|a, b| b.growth_bytes_per_sec.total_cmp(&a.growth_bytes_per_sec));
        sites.dedup_by(|a, b| a.labels == b.labels && a.site == b.site && a.kind == b.kind);
        sites.truncate(self.opts.max_sites);

        let counters = probes.kernel().counters().unwrap_or_default();
        let events =
            [Counter::Allocations, Counter::Frees, Counter::UntrackedFrees].map(|c| counters.get(c)).iter().sum();
        let mut drops: Vec<(String, u64)> = Counter::all()
            .filter(|c| c.is_drop())
            .map(|c| (c.name().trim_start_matches("drop_").to_string(), counters.get(c)))
            .collect();
        drops.push(("targets_over_cap".into(), self.evictions.get("targets").copied().unwrap_or(0)));
        let own = process_memory::read(self.own_pid).unwrap_or_default();
        metrics::Snapshot {
            processes,
            sites,
            diagnoses,
            health: metrics::Health {
                targets: self.watched.len() as u64,
                probes_attached: probes.programs_attached() as u64,
                events,
                drops,
                escalations: self
                    .escalations
                    .as_ref()
                    .map(|e| e.results.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                    .unwrap_or_default(),
                evictions: self.evictions.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                cpu_seconds: own_cpu_seconds(),
                resident_memory_bytes: own.rss_bytes,
            },
        }
    }
}

/// The allocator of a new stack and its site: the innermost Python frame (`function file:line`).
fn describe(
    probes: &NodeProbes,
    python: Option<&mut PythonResolver>,
    id: u64,
) -> (Option<AllocFunction>, Option<String>) {
    let Some(trace) = probes.kernel().stack_trace(id) else { return (None, None) };
    let function = AllocFunction::from_u32(trace.function);
    let frames = &trace.python[..(trace.python_len as usize).min(trace.python.len())];
    // The agent names no native frames: a stack without Python frames is named by its allocator
    // (`ProcessHistory::assess`).
    let site = match (python, frames.first()) {
        (Some(resolver), Some(frame)) => Some(assess::frame_site(&resolver.frame(frame))),
        _ => None,
    };
    (function, site)
}

/// The agent's CPU time (user + system), from /proc/self/stat.
fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command (which may hold spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here 0-based after the state field (3).
    let clock = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / clock
}

/// Where reports go by default.
pub fn default_reports_dir() -> PathBuf {
    PathBuf::from("/var/lib/leakprobe/reports")
}
