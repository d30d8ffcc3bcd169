//! The tables at the end of the HTML page: the largest stacks that are not growing, and the
//! recording's details (events, drops, overhead, hooks, warnings).

use std::fmt::Write as _;

use super::{
    html::{escape, leaking_frame, location},
    human_bytes, Report, StackReport,
};

/// Non-growing stacks listed.
const OTHERS_SHOWN: usize = 10;

pub fn others(report: &Report) -> String {
    let others: Vec<&StackReport> = report.stacks.iter().filter(|s| !s.flagged).take(OTHERS_SHOWN).collect();
    if others.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        r#"<h2>Largest other stacks (not growing)</h2><table class="lp-others"><tr><th class="lp-num">live</th><th class="lp-num">allocations</th><th>via</th><th>where</th><th>why not</th></tr>"#,
    );
    for s in others {
        let site = leaking_frame(s).map(|f| format!("{}  {}", f.function, location(f))).unwrap_or_default();
        let _ = write!(
            out,
            r#"<tr><td class="lp-num">{}</td><td class="lp-num">{}</td><td><code>{}</code></td><td class="lp-mono">{}</td><td>{}</td></tr>"#,
            human_bytes(s.live_bytes as f64),
            s.live_allocations,
            escape(&s.allocator),
            escape(&site),
            escape(&s.reason)
        );
    }
    out.push_str("</table>");
    out
}

pub fn details(report: &Report) -> String {
    let mut facts: Vec<(&str, String)> = vec![("Executable", report.target.exe.clone())];
    facts.push(("Events", super::facts::events(report)));
    facts.push(("Dropped", super::facts::drops(report)));
    if let Some(b) = &report.budget {
        facts.push(("Overhead", super::facts::overhead(b)));
    }
    if let Some(sites) = super::facts::probe_sites(report) {
        facts.push(("Probes", sites));
    }
    let hooks: Vec<String> = report.hooks.iter().map(|h| format!("{} ({})", h.function, h.object)).collect();
    facts.push(("Hooks", hooks.join(", ")));
    let mut out = String::from(r#"<dl class="lp-facts">"#);
    for (k, v) in facts {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(&v));
    }
    for w in &report.warnings {
        let _ = write!(out, r#"<dt class="lp-warn">Warning</dt><dd class="lp-warn">{}</dd>"#, escape(w));
    }
    out.push_str("</dl>");
    out
}

/// `2023-11-14 22:13:20 UTC` (proleptic Gregorian, from days since the epoch).
pub fn utc(unix_secs: u64) -> String {
    let (days, secs) = ((unix_secs / 86400) as i64, unix_secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
