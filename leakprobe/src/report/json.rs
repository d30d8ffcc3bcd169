//! The JSON report (docs/report-format.md).

use super::Report;

pub fn render(report: &Report) -> String {
    // Serialising plain data with finite floats cannot fail; non-finite floats become null.
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
