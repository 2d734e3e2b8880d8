//! The trace matrix as markdown and self-contained HTML, and the summary
//! line. All text from requirement files, sources and results is escaped:
//! it is untrusted input as far as the report is concerned.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::check::{Analysis, Coverer, Row, TestStatus};
use crate::results::Note;
use crate::tags;

#[derive(Debug)]
pub enum ReportError {
    CreateDir { dir: PathBuf, source: io::Error },
    Write { path: PathBuf, source: io::Error },
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::CreateDir { dir, source } => {
                write!(
                    f,
                    "cannot create report directory {}: {source}",
                    dir.display()
                )
            }
            ReportError::Write { path, source } => {
                write!(f, "cannot write report {}: {source}", path.display())
            }
        }
    }
}

/// The one line CI logs and scripts look for.
// [impl->req~trace.summary-exit~1]
pub fn summary_line(analysis: &Analysis) -> String {
    format!(
        "trace: {} requirements, {} covered, {} defects",
        analysis.rows.len(),
        analysis.covered(),
        analysis.defects.len()
    )
}

// [impl->req~trace.report~1]
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Markdown table cells: HTML-escaped (GitHub renders raw HTML), pipes
/// escaped, line breaks kept as `<br>`.
// [impl->req~trace.report~1]
pub fn escape_md(text: &str) -> String {
    escape_html(text)
        .replace('|', "\\|")
        .replace("\r\n", "\n")
        .replace('\n', "<br>")
}

/// Undoes the hard line wrapping of markdown source: lines of a paragraph
/// are joined, paragraphs and list items stay on lines of their own.
// [impl->req~trace.report~1]
pub fn reflow(text: &str) -> String {
    let mut out = String::new();
    let mut blank_before = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            blank_before = true;
            continue;
        }
        let list_item = line.starts_with("* ")
            || line.starts_with("- ")
            || line.starts_with("+ ")
            || line
                .split_once(". ")
                .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if !out.is_empty() {
            out.push_str(match (blank_before, list_item) {
                (true, _) => "\n\n",
                (false, true) => "\n",
                (false, false) => " ",
            });
        }
        out.push_str(line);
        blank_before = false;
    }
    out
}

fn status_text(status: &TestStatus) -> String {
    match status {
        TestStatus::Passed => "pass".to_owned(),
        TestStatus::Failed(msg) => format!("FAIL: {msg}"),
        TestStatus::NotRun(msg) => format!("NOT RUN: {msg}"),
        TestStatus::NoResults => "no results".to_owned(),
    }
}

fn status_class(status: &TestStatus) -> &'static str {
    match status {
        TestStatus::Passed => "pass",
        TestStatus::Failed(_) => "fail",
        TestStatus::NotRun(_) => "notrun",
        TestStatus::NoResults => "unknown",
    }
}

/// Implementation locations of a row.
fn impls(row: &Row) -> Vec<String> {
    row.coverage
        .get("impl")
        .into_iter()
        .flatten()
        .map(|c| c.at.to_string())
        .collect()
}

/// Test coverage of a row: (type, coverer), test types only.
fn tests(row: &Row) -> impl Iterator<Item = (&str, &Coverer)> {
    row.coverage
        .iter()
        .filter(|(kind, _)| tags::is_test_type(kind))
        .flat_map(|(kind, list)| list.iter().map(move |c| (kind.as_str(), c)))
}

/// Coverage by spec items (`Covers:`).
fn covering_items(row: &Row) -> Vec<String> {
    row.coverage
        .values()
        .flatten()
        .filter_map(|c| c.item.as_ref().map(|id| format!("{id} ({})", c.at)))
        .collect()
}

fn row_status(row: &Row) -> &'static str {
    if row.defective {
        "DEFECT"
    } else if row.not_shown {
        "NOT SHOWN ON THIS HOST"
    } else if !row.covered {
        "DEFECT"
    } else {
        "OK"
    }
}

