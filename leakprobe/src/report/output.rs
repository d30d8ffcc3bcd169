//! Which renderer a `--format` picks, and where its bytes go.

use std::{
    io::{IsTerminal as _, Write as _},
    path::Path,
};

use anyhow::{bail, Context as _, Result};

use super::Report;

/// The report formats (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a person at a terminal.
    Text,
    /// Versioned, documented in docs/report-format.md; `leakprobe report` reads it back.
    Json,
    /// Folded stacks (`a;b;c 1234`) for flamegraph.pl, inferno and speedscope.
    Collapsed,
    /// A flame graph of the live bytes of the growing stacks.
    Svg,
    /// A gzipped pprof profile (inuse_space, inuse_objects, growth_rate) for `go tool pprof`,
    /// Pyroscope and Parca.
    Pprof,
    /// speedscope's JSON file format.
    Speedscope,
    /// One self-contained page: verdict, plots, the growing stacks, the flame graph.
    Html,
}

impl Format {
    pub const ALL: &'static [Format] =
        &[Format::Text, Format::Json, Format::Collapsed, Format::Svg, Format::Pprof, Format::Speedscope, Format::Html];

    /// Not text: never written to a terminal.
    pub fn is_binary(self) -> bool {
        self == Format::Pprof
    }

    /// The format an output file's name asks for: `.json`, `.folded`/`.collapsed`, `.svg`,
    /// `.pb.gz`/`.pprof`, `.speedscope.json`, `.html`/`.htm`, `.txt`.
    pub fn from_file_name(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let ends = |suffixes: &[&str]| suffixes.iter().any(|s| name.ends_with(s));
        Some(if ends(&[".speedscope.json"]) {
            Format::Speedscope
        } else if ends(&[".json"]) {
            Format::Json
        } else if ends(&[".folded", ".collapsed"]) {
            Format::Collapsed
        } else if ends(&[".svg"]) {
            Format::Svg
        } else if ends(&[".pb.gz", ".pprof", ".pb"]) {
            Format::Pprof
        } else if ends(&[".html", ".htm"]) {
            Format::Html
        } else if ends(&[".txt"]) {
            Format::Text
        } else {
            return None;
        })
    }

    /// `--format` when given, else what `--output`'s file name says, else text.
    pub fn choose(explicit: Option<Format>, output: Option<&Path>) -> Format {
        explicit.or_else(|| output.and_then(Format::from_file_name)).unwrap_or(Format::Text)
    }
}

/// Renders `report` in `format`.
pub fn render(report: &Report, format: Format) -> Result<Vec<u8>> {
    Ok(match format {
        Format::Text => super::text::render(report).into_bytes(),
        Format::Json => super::json::render(report).into_bytes(),
        Format::Collapsed => super::collapsed::render(report).into_bytes(),
        Format::Svg => super::flamegraph::render(report, &super::flamegraph::Style::Standalone)?.into_bytes(),
        Format::Pprof => super::pprof::render(report)?,
        Format::Speedscope => super::speedscope::render(report).into_bytes(),
        Format::Html => super::html::render(report)?.into_bytes(),
    })
}

/// Refuses to send a binary format to a terminal (checked before recording, and when writing).
pub fn check_destination(path: Option<&Path>, format: Format) -> Result<()> {
    if path.is_none() && format.is_binary() && std::io::stdout().is_terminal() {
        let name = format!("{format:?}").to_lowercase();
        bail!("the {name} format is binary and stdout is a terminal: give --output FILE or redirect stdout");
    }
    Ok(())
}

/// Writes a rendered report to `path`, or to stdout — binary formats only when stdout is not a
/// terminal.
pub fn write(path: Option<&Path>, format: Format, bytes: &[u8]) -> Result<()> {
    check_destination(path, format)?;
    match path {
        Some(p) => std::fs::write(p, bytes).with_context(|| format!("cannot write the report to {}", p.display())),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(bytes).and_then(|()| stdout.flush()).context("cannot write the report to stdout")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_file_name_picks_the_format() {
        let pick = |name: &str| Format::from_file_name(Path::new(name));
        assert_eq!(pick("/tmp/r.json"), Some(Format::Json));
        assert_eq!(pick("r.speedscope.json"), Some(Format::Speedscope));
        assert_eq!(pick("heap.pb.gz"), Some(Format::Pprof));
        assert_eq!(pick("r.SVG"), Some(Format::Svg));
        assert_eq!(pick("r.folded"), Some(Format::Collapsed));
        assert_eq!(pick("r.html"), Some(Format::Html));
        assert_eq!(pick("report"), None);
        assert_eq!(Format::choose(None, Some(Path::new("r.json"))), Format::Json);
        assert_eq!(Format::choose(Some(Format::Text), Some(Path::new("r.json"))), Format::Text);
        assert_eq!(Format::choose(None, None), Format::Text);
    }
}
