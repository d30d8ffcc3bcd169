//! Reading a saved JSON report back (`leakprobe report FILE.json`): the schema version is checked
//! first, so a report from an incompatible leakprobe fails with one clear line instead of a
//! missing-field error. Fields added later (without a bump) are ignored; floats the writer could
//! not compute were written as `null` and come back as NaN (`serde_helpers`).

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use super::{Report, SCHEMA_VERSION};

/// Parses a JSON report (`--format json`) of schema version [`SCHEMA_VERSION`].
pub fn from_str(json: &str) -> Result<Report> {
    #[derive(Deserialize)]
    struct Probe {
        schema_version: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_str(json).context("not a JSON object")?;
    match probe.schema_version {
        None => bail!("no schema_version: not a leakprobe JSON report (--format json)"),
        Some(v) if v.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
        Some(v) => bail!(
            "schema_version {v} is not supported: this leakprobe ({}) reads schema version {SCHEMA_VERSION} \
             (docs/report-format.md)",
            env!("CARGO_PKG_VERSION")
        ),
    }
    serde_json::from_str(json).context("not a valid leakprobe report of schema version 1")
}

/// Reads and parses a saved JSON report.
pub fn from_path(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    from_str(&text).with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{output::Format, render, sample};

    #[test]
    fn every_format_renders_the_same_from_the_saved_json() {
        for report in [sample::leaking(), sample::sampling_no_leak()] {
            let json = crate::report::json::render(&report);
            let loaded = from_str(&json).unwrap();
            assert_eq!(crate::report::json::render(&loaded), json);
            for format in Format::ALL {
                let original = render(&report, *format).unwrap();
                let again = render(&loaded, *format).unwrap();
                assert!(original == again, "{format:?} differs after a JSON round trip");
            }
        }
    }

    #[test]
    fn null_floats_read_back_as_nan() {
        let mut report = sample::leaking();
        report.verdict.confidence = f64::NAN;
        report.stacks[0].series[1] = f64::INFINITY;
        let loaded = from_str(&crate::report::json::render(&report)).unwrap();
        assert!(loaded.verdict.confidence.is_nan());
        assert!(loaded.stacks[0].series[1].is_nan());
    }

    #[test]
    fn other_schema_versions_are_refused_clearly() {
        let mut value: serde_json::Value =
            serde_json::from_str(&crate::report::json::render(&sample::leaking())).unwrap();
        value["schema_version"] = 2.into();
        let err = format!("{:#}", from_str(&value.to_string()).unwrap_err());
        assert!(err.contains("schema_version 2 is not supported") && err.contains("reads schema version 1"), "{err}");
        let err = format!("{:#}", from_str(r#"{"stacks": []}"#).unwrap_err());
        assert!(err.contains("no schema_version"), "{err}");
        assert!(from_str("[1, 2]").is_err());
    }

    #[test]
    fn fields_added_later_are_ignored() {
        let mut value: serde_json::Value =
            serde_json::from_str(&crate::report::json::render(&sample::leaking())).unwrap();
        value["some_new_field"] = "x".into();
        value["stacks"][0]["some_new_field"] = serde_json::json!({"text": "y"});
        assert_eq!(from_str(&value.to_string()).unwrap().stacks.len(), sample::leaking().stacks.len());
    }

    #[test]
    fn the_test_fixture_is_a_valid_report() {
        let fixture = include_str!("../../../tests/fixtures/reports/fastapi-leak.json");
        let report = from_str(fixture).unwrap();
        assert!(report.is_leak());
        assert!(report.stacks.iter().any(|s| s.flagged));
    }

    /// The fixture's advice is what the classifier says today of demo/app.py, the recorded app
    /// (seen at /srv/demo/app.py by the target): when the classifier changes, regenerate it with
    /// `LEAKPROBE_PRINT_ADVICE=1 cargo test -p leakprobe --lib fixtures_advice -- --nocapture`.
    #[test]
    fn the_test_fixtures_advice_is_the_classifiers() {
        let fixture = include_str!("../../../tests/fixtures/reports/fastapi-leak.json");
        let report = from_str(fixture).unwrap();
        let root = std::env::temp_dir().join(format!("leakprobe-fixture-advice-{}", std::process::id()));
        std::fs::create_dir_all(root.join("srv/demo")).unwrap();
        std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/app.py"), root.join("srv/demo/app.py")).unwrap();
        let mut advisor = crate::advice::StackAdvisor::new(crate::advice::TargetSources::in_dirs(&root, &root));
        let computed: Vec<_> = report.stacks.iter().filter(|s| s.flagged).map(|s| advisor.advise(&s.frames)).collect();
        std::fs::remove_dir_all(&root).unwrap();
        if std::env::var_os("LEAKPROBE_PRINT_ADVICE").is_some() {
            println!("{}", serde_json::to_string(&computed).unwrap());
        }
        let saved: Vec<_> = report.stacks.iter().filter(|s| s.flagged).map(|s| s.advice.clone()).collect();
        assert_eq!(saved, computed, "regenerate the fixture's advice (see above)");
        assert!(computed.iter().all(Option::is_some), "every flagged stack of the demo has advice");
    }
}
