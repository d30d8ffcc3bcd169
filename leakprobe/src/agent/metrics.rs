//! The agent's Prometheus/OpenMetrics exposition. Each scrape encodes the agent's latest
//! snapshot into a fresh registry, so a process that ended simply stops being exported.
//!
//! Labels are bounded by design: namespace, pod, container, command: never a PID or a stack.
//! Processes with the same labels (gunicorn's workers in one container) are one series: RSS and
//! growth summed, the worst verdict, the nearest time to the limit. Leak sites are a top-k set.

use std::{collections::BTreeMap, sync::atomic::AtomicU64};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{assess::MemoryKind, census_history::monitor::HeapView, untrusted::label_value, verdict::VerdictKind};

/// Who a process is, as far as metrics may say.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Labels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: String,
}

impl Labels {
    /// The label pairs, values escaped: every one of them can come from a tenant (argv[0] of any
    /// process on the node; pod and container names), and prometheus-client writes label values
    /// as they are.
    fn pairs(&self) -> Vec<(String, String)> {
        vec![
            ("namespace".into(), label_value(&self.namespace)),
            ("pod".into(), label_value(&self.pod)),
            ("container".into(), label_value(&self.container)),
            ("command".into(), label_value(&self.command)),
        ]
    }
}

#[derive(Debug, Clone)]
pub struct ProcessMetrics {
    pub labels: Labels,
    pub rss_bytes: u64,
    pub swap_bytes: u64,
    pub growth_bytes_per_sec: f64,
    pub verdict: VerdictKind,
    pub time_to_limit_seconds: Option<f64>,
    pub memory_limit_bytes: Option<u64>,
    pub heap: Vec<(MemoryKind, u64)>,
}

#[derive(Debug, Clone)]
pub struct SiteMetric {
    pub labels: Labels,
    pub site: String,
    pub kind: MemoryKind,
    pub growth_bytes_per_sec: f64,
}

/// A leak pattern an escalated recording found (`advice`): the kind of bug and where.
#[derive(Debug, Clone)]
pub struct DiagnosisMetric {
    pub labels: Labels,
    pub pattern: &'static str,
    pub site: String,
    pub confidence: f64,
}

/// The agent's own health.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub targets: u64,
    pub probes_attached: u64,
    pub events: u64,
    /// (reason, count), kernel and agent drops alike.
    pub drops: Vec<(String, u64)>,
    /// (result, count).
    pub escalations: Vec<(String, u64)>,
    /// (what, count).
    pub evictions: Vec<(String, u64)>,
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub processes: Vec<ProcessMetrics>,
    pub sites: Vec<SiteMetric>,
    /// At most `escalation::MAX_DIAGNOSES` per process.
    pub diagnoses: Vec<DiagnosisMetric>,
    /// What the heap censuses see of each Python process.
    pub heaps: Vec<HeapMetrics>,
    pub health: Health,
}

/// A Python process's growing containers (at most `--sites-per-process`) and its GC.
#[derive(Debug, Clone)]
pub struct HeapMetrics {
    pub labels: Labels,
    pub view: HeapView,
}

pub fn kind_label(kind: MemoryKind) -> &'static str {
    match kind {
        MemoryKind::PymallocArenas => "pymalloc_arenas",
        MemoryKind::NativeHeap => "native_heap",
        MemoryKind::OtherMmaps => "other_mmaps",
    }
}

/// How bad a verdict is, to keep the worst of a group.
fn severity(v: VerdictKind) -> u8 {
    match v {
        VerdictKind::NoLeak => 0,
        VerdictKind::Inconclusive => 1,
        VerdictKind::Leak => 2,
    }
}

/// Processes that share their labels, merged.
fn merge(processes: &[ProcessMetrics]) -> BTreeMap<Labels, ProcessMetrics> {
    let mut groups: BTreeMap<Labels, ProcessMetrics> = BTreeMap::new();
    for p in processes {
        match groups.get_mut(&p.labels) {
            None => {
                groups.insert(p.labels.clone(), p.clone());
            }
            Some(g) => {
                g.rss_bytes += p.rss_bytes;
                g.swap_bytes += p.swap_bytes;
                g.growth_bytes_per_sec += p.growth_bytes_per_sec;
                if severity(p.verdict) > severity(g.verdict) {
                    g.verdict = p.verdict;
                }
                g.time_to_limit_seconds = match (g.time_to_limit_seconds, p.time_to_limit_seconds) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                g.memory_limit_bytes = g.memory_limit_bytes.or(p.memory_limit_bytes);
                for &(kind, bytes) in &p.heap {
                    match g.heap.iter_mut().find(|(k, _)| *k == kind) {
                        Some((_, b)) => *b += bytes,
                        None => g.heap.push((kind, bytes)),
                    }
                }
            }
        }
    }
    groups
}

