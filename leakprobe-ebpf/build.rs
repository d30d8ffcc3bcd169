// Rebuild the kernel programs when bpf-linker changes (it is the linker of the bpf target).
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
