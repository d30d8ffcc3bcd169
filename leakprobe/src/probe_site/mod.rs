//! Breakpoint placement: where in a hooked function a uprobe costs one trap instead of two.
//!
//! A uprobe on an instruction the kernel emulates (`push`, a relative branch, a NOP; see
//! [`KernelEmulation`]) costs ~0.44 µs a hit here; on any other it is single-stepped out of line,
//! ~15 µs. So the breakpoint goes on the first emulated instruction of the function's straight-line
//! prefix instead of its entry, when that is as good as the entry:
//! - every call reaches it: no branch, call, return or indirect jump before it (the branch ending
//!   the prefix may itself be the site: the breakpoint fires before it executes);
//! - a return probe at the site still finds the return address at `(%rsp)`: no instruction before
//!   it moves the stack pointer or writes to memory addressed by it (a `push` *as* the site is fine);
//! - every argument wanted is still in some register: arguments are followed through
//!   `mov %r64,%r64` copies, and a site after the only copy of one is overwritten is not used.
//!
//! A direct `jmp rel` ending the prefix (a tail call) is followed into its target once, when it is
//! not itself emulated (kernels before 3.15): the site then belongs to the tail-called function,
//! which other callers may also reach, so a site in the hooked function is always preferred. So is
//! an indirect `jmp *mem` whose pointer the live process holds ([`indirect`]: pyenv's
//! `PyObject_Free` reaches `_PyObject_Free` through the allocator table). The
//! scan is bounded ([`MAX_INSTRUCTIONS`], [`MAX_BYTES`] per function); anything else falls back to
//! the entry with a [`Fallback`] saying why.
//!
//! Sites found on this machine's binaries (kernel 6.18; the bytes are in this module's tests):
//!
//! | function (binary)                                   | site   | instruction          | args at the site      |
//! |-----------------------------------------------------|--------|----------------------|-----------------------|
//! | `malloc` (libc 2.36-9+deb12u14)                     | +0     | `push %r12`          | size=rdi              |
//! | `free` (libc)                                       | +3     | `je` (after `test %rdi,%rdi`) | ptr=rdi      |
//! | `calloc` (libc)                                     | +0     | `push %r13`          | n=rdi, size=rsi       |
//! | `realloc` (libc)                                    | +0     | `push %r15`          | ptr=rdi, size=rsi     |
//! | `PyObject_Malloc` (pyenv 3.11.7, 3.12.1)            | +6     | `js` (after `mov %rdi,%rsi; test`) | size=rdi |
//! | `PyObject_Calloc` (pyenv 3.11.7, 3.12.1)            | +3     | `je`                 | n=rdi, size=rsi       |
//! | `PyObject_Realloc` (pyenv 3.11.7, 3.12.1)           | +6     | `js`                 | ptr=rdi, size=rsi     |
//! | `PyObject_Free` (pyenv 3.11.7)                      | `_PyObject_Free`+3 | `je`, through +0xa `jmpq *0x2ad000(%rip)` (entry without the live process: `mov %rdi,%rsi`) | ptr=rsi |
//! | `PyObject_Free` (pyenv 3.12.1)                      | `_PyObject_Free`+3 | `je`, through +0x11 `jmpq *0xd0(%rax)` (entry without it: `mov 0x374819(%rip),%rax`) | ptr=rsi |
//! | `_PyObject_Malloc` (pyenv 3.11.7)                   | +4     | `push %rbx`          | ctx=rdi, size=rsi     |
//! | `_PyObject_Malloc` (pyenv 3.12.1)                   | +0     | `push %rbp`          | ctx=rdi, size=rsi     |
//! | `_PyObject_Free` (pyenv 3.11.7, 3.12.1)             | +3     | `je`                 | ctx=rdi, ptr=rsi      |
//! | `_PyObject_Realloc` (pyenv 3.11.7, 3.12.1)          | +0     | `push %r13` / `push %r15` | ctx=rdi, ptr=rsi, size=rdx |
//! | `_PyObject_Calloc` (pyenv 3.11.7, 3.12.1)           | +0     | `push %rbp` / `push %r13` | ctx=rdi, n=rsi, size=rdx |
//! | `PyObject_Malloc` (Debian /usr/bin/python3.11 3.11.2-6+deb12u6) | +0 | `push %rbx`   | size=rdi              |
//! | `PyObject_Free` (Debian)                            | +0x14  | `jne` (after two loads and a `cmp`) | ptr=rdi |
//! | `PyObject_Realloc` (Debian)                         | +0     | `push %r13`          | ptr=rdi, size=rsi     |
//! | `PyObject_Calloc` (Debian)                          | +3     | `je`                 | n=rdi, size=rsi       |
//!
//! pyenv's `PyObject_Free` reaches `_PyObject_Free` through the allocator table (`jmp *...`):
//! with the live process to read the table from, its site is `_PyObject_Free`'s +3 `je`, with the
//! pointer in `%rsi`. That function also serves `PyMem_Free` (pymalloc is the `PyMem_*` domain's
//! allocator too), whose frees the kernel then sees as well: a free of a block no hooked call
//! allocated finds nothing in the live table, so only the hits cost more.

