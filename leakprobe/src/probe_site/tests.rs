use super::*;

/// This machine's kernel (6.18.44).
const KERNEL_6_18: KernelEmulation =
    KernelEmulation { relative_branches: true, push: true, nops: NopEmulation::KernelTable };

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
}

/// A code reader over functions given as (entry, hex bytes).
fn image(functions: &[(u64, &str)]) -> impl Fn(u64, usize) -> Option<Vec<u8>> {
    let functions: Vec<(u64, Vec<u8>)> = functions.iter().map(|(entry, text)| (*entry, hex(text))).collect();
    move |vaddr, len| {
        let (entry, bytes) =
            functions.iter().find(|(entry, bytes)| (*entry..*entry + bytes.len() as u64).contains(&vaddr))?;
        let start = (vaddr - entry) as usize;
        Some(bytes[start..(start + len).min(bytes.len())].to_vec())
    }
}

fn site_on(kernel: &KernelEmulation, function: (u64, &str), args: usize) -> ProbeSite {
    choose(&image(&[function]), function.0, args, kernel, None)
}

/// Asserts an emulated site `offset` bytes into the function, on `instruction`, with `args`.
#[track_caller]
fn assert_site(function: (u64, &str), args: &[Gpr], offset: u64, instruction: &str) {
    let site = site_on(&KERNEL_6_18, function, args.len());
    assert_eq!(site.fallback, None, "{site:?}");
    assert!(site.emulated && !site.tail_called, "{site:?}");
    assert_eq!(site.function_entry, function.0);
    assert_eq!(site.offset_in_function(), offset, "{site:?}");
    assert!(site.instruction.starts_with(instruction), "{site:?}");
    assert_eq!(site.args, args, "{site:?}");
}

/// Asserts the entry is kept because `ender` (at `offset`) ends the prefix first.
#[track_caller]
fn assert_entry_kept(function: (u64, &str), args: &[Gpr], entry_instruction: &str, offset: u64, ender: &str) {
    let site = site_on(&KERNEL_6_18, function, args.len());
    assert_eq!((site.vaddr, site.emulated, site.tail_called), (function.0, false, false), "{site:?}");
    assert!(site.instruction.starts_with(entry_instruction), "{site:?}");
    assert_eq!(site.args, args);
    match site.fallback {
        Some(Fallback::PrefixEnded { vaddr, instruction }) => {
            assert_eq!(vaddr - function.0, offset);
            assert!(instruction.starts_with(ender), "{instruction}");
        }
        other => panic!("expected the prefix to end, got {other:?}"),
    }
}

use Gpr::{Rax, Rdi, Rdx, Rsi};

#[test]
fn libc_malloc_family() {
    assert_site(LIBC_MALLOC, &[Rdi], 0, "push %r12");
    // free opens with `test %rdi,%rdi; je`: the `je` is an emulated branch every call reaches.
    assert_site(LIBC_FREE, &[Rdi], 3, "je");
    assert_site(LIBC_CALLOC, &[Rdi, Rsi], 0, "push %r13");
    assert_site(LIBC_REALLOC, &[Rdi, Rsi], 0, "push %r15");
}

#[test]
fn pyenv_object_allocators() {
    for (malloc, free, realloc, calloc) in [
        (PYENV311_PYOBJECT_MALLOC, PYENV311_PYOBJECT_FREE, PYENV311_PYOBJECT_REALLOC, PYENV311_PYOBJECT_CALLOC),
        (PYENV312_PYOBJECT_MALLOC, PYENV312_PYOBJECT_FREE, PYENV312_PYOBJECT_REALLOC, PYENV312_PYOBJECT_CALLOC),
    ] {
        // `mov %rdi,%rsi; test %rdi,%rdi; js`: the size is in both, the original register is named.
        assert_site(malloc, &[Rdi], 6, "js");
        assert_site(realloc, &[Rdi, Rsi], 6, "js");
        assert_site(calloc, &[Rdi, Rsi], 3, "je");
        // Loads and an indirect jump through the allocator table: nothing emulated to stand on.
        let site = site_on(&KERNEL_6_18, free, 1);
        assert!(
            matches!(&site.fallback, Some(Fallback::PrefixEnded { instruction, .. }) if instruction.starts_with("jmp"))
        );
        assert_eq!((site.vaddr, site.args.as_slice()), (free.0, &[Rdi][..]));
    }
    assert_entry_kept(PYENV311_PYOBJECT_FREE, &[Rdi], "mov %rdi,%rsi", 0xa, "jmp");
    assert_entry_kept(PYENV312_PYOBJECT_FREE, &[Rdi], "mov 0x374819(%rip),%rax", 0x11, "jmp");
}

