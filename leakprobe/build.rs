//! Builds the kernel programs (leakprobe-ebpf) for the BPF target and embeds them.
//! Needs nightly with rust-src and bpf-linker on PATH (`cargo xtask setup` installs both).
//! With `AYA_BUILD_SKIP=1` (userspace-only work, unit tests) an empty object is embedded and the
//! loader says so at run time.
//!
//! The inner cargo runs with `--ignore-rust-version`: aya-ebpf 0.3 declares rustc 1.98, which
//! this machine's nightly (1.97) builds (see `rust-toolchain.toml`). aya-build does not pass that
//! flag, so this script runs the build itself, the way aya-build does.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let embedded = out_dir.join("leakprobe");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(embedded, [])?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("leakprobe is in the workspace")?;
    // The kernel crate and the types it shares with userspace.
    for dir in ["leakprobe-ebpf", "leakprobe-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "big" => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    };
    let target_dir = out_dir.join("ebpf-target");
    let flags = [format!("--cfg=bpf_target_arch=\"{arch}\""), "-Cdebuginfo=2".into(), "-Clink-arg=--btf".into()];
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--package", "leakprobe-ebpf", "--bins", "--release", "--ignore-rust-version"])
        .args(["--target", target, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .context("cannot run cargo to build the kernel programs")?;
    if !status.success() {
        bail!("building the kernel programs (leakprobe-ebpf) failed: {status}");
    }
    copy(&target_dir.join(target).join("release/leakprobe"), &embedded)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
