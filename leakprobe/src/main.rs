//! The `leakprobe` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use leakprobe::{
    agent::{self, escalation::EscalationPolicy, AgentOptions},
    kernel::TableSizes,
    record::{self, RecordOptions},
    report::{self, Format},
    stack_names::StackView,
    watch::{self, WatchOptions},
};

#[derive(Parser)]
#[command(name = "leakprobe", version, about = "Find memory leaks in live Python processes with eBPF")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Record allocations of a live process (or of a command it launches) and report leaks.
    Record(RecordArgs),
    /// Watch a live process continuously at almost no cost: memory growth, verdict, which memory
    /// grows and through which Python lines (memory syscalls only, no allocator probes).
    Watch(WatchArgs),
    /// Watch every Python process on the node (the DaemonSet mode): Prometheus metrics on
    /// --listen, and a bounded recording of each process whose verdict turns to leak.
    Agent(AgentArgs),
    /// Render a saved JSON report (`record --output FILE.json`) again, in any format.
    Report(ReportArgs),
    /// Read an application's logs: memory growth (leak verdict), spikes, and OOM kills,
    /// MemoryErrors and allocation failures, each with the memory level that led to it.
    Logs(leakprobe::logs::LogsArgs),
    /// Count a live Python process's objects by type, read from outside (no eBPF, nothing
    /// injected): the most common types, and with --interval the types that grow.
    Census(CensusArgs),
    /// Find leak patterns in Python source (a static check for code review): unbounded caches,
    /// global lists, listeners never removed, dropped tasks, ... with why and the fix.
    Scan(leakprobe::advice::scan::ScanArgs),
}

#[derive(clap::Args)]
struct CensusArgs {
    /// PID of the Python process.
    #[arg(long, short)]
    pid: u32,
    /// Types shown.
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Take a census every this long and show the types that grew past their peak.
    #[arg(long, short, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// Censuses to take with --interval (until Ctrl-C when not given).
    #[arg(long, short)]
    count: Option<u64>,
    #[arg(long, short, value_enum, default_value = "text")]
    format: leakprobe::census::CensusFormat,
    /// Most objects one census counts.
    #[arg(long, default_value_t = leakprobe::python::heap::Bounds::default().max_objects)]
    max_objects: u64,
    /// Longest one census may take.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    max_time: Duration,
    /// Containers reached from sys.modules shown, the most retaining first (0: do not look).
    #[arg(long, default_value_t = 10)]
    holders: usize,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Address of the /metrics and /healthz endpoint.
    #[arg(long, default_value = "0.0.0.0:9464")]
    listen: std::net::SocketAddr,
    /// How often to sample every watched process.
    #[arg(long, short, default_value = "10s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Samples kept per process: the window the leak verdict looks at.
    #[arg(long, default_value_t = 360)]
    history: usize,
    /// Samples the growth rate is measured over.
    #[arg(long, default_value_t = 12)]
    rate_window: usize,
    /// Most processes watched at once (more are counted as dropped).
    #[arg(long, default_value_t = 1000)]
    max_targets: usize,
    /// Leak sites exported per process (and growing containers, from the heap censuses).
    #[arg(long, default_value_t = 3)]
    sites_per_process: usize,
    /// Time between two heap censuses of one process (memory reads, no probe); 0s: none.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    census_interval: Duration,
    /// Leak sites exported in all (the fastest growing).
    #[arg(long, default_value_t = 50)]
    max_sites: usize,
    /// Where the reports of escalated recordings go (JSON and a flame graph).
    #[arg(long, default_value_os_t = agent::default_reports_dir())]
    reports_dir: PathBuf,
    /// Never escalate to a recording.
    #[arg(long)]
    no_escalation: bool,
    /// Length of an escalated recording.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    record_duration: Duration,
    /// Overhead budget of an escalated recording (percent of the target's CPU).
    #[arg(long, default_value_t = 5.0, value_name = "PCT")]
    record_max_overhead: f64,
    /// A process is recorded again only after this long.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    record_cooldown: Duration,
    /// Most recordings started per hour, node-wide.
    #[arg(long, default_value_t = 4)]
    max_records_per_hour: usize,
    /// Reports kept in --reports-dir (the oldest are deleted).
    #[arg(long, default_value_t = 50)]
    max_reports: usize,
    /// Stop after this long (until SIGINT/SIGTERM when not given).
    #[arg(long, short, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Size of the kernel's live-mapping table (all processes).
    #[arg(long, default_value_t = 1 << 18)]
    max_live_mappings: u32,
    /// Size of the kernel's stack table (all processes).
    #[arg(long, default_value_t = 1 << 15)]
    max_stacks: u32,
    /// Name namespaces, pods and containers through the Kubernetes API (in-cluster service
    /// account, pods of --node-name only); without it pods are labelled by UID, containers by id.
    #[arg(long)]
    kubernetes: bool,
    /// This node's name, for --kubernetes.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
}

