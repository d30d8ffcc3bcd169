//! `cargo xtask deploy-check`: offline checks of `deploy/`, one line per check.
//!
//! - promtool checks the alerting rules and runs their unit tests;
//! - `deploy_checks.py` (in the kubernetes-validate venv) validates every manifest against the
//!   Kubernetes schemas, checks the Prometheus Operator objects structurally (the PrometheusRule's
//!   spec must equal the rules file) and that the manifests agree with each other;
//! - promtool checks the PrometheusRule's spec as Prometheus would load it;
//! - the Dockerfile pins its base images, builds with setup.rs's bpf-linker, runs `leakprobe agent`.

use std::{
    fs,
    path::Path,
    process::{Command, Output},
};

use anyhow::{bail, Context, Result};

use crate::{root, setup};

const RULES: &str = "deploy/prometheus/leakprobe-rules.yml";
const RULES_TEST: &str = "deploy/prometheus/leakprobe-rules.test.yml";
const DOCKERFILE: &str = "deploy/Dockerfile";
const SCRIPT: &str = "xtask/src/deploy_checks.py";

/// Runs every check, reporting each; fails at the end if any failed. With `fix`, first rewrites
/// deploy/kubernetes/prometheusrule.yaml's spec from the rules file.
pub fn check(tools: &setup::Tools, fix: bool) -> Result<()> {
    let root = root();
    if fix {
        crate::run(Command::new(&tools.deploy_python).arg(root.join(SCRIPT)).arg(&root).arg("--fix"))?;
    }
    let scratch = root.join("target/deploy-check");
    fs::create_dir_all(&scratch)?;
    let spec = scratch.join("prometheusrule-spec.yml");
    let _ = fs::remove_file(&spec);

    let mut failed = 0;
    report(&mut failed, &format!("promtool check rules {RULES}"), promtool_check(tools, &root.join(RULES)));
    report(
        &mut failed,
        &format!("promtool test rules {RULES_TEST}"),
        output(Command::new(&tools.promtool).args(["test", "rules"]).arg(root.join(RULES_TEST)))
            .map(|_| "every alert fires on its leak, not on a steady process or a spike".into()),
    );

    // The manifests: the script prints its own `ok`/`FAIL` lines.
    let manifests = Command::new(&tools.deploy_python)
        .arg(root.join(SCRIPT))
        .arg(&root)
        .arg("--prometheusrule-spec")
        .arg(&spec)
        .output()
        .with_context(|| format!("cannot run {SCRIPT}"))?;
    let stdout = String::from_utf8_lossy(&manifests.stdout);
    for line in stdout.lines() {
        println!("deploy-check: {line}");
    }
    failed += stdout.lines().filter(|l| l.starts_with("FAIL")).count();
    if !manifests.status.success() && !stdout.lines().any(|l| l.starts_with("FAIL")) {
        failed += 1;
        println!("deploy-check: FAIL {SCRIPT}: {}", String::from_utf8_lossy(&manifests.stderr).trim());
    }

    if spec.exists() {
        report(&mut failed, "promtool check rules (prometheusrule.yaml's spec)", promtool_check(tools, &spec));
    }
    report(&mut failed, DOCKERFILE, dockerfile(&root));
    if failed > 0 {
        bail!("{failed} deploy check(s) failed");
    }
    Ok(())
}

/// Prints one check's line, counting it when it failed.
fn report(failed: &mut usize, what: &str, result: Result<String>) {
    match result {
        Ok(detail) => println!("deploy-check: ok   {what}: {detail}"),
        Err(err) => {
            *failed += 1;
            println!("deploy-check: FAIL {what}: {err:#}");
        }
    }
}

/// A command's output, or an error carrying what it printed.
fn output(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        bail!("{}", printed.trim());
    }
    Ok(out)
}

/// `promtool check rules`, summarised as "N rules".
fn promtool_check(tools: &setup::Tools, file: &Path) -> Result<String> {
    let out = output(Command::new(&tools.promtool).args(["check", "rules"]).arg(file))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let count = text.lines().find_map(|l| l.trim().strip_prefix("SUCCESS: ")).unwrap_or("ok");
    Ok(count.trim_end_matches(" found").to_string())
}

/// The Dockerfile and its context's ignore file.
fn dockerfile(root: &Path) -> Result<String> {
    let text = fs::read_to_string(root.join(DOCKERFILE)).with_context(|| format!("{DOCKERFILE} is missing"))?;
    let ignore = fs::read_to_string(root.join(".dockerignore")).context(".dockerignore is missing")?;
    check_dockerfile(&text, &ignore)
}