mod in_file;
mod indirect;
mod kernel_emulation;
mod live;
#[cfg(test)]
mod tests;

pub use in_file::{attach_cookie, choose_in_file, running_kernel};
pub use indirect::LiveImage;
pub use kernel_emulation::{KernelEmulation, NopEmulation};
pub use live::MappedFile;

use std::fmt;

use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction,
    InstructionInfoFactory, OpAccess, OpKind, Register,
};

/// Instructions decoded per function before the scan gives up.
pub const MAX_INSTRUCTIONS: usize = 16;
/// Bytes read per function: the prefix searched lies within them.
pub const MAX_BYTES: usize = 64;
/// Tail calls followed (direct, or through a pointer the live process holds).
pub const MAX_TAIL_CALLS: usize = 1;

/// A general-purpose register of x86-64, in hardware encoding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gpr {
    Rax,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

const ALL_GPRS: [Gpr; 16] = [
    Gpr::Rax,
    Gpr::Rcx,
    Gpr::Rdx,
    Gpr::Rbx,
    Gpr::Rsp,
    Gpr::Rbp,
    Gpr::Rsi,
    Gpr::Rdi,
    Gpr::R8,
    Gpr::R9,
    Gpr::R10,
    Gpr::R11,
    Gpr::R12,
    Gpr::R13,
    Gpr::R14,
    Gpr::R15,
];

/// The System V x86-64 integer argument registers, in order.
pub const ARGUMENT_REGISTERS: [Gpr; 6] = [Gpr::Rdi, Gpr::Rsi, Gpr::Rdx, Gpr::Rcx, Gpr::R8, Gpr::R9];

impl Gpr {
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 16] = [
            "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
            "r15",
        ];
        NAMES[self as usize]
    }

    /// Byte offset of this register in the x86-64 `struct pt_regs` a uprobe program receives
    /// (uapi `asm/ptrace.h`), so the kernel side can read an argument wherever the site has it.
    pub fn pt_regs_offset(self) -> usize {
        const OFFSETS: [usize; 16] = [80, 88, 96, 40, 152, 32, 104, 112, 72, 64, 56, 48, 24, 16, 8, 0];
        OFFSETS[self as usize]
    }

    fn of(register: Register) -> Option<Gpr> {
        let full = register.full_register();
        let index = (full as u32).checked_sub(Register::RAX as u32)?;
        ALL_GPRS.get(index as usize).copied().filter(|_| full.is_gpr64())
    }
}

impl fmt::Display for Gpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.name())
    }
}

/// Where the breakpoint for one hooked function goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSite {
    /// Address of the breakpoint, in the address space `code` was read in.
    pub vaddr: u64,
    /// Entry of the function the site lies in: the hooked one, or the target of the direct `jmp`
    /// followed (a tail call; the scan cannot tell a jump within the same function from one, the
    /// caller can by the symbol covering the target).
    pub function_entry: u64,
    /// The instruction under the breakpoint in AT&T syntax, for the report.
    pub instruction: String,
    /// Whether the kernel emulates it (one trap a hit) rather than single-stepping it.
    pub emulated: bool,
    /// For each argument asked for, the register holding it when the breakpoint fires.
    pub args: Vec<Gpr>,
    /// Whether the site lies in a function the hooked one tail-calls.
    pub tail_called: bool,
    /// The name of that function, when known (set by `choose_in_file`).
    pub site_function: Option<String>,
    /// Set when the site is the entry because no better one was found, saying why.
    pub fallback: Option<Fallback>,
}

impl ProbeSite {
    /// Offset of the site from the entry of the function it lies in.
    pub fn offset_in_function(&self) -> u64 {
        self.vaddr - self.function_entry
    }
}

