//! The agent's view of the node: the processes it watches (and those it has yet to look at), what
//! each tick samples of them, when a leak escalates to a recording, and the metrics snapshot the
//! server exports. `run` (in `mod.rs`) drives it from the shared sampling loop.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use anyhow::Result;
use leakprobe_common::{Counter, ProcessEventKind, StackCounters, StackTrace};

use super::{
    containers, discovery,
    escalation::{self, Escalations},
    kube,
    metrics::{self, Labels, ProcessMetrics, SiteMetric, Snapshot},
    node_probes::NodeProbes,
    process::{self, ProcessHistory},
    AgentOptions,
};
use crate::{
    assess,
    census_history::{
        monitor::{HeapView, KEPT_CENSUSES},
        sampler::{CensusSampler, Schedule},
    },
    cgroup, process_memory,
    python::{self, heap::Interpreter, resolver::PythonResolver},
    sampling_loop::{self, StackCache},
    target::Target,
    untrusted::terminal,
    verdict::{VerdictConfig, VerdictKind},
};

/// A process being watched.
struct Watched {
    labels: Labels,
    python: Option<PythonResolver>,
    history: ProcessHistory,
    verdict: VerdictKind,
    last: Option<process::Assessment>,
    /// The leak patterns its last escalated recording found.
    diagnoses: Vec<escalation::Diagnosis>,
    /// What its heap censuses show, judged when the `n`-th census was taken: (n, view).
    heap: (u64, Option<HeapView>),
}

/// A process seen but not (yet) watched: not Python after all, or not ready.
struct Pending {
    attempts: u32,
}

const INSPECT_ATTEMPTS: u32 = 5;
/// The agent's heap censuses, all processes together, use at most a twentieth of a core.
const AGENT_CENSUS_SPACING: u32 = 19;

pub(super) struct Agent<'a> {
    own_pid: u32,
    opts: &'a AgentOptions,
    watched: HashMap<u32, Watched>,
    pending: HashMap<u32, Pending>,
    /// Seen and not Python (forgotten when they end or exec, so a reused PID is looked at again).
    rejected: HashSet<u32>,
    /// What each of the kernel's stacks is: its process, allocator and site.
    stacks: StackCache,
    /// Watched processes that ended, released at the next tick.
    ended: HashSet<u32>,
    evictions: HashMap<&'static str, u64>,
    escalations: Option<Escalations>,
    start: Instant,
    pods: Option<kube::PodDirectory>,
    /// Heap censuses of the Python processes, one at a time on a thread of their own.
    census: Option<CensusSampler>,
}

