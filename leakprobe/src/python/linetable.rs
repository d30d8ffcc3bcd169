//! Source lines from CPython line tables, decoded the way the interpreter itself does
//! (`PyCode_Addr2Line`). The table bytes come from a live process and may be garbage or torn by a
//! concurrent write, so decoding is a single bounded forward pass that never panics: anything
//! that does not parse is "no line" rather than an error.

use super::layout::LineTableFormat;

/// Bytes per `_Py_CODEUNIT`: 3.10 tables count bytes, 3.11+ tables count code units.
const CODE_UNIT: u64 = 2;

/// Source line of the instruction at `instruction` (in code units = 2-byte units, i.e. byte offset / 2) of a code object,
/// from its line table in `format` (the interpreter's `Layout::linetable`). None when the table says "no line" for that
/// instruction, when the offset is past the table, or when the table is malformed (garbage read from a live process must
/// never panic, loop forever or allocate unboundedly).
pub fn line_for_instruction(
    format: LineTableFormat,
    linetable: &[u8],
    first_line: u32,
    instruction: u64,
) -> Option<u32> {
    match format {
        LineTableFormat::BytePairs => line_3_10(linetable, first_line, instruction.checked_mul(CODE_UNIT)?),
        LineTableFormat::Locations => line_location_table(linetable, first_line, instruction),
    }
}

/// Lines are `int` in CPython; a computed line outside u32 only comes from a bad table.
fn to_line(line: i64) -> Option<u32> {
    u32::try_from(line).ok()
}

/// 3.10 `co_linetable` (`Objects/lnotab_notes.txt`): (byte_delta u8, line_delta i8) pairs, each a
/// range of `byte_delta` bytes; `line_delta == -128` marks a range without a line. Zero-width
/// entries (emitted for line jumps beyond ±127) only move the running line: CPython's
/// `PyLineTable_NextAddressRange` skips them, so the line shown is that of the entry with width.
fn line_3_10(table: &[u8], first_line: u32, address: u64) -> Option<u32> {
    let mut line = i64::from(first_line);
    let mut end = 0u64;
    for pair in table.chunks_exact(2) {
        let (width, delta) = (pair[0], pair[1] as i8);
        let has_line = delta != -128;
        if has_line {
            line += i64::from(delta);
        }
        end += u64::from(width);
        if width != 0 && address < end {
            return if has_line { to_line(line) } else { None };
        }
    }
    None
}

/// Location table kinds (`Objects/locations.md`, `PY_CODE_LOCATION_INFO_*`).
const NO_LOCATION: u8 = 15;
const LONG_FORM: u8 = 14;
const NO_COLUMNS: u8 = 13;
const ONE_LINE_FIRST: u8 = 10;

/// 3.11+ location table. Each entry starts with a byte that has bit 7 set (payload bytes never
/// do): `code = (b >> 3) & 15`, `len = (b & 7) + 1` code units. The entry holding `instruction` is
/// the first whose end is past it (`ar_end > addrq`, as in `_PyCode_CheckLineNumber`).
fn line_location_table(table: &[u8], first_line: u32, instruction: u64) -> Option<u32> {
    let mut line = i64::from(first_line);
    let mut end = 0u64;
    let mut pos = 0;
    while let Some(&head) = table.get(pos) {
        if head & 0x80 == 0 {
            return None; // not at an entry boundary: not a location table
        }
        let next = table[pos + 1..].iter().position(|b| b & 0x80 != 0).map_or(table.len(), |i| pos + 1 + i);
        let payload = &table[pos + 1..next];
        let code = (head >> 3) & 15;
        let delta = match code {
            LONG_FORM | NO_COLUMNS => read_svarint(payload)?,
            ONE_LINE_FIRST..=12 => i64::from(code - ONE_LINE_FIRST),
            _ => 0, // short forms stay on the line; "no location" does not move it
        };
        line = line.checked_add(delta)?;
        end += u64::from(head & 7) + 1;
        if instruction < end {
            return if code == NO_LOCATION { None } else { to_line(line) };
        }
        pos = next;
    }
    None
}