/// Why the breakpoint stays on the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// No code could be read at this address.
    Unreadable { vaddr: u64 },
    /// The bytes at this address are no instruction.
    Undecodable { vaddr: u64 },
    /// This instruction, not emulated, ends the straight-line prefix (a branch, or it moves or
    /// writes the stack).
    PrefixEnded { vaddr: u64, instruction: String },
    /// This instruction overwrites the last copy of argument `arg` (0-based).
    ArgumentLost { arg: usize, vaddr: u64, instruction: String },
    /// [`MAX_INSTRUCTIONS`] or [`MAX_BYTES`] reached without an emulated instruction.
    BoundReached,
    /// The entry was asked for (`LEAKPROBE_PROBE_AT_ENTRY`, to measure what placement saves).
    EntryAsked,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fallback::Unreadable { vaddr } => write!(f, "no code readable at {vaddr:#x}"),
            Fallback::Undecodable { vaddr } => write!(f, "no instruction decodes at {vaddr:#x}"),
            Fallback::PrefixEnded { vaddr, instruction } => {
                write!(f, "no emulated instruction before `{instruction}` at {vaddr:#x} ends the prefix")
            }
            Fallback::ArgumentLost { arg, vaddr, instruction } => {
                write!(f, "`{instruction}` at {vaddr:#x} overwrites argument {arg} before any emulated instruction")
            }
            Fallback::BoundReached => {
                write!(f, "no emulated instruction within {MAX_INSTRUCTIONS} instructions / {MAX_BYTES} bytes")
            }
            Fallback::EntryAsked => write!(f, "the entry was asked for (LEAKPROBE_PROBE_AT_ENTRY)"),
        }
    }
}

/// Chooses the breakpoint for the function at `entry_vaddr` whose first `args` integer arguments
/// (at most 6) the probe reads. `code(vaddr, len)` returns up to `len` bytes of code at `vaddr`
/// (fewer near the end of a segment), or `None` when nothing is mapped there. With `live`, the
/// process the code runs in, a tail call through a function pointer is followed too.
pub fn choose(
    code: &dyn Fn(u64, usize) -> Option<Vec<u8>>,
    entry_vaddr: u64,
    args: usize,
    kernel: &KernelEmulation,
    live: Option<&dyn LiveImage>,
) -> ProbeSite {
    let args = args.min(ARGUMENT_REGISTERS.len());
    let mut scan = Scan::new(args);
    let mut function_entry = entry_vaddr;
    let mut tail_calls = 0;
    let fallback = 'functions: loop {
        let Some(bytes) = code(function_entry, MAX_BYTES) else {
            break Fallback::Unreadable { vaddr: function_entry };
        };
        let mut decoder = Decoder::with_ip(64, &bytes, function_entry, DecoderOptions::NONE);
        for _ in 0..MAX_INSTRUCTIONS {
            if !decoder.can_decode() {
                break;
            }
            let start = decoder.position();
            let instruction = decoder.decode();
            if instruction.is_invalid() {
                // Cut short by the end of the bytes read: the bound, not bad code.
                if decoder.last_error() == DecoderError::NoMoreBytes {
                    break 'functions Fallback::BoundReached;
                }
                break 'functions Fallback::Undecodable { vaddr: instruction.ip() };
            }
            let encoding = &bytes[start..decoder.position()];
            if scan.entry_text.is_none() {
                scan.entry_text = Some(att(&instruction));
            }
            if kernel.emulates(&instruction, encoding) {
                return ProbeSite {
                    vaddr: instruction.ip(),
                    function_entry,
                    instruction: att(&instruction),
                    emulated: true,
                    args: scan.argument_registers(),
                    tail_called: function_entry != entry_vaddr,
                    site_function: None,
                    fallback: None,
                };
            }
            // The breakpoint would sit after this instruction: it must leave the prefix intact.
            let ends_prefix = || Fallback::PrefixEnded { vaddr: instruction.ip(), instruction: att(&instruction) };
            match instruction.flow_control() {
                FlowControl::Next => {}
                FlowControl::UnconditionalBranch
                    if instruction.is_jmp_short_or_near() && tail_calls < MAX_TAIL_CALLS =>
                {
                    tail_calls += 1;
                    function_entry = instruction.near_branch_target();
                    continue 'functions;
                }
                FlowControl::IndirectBranch if tail_calls < MAX_TAIL_CALLS => {
                    match scan.loaded.jump_target(&instruction, live) {
                        Some(target) => {
                            tail_calls += 1;
                            function_entry = target;
                            continue 'functions;
                        }
                        None => break 'functions ends_prefix(),
                    }
                }
                _ => break 'functions ends_prefix(),
            }
            if scan.moves_stack(&instruction) {
                break 'functions ends_prefix();
            }
            if let Some(arg) = scan.execute(&instruction, live) {
                break 'functions Fallback::ArgumentLost {
                    arg,
                    vaddr: instruction.ip(),
                    instruction: att(&instruction),
                };
            }
        }
        break Fallback::BoundReached;
    };
    ProbeSite {
        vaddr: entry_vaddr,
        function_entry: entry_vaddr,
        instruction: scan.entry_text.unwrap_or_default(),
        emulated: false,
        args: ARGUMENT_REGISTERS[..args].to_vec(),
        tail_called: false,
        site_function: None,
        fallback: Some(fallback),
    }
}

