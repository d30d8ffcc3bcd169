//! Installs what leakprobe's build, demo and tests need. Each step checks first and does nothing
//! when its result is already there; downloads land in `~/.cache/leakprobe`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::run;

/// bpf-linker must be built against the same LLVM major as the nightly that compiles the kernel
/// crate; the nightly ships that libLLVM, so bpf-linker links against it.
/// (deploy/Dockerfile builds the same; `cargo xtask deploy-check` compares.)
pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";
/// Debian packages: the load generator, what the Python venv needs, and the real consumers of
/// the report formats the tests run (`go tool pprof`, headless Chromium).
const APT_PACKAGES: &[&str] = &["wrk", "python3.11", "python3.11-venv", "debootstrap", "golang-go", "chromium"];
/// The demo app's and the end-to-end tests' Python packages.
pub const PIP_PACKAGES: &[&str] = &["fastapi==0.115.*", "uvicorn==0.32.*", "cachetools==5.*"];
/// The deploy checks' Python packages: Kubernetes' JSON schemas (bundled, offline) and PyYAML.
const DEPLOY_PIP_PACKAGES: &[&str] = &["kubernetes-validate==1.37.0"];

/// Other CPython builds the Python-stack tests run against when the machine has them (pyenv's
/// shared-libpython builds here; paths are relative to $HOME unless absolute).
const EXTRA_PYTHONS: &[(&str, &str)] = &[
    ("3.10", ".pyenv/versions/3.10.13/bin/python3"),
    ("3.12", ".pyenv/versions/3.12.1/bin/python3"),
    ("3.13", ".pyenv/versions/3.13.0/bin/python3"),
    // Debian's own build: static, non-PIE, stripped, LTO+PGO (pymalloc inlined at many call sites).
    ("debian-3.11", "/usr/bin/python3.11"),
];

pub struct Tools {
    pub bpf_linker_dir: PathBuf,
    pub python: PathBuf,
    /// (version, venv python) for each extra interpreter found.
    pub extra_pythons: Vec<(String, PathBuf)>,
    /// (version, root) of the debootstrap'd Debian roots, each with a venv at `chroot::VENV`.
    pub debian_roots: Vec<(String, PathBuf)>,
    /// Prometheus's rule checker, for the deploy checks.
    pub promtool: PathBuf,
    /// A venv python with kubernetes-validate, for the deploy checks.
    pub deploy_python: PathBuf,
}

impl Tools {
    /// PATH with bpf-linker first.
    pub fn path_env(&self) -> String {
        format!("{}:{}", self.bpf_linker_dir.display(), env::var("PATH").unwrap_or_default())
    }
}

pub fn cache_dir() -> PathBuf {
    env::var_os("LEAKPROBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/leakprobe"))
}

pub fn install() -> Result<Tools> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    nightly_rust_src()?;
    let bpf_linker_dir = bpf_linker(&cache)?;
    apt_packages()?;
    let base = env::var("LEAKPROBE_BASE_PYTHON").unwrap_or_else(|_| "python3".into());
    let python = python_venv(&cache.join("venv"), Path::new(&base))?;
    let deploy_python = venv_with(&cache.join("venv-deploy"), Path::new(&base), DEPLOY_PIP_PACKAGES)?;
    let promtool = promtool(&cache)?;
    let home = PathBuf::from(env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let mut extra_pythons = Vec::new();
    for (version, relative) in EXTRA_PYTHONS {
        let interpreter = home.join(relative);
        if interpreter.exists() {
            extra_pythons
                .push((version.to_string(), python_venv(&cache.join(format!("venv-{version}")), &interpreter)?));
        }
    }
    let mut debian_roots = Vec::new();
    for (suite, version) in crate::chroot::ROOTS {
        debian_roots.push((version.to_string(), crate::chroot::debian_root(&cache, suite, version, PIP_PACKAGES)?));
    }
    Ok(Tools { bpf_linker_dir, python, extra_pythons, debian_roots, promtool, deploy_python })
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
        .context("the nightly toolchain is needed for the kernel programs")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: installing rust-src for nightly");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

fn bpf_linker(cache: &Path) -> Result<PathBuf> {
    let root = cache.join("bpf-linker");
    let bin = root.join("bin");
    let works = Command::new(bin.join("bpf-linker"))
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Ok(bin);
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's libLLVM (about a minute)");
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot_lib = PathBuf::from(sysroot.trim()).join("lib");
    // The real library, not the `libLLVM-NN-*.so` linker script beside it.
    let libllvm = fs::read_dir(&sysroot_lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot_lib.display()))?;
    // bpf-linker keeps an rpath to this prefix: it must outlive the build.
    let prefix = cache.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    // `libLLVM.so` for the build to link against, and the soname itself so the binary's rpath
    // finds the library at run time (outside `rustup run`, which would set LD_LIBRARY_PATH).
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot_lib.join(&libllvm), &link)?;
    }
    run(Command::new("cargo")
        .args(["install", "--locked", "--force", "--root"])
        .arg(&root)
        .args(["bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features"])
        .arg(BPF_LINKER_LLVM_FEATURE)
        .env("LLVM_PREFIX", &prefix))?;
    Ok(bin)
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages {missing:?}");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// promtool, from Debian's `prometheus` package extracted into the cache (its server, beside it,
/// is what the alerting test runs). Extracted rather than installed: installing the package would
/// also create a system user and enable and start a Prometheus server on any machine with an init
/// system.
fn promtool(cache: &Path) -> Result<PathBuf> {
    let root = cache.join("prometheus");
    let bin = root.join("usr/bin/promtool");
    let works = Command::new(&bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if works.is_ok_and(|s| s.success()) {
        return Ok(bin);
    }
    eprintln!("xtask: extracting promtool from Debian's prometheus package");
    let partial = cache.join("prometheus.partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    // Into the current directory; as root, without the sandbox user that could not write there.
    let download = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["download", "-qq", "-o", "APT::Sandbox::User=root", "prometheus"]).current_dir(&partial);
        cmd
    };
    if run(&mut download()).is_err() {
        // No package lists yet (a fresh machine) or stale ones.
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(&mut download())?;
    }
    let deb = fs::read_dir(&partial)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(partial.join("root")))?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(partial.join("root"), &root).context("cannot move promtool into place")?;
    let _ = fs::remove_dir_all(&partial);
    Ok(bin)
}

/// A venv on `base` (pyenv's shared-libpython builds here), with the web stack.
fn python_venv(venv: &Path, base: &Path) -> Result<PathBuf> {
    venv_with(venv, base, PIP_PACKAGES)
}

/// A venv on `base` with `packages`, recreated when the list changes.
pub fn venv_with(venv: &Path, base: &Path, packages: &[&str]) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    let stamp = venv.join(".leakprobe-packages");
    let wanted = packages.join("\n");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) && python.exists() {
        return Ok(python);
    }
    eprintln!("xtask: creating the Python venv in {}", venv.display());
    run(Command::new(base).args(["-m", "venv", "--clear"]).arg(venv))?;
    run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"]).args(packages))?;
    fs::write(&stamp, wanted)?;
    Ok(python)
}