/// The HTML class of a row status.
fn row_class(status: &str) -> &'static str {
    match status {
        "OK" => "OK",
        "NOT SHOWN ON THIS HOST" => "NOTSHOWN",
        _ => "DEFECT",
    }
}

/// A test's status with what it measured or could not show here.
fn test_text(status: &TestStatus, notes: &[Note]) -> String {
    let mut text = status_text(status);
    for note in notes {
        text.push_str(&format!("; {}: {}", note.kind.label(), note.text));
    }
    text
}

// [impl->req~trace.report~1]
pub fn markdown(analysis: &Analysis, results_note: &str) -> String {
    let mut out = String::new();
    out.push_str("# Requirement trace matrix\n\n");
    out.push_str(&format!("`{}`\n\n", summary_line(analysis)));
    out.push_str(&format!("Test results: {}\n\n", escape_md(results_note)));
    out.push_str(&format!("## Defects ({})\n\n", analysis.defects.len()));
    if analysis.defects.is_empty() {
        out.push_str("None.\n");
    }
    for defect in &analysis.defects {
        out.push_str(&format!(
            "- `{}:{}` **{}** `{}`: {}\n",
            escape_md(&defect.file),
            defect.line,
            defect.kind.code(),
            escape_md(&defect.id),
            escape_md(&defect.message)
        ));
    }
    out.push_str("\n## Requirements\n\n");
    out.push_str("| Requirement | Title | Statement | Needs | Implementation | Tests | Status |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    for row in &analysis.rows {
        let mut test_cells: Vec<String> = tests(row)
            .filter_map(|(kind, c)| {
                let (name, status) = c.test.as_ref()?;
                Some(format!(
                    "{kind} `{}` ({}): {}",
                    escape_md(name),
                    escape_md(&c.at.to_string()),
                    escape_md(&test_text(status, &c.notes))
                ))
            })
            .collect();
        test_cells.extend(
            covering_items(row)
                .iter()
                .map(|s| format!("covered by {}", escape_md(s))),
        );
        out.push_str(&format!(
            "| `{}`<br>{} | {} | {} | {} | {} | {} | {} |\n",
            escape_md(&row.id.to_string()),
            escape_md(&row.at.to_string()),
            escape_md(&row.title),
            escape_md(&reflow(&row.statement)),
            escape_md(&row.needs.join(", ")),
            impls(row)
                .iter()
                .map(|s| escape_md(s))
                .collect::<Vec<_>>()
                .join("<br>"),
            test_cells.join("<br>"),
            row_status(row)
        ));
    }
    out
}