#[test]
fn pyenv_pymalloc_functions_behind_the_table() {
    // `lea -0x1(%rsi),%rax` first: it writes no argument, so the `push %rbx` after it serves.
    assert_site(PYENV311__PYOBJECT_MALLOC, &[Rdi, Rsi], 4, "push %rbx");
    assert_site(PYENV312__PYOBJECT_MALLOC, &[Rdi, Rsi], 0, "push %rbp");
    assert_site(PYENV311__PYOBJECT_FREE, &[Rdi, Rsi], 3, "je");
    assert_site(PYENV312__PYOBJECT_FREE, &[Rdi, Rsi], 3, "je");
    assert_site(PYENV311__PYOBJECT_REALLOC, &[Rdi, Rsi, Rdx], 0, "push %r13");
    assert_site(PYENV312__PYOBJECT_REALLOC, &[Rdi, Rsi, Rdx], 0, "push %r15");
    assert_site(PYENV311__PYOBJECT_CALLOC, &[Rdi, Rsi, Rdx], 0, "push %rbp");
    assert_site(PYENV312__PYOBJECT_CALLOC, &[Rdi, Rsi, Rdx], 0, "push %r13");
}

#[test]
fn debian_static_python() {
    assert_site(DEBIAN311_PYOBJECT_MALLOC, &[Rdi], 0, "push %rbx");
    // Two loads and a `cmp` (rax, rdx: no argument of free) before the first branch.
    assert_site(DEBIAN311_PYOBJECT_FREE, &[Rdi], 0x14, "jne");
    assert_site(DEBIAN311_PYOBJECT_REALLOC, &[Rdi, Rsi], 0, "push %r13");
    assert_site(DEBIAN311_PYOBJECT_CALLOC, &[Rdi, Rsi], 3, "je");
}

#[test]
fn older_kernels_emulate_less() {
    // 4.16: branches but no push: malloc's first `push` is single-stepped and moves the stack.
    let kernel = KernelEmulation::for_release(4, 16);
    let malloc = site_on(&kernel, LIBC_MALLOC, 1);
    assert!(matches!(malloc.fallback, Some(Fallback::PrefixEnded { vaddr, .. }) if vaddr == LIBC_MALLOC.0));
    assert_eq!(site_on(&kernel, LIBC_FREE, 1).offset_in_function(), 3);
    // 3.14: neither; every site is the entry.
    let kernel = KernelEmulation::for_release(3, 14);
    for function in [LIBC_MALLOC, LIBC_FREE, DEBIAN311_PYOBJECT_FREE, PYENV311__PYOBJECT_MALLOC] {
        let site = site_on(&kernel, function, 1);
        assert!(!site.emulated && site.fallback.is_some() && site.vaddr == function.0, "{site:?}");
    }
}
// First 64 bytes of each function on the development machine (objdump -s -j .text at the symbol's
// address), with that address: real compiler output for the site rules.