impl ProbeSite {
    /// This site moved back to the entry of the hooked function: what a breakpoint costs without
    /// placement. The entry is emulated only when it was the site already (the scan stops at the
    /// first emulated instruction).
    pub fn at_entry(self, entry_vaddr: u64, entry_instruction: String) -> ProbeSite {
        if self.vaddr == entry_vaddr {
            return self;
        }
        ProbeSite {
            vaddr: entry_vaddr,
            function_entry: entry_vaddr,
            instruction: entry_instruction,
            emulated: false,
            args: ARGUMENT_REGISTERS[..self.args.len()].to_vec(),
            tail_called: false,
            site_function: None,
            fallback: Some(Fallback::EntryAsked),
        }
    }
}

/// The instruction at `vaddr` in AT&T syntax (empty when none decodes there).
pub fn instruction_at(code: &dyn Fn(u64, usize) -> Option<Vec<u8>>, vaddr: u64) -> String {
    let Some(bytes) = code(vaddr, MAX_BYTES) else { return String::new() };
    let instruction = Decoder::with_ip(64, &bytes, vaddr, DecoderOptions::NONE).decode();
    if instruction.is_invalid() {
        return String::new();
    }
    att(&instruction)
}

/// What the scan knows after the instructions before the current one have executed.
struct Scan {
    args: usize,
    /// For each register (by [`Gpr`] index), the argument it holds.
    holds: [Option<usize>; 16],
    /// What registers hold that was loaded from the process (a function table's address).
    loaded: indirect::Loaded,
    info: InstructionInfoFactory,
    /// The entry's instruction, for a fallback's report line.
    entry_text: Option<String>,
}

impl Scan {
    fn new(args: usize) -> Self {
        let mut holds = [None; 16];
        for (arg, register) in ARGUMENT_REGISTERS[..args].iter().enumerate() {
            holds[*register as usize] = Some(arg);
        }
        Scan { args, holds, loaded: indirect::Loaded::default(), info: InstructionInfoFactory::new(), entry_text: None }
    }

    /// Each argument's register, preferring the one it arrived in.
    fn argument_registers(&self) -> Vec<Gpr> {
        (0..self.args)
            .map(|arg| {
                let original = ARGUMENT_REGISTERS[arg];
                if self.holds[original as usize] == Some(arg) {
                    return original;
                }
                let copy = ALL_GPRS.iter().find(|r| self.holds[**r as usize] == Some(arg));
                *copy.expect("a lost argument ends the scan")
            })
            .collect()
    }

    /// Whether the instruction moves the stack pointer or writes memory addressed by it.
    fn moves_stack(&mut self, instruction: &Instruction) -> bool {
        let info = self.info.info(instruction);
        let rsp_written = info
            .used_registers()
            .iter()
            .any(|used| Gpr::of(used.register()) == Some(Gpr::Rsp) && writes(used.access()));
        let stack_written =
            info.used_memory().iter().any(|memory| Gpr::of(memory.base()) == Some(Gpr::Rsp) && writes(memory.access()));
        rsp_written || stack_written
    }

    /// Applies the instruction's register writes; returns the argument left in no register.
    fn execute(&mut self, instruction: &Instruction, live: Option<&dyn LiveImage>) -> Option<usize> {
        let copy = register_copy(instruction);
        let mut written = Vec::new();
        if let Some((to, from)) = copy {
            self.holds[to as usize] = self.holds[from as usize];
        } else {
            let info = self.info.info(instruction);
            for used in info.used_registers().iter().filter(|used| writes(used.access())) {
                if let Some(register) = Gpr::of(used.register()) {
                    self.holds[register as usize] = None;
                    written.push(register);
                }
            }
        }
        self.loaded.update(instruction, copy, &written, live);
        (0..self.args).find(|arg| !self.holds.contains(&Some(*arg)))
    }
}

fn writes(access: OpAccess) -> bool {
    matches!(access, OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite)
}

/// `mov %src,%dst` of full 64-bit registers, as `(dst, src)`.
fn register_copy(instruction: &Instruction) -> Option<(Gpr, Gpr)> {
    let is_mov = matches!(instruction.code(), Code::Mov_r64_rm64 | Code::Mov_rm64_r64);
    let registers = instruction.op0_kind() == OpKind::Register && instruction.op1_kind() == OpKind::Register;
    if !(is_mov && registers) {
        return None;
    }
    Some((Gpr::of(instruction.op0_register())?, Gpr::of(instruction.op1_register())?))
}

fn att(instruction: &Instruction) -> String {
    let mut formatter = GasFormatter::new();
    // As objdump prints it: lower-case hex, displacements relative to %rip.
    formatter.options_mut().set_uppercase_hex(false);
    formatter.options_mut().set_rip_relative_addresses(true);
    formatter.options_mut().set_branch_leading_zeros(false);
    let mut text = String::new();
    formatter.format(instruction, &mut text);
    text
}