/// Unsigned varint: 6-bit chunks, least significant first, 0x40 = "more follows".
/// CPython stores `unsigned int`s, so at most 6 chunks (36 bits) are meaningful.
fn read_varint(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().take(6).enumerate() {
        value |= u64::from(b & 0x3f) << (6 * i);
        if b & 0x40 == 0 {
            return Some(value);
        }
    }
    None
}

/// Signed varint: the unsigned value's LSB is the sign, the rest the magnitude.
fn read_svarint(bytes: &[u8]) -> Option<i64> {
    let raw = read_varint(bytes)?;
    let magnitude = (raw >> 1) as i64;
    Some(if raw & 1 != 0 { -magnitude } else { magnitude })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        io::Write,
        process::{Command, Stdio},
    };

    use proptest::prelude::*;

    use super::*;
    use crate::python::layouts;

    /// The line as CPython 3.`minor` would compute it; None for an unsupported version.
    fn line_in_version(minor: u32, linetable: &[u8], first_line: u32, instruction: u64) -> Option<u32> {
        line_for_instruction(layouts::tables(minor)?.linetable(), linetable, first_line, instruction)
    }

    /// A location-table entry in one of the five forms, for encoding tables by hand.
    #[derive(Debug, Clone)]
    enum Entry {
        NoLocation { units: u8 },
        Long { delta: i32, end_delta: u32, col: u32, end_col: u32, units: u8 },
        NoColumns { delta: i32, units: u8 },
        OneLine { delta: u8, col: u8, end_col: u8, units: u8 },
        Short { code: u8, columns: u8, units: u8 },
    }

    fn push_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x40 {
            out.push(0x40 | (v & 0x3f) as u8);
            v >>= 6;
        }
        out.push(v as u8);
    }

    fn push_svarint(out: &mut Vec<u8>, v: i32) {
        let magnitude = u64::from(v.unsigned_abs());
        push_varint(out, if v < 0 { (magnitude << 1) | 1 } else { magnitude << 1 });
    }

    fn encode(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        let head = |code: u8, units: u8| 0x80 | (code << 3) | (units - 1);
        for e in entries {
            match *e {
                Entry::NoLocation { units } => out.push(head(15, units)),
                Entry::Long { delta, end_delta, col, end_col, units } => {
                    out.push(head(14, units));
                    push_svarint(&mut out, delta);
                    for v in [end_delta, col + 1, end_col + 1] {
                        push_varint(&mut out, u64::from(v));
                    }
                }
                Entry::NoColumns { delta, units } => {
                    out.push(head(13, units));
                    push_svarint(&mut out, delta);
                }
                Entry::OneLine { delta, col, end_col, units } => out.extend([head(10 + delta, units), col, end_col]),
                Entry::Short { code, columns, units } => out.extend([head(code, units), columns]),
            }
        }
        out
    }

    /// Reference: the line of every code unit covered by `entries`, in order.
    fn expand(entries: &[Entry], first_line: u32) -> Vec<Option<u32>> {
        let mut line = i64::from(first_line);
        let mut lines = Vec::new();
        for e in entries {
            let (delta, units, has_line) = match *e {
                Entry::NoLocation { units } => (0, units, false),
                Entry::Long { delta, units, .. } | Entry::NoColumns { delta, units } => (i64::from(delta), units, true),
                Entry::OneLine { delta, units, .. } => (i64::from(delta), units, true),
                Entry::Short { units, .. } => (0, units, true),
            };
            line += delta;
            let value = if has_line { u32::try_from(line).ok() } else { None };
            lines.extend(std::iter::repeat(value).take(usize::from(units)));
        }
        lines
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let units = 1u8..=8;
        prop_oneof![
            units.clone().prop_map(|units| Entry::NoLocation { units }),
            (-5000i32..5000, 0u32..300, 0u32..5000, 0u32..5000, units.clone()).prop_map(
                |(delta, end_delta, col, end_col, units)| Entry::Long { delta, end_delta, col, end_col, units }
            ),
            (-300i32..300, units.clone()).prop_map(|(delta, units)| Entry::NoColumns { delta, units }),
            (0u8..=2, 0u8..128, 0u8..128, units.clone()).prop_map(|(delta, col, end_col, units)| Entry::OneLine {
                delta,
                col,
                end_col,
                units
            }),
            (0u8..=9, 0u8..128, units).prop_map(|(code, columns, units)| Entry::Short { code, columns, units }),
        ]
    }

    #[test]
    fn location_table_forms_by_hand() {
        let entries = [
            Entry::Short { code: 0, columns: 0x12, units: 1 },         // line 100
            Entry::OneLine { delta: 2, col: 4, end_col: 9, units: 3 }, // 102
            Entry::NoLocation { units: 2 },                            // none
            Entry::NoColumns { delta: -1, units: 1 },                  // 101
            Entry::Long { delta: 500, end_delta: 3, col: 200, end_col: 90, units: 8 }, // 601
            Entry::OneLine { delta: 0, col: 1, end_col: 2, units: 1 }, // 601
        ];
        let table = encode(&entries);
        let want = expand(&entries, 100);
        assert_eq!(want.len(), 16);
        for (i, w) in want.iter().enumerate() {
            assert_eq!(line_in_version(11, &table, 100, i as u64), *w, "unit {i}");
        }
        assert_eq!(line_in_version(12, &table, 100, 0), Some(100));
        assert_eq!(line_in_version(13, &table, 100, 1), Some(102));
        assert_eq!(line_in_version(14, &table, 100, 4), None);
        assert_eq!(line_in_version(11, &table, 100, 6), Some(101));
        assert_eq!(line_in_version(11, &table, 100, 7), Some(601));
        assert_eq!(line_in_version(11, &table, 100, 15), Some(601));
        assert_eq!(line_in_version(11, &table, 100, 16), None, "past the table");
        assert_eq!(line_in_version(9, &table, 100, 0), None, "unknown version");
        // A varint cut off by the end of the table, and a table not starting at an entry.
        assert_eq!(line_in_version(11, &[0x80 | (13 << 3), 0x40], 1, 0), None);
        assert_eq!(line_in_version(11, &[0x01, 0x80], 1, 0), None);
    }

    #[test]
    fn table_3_10_by_hand() {
        // (6 bytes, +0) (0, +127) (254, +73) (254, 0) (4, -128) (2, -3)
        let table = [6u8, 0, 0, 127, 254, 73, 254, 0, 4, 0x80, 2, 0xfd];
        let line = |i| line_in_version(10, &table, 10, i);
        assert_eq!(line(0), Some(10));
        assert_eq!(line(2), Some(10));
        assert_eq!(line(3), Some(210), "zero-width entry's delta carried into the next range");
        // Instruction ranges: 0..3 line 10, 3..130 and 130..257 line 210, 257..259 none, 259..260 line 207.
        assert_eq!(line(130), Some(210), "a split long range keeps its line");
        assert_eq!(line(256), Some(210));
        assert_eq!(line(257), None, "-128: no line");
        assert_eq!(line(259), Some(207), "no-line entries do not move the line");
        assert_eq!(line(260), None, "past the table");
        assert_eq!(line_in_version(10, &[], 1, 0), None);
        assert_eq!(line_in_version(10, &table, 10, u64::MAX), None);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(table in proptest::collection::vec(any::<u8>(), 0..512), instruction in any::<u64>(),
                                first_line in any::<u32>(), minor in 9u32..16) {
            let _ = line_in_version(minor, &table, first_line, instruction);
            let _ = line_in_version(minor, &table, first_line, instruction % 600);
        }

        #[test]
        fn valid_location_tables_match_reference(entries in proptest::collection::vec(entry(), 0..64), first_line in 0u32..100_000) {
            let table = encode(&entries);
            let want = expand(&entries, first_line);
            for (i, w) in want.iter().enumerate() {
                prop_assert_eq!(line_in_version(11, &table, first_line, i as u64), *w);
            }
            prop_assert_eq!(line_in_version(13, &table, first_line, want.len() as u64), None);
        }

        #[test]
        fn valid_3_10_tables_match_reference(pairs in proptest::collection::vec((0u8..=254, any::<i8>()), 0..64), first_line in 0u32..100_000) {
            let table: Vec<u8> = pairs.iter().flat_map(|&(w, d)| [w, d as u8]).collect();
            let mut line = i64::from(first_line);
            let mut by_byte = Vec::new();
            for &(width, delta) in &pairs {
                let value = if delta == -128 { None } else { line += i64::from(delta); u32::try_from(line).ok() };
                by_byte.extend(std::iter::repeat(value).take(usize::from(width)));
            }
            for i in 0..by_byte.len() / 2 {
                prop_assert_eq!(line_in_version(10, &table, first_line, i as u64), by_byte[2 * i]);
            }
            prop_assert_eq!(line_in_version(10, &table, first_line, by_byte.len().div_ceil(2) as u64), None);
        }
    }

    /// Lists every code object in the sample (recursively through co_consts) with the line that
    /// `co_lines()` gives each code unit (-1: none).
    const DRIVER: &str = r#"