// libc 2.36-9+deb12u14 (Debian 12), /lib/x86_64-linux-gnu/libc.so.6, from .dynsym.
const LIBC_MALLOC: (u64, &str) = (
    0x98930,
    "415455534889fb4883ec10803d461b1400000f84f80100004885db0f88fd0100\
     00488d431731ed4883f81f760c4883e0f0488d68ef48c1ed044c8b2508a41300",
);
const LIBC_FREE: (u64, &str) = (
    0x98ef0,
    "4885ff0f84bf00000055488d77f0534883ec18488b1dd69e1300488b47f8648b\
     2ba802755b488b155c9e13006448833a000f8499000000488d3d32ad1300a804",
);
const LIBC_CALLOC: (u64, &str) = (
    0x996e0,
    "41554889f8415455534883ec1848f7e64889c30f90c04885db0f88d90200000f\
     b6c04885c00f85cd020000803d760d1400000f8448020000488b055996130064",
);
const LIBC_REALLOC: (u64, &str) = (
    0x99130,
    "4157415641554154554889f5534889fb4883ec28803d3d131400000f84570100\
     004885ed75224885db0f85c10100004883c4284889ef5b5d415c415d415e415f",
);

// pyenv CPython 3.11.7, /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0: `PyObject_*` from
// .dynsym, the pymalloc functions they reach through the allocator table (`_PyObject_*`) from .symtab.
const PYENV311_PYOBJECT_MALLOC: (u64, &str) = (
    0x1af1e0,
    "4889fe4885ff7810488b3d71d02a00ff2573d02a000f1f0031c0c30f1f440000\
     4885f6741448b8ffffffffffffff7f31d248f7f64839f872174889f24889fe48",
);
const PYENV311__PYOBJECT_MALLOC: (u64, &str) = (
    0x1af820,
    "488d46ff534889f3483dff01000077608d7eff488d1506c82a00c1ef048d043f\
     488b14c2488b72104839f27433488b4208830201488b0848894a084885c97408",
);
const PYENV311_PYOBJECT_FREE: (u64, &str) = (
    0x1af270,
    "4889fe488b3de6cf2a00ff2500d02a008b05d2874000488b159385400085c074\
     58488b35c88740004c8d044049c1e0044901f0eb0c0f1f004883c6304939f074",
);
const PYENV311__PYOBJECT_FREE: (u64, &str) = (
    0x1aede0,
    "4885f6747b4889f1488d15318a3c00534889f048c1e931482500c0ffff488b0c\
     ca4885c9746c4889f248c1ea2281e2ff7f0000488b0cd14885c974564889f289",
);
const PYENV311_PYOBJECT_REALLOC: (u64, &str) = (
    0x1af240,
    "4889f24885f678184889fe488b3d0ed02a00ff2520d02a000f1f840000000000\
     31c0c366662e0f1f84000000000066904889fe488b3de6cf2a00ff2500d02a00",
);
const PYENV311__PYOBJECT_REALLOC: (u64, &str) = (
    0x1af8d0,
    "415541544989fc55534889f34889d64883ec184885db0f843c0100004889da48\
     8d052a7f3c0048c1ea31488b14d04885d20f84e90000004889d848c1e82225ff",
);
const PYENV311_PYOBJECT_CALLOC: (u64, &str) = (
    0x1af200,
    "4885f6741448b8ffffffffffffff7f31d248f7f64839f872174889f24889fe48\
     8b3d3ad02a00ff2544d02a000f1f400031c0c366662e0f1f8400000000006690",
);
const PYENV311__PYOBJECT_CALLOC: (u64, &str) = (
    0x1afaa0,
    "554889d54889f2480fafd5534889f3488d42ff4883ec18483dff01000077718d\
     7aff488d0d77c52a00c1ef048d043f488b04c14c8b40104c39c07434488b4808",
);