/// What `dockerfile` checks, on the files' text.
fn check_dockerfile(text: &str, ignore: &str) -> Result<String> {
    // One instruction a line: continuation lines joined.
    let joined = text.replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(i, rest)| (i.to_ascii_uppercase(), rest.trim().to_string())))
        .collect();
    let arg = |name: &str| {
        let prefix = format!("{name}=");
        instructions
            .iter()
            .filter(|(i, _)| i == "ARG")
            .find_map(|(_, rest)| rest.strip_prefix(&prefix))
            .map(|v| v.trim_matches('"'))
    };
    // Base images with the global ARGs' defaults substituted.
    let mut bases = Vec::new();
    for (_, rest) in instructions.iter().filter(|(i, _)| i == "FROM") {
        let mut image = rest.split_whitespace().find(|w| !w.starts_with("--")).unwrap_or_default().to_string();
        while let Some(start) = image.find("${") {
            let end = image[start..].find('}').map(|e| start + e).context("unclosed ${ in FROM")?;
            let name = &image[start + 2..end];
            let value = arg(name).with_context(|| format!("FROM uses ${{{name}}}, which has no default"))?;
            image.replace_range(start..=end, value);
        }
        let pinned = image.contains('@') || image.rsplit('/').next().is_some_and(|n| n.contains(':'));
        if !pinned || image.ends_with(":latest") {
            bail!("base image {image} is not pinned to a tag or digest");
        }
        bases.push(image);
    }
    if bases.len() < 2 {
        bail!("expected a build stage and a runtime stage, found {} FROM", bases.len());
    }
    for (name, wanted) in
        [("BPF_LINKER_VERSION", setup::BPF_LINKER_VERSION), ("BPF_LINKER_LLVM_FEATURE", setup::BPF_LINKER_LLVM_FEATURE)]
    {
        if arg(name) != Some(wanted) {
            bail!("ARG {name} is {:?}, xtask/src/setup.rs builds with {wanted:?}", arg(name));
        }
    }
    for needed in ["rust-src", "cargo build --release --locked -p leakprobe"] {
        if !text.contains(needed) {
            bail!("the build stage does not run `{needed}`");
        }
    }
    let entrypoint = instructions.iter().rev().find(|(i, _)| i == "ENTRYPOINT").map(|(_, r)| r.as_str());
    if entrypoint.and_then(|e| serde_json::from_str::<Vec<String>>(e).ok())
        != Some(vec!["leakprobe".into(), "agent".into()])
    {
        bail!("ENTRYPOINT is {entrypoint:?}, not [\"leakprobe\", \"agent\"]");
    }
    let ignored: Vec<&str> = ignore
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if !ignored.contains(&"target") {
        bail!(".dockerignore does not exclude target/ (the context would carry the build tree)");
    }
    // cargo loads every workspace member, so none may be left out of the context.
    for needed in ["Cargo.toml", "Cargo.lock", "leakprobe", "leakprobe-common", "leakprobe-ebpf", "xtask", "tests"] {
        if ignored.contains(&needed) {
            bail!(".dockerignore excludes {needed}, which the build needs");
        }
    }
    Ok(format!(
        "{}, bpf-linker {} ({}) as in setup.rs, ENTRYPOINT leakprobe agent",
        bases.join(" -> "),
        setup::BPF_LINKER_VERSION,
        setup::BPF_LINKER_LLVM_FEATURE
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> (String, String) {
        let root = root();
        (fs::read_to_string(root.join(DOCKERFILE)).unwrap(), fs::read_to_string(root.join(".dockerignore")).unwrap())
    }

    #[test]
    fn the_dockerfile_passes() {
        let (text, ignore) = files();
        let detail = check_dockerfile(&text, &ignore).unwrap();
        assert!(detail.starts_with("rust:1.95-bookworm -> debian:bookworm-slim"), "{detail}");
    }

    #[test]
    fn unpinned_bases_and_drift_from_setup_fail() {
        let (text, ignore) = files();
        let latest = text.replace("FROM debian:${DEBIAN_RELEASE}-slim", "FROM debian:latest");
        assert!(check_dockerfile(&latest, &ignore).unwrap_err().to_string().contains("not pinned"));
        let untagged = text.replace("FROM debian:${DEBIAN_RELEASE}-slim", "FROM debian");
        assert!(check_dockerfile(&untagged, &ignore).is_err());
        let other_linker =
            text.replace(&format!("BPF_LINKER_VERSION={}", setup::BPF_LINKER_VERSION), "BPF_LINKER_VERSION=0.9.0");
        assert!(check_dockerfile(&other_linker, &ignore).unwrap_err().to_string().contains("setup.rs"));
        let shell_form = text.replace(r#"ENTRYPOINT ["leakprobe", "agent"]"#, "ENTRYPOINT leakprobe agent");
        assert!(check_dockerfile(&shell_form, &ignore).unwrap_err().to_string().contains("ENTRYPOINT"));
        assert!(check_dockerfile(&text, &format!("{ignore}\ntests\n")).is_err());
        assert!(check_dockerfile(&text, "").is_err());
    }
}
