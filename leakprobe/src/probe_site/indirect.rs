//! Following a tail call through a function pointer. pyenv's `PyObject_Free` is three instructions
//! ending in `jmp *_PyObject.free(%rip)` (3.11) or, after loading `&_PyRuntime` from the GOT,
//! `jmp *0xd0(%rax)` (3.12): nothing before the jump is emulated, so its only site is its
//! single-stepped entry (~19 µs a hit, the dearest breakpoint of a full recording). The function
//! the pointer names (`_PyObject_Free`) has an emulated instruction 3 bytes in. The pointer is
//! data of the live process (relocated at load, and what `PyMem_SetAllocator` last set), so it is
//! read there, with `process_vm_readv`, and followed only to the first byte of a function of the
//! same file: a breakpoint anywhere else could split an instruction.

use iced_x86::{Code, Instruction, OpKind, Register};

use super::Gpr;

/// The live process the scanned file is mapped in. Addresses of the file are those `choose`
/// decodes at (file offsets, for a mapped file); runtime addresses are the process's.
pub trait LiveImage {
    /// The runtime address of the file's address `file_address` (code or data, as a `%rip`-relative
    /// operand of the scanned code computes it).
    fn runtime_address(&self, file_address: u64) -> Option<u64>;
    /// 8 bytes of the process at runtime address `address`.
    fn read_u64(&self, address: u64) -> Option<u64>;
    /// The file's address of the function that starts at runtime address `pointer`, if one of the
    /// file's functions does.
    fn function_entry(&self, pointer: u64) -> Option<u64>;
    /// The name of the function starting at the file's address `entry`, for the report.
    fn function_name(&self, entry: u64) -> Option<String>;
}

/// Pointers the scan has loaded into registers: `mov disp(%rip),%r64` reads them from the process.
#[derive(Default)]
pub(super) struct Loaded([Option<u64>; 16]);

impl Loaded {
    /// After `instruction` has run: a register it loads from `(%rip)` holds what the process
    /// holds there; any other register it writes (`written`) holds nothing known; a register
    /// copy copies what is known.
    pub(super) fn update(
        &mut self,
        instruction: &Instruction,
        copy: Option<(Gpr, Gpr)>,
        written: &[Gpr],
        live: Option<&dyn LiveImage>,
    ) {
        if let Some((to, from)) = copy {
            self.0[to as usize] = self.0[from as usize];
            return;
        }
        for register in written {
            self.0[*register as usize] = None;
        }
        let is_load = instruction.code() == Code::Mov_r64_rm64 && instruction.op1_kind() == OpKind::Memory;
        if let (true, Some(live), Some(to)) = (is_load, live, Gpr::of(instruction.op0_register())) {
            self.0[to as usize] = rip_relative(instruction)
                .and_then(|address| live.runtime_address(address))
                .and_then(|address| live.read_u64(address));
        }
    }

    /// The file's address of the function an indirect `jmp *mem` goes to, when its memory operand
    /// is `disp(%rip)` or `disp(%reg)` with the register's value known, and the pointer there is
    /// a function of the file.
    pub(super) fn jump_target(&self, instruction: &Instruction, live: Option<&dyn LiveImage>) -> Option<u64> {
        let live = live?;
        if instruction.code() != Code::Jmp_rm64 || instruction.op0_kind() != OpKind::Memory {
            return None;
        }
        if instruction.memory_index() != Register::None {
            return None;
        }
        let slot = match rip_relative(instruction) {
            Some(address) => live.runtime_address(address)?,
            None => {
                let base = self.0[Gpr::of(instruction.memory_base())? as usize]?;
                base.wrapping_add(instruction.memory_displacement64())
            }
        };
        live.function_entry(live.read_u64(slot)?)
    }
}

/// The address of a `disp(%rip)` memory operand (no index), in the scanned file's addresses.
fn rip_relative(instruction: &Instruction) -> Option<u64> {
    (instruction.is_ip_rel_memory_operand() && instruction.memory_index() == Register::None)
        .then(|| instruction.ip_rel_memory_address())
}