// pyenv CPython 3.12.1, /root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0, likewise.
const PYENV312_PYOBJECT_MALLOC: (u64, &str) = (
    0x1cf430,
    "4889fe4885ff7818488b05c1483700488bb8b0000000ffa0b80000000f1f4000\
     31c0c366662e0f1f84000000000066904885f6741448b8ffffffffffffff7f31",
);
const PYENV312__PYOBJECT_MALLOC: (u64, &str) = (
    0x1cfdb0,
    "55534889f34883ec0866488d3d2f413700666648e81788f3ff488b00488b6810\
     488b05293f3700483b68307409f685b006000020754a488d43ff483dff010000",
);
const PYENV312_PYOBJECT_FREE: (u64, &str) = (
    0x1cf4e0,
    "488b05194837004889fe488bb8b0000000ffa0d0000000660f1f840000000000\
     488b05f9473700483b78307409f687b00600002075778b8780110000488b97b8",
);
const PYENV312__PYOBJECT_FREE: (u64, &str) = (
    0x1cef80,
    "4885f60f84b7000000415455534889f366488d3d584f3700666648e84096f3ff\
     4c8b25594d3700488b00488b6810493b6c2430740df685b0060000200f85a600",
);
const PYENV312_PYOBJECT_REALLOC: (u64, &str) = (
    0x1cf4b0,
    "4889f24885f67820488b05414837004889fe488b88b0000000488b80c8000000\
     4889cfffe00f1f0031c0c30f1f440000488b05194837004889fe488bb8b00000",
);
const PYENV312__PYOBJECT_REALLOC: (u64, &str) = (
    0x1cfec0,
    "41574989d74156415541544989fc55534883ec284885f60f84230200004889f3\
     66488d3d08403700666648e8f086f3ff488b0d093e3700488b00488b4010483b",
);
const PYENV312_PYOBJECT_CALLOC: (u64, &str) = (
    0x1cf460,
    "4885f6741448b8ffffffffffffff7f31d248f7f64839f87227488b0580483700\
     4889f24889fe488b88b0000000488b80c00000004889cfffe00f1f8000000000",
);
const PYENV312__PYOBJECT_CALLOC: (u64, &str) = (
    0x1cfc70,
    "41554989f541544c0fafea4989d4554889f5534883ec0866488d3d6142370066\
     6648e84989f3ff488b00488b5810488b055b403700483b58307409f683b00600",
);

// Debian python3.11 3.11.2-6+deb12u6, /usr/bin/python3.11 (static libpython, stripped: from .dynsym).
const DEBIAN311_PYOBJECT_MALLOC: (u64, &str) = (
    0x4fb350,
    "534885ff0f8865adf2ff488b05e7eb45004889fb488b3dd5eb4500483d50b44f\
     000f85c3000000488d43ff483dff010000777d8d7bffc1ef048d043f488b14c5",
);
const DEBIAN311_PYOBJECT_FREE: (u64, &str) = (
    0x500950,
    "488b0509964500488b15e2954500483de00f50000f85b40100004885ff0f84aa\
     0100004889f84889fe5348c1e8314881e600c0ffff488b14c50046a8004885d2",
);
const DEBIAN311_PYOBJECT_REALLOC: (u64, &str) = (
    0x561ac0,
    "41554154555341524885f60f886b35eeff488b0580843f004c8b2561843f0048\
     89fb483d000c51000f85090100004885ff0f84be0000004889d84881e700c0ff",
);
const DEBIAN311_PYOBJECT_CALLOC: (u64, &str) = (
    0x57f5c0,
    "4885f6741848b8ffffffffffffff7f31d248f7f64839f80f82aa18edff4889f2\
     4889fe488b3d56a93d00ff2560a93d00e9fb00000066662e0f1f840000000000",
);

/// A synthetic function at 0x1000.
fn synthetic(text: &str, args: usize) -> ProbeSite {
    site_on(&KERNEL_6_18, (0x1000, text), args)
}

#[test]
fn a_stack_move_before_the_push_keeps_the_entry() {
    // sub $0x8,%rsp; push %rbx: a return probe after the sub would miss the return address.
    let site = synthetic("4883ec08 53", 1);
    assert_eq!(site.vaddr, 0x1000);
    assert!(matches!(site.fallback, Some(Fallback::PrefixEnded { vaddr: 0x1000, .. })), "{site:?}");
    // mov %rdi,-0x8(%rsp); push %rbx: a write to the stack ends the prefix too.
    let site = synthetic("48897c24f8 53", 1);
    assert!(matches!(site.fallback, Some(Fallback::PrefixEnded { vaddr: 0x1000, .. })), "{site:?}");
}

