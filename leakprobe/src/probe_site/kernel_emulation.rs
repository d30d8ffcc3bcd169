//! Which x86-64 instructions the kernel's uprobe code *emulates* (one trap per hit) rather than
//! single-stepping out of line (a second trap; ~15 µs a hit on this VM against ~0.44 µs).
//!
//! Read from `arch/x86/kernel/uprobes.c` (`arch_uprobe_analyze_insn` → `uprobe_init_insn`,
//! `branch_setup_xol_ops`, `push_setup_xol_ops`) and the patches that changed it:
//!
//! | kernel | emulated                                                                              |
//! |--------|---------------------------------------------------------------------------------------|
//! | 3.5    | `nop` (0x90, only 0x66 prefixes before it): `__skip_sstep`                             |
//! | 3.15   | relative branches: `jmp rel8/rel32`, `call rel32`, `jcc rel8/rel32`, none with a 0x66 prefix (Oleg Nesterov's `branch_xol_ops`) |
//! | 4.17   | `push reg`: 0x50–0x57 alone, or with exactly the REX prefix 0x41 (`push %r8`–`%r15`); `push` with any other prefix (0x48, 0x66) is single-stepped (Yonghong Song's `push_xol_ops`) |
//! | 6.16   | the kernel's own NOP encodings `x86_nops[len]`, compared byte for byte (Jiri Olsa, "uprobes/x86: Add support to emulate NOP instructions") |
//! | 6.19   | `insn_is_nop()` (Peter Zijlstra, "x86/insn,uprobes,alternative: Unify insn_is_nop()"): also `nopl /0` in any form, `mov %reg,%reg` of the native size, `lea 0(%reg),%reg`, `jmp +0` |
//!
//! Everything else is single-stepped: `mov`, `test`, `lea`, `sub`, and also `endbr64`
//! (`f3 0f 1e fa`): no version treats it specially, it is neither a branch, a push nor one of the
//! recognised NOPs. `uprobe_init_insn` refuses outright (the attach fails) any instruction with an
//! ES/CS/SS/DS segment or LOCK prefix, which is why the 9–11 byte `cs nopw` forms of `x86_nops`
//! are never emulated. Since 6.18 a 5-byte NOP can further be *optimised* into a call to a
//! trampoline (no trap at all); function entries do not start with one, so that is not modelled.
//!
//! The rule for this table: it may miss an emulated instruction (the site chosen is then merely a
//! later or costlier one) but must never claim one the kernel single-steps, or the budget would be
//! charged a fifth of the real cost. Hence the 6.19 forms are recognised only in part.

use iced_x86::{Code, Instruction, Register};

/// What the running kernel emulates, from its release number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelEmulation {
    pub relative_branches: bool,
    pub push: bool,
    pub nops: NopEmulation,
}

/// How much of the NOP family a kernel emulates; each level includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NopEmulation {
    /// No uprobes at all (before 3.5).
    None,
    /// `nop` (0x90), optionally after 0x66 prefixes.
    OneByte,
    /// Also the exact byte patterns of the kernel's `x86_nops[1..=11]`.
    KernelTable,
    /// Also what `insn_is_nop()` recognises (here: `nopl /0` and `mov %r64,%r64` of one register).
    Recognised,
}

/// `x86_nops[1..=8]` of a 64-bit kernel (`arch/x86/include/asm/nops.h`). Lengths 9–11 carry a
/// 0x2e (CS) prefix, which `uprobe_init_insn` refuses before emulation is considered.
const KERNEL_NOPS: [&[u8]; 8] = [
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

/// Prefixes that make `uprobe_init_insn` refuse the instruction (`is_prefix_bad`).
const REFUSED_PREFIXES: [u8; 5] = [0x26, 0x2e, 0x36, 0x3e, 0xf0];
const LEGACY_PREFIXES: [u8; 11] = [0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x66, 0x67, 0xf0, 0xf2, 0xf3];

impl KernelEmulation {
    /// The emulation of kernel `major.minor`.
    pub fn for_release(major: u32, minor: u32) -> Self {
        let at_least = |maj: u32, min: u32| (major, minor) >= (maj, min);
        let nops = if at_least(6, 19) {
            NopEmulation::Recognised
        } else if at_least(6, 16) {
            NopEmulation::KernelTable
        } else if at_least(3, 5) {
            NopEmulation::OneByte
        } else {
            NopEmulation::None
        };
        KernelEmulation { relative_branches: at_least(3, 15), push: at_least(4, 17), nops }
    }

    /// `major.minor` of a release string as `uname -r` prints it ("6.18.44-fc-v1045").
    pub fn parse_release(release: &str) -> Option<(u32, u32)> {
        let mut parts = release.split(['.', '-']);
        let major = parts.next()?.parse().ok()?;
        let minor_digits: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
        Some((major, minor_digits.parse().ok()?))
    }

    /// Whether a breakpoint on `instruction` (whose encoding is `bytes`) is handled in one trap.
    pub fn emulates(&self, instruction: &Instruction, bytes: &[u8]) -> bool {
        let legacy = bytes.iter().take_while(|b| LEGACY_PREFIXES.contains(b)).count();
        let (prefixes, rest) = bytes.split_at(legacy);
        if prefixes.iter().any(|b| REFUSED_PREFIXES.contains(b)) {
            return false;
        }
        let operand_size_prefix = prefixes.contains(&0x66);
        let one_byte_nop = prefixes.iter().all(|&b| b == 0x66) && rest == [0x90];
        if self.nops >= NopEmulation::OneByte && one_byte_nop {
            return true;
        }
        if self.nops >= NopEmulation::KernelTable && KERNEL_NOPS.contains(&bytes) {
            return true;
        }
        if self.nops >= NopEmulation::Recognised && is_recognised_nop(instruction, bytes) {
            return true;
        }
        let relative_branch =
            instruction.is_jcc_short_or_near() || instruction.is_jmp_short_or_near() || instruction.is_call_near();
        if self.relative_branches && relative_branch && !operand_size_prefix {
            return true;
        }
        let push_encoding = bytes.len() == 1 || (bytes.len() == 2 && bytes[0] == 0x41);
        self.push && instruction.code() == Code::Push_r64 && push_encoding
    }
}

/// The part of 6.19's `insn_is_nop()` this table trusts: `nopl /0` with no REX prefix other than
/// plain ones, and `mov %r64,%r64` (opcode 0x89) from a register to itself.
fn is_recognised_nop(instruction: &Instruction, bytes: &[u8]) -> bool {
    match instruction.code() {
        Code::Nop_rm16 | Code::Nop_rm32 | Code::Nop_rm64 => {
            let opcode = bytes.windows(2).position(|w| w == [0x0f, 0x1f]);
            opcode.and_then(|at| bytes.get(at + 2)).is_some_and(|modrm| (modrm >> 3) & 7 == 0)
        }
        Code::Mov_rm64_r64 => {
            instruction.op0_register() != Register::None && instruction.op0_register() == instruction.op1_register()
        }
        _ => false,
    }
}