const STYLE: &str = "
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #bbb; padding: 4px 6px; vertical-align: top; text-align: left; }
th { background: #eee; }
td.statement { white-space: pre-wrap; max-width: 40em; }
code { font-size: 90%; }
.summary { font-weight: bold; font-family: monospace; }
.OK { background: #e6f4e6; }
.DEFECT { background: #fbe3e3; }
.NOTSHOWN { background: #fff4d6; }
.pass { color: #176117; }
.fail { color: #a00; font-weight: bold; }
.notrun { color: #a60; font-weight: bold; }
.unknown { color: #666; }
ul.defects li { margin-bottom: 0.3em; }
";

// [impl->req~trace.report~1]
pub fn html(analysis: &Analysis, results_note: &str) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<title>Requirement trace matrix</title>\n<style>");
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n<body>\n<h1>Requirement trace matrix</h1>\n");
    out.push_str(&format!(
        "<p class=\"summary\">{}</p>\n<p>Test results: {}</p>\n",
        escape_html(&summary_line(analysis)),
        escape_html(results_note)
    ));
    out.push_str(&format!("<h2>Defects ({})</h2>\n", analysis.defects.len()));
    if analysis.defects.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str("<ul class=\"defects\">\n");
        for d in &analysis.defects {
            out.push_str(&format!(
                "<li><code>{}:{}</code> <b>{}</b> <code>{}</code>: {}</li>\n",
                escape_html(&d.file),
                d.line,
                d.kind.code(),
                escape_html(&d.id),
                escape_html(&d.message)
            ));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("<h2>Requirements</h2>\n<table>\n<thead><tr><th>Requirement</th><th>Title</th>");
    out.push_str("<th>Statement</th><th>Needs</th><th>Implementation</th><th>Tests</th>");
    out.push_str("<th>Status</th></tr></thead>\n<tbody>\n");
    for row in &analysis.rows {
        let status = row_status(row);
        let impl_cell: Vec<String> = impls(row).iter().map(|s| escape_html(s)).collect();
        let mut test_cell: Vec<String> = tests(row)
            .filter_map(|(kind, c)| {
                let (name, st) = c.test.as_ref()?;
                Some(format!(
                    "{kind} <code>{}</code> ({}): <span class=\"{}\">{}</span>",
                    escape_html(name),
                    escape_html(&c.at.to_string()),
                    status_class(st),
                    escape_html(&test_text(st, &c.notes))
                ))
            })
            .collect();
        test_cell.extend(
            covering_items(row)
                .iter()
                .map(|s| format!("covered by {}", escape_html(s))),
        );
        out.push_str(&format!(
            "<tr class=\"{}\"><td><code>{}</code><br>{}</td><td>{}</td>\
             <td class=\"statement\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{status}</td></tr>\n",
            row_class(status),
            escape_html(&row.id.to_string()),
            escape_html(&row.at.to_string()),
            escape_html(&row.title),
            escape_html(&reflow(&row.statement)),
            escape_html(&row.needs.join(", ")),
            impl_cell.join("<br>"),
            test_cell.join("<br>"),
        ));
    }
    out.push_str("</tbody>\n</table>\n</body>\n</html>\n");
    out
}

/// Writes `matrix.md` and `matrix.html` into `out_dir`.
// [impl->req~trace.report~1]
pub fn write(out_dir: &Path, analysis: &Analysis, results_note: &str) -> Result<(), ReportError> {
    fs::create_dir_all(out_dir).map_err(|source| ReportError::CreateDir {
        dir: out_dir.to_path_buf(),
        source,
    })?;
    let files = [
        ("matrix.md", markdown(analysis, results_note)),
        ("matrix.html", html(analysis, results_note)),
    ];
    for (name, text) in files {
        let path = out_dir.join(name);
        fs::write(&path, text).map_err(|source| ReportError::Write { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Defect, DefectKind, Location};
    use crate::id::ItemId;
    use crate::testutil::TempDir;
    use std::collections::BTreeMap;

    fn sample() -> Analysis {
        let mut coverage = BTreeMap::new();
        coverage.insert(
            "impl".to_string(),
            vec![Coverer {
                at: Location {
                    file: "src/a.rs".into(),
                    line: 3,
                },
                test: None,
                item: None,
                notes: Vec::new(),
            }],
        );
        coverage.insert(
            "utest".to_string(),
            vec![Coverer {
                at: Location {
                    file: "src/a.rs".into(),
                    line: 9,
                },
                test: Some(("t<1>".into(), TestStatus::Failed("a | b & <c>".into()))),
                item: None,
                notes: Vec::new(),
            }],
        );
        let row = Row {
            id: ItemId::parse("req~a~1").unwrap(),
            title: "Title <script>alert('x')</script>".into(),
            statement: "Line one | pipe\nline \"two\"".into(),
            at: Location {
                file: "requirements/r.md".into(),
                line: 2,
            },
            needs: vec!["impl".into(), "utest".into()],
            coverage,
            covered: false,
            defective: true,
            not_shown: false,
        };
        Analysis {
            rows: vec![row],
            defects: vec![Defect {
                kind: DefectKind::TestResult,
                file: "requirements/r.md".into(),
                line: 2,
                id: "req~a~1".into(),
                message: "no `utest` test passed: <b>".into(),
                row: Some(0),
            }],
        }
    }

    // [utest->req~trace.evidence-notes~1]
    #[test]
    fn measured_values_and_parts_not_shown_appear_in_both_files() {
        use crate::results::NoteKind;
        let mut analysis = sample();
        analysis.defects.clear();
        let row = &mut analysis.rows[0];
        row.defective = false;
        row.not_shown = true;
        let tests = row.coverage.get_mut("utest").unwrap();
        tests[0].test = Some(("t".into(), TestStatus::Passed));
        tests[0].notes = vec![
            Note {
                kind: NoteKind::Measured,
                requirement: "req~a~1".into(),
                text: "offline after 1.62 s <= 1.7 s".into(),
            },
            Note {
                kind: NoteKind::NotShown,
                requirement: "req~a~1".into(),
                text: "freezing (systemd refuses it)".into(),
            },
        ];
        let md = markdown(&analysis, "junit.xml");
        assert!(md.contains("pass; measured: offline after 1.62 s &lt;= 1.7 s; not shown on this host: freezing (systemd refuses it)"), "{md}");
        assert!(md.contains("| NOT SHOWN ON THIS HOST |"), "{md}");
        let page = html(&analysis, "junit.xml");
        assert!(page.contains("<tr class=\"NOTSHOWN\">"));
        assert!(page.contains("<td>NOT SHOWN ON THIS HOST</td>"));
        assert!(page.contains("measured: offline after 1.62 s &lt;= 1.7 s"));
    }

    // [utest->req~trace.summary-exit~1]
    #[test]
    fn summary_line_format() {
        assert_eq!(
            summary_line(&sample()),
            "trace: 1 requirements, 0 covered, 1 defects"
        );
    }

    // [utest->req~trace.report~1]
    #[test]
    fn html_escapes_everything() {
        let page = html(&sample(), "junit <x>.xml");
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(!page.contains("<script>"));
        assert!(page.contains("Title &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(page.contains("FAIL: a | b &amp; &lt;c&gt;"));
        assert!(page.contains("<code>t&lt;1&gt;</code> (src/a.rs:9)"));
        assert!(page.contains("no `utest` test passed: &lt;b&gt;"));
        assert!(page.contains("line &quot;two&quot;"));
        assert!(page.contains("junit &lt;x&gt;.xml"));
        assert!(page.contains("<td>src/a.rs:3</td>"));
        assert!(page.contains("<tr class=\"DEFECT\">"));
        // Self-contained: no external resources.
        assert!(!page.contains("http"));
    }

    // [utest->req~trace.report~1]
    #[test]
    fn markdown_table_is_escaped() {
        let md = markdown(&sample(), "none");
        assert!(md.contains("`trace: 1 requirements, 0 covered, 1 defects`"));
        assert!(md.contains("| `req~a~1`<br>requirements/r.md:2 | Title &lt;script&gt;"));
        assert!(md.contains("Line one \\| pipe line &quot;two&quot;"));
        assert!(md.contains("FAIL: a \\| b &amp; &lt;c&gt;"));
        assert!(md.contains("| DEFECT |"));
        assert!(md.contains("- `requirements/r.md:2` **test-result** `req~a~1`"));
    }

    // [utest->req~trace.report~1]
    #[test]
    fn reflow_joins_wrapped_lines() {
        let text = "The manager shall\naccept.\n\nSecond\nparagraph:\n* one\n* two\n1. three";
        assert_eq!(
            reflow(text),
            "The manager shall accept.\n\nSecond paragraph:\n* one\n* two\n1. three"
        );
    }

    // [utest->req~trace.report~1]
    #[test]
    fn writes_both_files() {
        let dir = TempDir::new("report");
        let out = dir.path().join("target/trace");
        write(&out, &sample(), "none").unwrap();
        assert!(out.join("matrix.md").is_file());
        assert!(out.join("matrix.html").is_file());
    }
}