#[derive(clap::Args)]
struct WatchArgs {
    /// PID of the process to watch.
    #[arg(long, short)]
    pid: u32,
    /// How often to refresh.
    #[arg(long, short, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Stop after this long (until Ctrl-C or the target's exit when not given).
    #[arg(long, short, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Samples in the sliding window growth rates are measured over.
    #[arg(long, default_value_t = 12)]
    rate_window: usize,
    /// One JSON object per interval on stdout, for scripts.
    #[arg(long)]
    json: bool,
    /// Growth attributions (and growing containers) shown per interval.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Time between heap censuses of a Python target (memory reads, no probe); 0s: none.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    census_interval: Duration,
}

#[derive(clap::Args)]
struct RecordArgs {
    /// PID of the process to record.
    #[arg(long, short, conflicts_with = "command")]
    pid: Option<u32>,
    /// How long to record (e.g. 60s, 5m); until Ctrl-C when not given.
    #[arg(long, short, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// How often to sample the per-stack counters and the process's memory.
    #[arg(long, short, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Report format [default: from --output's file name (.json, .svg, .pb.gz, .html, ...), else text]
    #[arg(long, short, value_enum)]
    format: Option<Format>,
    /// Write the report here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Exit with status 3 when a leak is flagged (to gate CI).
    #[arg(long)]
    fail_on_leak: bool,
    /// Size of the kernel's live-allocation table (full table: counted drops).
    #[arg(long, default_value_t = TableSizes::default().live_allocations)]
    max_live_allocations: u32,
    /// Size of the kernel's stack table.
    #[arg(long, default_value_t = TableSizes::default().stacks)]
    max_stacks: u32,
    /// Non-growing stacks listed in the report, largest first.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Show only Python frames.
    #[arg(long, conflicts_with = "native")]
    python_only: bool,
    /// Show every native frame, with the Python frames in place of the interpreter's eval loop.
    #[arg(long)]
    native: bool,
    /// Overhead budget: the share of the target's CPU time (percent) the allocator probes may
    /// take. leakprobe measures its cost per probe hit and attaches the probes in sampling
    /// windows that keep inside it; 100 keeps them attached all the time (exact, slow).
    #[arg(long, default_value_t = 5.0, value_name = "PCT")]
    max_overhead: f64,
    /// Length of one sampling window (allocator probes attached).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    window: Duration,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Launch this command and record it (instead of --pid).
    #[arg(last = true)]
    command: Vec<String>,
}

/// Exit status when `--fail-on-leak` is given and a leak is flagged.
const EXIT_LEAK: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leakprobe: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Commands::Record(args) => runtime.block_on(run_record(args)),
        Commands::Watch(args) => runtime.block_on(run_watch(args)),
        Commands::Agent(args) => runtime.block_on(run_agent(args)),
        Commands::Report(args) => run_report(args),
        Commands::Logs(args) => leakprobe::logs::run(args),
        Commands::Scan(args) => leakprobe::advice::scan::run(args),
        Commands::Census(args) => run_census(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line: the chain of causes, joined.
            eprintln!("leakprobe: error: {}", leakprobe::untrusted::terminal(&format!("{err:#}").replace('\n', " ")));
            ExitCode::FAILURE
        }
    }
}