#[test]
fn an_argument_overwritten_before_the_site_keeps_the_entry() {
    // xor %edi,%edi; push %rbx
    let site = synthetic("31ff 53", 1);
    assert_eq!(site.vaddr, 0x1000);
    assert!(matches!(site.fallback, Some(Fallback::ArgumentLost { arg: 0, vaddr: 0x1000, .. })), "{site:?}");
    // The same function is fine for a probe that reads no argument.
    assert_eq!(synthetic("31ff 53", 0).vaddr, 0x1002);
    // A 32-bit mov is no copy: mov %edi,%eax; xor %edi,%edi; push %rbx
    let site = synthetic("89f8 31ff 53", 1);
    assert!(matches!(site.fallback, Some(Fallback::ArgumentLost { arg: 0, vaddr: 0x1002, .. })), "{site:?}");
}

#[test]
fn an_argument_copied_before_being_overwritten_is_found_in_its_copy() {
    // mov %rdi,%rax; xor %edi,%edi; push %rbx
    let site = synthetic("4889f8 31ff 53", 2);
    assert_eq!((site.offset_in_function(), site.args.as_slice()), (5, &[Rax, Rsi][..]));
}

#[test]
fn an_indirect_jump_ends_the_prefix() {
    // mov %rdi,%rsi; jmp *%rax
    let site = synthetic("4889fe ffe0", 1);
    assert!(matches!(site.fallback, Some(Fallback::PrefixEnded { vaddr: 0x1003, .. })), "{site:?}");
    assert_eq!(site.instruction, "mov %rdi,%rsi");
}

#[test]
fn the_scan_is_bounded() {
    // 20 × mov %rdx,%rax: the instruction bound.
    let site = synthetic(&"4889d0".repeat(20), 1);
    assert_eq!(site.fallback, Some(Fallback::BoundReached));
    // 10 × mov 0x0(%rip),%rax (7 bytes): the byte bound cuts the tenth.
    let site = synthetic(&"488b0500000000".repeat(10), 1);
    assert_eq!(site.fallback, Some(Fallback::BoundReached));
}

#[test]
fn a_direct_tail_call_is_its_own_site_when_emulated_and_followed_when_not() {
    // 0x1000: mov %rdi,%rsi; jmp 0x1010 — 0x1010: mov 0x0(%rip),%rdi; push %rbx
    let code = image(&[(0x1000, "4889fe eb0b"), (0x1010, "488b3d00000000 53")]);
    let site = choose(&code, 0x1000, 1, &KERNEL_6_18, None);
    assert_eq!((site.vaddr, site.tail_called, site.args.as_slice()), (0x1003, false, &[Rdi][..]));
    // As if relative jumps were single-stepped: the site moves into the target, after rdi is
    // overwritten there, with the argument still in rsi.
    let no_branches = KernelEmulation { relative_branches: false, ..KERNEL_6_18 };
    let site = choose(&code, 0x1000, 1, &no_branches, None);
    assert_eq!((site.vaddr, site.function_entry, site.tail_called), (0x1017, 0x1010, true), "{site:?}");
    assert_eq!((site.offset_in_function(), site.args.as_slice()), (7, &[Rsi][..]));
    assert_eq!(site.instruction, "push %rbx");
}

#[test]
fn endbr64_and_nops_before_a_push() {
    // endbr64 is single-stepped: the push after it is the site.
    assert_eq!(synthetic("f30f1efa 55", 1).offset_in_function(), 4);
    // nopl 0x0(%rax,%rax,1) is the kernel's 5-byte NOP: emulated since 6.16, not before.
    assert_eq!(synthetic("0f1f440000 53", 1).offset_in_function(), 0);
    let site = site_on(&KernelEmulation::for_release(6, 15), (0x1000, "0f1f440000 53"), 1);
    assert_eq!(site.offset_in_function(), 5);
}

#[test]
fn unreadable_and_undecodable_code_keep_the_entry() {
    let site = choose(&|_, _| None, 0x2000, 1, &KERNEL_6_18, None);
    assert_eq!((site.vaddr, site.fallback), (0x2000, Some(Fallback::Unreadable { vaddr: 0x2000 })));
    assert_eq!(synthetic("06 909090", 1).fallback, Some(Fallback::Undecodable { vaddr: 0x1000 }));
}