impl<'a> Agent<'a> {
    /// An agent watching nothing yet, with the processes already running to look at.
    pub(super) fn new(opts: &'a AgentOptions, pods: Option<kube::PodDirectory>, start: Instant) -> Agent<'a> {
        let mut agent = Agent {
            own_pid: std::process::id(),
            opts,
            watched: HashMap::new(),
            pending: HashMap::new(),
            rejected: HashSet::new(),
            stacks: StackCache::default(),
            ended: HashSet::new(),
            evictions: HashMap::new(),
            escalations: opts.escalation.clone().map(Escalations::new),
            start,
            pods,
            census: opts.census_interval.and_then(|every| {
                CensusSampler::start(Schedule::monitor(every, KEPT_CENSUSES, AGENT_CENSUS_SPACING), start)
                    .map_err(|e| eprintln!("leakprobe agent: no heap censuses: cannot start their thread: {e}"))
                    .ok()
            }),
        };
        for pid in discovery::scan(agent.own_pid) {
            agent.pending.insert(pid, Pending { attempts: 0 });
        }
        agent
    }

    /// Processes watched now.
    pub(super) fn watching(&self) -> usize {
        self.watched.len()
    }

    /// Looks at /proc again for what lost events missed.
    pub(super) fn rescan(&mut self) {
        // Rejected PIDs that are gone may come back as other processes.
        self.rejected.retain(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        for pid in discovery::scan(self.own_pid) {
            self.notice(pid);
        }
    }

    fn notice(&mut self, pid: u32) {
        if pid != self.own_pid && !self.watched.contains_key(&pid) && !self.rejected.contains(&pid) {
            self.pending.entry(pid).or_insert(Pending { attempts: 0 });
        }
    }

    pub(super) fn on_event(&mut self, event: leakprobe_common::ProcessEvent) {
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
                    if let (Some(census), Some(python)) = (&self.census, python) {
                        census.add(pid, python.mem, Interpreter::of(python));
                    }
                    eprintln!(
                        "leakprobe agent: watching PID {pid} ({}{})",
                        terminal(&watched.labels.command),
                        if watched.labels.container.is_empty() {
                            String::new()
                        } else {
                            format!(", container {}", terminal(&watched.labels.container))
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
            heap: (0, None),
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

    pub(super) fn refresh_threads(&mut self, probes: &mut NodeProbes) {
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
        let stacks: Vec<u64> = self.stacks.stacks_of(&ended).collect();
        probes.remove_targets(&ended, &stacks)?;
        self.stacks.forget(&stacks);
        for pid in &ended {
            if self.watched.remove(pid).is_some() {
                eprintln!("leakprobe agent: PID {pid} ended");
            }
            if let Some(census) = &self.census {
                census.remove(*pid);
            }
            if let Some(e) = self.escalations.as_mut() {
                e.forget(*pid);
            }
        }
        Ok(())
    }

    pub(super) fn tick(&mut self, probes: &mut NodeProbes) -> Result<()> {
        self.release_ended(probes)?;
        self.inspect_pending(probes);
        self.rename();
        let t = self.start.elapsed().as_secs_f64();
        let mut by_process: HashMap<u32, Vec<(u64, StackCounters)>> = HashMap::new();
        for (id, counters) in probes.kernel().stack_counters()? {
            let watched = &mut self.watched;
            let Some(stack) =
                self.stacks.identify(id, |id| probes.kernel().stack_trace(id), |trace| python_site(watched, trace))
            else {
                continue;
            };
            by_process.entry(stack.tgid).or_default().push((id, counters));
        }
        let mut newly_leaking = Vec::new();
        for (&pid, w) in self.watched.iter_mut() {
            let Some(memory) = sampling_loop::live_memory(pid, None) else {
                self.ended.insert(pid);
                continue;
            };
            let counters = by_process.remove(&pid).unwrap_or_default();
            w.history.push(t, memory, &counters, |id| self.stacks.get(id).cloned().unwrap_or_default());
            if let Some((taken, history)) = self.census.as_ref().and_then(|c| c.newer(pid, w.heap.0)) {
                w.heap = (taken, Some(HeapView::of(&history, &VerdictConfig::default(), self.opts.sites_per_process)));
            }
            let limit = cgroup::memory_limit(pid).ok().flatten().map(|l| (l.limit_bytes, l.usage_bytes));
            let Some(a) = w.history.assess(limit, self.opts.sites_per_process) else { continue };
            if a.verdict != w.verdict {
                eprintln!(
                    "leakprobe agent: PID {pid} ({}) is now {}: {}",
                    terminal(&w.labels.command),
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
                            d.pattern,
                            terminal(&d.site),
                            d.confidence
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
                Ok(true) => {
                    eprintln!("leakprobe agent: recording PID {pid} ({}) to name the leak", terminal(&labels.command))
                }
                Ok(false) => {}
                Err(e) => eprintln!("leakprobe agent: cannot record PID {pid}: {e:#}"),
            }
        }
    }

    pub(super) fn snapshot(&self, probes: &NodeProbes) -> Snapshot {
        let mut processes = Vec::new();
        let mut sites = Vec::new();
        let mut diagnoses = Vec::new();
        let mut heaps = Vec::new();
        for w in self.watched.values() {
            if let Some(view) = &w.heap.1 {
                heaps.push(metrics::HeapMetrics { labels: w.labels.clone(), view: view.clone() });
            }
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
            heaps,
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

/// The site of a new stack: its innermost Python frame (`function file:line`), read through the
/// interpreter of the process it was captured in.
fn python_site(watched: &mut HashMap<u32, Watched>, trace: &StackTrace) -> Option<String> {
    let frames = trace.python_frames();
    // The agent names no native frames: a stack without Python frames is named by its allocator
    // (`ProcessHistory::assess`).
    let resolver = watched.get_mut(&trace.tgid)?.python.as_mut()?;
    Some(assess::frame_site(&resolver.frame(frames.first()?)))
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
