//! `/proc/PID/maps`, parsed in one place: what is mapped where, from which file.

use std::{fs, io};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `r-xp` and the like.
    pub perms: String,
    /// Offset in the mapped file.
    pub offset: u64,
    pub inode: u64,
    /// The pathname column with " (deleted)" taken off: a file ("/usr/lib/libc.so.6", spaces
    /// kept), a pseudo-name ("[vdso]"), or None for anonymous memory.
    pub path: Option<String>,
    /// The file was deleted (or replaced) since it was mapped.
    pub deleted: bool,
}

impl Mapping {
    pub fn is_executable(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }

    /// A mapped file (not anonymous memory, not a `[pseudo]` name).
    pub fn file(&self) -> Option<&str> {
        self.path.as_deref().filter(|p| p.starts_with('/'))
    }

    pub fn contains(&self, address: u64) -> bool {
        self.start <= address && address < self.end
    }

    /// The entry's name in `/proc/PID/map_files/`.
    pub fn map_files_name(&self) -> String {
        format!("{:x}-{:x}", self.start, self.end)
    }
}

/// Every well-formed line of `text` (anything else is skipped).
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

/// "start-end perms offset dev inode   pathname"; the pathname may contain spaces, so the five
/// fixed fields are peeled off and the rest kept verbatim.
pub fn parse_line(line: &str) -> Option<Mapping> {
    let mut rest = line;
    let mut fields = [""; 5];
    for field in &mut fields {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        *field = &rest[..end];
        rest = &rest[end..];
    }
    let [range, perms, offset, _dev, inode] = fields;
    let (start, end) = range.split_once('-')?;
    let path = rest.trim_start();
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: perms.to_string(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        path: (!path.is_empty()).then(|| path.to_string()),
        deleted,
    })
}

/// The mappings of process `pid` now.
pub fn read(pid: u32) -> io::Result<Vec<Mapping>> {
    Ok(parse(&fs::read_to_string(format!("/proc/{pid}/maps"))?))
}

/// The mapping holding `address`.
pub fn find(maps: &[Mapping], address: u64) -> Option<&Mapping> {
    maps.iter().find(|m| m.contains(address))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55cb9b0b6000-55cb9b0ba000 r--p 00000000 08:01 1234                       /usr/bin/python3.11
7f0000001000-7f0000002000 r-xp 00001000 08:01 99                         /opt/my app/x.so (deleted)
7f0000003000-7f0000004000 rw-p 00000000 00:00 0
00400000-00452000 r-xp 00000000 fe:01 77                                 /usr/bin/a.out
7ffd1c100000-7ffd1c102000 r-xp 00000000 00:00 0                          [vdso]
garbage line
";

    #[test]
    fn parses_real_looking_lines() {
        let maps = parse(MAPS);
        assert_eq!(maps.len(), 5, "the garbage line is skipped");
        assert_eq!(
            maps[0],
            Mapping {
                start: 0x55cb_9b0b_6000,
                end: 0x55cb_9b0b_a000,
                perms: "r--p".into(),
                offset: 0,
                inode: 1234,
                path: Some("/usr/bin/python3.11".into()),
                deleted: false,
            }
        );
        assert!(!maps[0].is_executable() && maps[1].is_executable());
        assert_eq!(
            (maps[1].path.as_deref(), maps[1].deleted, maps[1].offset),
            (Some("/opt/my app/x.so"), true, 0x1000)
        );
        assert_eq!((maps[2].path.as_deref(), maps[2].file()), (None, None));
        assert_eq!(maps[3].map_files_name(), "400000-452000", "map_files names are not zero-padded");
        assert_eq!((maps[4].path.as_deref(), maps[4].file()), (Some("[vdso]"), None));
    }

    #[test]
    fn parses_what_symbolize_reads() {
        let vmas = parse(
            "55cb9b0b6000-55cb9b0ba000 r--p 00000000 08:01 1234   /usr/bin/python3.11\n\
             7f0000001000-7f0000002000 r-xp 00001000 08:01 99     /opt/my app/x.so (deleted)\n\
             7f0000003000-7f0000004000 rw-p 00000000 00:00 0\ngarbage line",
        );
        let summary: Vec<_> = vmas.iter().map(|v| (v.start, v.is_executable(), v.path.as_deref())).collect();
        assert_eq!(
            summary,
            [
                (0x55cb9b0b6000, false, Some("/usr/bin/python3.11")),
                (0x7f0000001000, true, Some("/opt/my app/x.so")),
                (0x7f0000003000, false, None),
            ]
        );
        assert_eq!(find(&vmas, 0x7f0000001fff).map(|v| v.end), Some(0x7f0000002000));
        assert_eq!(find(&vmas, 0x7f0000002000), None);
    }

    #[test]
    fn finds_the_mapping_of_an_address() {
        let maps = parse(MAPS);
        assert_eq!(find(&maps, 0x7f00_0000_1fff).map(|m| m.end), Some(0x7f00_0000_2000));
        assert_eq!(find(&maps, 0x7f00_0000_2000), None);
    }

    #[test]
    fn reads_our_own_maps() {
        let maps = read(std::process::id()).unwrap();
        assert!(maps.iter().any(|m| m.is_executable() && m.file().is_some()));
    }
}