/// Whether `kernel` emulates the one instruction `text` encodes.
fn emulated(kernel: &KernelEmulation, text: &str) -> bool {
    let bytes = hex(text);
    let instruction = Decoder::with_ip(64, &bytes, 0, DecoderOptions::NONE).decode();
    assert_eq!(instruction.len(), bytes.len(), "{text} is one instruction");
    kernel.emulates(&instruction, &bytes)
}

#[test]
fn kernel_emulation_table() {
    let k = KERNEL_6_18;
    assert_eq!(KernelEmulation::for_release(6, 18), k);
    assert!(emulated(&k, "53") && emulated(&k, "4154"), "push %rbx, push %r12");
    assert!(!emulated(&k, "4853") && !emulated(&k, "6653"), "push with REX.W or 0x66 is single-stepped");
    assert!(emulated(&k, "74 10") && emulated(&k, "0f84 00010000") && emulated(&k, "e8 00000000"));
    assert!(!emulated(&k, "66e9 0000"), "a branch with 0x66 is refused by branch_setup_xol_ops");
    assert!(!emulated(&k, "ffe0") && !emulated(&k, "c3"), "indirect jumps and ret are single-stepped");
    assert!(emulated(&k, "90") && emulated(&k, "6690"));
    assert!(!emulated(&k, "f30f1efa"), "endbr64");
    assert!(!emulated(&k, "2e0f1f840000000000"), "a CS prefix is refused outright");
    assert!(!emulated(&k, "4889ff"), "mov %rdi,%rdi counts as a NOP only from 6.19");
    let k = KernelEmulation::for_release(6, 19);
    assert!(emulated(&k, "4889ff") && emulated(&k, "0f1f4000") && !emulated(&k, "4889fe"));
    assert!(!KernelEmulation::for_release(4, 16).push && KernelEmulation::for_release(4, 17).push);
    assert!(!KernelEmulation::for_release(3, 14).relative_branches);
}

#[test]
fn kernel_release_parsing() {
    assert_eq!(KernelEmulation::parse_release("6.18.44-fc-v1045"), Some((6, 18)));
    assert_eq!(KernelEmulation::parse_release("5.4.0-150-generic"), Some((5, 4)));
    assert_eq!(KernelEmulation::parse_release("6.19-rc1"), Some((6, 19)));
    assert_eq!(KernelEmulation::parse_release("linux"), None);
}

#[test]
fn pt_regs_offsets() {
    assert_eq!((Gpr::R15.pt_regs_offset(), Gpr::Rdi.pt_regs_offset(), Gpr::Rsp.pt_regs_offset()), (0, 112, 152));
    assert_eq!(Gpr::R9.to_string(), "%r9");
}

#[test]
fn moved_back_to_the_entry_for_measurements() {
    let code = image(&[LIBC_FREE]);
    let site = choose(&code, LIBC_FREE.0, 1, &KERNEL_6_18, None);
    assert_eq!(site.offset_in_function(), 3);
    let entry = site.at_entry(LIBC_FREE.0, instruction_at(&code, LIBC_FREE.0));
    assert_eq!((entry.vaddr, entry.emulated, entry.fallback), (LIBC_FREE.0, false, Some(Fallback::EntryAsked)));
    assert!(entry.instruction.starts_with("test %rdi,%rdi"), "{}", entry.instruction);
    // A site on the entry already stays as it was.
    let malloc = choose(&image(&[LIBC_MALLOC]), LIBC_MALLOC.0, 1, &KERNEL_6_18, None);
    assert_eq!(malloc.clone().at_entry(LIBC_MALLOC.0, String::new()), malloc);
}