type Labelled<M> = Family<Vec<(String, String)>, M>;
type GaugeF = Gauge<f64, AtomicU64>;

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Labelled<GaugeF> {
    let family = Labelled::<GaugeF>::default();
    registry.register(name, help, family.clone());
    family
}

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Labelled<Counter<f64, AtomicU64>> {
    let family = Labelled::<Counter<f64, AtomicU64>>::default();
    registry.register(name, help, family.clone());
    family
}

fn with(labels: &Labels, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs = labels.pairs();
    // Sites are code object and file names read from the target: escaped like the rest.
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), label_value(v))));
    pairs
}

/// The OpenMetrics text of `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    let mut r = Registry::default();
    let rss = gauge_family(&mut r, "leakprobe_process_rss_bytes", "Resident set size of the watched processes");
    let swap = gauge_family(&mut r, "leakprobe_process_swap_bytes", "Swapped-out memory of the watched processes");
    let growth = gauge_family(
        &mut r,
        "leakprobe_process_growth_bytes_per_second",
        "RSS growth rate (Theil-Sen over the agent's sliding window)",
    );
    let verdict = gauge_family(
        &mut r,
        "leakprobe_process_verdict",
        "1 for the current leak verdict (leak, no-leak, inconclusive), 0 for the others",
    );
    let ttl = gauge_family(
        &mut r,
        "leakprobe_process_time_to_limit_seconds",
        "Projected time until the cgroup memory limit at the current growth rate",
    );
    let limit = gauge_family(&mut r, "leakprobe_process_memory_limit_bytes", "Tightest cgroup memory limit");
    let heap = gauge_family(
        &mut r,
        "leakprobe_process_heap_bytes",
        "Memory mapped since the agent started watching, by kind (pymalloc arenas, brk heap, other mmaps)",
    );
    for (labels, p) in merge(&snapshot.processes) {
        let pairs = labels.pairs();
        rss.get_or_create(&pairs).set(p.rss_bytes as f64);
        swap.get_or_create(&pairs).set(p.swap_bytes as f64);
        growth.get_or_create(&pairs).set(p.growth_bytes_per_sec);
        for v in [VerdictKind::Leak, VerdictKind::NoLeak, VerdictKind::Inconclusive] {
            let value = if v == p.verdict { 1.0 } else { 0.0 };
            verdict.get_or_create(&with(&labels, &[("verdict", v.as_str())])).set(value);
        }
        if let Some(t) = p.time_to_limit_seconds {
            ttl.get_or_create(&pairs).set(t);
        }
        if let Some(l) = p.memory_limit_bytes {
            limit.get_or_create(&pairs).set(l as f64);
        }
        for (kind, bytes) in &p.heap {
            heap.get_or_create(&with(&labels, &[("kind", kind_label(*kind))])).set(*bytes as f64);
        }
    }
    let sites = gauge_family(
        &mut r,
        "leakprobe_leak_site_growth_bytes_per_second",
        "Growth attributed to a Python line (innermost frame of the mapping syscall's stack); a bounded top-k set",
    );
    for s in &snapshot.sites {
        let pairs = with(&s.labels, &[("site", &s.site), ("kind", kind_label(s.kind))]);
        sites.get_or_create(&pairs).set(s.growth_bytes_per_sec);
    }

    let patterns = gauge_family(
        &mut r,
        "leakprobe_leak_pattern_confidence",
        "The kind of leak an escalated recording found (pattern) and the line that keeps the memory (site): \
         the classifier's confidence",
    );
    for d in &snapshot.diagnoses {
        let pairs = with(&d.labels, &[("pattern", d.pattern), ("site", &d.site)]);
        let g = patterns.get_or_create(&pairs);
        // Processes merged under the same labels: the most confident.
        if d.confidence > g.get() {
            g.set(d.confidence);
        }
    }

    render_heaps(&mut r, &snapshot.heaps);

    let h = &snapshot.health;
    let plain = |r: &mut Registry, name: &str, help: &str, value: f64| {
        let g = GaugeF::default();
        g.set(value);
        r.register(name, help, g);
    };
    plain(&mut r, "leakprobe_agent_targets", "Processes watched", h.targets as f64);
    plain(&mut r, "leakprobe_agent_probes_attached", "Kernel programs attached", h.probes_attached as f64);
    plain(&mut r, "leakprobe_agent_resident_memory_bytes", "The agent's own RSS", h.resident_memory_bytes as f64);
    let once = |r: &mut Registry, name: &str, help: &str, value: f64| {
        let c = Counter::<f64, AtomicU64>::default();
        c.inc_by(value);
        r.register(name, help, c);
    };
    once(&mut r, "leakprobe_agent_events", "Memory and process events handled in the kernel", h.events as f64);
    once(&mut r, "leakprobe_agent_cpu_seconds", "CPU time the agent used (user + system)", h.cpu_seconds);
    for (name, help, key, values) in [
        ("leakprobe_agent_drops", "Events lost, by reason", "reason", &h.drops),
        ("leakprobe_agent_escalations", "Bounded recordings started on a leak, by result", "result", &h.escalations),
        ("leakprobe_agent_evictions", "Entries dropped to keep the agent's memory bounded", "what", &h.evictions),
    ] {
        let family = counter_family(&mut r, name, help);
        for (label, count) in values {
            family.get_or_create(&vec![(key.to_string(), label.clone())]).inc_by(*count as f64);
        }
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

/// Holders and the GC. Processes merged under the same labels (a server's workers) add up: the
/// same container in every worker is one series of their sum, flagged when any worker's is.
fn render_heaps(r: &mut Registry, heaps: &[HeapMetrics]) {
    let retained = gauge_family(
        r,
        "leakprobe_python_holder_retained_bytes",
        "Bytes a growing Python container retains (objects first reached through it), from heap censuses",
    );
    let length = gauge_family(r, "leakprobe_python_holder_length", "len() of a growing Python container");
    let growth = gauge_family(
        r,
        "leakprobe_python_holder_growth_bytes_per_second",
        "Growth of a Python container's retained bytes over the kept censuses",
    );
    let flagged = gauge_family(r, "leakprobe_python_holder_flagged", "1 when the container grows as a leak does");
    let collections = counter_family(
        r,
        "leakprobe_python_gc_collections",
        "Collections of the cyclic GC, by generation, since the interpreter started",
    );
    let tracked = gauge_family(r, "leakprobe_python_gc_tracked_objects", "Objects tracked by the cyclic GC");
    let add = |g: &GaugeF, v: f64| {
        g.set(g.get() + v);
    };
    for heap in heaps {
        for holder in &heap.view.holders {
            let pairs = with(&heap.labels, &[("holder", &holder.path), ("type", &holder.type_name)]);
            add(&retained.get_or_create(&pairs), holder.retained_bytes as f64);
            add(&length.get_or_create(&pairs), holder.length as f64);
            add(&growth.get_or_create(&pairs), holder.growth_bytes_per_sec);
            let f = flagged.get_or_create(&pairs);
            if holder.flagged {
                f.set(1.0);
            }
        }
        if let Some(gc) = &heap.view.gc {
            for (generation, &n) in gc.collections.iter().enumerate() {
                let pairs = with(&heap.labels, &[("generation", &generation.to_string())]);
                collections.get_or_create(&pairs).inc_by(n.max(0) as f64);
            }
            add(&tracked.get_or_create(&heap.labels.pairs()), gc.tracked_objects as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pod: &str, rss: u64, verdict: VerdictKind, ttl: Option<f64>) -> ProcessMetrics {
        ProcessMetrics {
            labels: Labels {
                namespace: "shop".into(),
                pod: pod.into(),
                container: "api".into(),
                command: "gunicorn".into(),
            },
            rss_bytes: rss,
            swap_bytes: 0,
            growth_bytes_per_sec: 10.0,
            verdict,
            time_to_limit_seconds: ttl,
            memory_limit_bytes: Some(1 << 30),
            heap: vec![(MemoryKind::PymallocArenas, 1 << 20)],
        }
    }

    #[test]
    fn hostile_names_stay_inside_their_label_values() {
        let mut p = process("api-1", 100, VerdictKind::Leak, Some(60.0));
        p.labels.command = "x\"} 1\nleakprobe_forged{namespace=\"prod\"} 60\n#".into();
        let site = SiteMetric {
            labels: p.labels.clone(),
            site: "handler\"}\n /srv/app.py:3".into(),
            kind: MemoryKind::OtherMmaps,
            growth_bytes_per_sec: 1.0,
        };
        let text = render(&Snapshot { processes: vec![p], sites: vec![site], ..Default::default() });
        assert!(!text.lines().any(|l| l.starts_with("leakprobe_forged")), "{text}");
        // Every sample line is `name{labels} value`: the labels end where the last `"}` is.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, rest) = line.split_once('{').unwrap_or((line, ""));
            assert!(name.starts_with("leakprobe_"), "{line}");
            assert!(rest.is_empty() || rest.rsplit_once("} ").is_some(), "{line}");
        }
        assert!(text.contains(r#"command="x\"} 1\nleakprobe_forged{namespace=\"prod\"} 60\n#""#), "{text}");
    }

    #[test]
    fn workers_with_one_label_set_are_one_series() {
        let snapshot = Snapshot {
            processes: vec![
                process("api-1", 100, VerdictKind::NoLeak, None),
                process("api-1", 50, VerdictKind::Leak, Some(300.0)),
                process("api-2", 70, VerdictKind::NoLeak, None),
            ],
            sites: vec![],
            diagnoses: vec![
                DiagnosisMetric {
                    labels: process("api-1", 0, VerdictKind::Leak, None).labels,
                    pattern: "unbounded_cache",
                    site: "/app/main.py:30".into(),
                    confidence: 0.64,
                },
                DiagnosisMetric {
                    labels: process("api-1", 0, VerdictKind::Leak, None).labels,
                    pattern: "unbounded_cache",
                    site: "/app/main.py:30".into(),
                    confidence: 0.8,
                },
            ],
            heaps: vec![],
            health: Health::default(),
        };
        let text = render(&snapshot);
        let labels = r#"namespace="shop",pod="api-1",container="api",command="gunicorn""#;
        // Two workers diagnosed alike: one series, the most confident.
        assert!(
            text.contains(&format!(
                r#"leakprobe_leak_pattern_confidence{{{labels},pattern="unbounded_cache",site="/app/main.py:30"}} 0.8"#
            )),
            "{text}"
        );
        assert!(text.contains(&format!("leakprobe_process_rss_bytes{{{labels}}} 150.0")), "{text}");
        assert!(text.contains(&format!("leakprobe_process_growth_bytes_per_second{{{labels}}} 20.0")));
        assert!(text.contains(&format!(r#"leakprobe_process_verdict{{{labels},verdict="leak"}} 1.0"#)));
        assert!(text.contains(&format!(r#"leakprobe_process_verdict{{{labels},verdict="no-leak"}} 0.0"#)));
        assert!(text.contains(&format!("leakprobe_process_time_to_limit_seconds{{{labels}}} 300.0")));
        assert!(text.contains(&format!(r#"leakprobe_process_heap_bytes{{{labels},kind="pymalloc_arenas"}} 2097152.0"#)));
        assert_eq!(text.matches("leakprobe_process_rss_bytes{").count(), 2);
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn health_and_sites_are_exported_without_pids() {
        let snapshot = Snapshot {
            processes: vec![],
            sites: vec![SiteMetric {
                labels: Labels { command: "uvicorn".into(), ..Default::default() },
                site: "leak /srv/app.py:12".into(),
                kind: MemoryKind::PymallocArenas,
                growth_bytes_per_sec: 1e6,
            }],
            diagnoses: vec![],
            heaps: vec![],
            health: Health {
                targets: 3,
                probes_attached: 10,
                events: 42,
                drops: vec![("drop_live_table_full".into(), 2)],
                escalations: vec![("written".into(), 1)],
                evictions: vec![("stacks".into(), 5)],
                cpu_seconds: 1.5,
                resident_memory_bytes: 1 << 24,
            },
        };
        let text = render(&snapshot);
        assert!(text.contains(r#"site="leak /srv/app.py:12",kind="pymalloc_arenas"} 1000000.0"#), "{text}");
        assert!(text.contains("leakprobe_agent_targets 3"));
        assert!(text.contains("leakprobe_agent_events_total 42"));
        assert!(text.contains(r#"leakprobe_agent_drops_total{reason="drop_live_table_full"} 2"#));
        assert!(text.contains("leakprobe_agent_cpu_seconds_total 1.5"));
        assert!(!text.contains("pid"));
    }

    #[test]
    fn holders_and_the_gc_are_exported_and_workers_add_up() {
        use crate::census_history::monitor::{GcView, HolderView};
        let labels = Labels { pod: "api-1".into(), command: "gunicorn".into(), ..Default::default() };
        let worker = |retained: u64| HeapMetrics {
            labels: labels.clone(),
            view: HeapView {
                censuses: 10,
                holders: vec![HolderView {
                    path: "app.views\"}\nforged 1".into(),
                    type_name: "list".into(),
                    length: 100,
                    retained_bytes: retained,
                    growth_bytes_per_sec: 50.0,
                    growth_items_per_sec: 1.0,
                    flagged: retained > 1000,
                }],
                gc: Some(GcView {
                    enabled: true,
                    collections: vec![40, 3, 1],
                    uncollectable: 0,
                    tracked_objects: 5000,
                }),
            },
        };
        let text = render(&Snapshot { heaps: vec![worker(500), worker(2000)], ..Default::default() });
        assert!(!text.contains("\nforged 1"), "{text}");
        let line = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_string();
        assert!(line("leakprobe_python_holder_retained_bytes{").ends_with("} 2500.0"), "{text}");
        assert!(line("leakprobe_python_holder_flagged{").ends_with("} 1.0"), "{text}");
        assert!(line("leakprobe_python_holder_length{").contains("holder="), "{text}");
        assert!(text.contains(r#"generation="0"} 80"#), "{text}");
        assert!(line("leakprobe_python_gc_tracked_objects{").ends_with("} 10000.0"), "{text}");
    }
}
