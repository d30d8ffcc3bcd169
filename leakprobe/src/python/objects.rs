//! Reading `str`, `bytes` and code objects out of a live CPython. Every pointer and length comes
//! from a process that keeps running while we read, so each value is checked (lengths bounded,
//! bit flags consistent, CPython's trailing NUL present) and anything odd yields `None`.

use super::{
    layout::{BytesLayout, ObjectLayout, StrLayout},
    memory::{ReadMemory, MAX_READ},
};

/// Longest `str` we decode, in characters: names and paths are short, garbage lengths are not.
pub const MAX_STR_CHARS: u64 = 64 * 1024;

/// Longest line table we copy (the real ones are a few KiB even for huge functions).
pub const MAX_LINETABLE: usize = MAX_READ;

/// The parts of `PyASCIIObject.state` we use. GIL builds 3.10–3.14 share the bit positions:
/// interned:2 (bits 0–1), kind:3 (2–4), compact:1 (5), ascii:1 (6); bit 7 is `ready` on
/// 3.10/3.11 and `statically_allocated` on 3.12+. Bits 8–31 are an unnamed `:24` that CPython
/// never clears (live objects show junk there), so they are never tested. Free-threaded builds
/// widen `interned` to a byte (and move every field), so they need a different layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StrState {
    /// Bytes per character: 1, 2 or 4 (0 = legacy `wchar_t` string on ≤3.11).
    kind: u32,
    compact: bool,
    ascii: bool,
}

fn decode_state(state: u32) -> StrState {
    StrState { kind: (state >> 2) & 7, compact: state & (1 << 5) != 0, ascii: state & (1 << 6) != 0 }
}

fn at(base: u64, offset: u64) -> Option<u64> {
    base.checked_add(offset)
}

/// A compact `str` (ASCII or latin-1/UCS-2/UCS-4). Legacy (non-compact) strings, which only old C
/// extension APIs create, are `None`. Lone surrogates (legal in Python strs, e.g. from
/// `surrogateescape` file names) become U+FFFD.
pub fn read_str(mem: &impl ReadMemory, layout: &StrLayout, address: u64) -> Option<String> {
    // `length` is a Py_ssize_t: a negative one reads as a huge u64 and is refused here too.
    let length = mem.read_u64(at(address, layout.length)?).ok()?;
    if length > MAX_STR_CHARS {
        return None;
    }
    let state = decode_state(mem.read_u32(at(address, layout.state)?).ok()?);
    if !state.compact || !matches!(state.kind, 1 | 2 | 4) || (state.ascii && state.kind != 1) {
        return None;
    }
    let data = at(address, if state.ascii { layout.ascii_data } else { layout.compact_data })?;
    let kind = state.kind as usize;
    // One character more: CPython always NUL-terminates compact strings, a cheap garbage check.
    let raw = mem.read_vec(data, (length as usize + 1) * kind).ok()?;
    let (text, terminator) = raw.split_at(length as usize * kind);
    if terminator.iter().any(|&b| b != 0) {
        return None;
    }
    match (state.ascii, kind) {
        (true, _) => text.is_ascii().then(|| text.iter().map(|&b| char::from(b)).collect()),
        (false, 1) => Some(text.iter().map(|&b| char::from(b)).collect()),
        (false, 2) => Some(
            text.chunks_exact(2)
                .map(|c| char::from_u32(u32::from(u16::from_le_bytes([c[0], c[1]]))).unwrap_or('\u{FFFD}'))
                .collect(),
        ),
        _ => text
            .chunks_exact(4)
            .map(|c| match u32::from_le_bytes([c[0], c[1], c[2], c[3]]) {
                v if v > 0x10_FFFF => None,
                v => Some(char::from_u32(v).unwrap_or('\u{FFFD}')),
            })
            .collect(),
    }
}

