//! Builds the kernel programs (leakprobe-ebpf) for the BPF target and embeds them.
//! Needs nightly with rust-src and bpf-linker on PATH (`cargo xtask setup` installs both).
//! With `AYA_BUILD_SKIP=1` (userspace-only work, unit tests) an empty object is embedded and the
//! loader says so at run time.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = PathBuf::from(env::var("OUT_DIR")?).join("leakprobe");
        fs::write(out, [])?;
        return Ok(());
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "leakprobe-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../leakprobe-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
