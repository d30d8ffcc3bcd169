//! Which breakpoint each hooked function got and what a hit there costs: the report's
//! `probe_sites` rows and their one-line summary. Pure, from the sites `loader` chose and the
//! prices `windows` charged.

use crate::{budget::HitCosts, probe_site::ProbeSite, report::ProbeSiteInfo};

/// One row per hooked function: (symbol, object as the target sees it, its site).
pub fn rows<'a>(
    sites: impl IntoIterator<Item = (&'a str, &'a str, &'a ProbeSite)>,
    costs: HitCosts,
) -> Vec<ProbeSiteInfo> {
    sites
        .into_iter()
        .map(|(function, object, site)| ProbeSiteInfo {
            function: function.to_string(),
            object: object.to_string(),
            offset: site.offset_in_function(),
            tail_called: site.tail_called,
            site_function: site.site_function.clone(),
            instruction: site.instruction.clone(),
            emulated: site.emulated,
            cost_per_hit_us: if site.emulated { costs.emulated_ns } else { costs.stepped_ns } / 1000.0,
            fallback: site.fallback.as_ref().map(ToString::to_string),
        })
        .collect()
}

/// "6 sites, 5 emulated (~0.5 µs/hit), 1 single-stepped (~15.2 µs/hit: free)"; `None` without sites
/// (a report from before per-site placement).
pub fn summary(sites: &[ProbeSiteInfo]) -> Option<String> {
    if sites.is_empty() {
        return None;
    }
    let (emulated, stepped): (Vec<&ProbeSiteInfo>, Vec<&ProbeSiteInfo>) = sites.iter().partition(|s| s.emulated);
    let cost = |group: &[&ProbeSiteInfo]| {
        group.first().map_or(String::new(), |s| format!(" (~{:.1} µs/hit", s.cost_per_hit_us))
    };
    let mut text = format!("{} sites, {} emulated{}", sites.len(), emulated.len(), close(cost(&emulated)));
    text += &format!(", {} single-stepped", stepped.len());
    if !stepped.is_empty() {
        let mut names: Vec<&str> = stepped.iter().map(|s| s.function.as_str()).collect();
        names.dedup();
        text += &format!("{}: {})", cost(&stepped), names.join(", "));
    }
    Some(text)
}

fn close(open: String) -> String {
    if open.is_empty() {
        open
    } else {
        open + ")"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe_site::{Fallback, Gpr};

    fn site(entry: u64, offset: u64, instruction: &str, emulated: bool, fallback: Option<Fallback>) -> ProbeSite {
        ProbeSite {
            vaddr: entry + offset,
            function_entry: entry,
            instruction: instruction.into(),
            emulated,
            args: vec![Gpr::Rdi],
            tail_called: false,
            site_function: None,
            fallback,
        }
    }

    #[test]
    fn rows_say_where_and_what_each_hit_costs() {
        let malloc = site(0x9a000, 0, "push %r12", true, None);
        let free = site(0x9a800, 3, "je 0x9a840", true, None);
        let ended = Fallback::PrefixEnded { vaddr: 0x2000a, instruction: "jmp *0x2ad000(%rip)".into() };
        let py_free = site(0x20000, 0, "mov %rdi,%rsi", false, Some(ended));
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let libpython = "/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0";
        let costs = HitCosts { emulated_ns: 520.0, stepped_ns: 15_300.0 };
        let rows =
            rows([("malloc", libc, &malloc), ("free", libc, &free), ("PyObject_Free", libpython, &py_free)], costs);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[1].function.as_str(), rows[1].offset, rows[1].emulated), ("free", 3, true));
        assert_eq!(rows[1].instruction, "je 0x9a840");
        assert_eq!(rows[0].cost_per_hit_us, 0.52);
        assert_eq!(rows[2].cost_per_hit_us, 15.3);
        assert_eq!(rows[2].object, libpython);
        assert!(rows[2].fallback.as_deref().unwrap().contains("ends the prefix"), "{:?}", rows[2].fallback);
        assert_eq!(rows[0].fallback, None);
        assert_eq!(
            summary(&rows).unwrap(),
            "3 sites, 2 emulated (~0.5 µs/hit), 1 single-stepped (~15.3 µs/hit: PyObject_Free)"
        );
    }

    #[test]
    fn summary_of_all_emulated_and_of_none() {
        let malloc = site(0x1000, 0, "push %rbx", true, None);
        let rows = rows([("PyObject_Malloc", "/usr/bin/python3.11", &malloc)], HitCosts::uniform(450.0));
        assert_eq!(summary(&rows).unwrap(), "1 sites, 1 emulated (~0.5 µs/hit), 0 single-stepped");
        assert_eq!(summary(&[]), None);
    }
}