fn run_census(args: CensusArgs) -> anyhow::Result<ExitCode> {
    leakprobe::census::run(leakprobe::census::CensusOptions {
        pid: args.pid,
        top: args.top,
        interval: args.interval,
        count: args.count,
        format: args.format,
        bounds: leakprobe::python::heap::Bounds {
            max_objects: args.max_objects,
            max_duration: args.max_time,
            max_holders: args.holders,
            ..Default::default()
        },
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn run_watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    if args.interval < Duration::from_millis(100) {
        anyhow::bail!("--interval must be at least 100ms");
    }
    watch::watch(WatchOptions {
        pid: args.pid,
        interval: args.interval,
        duration: args.duration,
        rate_window: args.rate_window,
        json: args.json,
        top: args.top,
        census_interval: (!args.census_interval.is_zero()).then_some(args.census_interval),
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if args.interval < Duration::from_millis(100) {
        anyhow::bail!("--interval must be at least 100ms");
    }
    if args.history < 6 || args.rate_window < 3 {
        anyhow::bail!("--history needs at least 6 samples and --rate-window at least 3");
    }
    if !(args.record_max_overhead > 0.0 && args.record_max_overhead <= 100.0) {
        anyhow::bail!("--record-max-overhead must be a percentage in (0, 100]");
    }
    agent::run(AgentOptions {
        listen: args.listen,
        interval: args.interval,
        history: args.history,
        rate_window: args.rate_window,
        max_targets: args.max_targets,
        sites_per_process: args.sites_per_process,
        max_sites: args.max_sites,
        census_interval: (!args.census_interval.is_zero()).then_some(args.census_interval),
        escalation: (!args.no_escalation).then(|| EscalationPolicy {
            reports_dir: args.reports_dir,
            record_duration: args.record_duration,
            max_overhead_percent: args.record_max_overhead,
            cooldown: args.record_cooldown,
            max_per_hour: args.max_records_per_hour,
            max_reports: args.max_reports,
        }),
        duration: args.duration,
        tables: TableSizes { live_allocations: args.max_live_mappings, stacks: args.max_stacks },
        kubernetes_node: match (args.kubernetes, args.node_name) {
            (false, _) => None,
            (true, Some(node)) => Some(node),
            (true, None) => {
                anyhow::bail!("--kubernetes needs --node-name (or NODE_NAME) to list only this node's pods")
            }
        },
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn run_record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    if args.interval < Duration::from_millis(100) {
        anyhow::bail!("--interval must be at least 100ms");
    }
    if !(args.max_overhead > 0.0 && args.max_overhead <= 100.0) {
        anyhow::bail!("--max-overhead must be a percentage in (0, 100], got {}", args.max_overhead);
    }
    if args.window < Duration::from_millis(10) {
        anyhow::bail!("--window must be at least 10ms");
    }
    let format = Format::choose(args.format, args.output.as_deref());
    report::output::check_destination(args.output.as_deref(), format)?;
    let opts = RecordOptions {
        pid: args.pid,
        command: args.command,
        duration: args.duration,
        interval: args.interval,
        tables: TableSizes { live_allocations: args.max_live_allocations, stacks: args.max_stacks },
        other_stacks: args.top,
        progress: !args.quiet,
        view: if args.python_only {
            StackView::PythonOnly
        } else if args.native {
            StackView::Native
        } else {
            StackView::Merged
        },
        max_overhead_percent: args.max_overhead,
        window: args.window,
    };
    let report = record::record(opts).await?;
    report::write(args.output.as_deref(), format, &report::render(&report, format)?)?;
    Ok(if args.fail_on_leak && report.is_leak() { ExitCode::from(EXIT_LEAK) } else { ExitCode::SUCCESS })
}

#[derive(clap::Args)]
struct ReportArgs {
    /// A JSON report saved by `leakprobe record --format json` (schema version 1).
    file: PathBuf,
    /// Report format [default: from --output's file name (.json, .svg, .pb.gz, .html, ...), else text]
    #[arg(long, short, value_enum)]
    format: Option<Format>,
    /// Write the report here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Exit with status 3 when the report's verdict is leak.
    #[arg(long)]
    fail_on_leak: bool,
}

fn run_report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let report = report::load::from_path(&args.file)?;
    let format = Format::choose(args.format, args.output.as_deref());
    report::write(args.output.as_deref(), format, &report::render(&report, format)?)?;
    Ok(if args.fail_on_leak && report.is_leak() { ExitCode::from(EXIT_LEAK) } else { ExitCode::SUCCESS })
}