/// A process image for the indirect tail calls: the file loaded at `BIAS`, 8-byte words of its
/// memory, and the file's function entries.
struct FakeProcess {
    words: Vec<(u64, u64)>,
    functions: Vec<(u64, &'static str)>,
}

const BIAS: u64 = 0x7f12_0000_0000;

impl LiveImage for FakeProcess {
    fn runtime_address(&self, file_address: u64) -> Option<u64> {
        Some(file_address + BIAS)
    }
    fn read_u64(&self, address: u64) -> Option<u64> {
        self.words.iter().find(|(at, _)| *at == address).map(|(_, value)| *value)
    }
    fn function_entry(&self, pointer: u64) -> Option<u64> {
        let entry = pointer.checked_sub(BIAS)?;
        self.functions.iter().any(|(at, _)| *at == entry).then_some(entry)
    }
    fn function_name(&self, entry: u64) -> Option<String> {
        self.functions.iter().find(|(at, _)| *at == entry).map(|(_, name)| name.to_string())
    }
}

#[test]
fn a_tail_call_through_the_allocator_table_is_followed_in_the_live_process() {
    // 3.11: `mov %rdi,%rsi; mov 0x2acfe6(%rip),%rdi; jmp *0x2ad000(%rip)` — the slot is
    // `_PyObject.free`, at 0x1af280 + 0x2ad000, and holds `_PyObject_Free` as loaded.
    let code = image(&[PYENV311_PYOBJECT_FREE, PYENV311__PYOBJECT_FREE]);
    let process = FakeProcess {
        words: vec![(0x45c280 + BIAS, PYENV311__PYOBJECT_FREE.0 + BIAS)],
        functions: vec![(PYENV311__PYOBJECT_FREE.0, "_PyObject_Free")],
    };
    let site = choose(&code, PYENV311_PYOBJECT_FREE.0, 1, &KERNEL_6_18, Some(&process));
    assert_eq!((site.function_entry, site.offset_in_function()), (PYENV311__PYOBJECT_FREE.0, 3), "{site:?}");
    assert!(site.emulated && site.tail_called && site.fallback.is_none(), "{site:?}");
    // The pointer was copied to %rsi before %rdi got the allocator's context.
    assert_eq!(site.args, vec![Rsi]);

    // 3.12: `mov 0x374819(%rip),%rax` loads `&_PyRuntime` from the GOT, then `jmp *0xd0(%rax)`.
    let code = image(&[PYENV312_PYOBJECT_FREE, PYENV312__PYOBJECT_FREE]);
    let runtime = 0x7f12_4000_0000;
    let process = FakeProcess {
        words: vec![(0x543d00 + BIAS, runtime), (runtime + 0xd0, PYENV312__PYOBJECT_FREE.0 + BIAS)],
        functions: vec![(PYENV312__PYOBJECT_FREE.0, "_PyObject_Free")],
    };
    let site = choose(&code, PYENV312_PYOBJECT_FREE.0, 1, &KERNEL_6_18, Some(&process));
    assert_eq!((site.function_entry, site.offset_in_function()), (PYENV312__PYOBJECT_FREE.0, 3), "{site:?}");
    assert!(site.emulated && site.tail_called, "{site:?}");
    assert_eq!(site.args, vec![Rsi]);
}

#[test]
fn a_table_pointer_that_is_no_function_entry_keeps_the_entry() {
    let code = image(&[PYENV311_PYOBJECT_FREE, PYENV311__PYOBJECT_FREE]);
    // The slot points 1 byte into `_PyObject_Free` (a racy or foreign value): a breakpoint there
    // could split an instruction, so the entry is kept.
    let process = FakeProcess {
        words: vec![(0x45c280 + BIAS, PYENV311__PYOBJECT_FREE.0 + 1 + BIAS)],
        functions: vec![(PYENV311__PYOBJECT_FREE.0, "_PyObject_Free")],
    };
    let site = choose(&code, PYENV311_PYOBJECT_FREE.0, 1, &KERNEL_6_18, Some(&process));
    assert_eq!((site.vaddr, site.emulated, site.tail_called), (PYENV311_PYOBJECT_FREE.0, false, false));
    assert!(
        matches!(&site.fallback, Some(Fallback::PrefixEnded { instruction, .. }) if instruction.starts_with("jmp"))
    );
    // An unreadable slot likewise.
    let process = FakeProcess { words: vec![], functions: process.functions };
    let site = choose(&code, PYENV311_PYOBJECT_FREE.0, 1, &KERNEL_6_18, Some(&process));
    assert_eq!(site.vaddr, PYENV311_PYOBJECT_FREE.0);
}
