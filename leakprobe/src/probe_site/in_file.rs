//! Breakpoint placement for a hooked function of a mapped file: its code read from the very file
//! the uprobe attaches to, the running kernel's emulation, and the attach cookie that tells the
//! kernel programs where the arguments are at the chosen site.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::Path,
};

use leakprobe_common::{cookie, AllocFunction};

use super::{choose, instruction_at, KernelEmulation, LiveImage, ProbeSite};

/// Set (to anything) in leakprobe's environment, every breakpoint goes on its function's entry:
/// to measure what placement saves (docs/overhead.md).
pub const AT_ENTRY_VARIABLE: &str = "LEAKPROBE_PROBE_AT_ENTRY";

/// What the running kernel emulates, from its release (`uname -r`); a release that cannot be
/// read emulates nothing, so every breakpoint stays on its entry and is priced as single-stepped.
pub fn running_kernel() -> KernelEmulation {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (major, minor) = KernelEmulation::parse_release(release.trim()).unwrap_or((0, 0));
    KernelEmulation::for_release(major, minor)
}

/// The site for the function at file offset `entry` of `path`. Addresses are file offsets: a
/// relative branch followed lands at the right offset as long as it stays in the segment, which
/// a function's own prefix does. `live`, the process the file is mapped in, lets a tail call
/// through a function pointer be followed.
pub fn choose_in_file(
    path: &Path,
    entry: u64,
    args: usize,
    kernel: &KernelEmulation,
    live: Option<&dyn LiveImage>,
) -> ProbeSite {
    let file = File::open(path).ok();
    let code = |offset: u64, len: usize| -> Option<Vec<u8>> {
        let mut file = file.as_ref()?;
        file.seek(SeekFrom::Start(offset)).ok()?;
        let mut bytes = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut bytes).ok()?;
        (!bytes.is_empty()).then_some(bytes)
    };
    let mut site = choose(&code, entry, args, kernel, live);
    if std::env::var_os(AT_ENTRY_VARIABLE).is_some() {
        return site.at_entry(entry, instruction_at(&code, entry));
    }
    if site.tail_called {
        site.site_function = live.and_then(|live| live.function_name(site.function_entry));
    }
    site
}

/// The attach cookie of `function`'s probes at `site`.
pub fn attach_cookie(function: AllocFunction, site: &ProbeSite) -> u64 {
    let registers: Vec<u8> = site.args.iter().map(|&register| register as u8).collect();
    cookie::encode(function as u32, &registers, !site.emulated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe_site::Gpr;

    fn site(args: Vec<Gpr>, emulated: bool) -> ProbeSite {
        ProbeSite {
            vaddr: 0x1006,
            function_entry: 0x1000,
            instruction: "js 0x1040".into(),
            emulated,
            args,
            tail_called: false,
            site_function: None,
            fallback: None,
        }
    }

    #[test]
    fn cookie_carries_the_site_registers_and_kind() {
        let c = attach_cookie(AllocFunction::PyObjectRealloc, &site(vec![Gpr::Rbx, Gpr::Rsi], true));
        assert_eq!(cookie::function(c), AllocFunction::PyObjectRealloc as u32);
        assert_eq!((cookie::register(c, 0), cookie::register(c, 1)), (Gpr::Rbx as u8, Gpr::Rsi as u8));
        assert!(!cookie::stepped(c));
        // Arguments where the ABI has them and an emulated site: the plain function number.
        let c = attach_cookie(AllocFunction::Calloc, &site(vec![Gpr::Rdi, Gpr::Rsi], true));
        assert_eq!(c, AllocFunction::Calloc as u64);
        let c = attach_cookie(AllocFunction::Free, &site(vec![Gpr::Rdi], false));
        assert!(cookie::stepped(c));
        assert_eq!(cookie::function(c), AllocFunction::Free as u32);
    }

    #[test]
    fn reads_the_site_from_a_file() {
        // `mov %rdi,%rsi; test %rdi,%rdi; js` as in pyenv's PyObject_Malloc, at file offset 3.
        let path = std::env::temp_dir().join(format!("leakprobe-site-{}", std::process::id()));
        std::fs::write(&path, [0xcc, 0xcc, 0xcc, 0x48, 0x89, 0xfe, 0x48, 0x85, 0xff, 0x78, 0x10, 0xc3]).unwrap();
        let kernel = KernelEmulation::for_release(6, 18);
        let site = choose_in_file(&path, 3, 1, &kernel, None);
        std::fs::remove_file(&path).unwrap();
        assert_eq!((site.vaddr, site.emulated, site.fallback.clone()), (9, true, None), "{site:?}");
        assert_eq!(site.args, vec![Gpr::Rdi]);
        let missing = choose_in_file(Path::new("/nonexistent/leakprobe"), 0, 1, &kernel, None);
        assert!(missing.fallback.is_some() && !missing.emulated);
    }
}