/// The contents of a `bytes` object of at most `max_len` bytes (and at most `MAX_READ`).
pub fn read_bytes(mem: &impl ReadMemory, layout: &BytesLayout, address: u64, max_len: usize) -> Option<Vec<u8>> {
    let size = usize::try_from(mem.read_u64(at(address, layout.size)?).ok()?).ok()?;
    if size > max_len.min(MAX_READ - 1) {
        return None;
    }
    // `ob_sval` holds size + 1 bytes, the last always NUL.
    let mut data = mem.read_vec(at(address, layout.data)?, size + 1).ok()?;
    if data.pop() != Some(0) {
        return None;
    }
    Some(data)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeInfo {
    /// `co_qualname` (3.11+), else `co_name`.
    pub qualname: String,
    pub filename: String,
    pub first_line: u32,
    /// `co_linetable` bytes, decoded by `linetable::line_for_instruction`.
    pub linetable: Vec<u8>,
}

/// Names, file, first line and line table of the code object at `address`.
pub fn read_code(mem: &impl ReadMemory, layout: &ObjectLayout, address: u64) -> Option<CodeInfo> {
    let pointer = |offset: u64| mem.read_u64(at(address, offset)?).ok();
    // `co_firstlineno` is a C int; negative means garbage.
    let code = &layout.code;
    let first_line = mem.read_u32(at(address, code.firstlineno)?).ok()?;
    if first_line > i32::MAX as u32 {
        return None;
    }
    let filename = read_str(mem, &layout.str, pointer(code.filename)?)?;
    let qualname = code
        .qualname
        .and_then(|offset| read_str(mem, &layout.str, pointer(offset)?))
        .or_else(|| read_str(mem, &layout.str, pointer(code.name)?))?;
    let linetable = read_bytes(mem, &layout.bytes, pointer(code.linetable)?, MAX_LINETABLE)?;
    Some(CodeInfo { qualname, filename, first_line, linetable })
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
    };

    use proptest::prelude::*;

    use super::*;
    use crate::python::{
        layouts,
        memory::RemoteMemory,
        memory::SliceMemory,
        test_pythons::{one_per_minor as test_interpreters, KillOnDrop},
    };

    const BASE: u64 = 0x10_000;

    /// Lays out a compact str at BASE the way CPython does: header, data, NUL.
    fn str_object(layout: &StrLayout, length: u64, state: u32, data: &[u8]) -> Vec<u8> {
        let header = if state & (1 << 6) != 0 { layout.ascii_data } else { layout.compact_data };
        let mut obj = vec![0u8; header as usize];
        obj[16..24].copy_from_slice(&length.to_le_bytes());
        obj[32..36].copy_from_slice(&state.to_le_bytes());
        obj.extend_from_slice(data);
        obj.extend_from_slice(&[0; 4]);
        obj
    }

    /// state for a compact string of `kind`, interned (bits 0–1 = 1), ASCII or not.
    fn state(kind: u32, ascii: bool) -> u32 {
        1 | (kind << 2) | (1 << 5) | (u32::from(ascii) << 6)
    }

    #[test]
    fn every_kind_by_hand() {
        for minor in [10, 11, 12, 13, 14] {
            let l = layouts::objects(minor).unwrap().str;
            let read = |obj: Vec<u8>| read_str(&SliceMemory { base: BASE, bytes: &obj }, &l, BASE);
            assert_eq!(read(str_object(&l, 5, state(1, true), b"hello")).as_deref(), Some("hello"));
            assert_eq!(read(str_object(&l, 0, state(1, true), b"")).as_deref(), Some(""));
            assert_eq!(read(str_object(&l, 4, state(1, false), b"caf\xe9")).as_deref(), Some("café"));
            let ucs2: Vec<u8> = [0x3a9u16, 0x4e2d, 0xdc80].iter().flat_map(|c| c.to_le_bytes()).collect();
            assert_eq!(read(str_object(&l, 3, state(2, false), &ucs2)).as_deref(), Some("Ω中\u{FFFD}"));
            let ucs4: Vec<u8> = [0x1f40du32, 0x41].iter().flat_map(|c| c.to_le_bytes()).collect();
            assert_eq!(read(str_object(&l, 2, state(4, false), &ucs4)).as_deref(), Some("🐍A"));
            // Garbage: non-ASCII byte in an ASCII str, missing NUL, code point past U+10FFFF,
            // legacy (non-compact), kind 3, ASCII flag with kind 2, huge and negative lengths.
            assert_eq!(read(str_object(&l, 2, state(1, true), b"a\xff")), None);
            assert_eq!(read(str_object(&l, 2, state(1, true), b"abc")), None);
            assert_eq!(read(str_object(&l, 1, state(4, false), &0x11_0000u32.to_le_bytes())), None);
            assert_eq!(read(str_object(&l, 2, state(1, true) & !(1 << 5), b"ab")), None);
            assert_eq!(read(str_object(&l, 1, state(3, false), b"abc")), None);
            assert_eq!(read(str_object(&l, 1, state(2, true), b"ab")), None);
            assert_eq!(read(str_object(&l, 1 << 40, state(1, true), b"ab")), None);
            assert_eq!(read(str_object(&l, u64::MAX, state(1, true), b"ab")), None);
        }
        assert_eq!(layouts::objects(9), None);
        assert_eq!(layouts::objects(15), None);
    }

    #[test]
    fn bytes_and_code_by_hand() {
        let l = layouts::objects(12).unwrap();
        // Code object at BASE, then a str "f.py" at +0x100, "Q.f" at +0x200, bytes at +0x300.
        let mut mem = vec![0u8; 0x400];
        mem[68..72].copy_from_slice(&7u32.to_le_bytes());
        for (offset, target) in [(112, 0x100), (120, 0x200), (128, 0x200), (136, 0x300)] {
            mem[offset..offset + 8].copy_from_slice(&(BASE + target).to_le_bytes());
        }
        let put = |mem: &mut Vec<u8>, at: usize, obj: &[u8]| mem[at..at + obj.len()].copy_from_slice(obj);
        put(&mut mem, 0x100, &str_object(&l.str, 4, state(1, true), b"f.py"));
        put(&mut mem, 0x200, &str_object(&l.str, 3, state(1, true), b"Q.f"));
        put(&mut mem, 0x300 + 16, &3u64.to_le_bytes());
        put(&mut mem, 0x300 + 32, &[0x80, 0x00, 0xff, 0]);
        let slice = SliceMemory { base: BASE, bytes: &mem };
        let code = read_code(&slice, &l, BASE).unwrap();
        assert_eq!(
            code,
            CodeInfo { qualname: "Q.f".into(), filename: "f.py".into(), first_line: 7, linetable: vec![0x80, 0, 0xff] }
        );
        assert_eq!(read_bytes(&slice, &l.bytes, BASE + 0x300, 2), None, "longer than max_len");
        put(&mut mem, 0x300 + 16, &u64::MAX.to_le_bytes());
        assert_eq!(read_bytes(&SliceMemory { base: BASE, bytes: &mem }, &l.bytes, BASE + 0x300, usize::MAX), None);
        put(&mut mem, 0x300 + 16, &(1u64 << 30).to_le_bytes());
        assert_eq!(read_bytes(&SliceMemory { base: BASE, bytes: &mem }, &l.bytes, BASE + 0x300, usize::MAX), None);
        put(&mut mem, 68, &(-1i32).to_le_bytes());
        assert_eq!(read_code(&SliceMemory { base: BASE, bytes: &mem }, &l, BASE), None);
        assert_eq!(read_code(&SliceMemory { base: BASE, bytes: &mem }, &l, u64::MAX - 8), None);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024), offset in 0u64..1100, minor in 10u32..=14) {
            let l = layouts::objects(minor).unwrap();
            let mem = SliceMemory { base: BASE, bytes: &bytes };
            let _ = read_str(&mem, &l.str, BASE + offset);
            let _ = read_bytes(&mem, &l.bytes, BASE + offset, usize::MAX);
            let _ = read_code(&mem, &l, BASE + offset);
        }
    }

    /// Prints object addresses and what they hold (text as UTF-8 hex behind an `h`), then waits.
    const SCRIPT: &str = r#"
