//! The report formats, read by their real consumers: `go tool pprof` (Debian's golang-go) reads
//! the pprof profile, headless Chromium (Debian's chromium) renders the flame graph SVG and the
//! HTML page, and a screenshot shows the verdict. No eBPF and no root: every report is rendered by
//! `leakprobe report` from a saved JSON report, a hand-built recording of the demo app.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use leakprobe_tests::{fixture, leakprobe_bin, scratch, ChildGuard};

/// Two flagged Python stacks; the fastest keeps its memory at `get_order`, app.py line 30.
const REPORT: &str = "reports/fastapi-leak.json";
const LEAKING_FUNCTION: &str = "get_order";
const LEAKING_LINE: &str = "/srv/demo/app.py:30";
/// The HTML verdict banner's colour for a leak (`.lp-leak` in html_template.html).
const LEAK_RED: [u8; 3] = [0xb3, 0x26, 0x1e];

fn go() -> PathBuf {
    std::env::var_os("LEAKPROBE_GO").map(PathBuf::from).unwrap_or_else(|| "go".into())
}

fn chromium() -> PathBuf {
    std::env::var_os("LEAKPROBE_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into())
}

/// A fresh directory for one test's files.
fn workdir(name: &str) -> PathBuf {
    let dir = scratch().join("report_formats").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `cmd` to completion (killed after `limit`), its output collected through files.
fn run(cmd: &mut Command, dir: &Path, limit: Duration) -> Output {
    let (out, err) = (dir.join("cmd.stdout"), dir.join("cmd.stderr"));
    let mut child = ChildGuard::new(
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (`cargo xtask setup` installs it)")),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.child().try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{cmd:?} did not finish in {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: fs::read(&out).unwrap(), stderr: fs::read(&err).unwrap() }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `leakprobe report <fixture> --format <format> --output <file>`; returns the file.
fn render(format: &str, dir: &Path, file: &str) -> PathBuf {
    let path = dir.join(file);
    let out = run(
        Command::new(leakprobe_bin())
            .arg("report")
            .arg(fixture(REPORT))
            .args(["--format", format])
            .arg("--output")
            .arg(&path),
        dir,
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "leakprobe report --format {format} failed: {}", text(&out.stderr));
    assert!(fs::metadata(&path).unwrap().len() > 0, "{format}: empty output");
    path
}

fn pprof(dir: &Path, file: &Path, args: &[&str]) -> String {
    let out = run(
        Command::new(go())
            .args(["tool", "pprof"])
            .args(args)
            .arg(file)
            .env("PPROF_TMPDIR", dir)
            .env("GOCACHE", dir.join("gocache")),
        dir,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "go tool pprof {args:?} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn go_tool_pprof_reads_the_profile_and_lists_the_leaking_python_line() {
    let dir = workdir("pprof");
    let profile = render("pprof", &dir, "leak.pb.gz");

    // The default sample type is the growth rate: the leaking function tops the cumulative list.
    let top = pprof(&dir, &profile, &["-top"]);
    assert!(top.contains("Type: growth_rate"), "{top}");
    assert!(top.contains(&format!(" {LEAKING_FUNCTION}\n")), "{top}");
    assert!(top.contains("verdict: leak"), "the profile's comments: {top}");
    // With line granularity pprof names the file and line.
    let lines = pprof(&dir, &profile, &["-top", "-lines", "-sample_index=inuse_space"]);
    assert!(
        lines.contains("Type: inuse_space") && lines.contains(&format!("{LEAKING_FUNCTION} {LEAKING_LINE}")),
        "{lines}"
    );

    let raw = pprof(&dir, &profile, &["-raw"]);
    assert!(raw.contains("inuse_space/bytes inuse_objects/count growth_rate/bytes_per_second[dflt]"), "{raw}");
    assert!(raw.contains(&format!("{LEAKING_FUNCTION} {LEAKING_LINE}")), "{raw}");
    assert!(raw.contains("flagged:[true]") && raw.contains("allocator:[malloc]"), "{raw}");
    assert!(raw.contains("/usr/lib/x86_64-linux-gnu/libc.so.6"), "native frames keep their mapping: {raw}");

    let traces = pprof(&dir, &profile, &["-traces"]);
    assert!(traces.contains(LEAKING_FUNCTION) && traces.contains("render_order.<locals>.<listcomp>"), "{traces}");
}

#[test]
fn binary_output_goes_to_a_pipe_unchanged() {
    let dir = workdir("pipe");
    let file = render("pprof", &dir, "leak.pb.gz");
    let out = run(
        Command::new(leakprobe_bin()).arg("report").arg(fixture(REPORT)).args(["--format", "pprof"]),
        &dir,
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, fs::read(file).unwrap());
    assert_eq!(&out.stdout[..2], &[0x1f, 0x8b], "gzip");
}

#[test]
fn the_report_command_renders_a_saved_report_again() {
    let dir = workdir("again");
    // JSON back out: the same report, field for field.
    let json = render("json", &dir, "again.json");
    let original: serde_json::Value = serde_json::from_slice(&fs::read(fixture(REPORT)).unwrap()).unwrap();
    let again: serde_json::Value = serde_json::from_slice(&fs::read(json).unwrap()).unwrap();
    assert_eq!(again, original);
    // Text by default, on stdout.
    let out = run(Command::new(leakprobe_bin()).arg("report").arg(fixture(REPORT)), &dir, Duration::from_secs(30));
    let stdout = text(&out.stdout);
    assert!(out.status.success() && stdout.contains("VERDICT: LEAK") && stdout.contains(LEAKING_LINE), "{stdout}");
    // The output file's name picks the format when --format is not given.
    let out = run(
        Command::new(leakprobe_bin()).arg("report").arg(fixture(REPORT)).arg("--output").arg(dir.join("r.folded")),
        &dir,
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let folded = fs::read_to_string(dir.join("r.folded")).unwrap();
    assert!(folded.lines().next().unwrap().contains(";get_order (app.py:30);malloc "), "{folded}");
    // speedscope's JSON names the leaking frame with its file and line.
    let speedscope: serde_json::Value =
        serde_json::from_slice(&fs::read(render("speedscope", &dir, "r.speedscope.json")).unwrap()).unwrap();
    let frames = speedscope["shared"]["frames"].as_array().unwrap();
    assert!(frames.contains(&serde_json::json!({"name": LEAKING_FUNCTION, "file": "/srv/demo/app.py", "line": 30})));
}

#[test]
fn a_report_of_another_schema_version_is_refused_in_one_line() {
    let dir = workdir("schema");
    let mut report: serde_json::Value = serde_json::from_slice(&fs::read(fixture(REPORT)).unwrap()).unwrap();
    report["schema_version"] = 2.into();
    let path = dir.join("v2.json");
    fs::write(&path, report.to_string()).unwrap();
    let out = run(Command::new(leakprobe_bin()).arg("report").arg(&path), &dir, Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("schema_version 2 is not supported") && stderr.lines().count() == 1, "{stderr}");
}

/// Headless Chromium with a fresh profile and nothing reaching out: a screenshot of `url`, and
/// its DOM after loading.
fn chromium_render(dir: &Path, url: &str, height: u32) -> (PathBuf, String) {
    let png = dir.join("screenshot.png");
    let browser = |profile: &str, extra: &[&str]| {
        let mut cmd = Command::new(chromium());
        cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .arg(format!("--user-data-dir={}", dir.join(profile).display()))
            .arg(format!("--window-size=1280,{height}"))
            .args(extra)
            .arg(url);
        cmd
    };
    let shot =
        run(&mut browser("profile-shot", &[&format!("--screenshot={}", png.display())]), dir, Duration::from_secs(90));
    assert!(shot.status.success() && png.exists(), "chromium --screenshot failed: {}", text(&shot.stderr));
    let dom = run(&mut browser("profile-dom", &["--dump-dom"]), dir, Duration::from_secs(90));
    assert!(dom.status.success(), "chromium --dump-dom failed: {}", text(&dom.stderr));
    for profile in ["profile-shot", "profile-dom"] {
        let _ = fs::remove_dir_all(dir.join(profile));
    }
    (png, text(&dom.stdout))
}

/// (width, height, RGB pixels) of a screenshot.
fn pixels(png_path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(png_path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let rgb = buf[..info.buffer_size()].chunks_exact(channels).map(|p| [p[0], p[1], p[2]]).collect();
    (info.width, info.height, rgb)
}

/// A picture, not a blank page: many colours, no single one covering nearly everything.
fn assert_not_blank(png_path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    assert!(fs::metadata(png_path).unwrap().len() > 10_000, "screenshot suspiciously small");
    let (w, h, px) = pixels(png_path);
    let mut counts = std::collections::HashMap::new();
    for p in &px {
        *counts.entry(*p).or_insert(0usize) += 1;
    }
    let dominant = counts.values().max().copied().unwrap_or(0);
    assert!(counts.len() > 50, "only {} colours: blank render", counts.len());
    assert!(dominant < px.len() * 95 / 100, "one colour covers {dominant} of {} pixels", px.len());
    (w, h, px)
}

#[test]
fn chromium_renders_the_flame_graph() {
    let dir = workdir("svg");
    let svg = render("svg", &dir, "flame.svg");
    let (png, dom) = chromium_render(&dir, &format!("file://{}", svg.display()), 700);
    let (w, _, _) = assert_not_blank(&png);
    assert_eq!(w, 1280);
    assert!(dom.contains("live memory of growing stacks, PID 31337"), "{dom}");
    assert!(
        dom.contains("get_order (app.py:30)")
            && dom.contains("render_order.&lt;locals&gt;.&lt;listcomp&gt; (app.py:25)")
    );
    // inferno's script ran: it fits the graph to the window (1280 less 2 × 10 of padding).
    assert!(dom.contains(r#"<svg id="frames" x="10" width="1260""#), "{dom}");
}

#[test]
fn chromium_shows_the_html_page_with_the_verdict_and_the_leaking_line() {
    let dir = workdir("html");
    let html = render("html", &dir, "report.html");
    let (png, dom) = chromium_render(&dir, &format!("file://{}", html.display()), 2000);
    let (w, h, px) = assert_not_blank(&png);
    assert_eq!((w, h), (1280, 2000));
    // The red LEAK banner is on screen, near the top.
    let top = &px[..(w * 300) as usize];
    let red = top.iter().filter(|p| p.iter().zip(LEAK_RED).all(|(a, b)| a.abs_diff(b) < 8)).count();
    assert!(red > 50_000, "{red} pixels of the leak banner's red in the top 300 rows");
    // The page's text: the verdict, the leaking line, the plots and the flame graph.
    assert!(dom.contains(r#"<span class="lp-word">LEAK</span>"#), "{dom}");
    assert!(
        dom.contains(&format!("Leaking line: <code>{LEAKING_LINE}</code> in <code>{LEAKING_FUNCTION}</code>")),
        "{dom}"
    );
    assert!(dom.contains("reached in ~1h 08m at this rate"));
    // What kind of leak it is and the fix, in the leaking stack's card.
    assert!(
        dom.contains("Leak pattern: Unbounded cache (unbounded_cache), confidence 80%, at /srv/demo/app.py:30"),
        "{dom}"
    );
    assert!(dom.contains("<strong>Fix:</strong> Bound it: cachetools.TTLCache"), "{dom}");
    assert_eq!(dom.matches(r#"<svg class="lp-plot""#).count(), 4, "RSS, heap and one per growing stack");
    assert!(dom.contains(r#"<svg class="lp-flame""#) && dom.contains("get_order (app.py:30)"));
}