import sys
top = compile(sys.stdin.read(), "<sample>", "exec")
def walk(co):
    yield co
    for c in co.co_consts:
        if hasattr(c, "co_code"):
            yield from walk(c)
for co in walk(top):
    units = len(co.co_code) // 2
    lines = [-1] * units
    for start, end, line in co.co_lines():
        for b in range(start, min(end, 2 * units)):
            if b % 2 == 0:
                lines[b // 2] = -1 if line is None else line
    print(co.co_name, co.co_firstlineno, co.co_linetable.hex() or "-", " ".join(map(str, lines)))
"#;

    /// Functions that make line tables interesting: multi-line expressions, loops jumping far
    /// back, handlers, comprehensions, decorators, big line gaps and >254-byte single lines.
    fn sample_source() -> String {
        let mut s = String::from(
            r#"import functools
def deco(f):
    @functools.wraps(f)
    def wrapper(*a, **k):
        return f(*a, **k)
    return wrapper

@deco
def multi_line(a, b):
    total = (a +
             b *
             2)
    result = max(
        a,
        b,
    )
    return [x * 2
            for x in range(total)
            if x % 3], {k: v for k, v in zip(a, b)}, (y for y in b), lambda q: q + 1

def loops(n):
    acc = 0
    for i in range(n):
        while acc < i:
            acc += 1
        else:
            acc -= 1
    return acc

def handlers(x):
    try:
        y = 1 / x
    except ZeroDivisionError as e:
        y = None
    except (TypeError, ValueError):
        raise
    else:
        y += 1
    finally:
        x = 0
    with open(x) as f:
        pass
    match y:
        case [1, *rest]:
            return rest
        case {"k": v}:
            return v
    return y

class Outer:
    async def method(self, other):
        async for item in other:
            await item
        return self

def far_lines(a):
    x = a
"#,
        );
        s.push_str(&"\n".repeat(400));
        s.push_str("    for i in range(a):\n");
        s.push_str(&"\n".repeat(300));
        s.push_str("        x += i\n");
        let args = vec!["a"; 300].join(", ");
        s.push_str(&format!("    return max({args})\n"));
        s
    }

    #[test]
    fn agrees_with_cpython_co_lines() {
        let source = sample_source();
        for (minor, python) in crate::python::test_pythons::one_per_minor() {
            let mut child = Command::new(&python)
                .args(["-c", DRIVER])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("run python");
            child.stdin.take().unwrap().write_all(source.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{} failed", python.display());
            let text = String::from_utf8(out.stdout).unwrap();
            let (mut code_objects, mut units_checked) = (0, 0);
            for row in text.lines() {
                let mut f = row.splitn(4, ' ');
                let (name, first, hex) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
                let first_line: u32 = first.parse().unwrap();
                let table: Vec<u8> = if hex == "-" {
                    Vec::new()
                } else {
                    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
                };
                let lines: Vec<i64> = f.next().unwrap_or("").split_whitespace().map(|l| l.parse().unwrap()).collect();
                for (unit, &want) in lines.iter().enumerate() {
                    let want = u32::try_from(want).ok();
                    let got = line_in_version(minor, &table, first_line, unit as u64);
                    assert_eq!(got, want, "3.{minor} {name} (first line {first_line}) unit {unit}");
                }
                assert_eq!(line_in_version(minor, &table, first_line, lines.len() as u64 + (1 << 20)), None);
                code_objects += 1;
                units_checked += lines.len();
            }
            assert!(code_objects >= 10, "3.{minor}: only {code_objects} code objects"); // 3.12+ inlines comprehensions
            eprintln!("3.{minor}: {code_objects} code objects, {units_checked} code units agree with co_lines()");
        }
    }
}