import sys
src = '''
class Outer:
    def method(self):
        return 1

def café():
    x = 1
    return x

def outer():
    def inner():
        return 3
    return inner
'''
ns = {}
exec(compile(src, "/tmp/leakprobe_sample_é.py", "exec"), ns)
h = lambda b: "h" + b.hex()
for f in [ns["Outer"].method, ns["café"], ns["outer"](), ns["outer"]]:
    c = f.__code__
    print("code", id(c), h(getattr(c, "co_qualname", c.co_name).encode()), h(c.co_filename.encode()),
          c.co_firstlineno, h(c.co_linetable))
keep = ["some ascii str", "", "café ünïcode", "Ωmega ∑ 中文", "emoji 🐍 ok", "x" * 5000, "ÿ" + str(len(sys.argv))]
for s in keep:
    top = max(map(ord, s), default=0)
    kind = 1 if top < 256 else 2 if top < 65536 else 4
    print("str", id(s), h(s.encode()), kind, int(top < 128))
blobs = [b"bytes\x00\xff", b"", bytes(range(256)) * 10]
for b in blobs:
    print("bytes", id(b), h(b))
print("ready", flush=True)
sys.stdin.read()
"#;

    fn unhex(field: &str) -> Vec<u8> {
        let hex = field.strip_prefix('h').expect("h-prefixed hex");
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn reads_live_interpreters() {
        for (minor, python) in test_interpreters() {
            let mut child = KillOnDrop(
                Command::new(&python)
                    .args(["-c", SCRIPT])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
            let mem = RemoteMemory { pid: child.0.id() };
            let layout = layouts::objects(minor).unwrap();
            let (mut codes, mut strs, mut blobs) = (0, 0, 0);
            for line in BufReader::new(child.0.stdout.take().unwrap()).lines() {
                let line = line.unwrap();
                let f: Vec<&str> = line.split(' ').collect();
                if f[0] == "ready" {
                    break;
                }
                let address: u64 = f[1].parse().unwrap();
                match f[0] {
                    "code" => {
                        let want = CodeInfo {
                            qualname: String::from_utf8(unhex(f[2])).unwrap(),
                            filename: String::from_utf8(unhex(f[3])).unwrap(),
                            first_line: f[4].parse().unwrap(),
                            linetable: unhex(f[5]),
                        };
                        assert_eq!(read_code(&mem, &layout, address).as_ref(), Some(&want), "3.{minor}");
                        codes += 1;
                    }
                    "str" => {
                        let raw_state = mem.read_u32(address + layout.str.state).unwrap();
                        let s = decode_state(raw_state);
                        let want = StrState { kind: f[3].parse().unwrap(), compact: true, ascii: f[4] == "1" };
                        assert_eq!(s, want, "3.{minor} state {raw_state:#x}");
                        let text = String::from_utf8(unhex(f[2])).unwrap();
                        assert_eq!(read_str(&mem, &layout.str, address), Some(text.clone()), "3.{minor}");
                        eprintln!(
                            "3.{minor} str state {raw_state:#06x} kind {} ascii {} {:?}",
                            s.kind,
                            s.ascii,
                            text.chars().take(12).collect::<String>()
                        );
                        strs += 1;
                    }
                    "bytes" => {
                        assert_eq!(read_bytes(&mem, &layout.bytes, address, 1 << 16), Some(unhex(f[2])), "3.{minor}");
                        assert_eq!(
                            read_bytes(&mem, &layout.bytes, address, 1),
                            if f[2].len() <= 3 { Some(unhex(f[2])) } else { None }
                        );
                        blobs += 1;
                    }
                    other => panic!("unexpected line {other}"),
                }
            }
            assert_eq!((codes, strs, blobs), (4, 7, 3), "3.{minor}: the script did not report everything");
            eprintln!("3.{minor}: {codes} code objects, {strs} strs, {blobs} bytes read live");
        }
    }
}
