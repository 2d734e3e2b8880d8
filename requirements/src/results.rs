//! Test results of a CI run: JUnit XML (as written by
//! `cargo nextest run --profile ci`) and libtest JSON lines
//! (`cargo test -- -Z unstable-options --format json`).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

/// What a test reported about one requirement beyond pass or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoteKind {
    /// A time or size the test measured and asserted within a tolerance.
    Measured,
    /// A part of the requirement this host cannot show (the test shows the rest).
    NotShown,
    /// A part that other tests report not shown, shown by this one (on a host that can).
    Shown,
}

impl NoteKind {
    pub fn label(self) -> &'static str {
        match self {
            NoteKind::Measured => "measured",
            NoteKind::NotShown => "not shown on this host",
            NoteKind::Shown => "shown",
        }
    }
}

/// A line `MARKER req~x~1: text` in a test's output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    pub kind: NoteKind,
    /// The requirement ID as written (`req~x~1`).
    pub requirement: String,
    pub text: String,
}

impl Note {
    /// The part of the requirement a not-shown or shown note is about: its text up to the
    /// first `": "` (`freezing: systemd refuses ...`), or the whole text.
    // [impl->req~trace.evidence-notes~1]
    pub fn part(&self) -> &str {
        self.text
            .split_once(": ")
            .map_or(self.text.as_str(), |(part, _)| part)
            .trim()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// The full test name, e.g. `spec::tests::parses`.
    pub name: String,
    pub outcome: Outcome,
    /// The results file it came from (as given).
    pub source: String,
    /// Measured values and parts not shown, from the test's output.
    pub notes: Vec<Note>,
}

#[derive(Debug)]
pub enum ResultsError {
    Read {
        path: PathBuf,
        source: io::Error,
    },
    Xml {
        path: String,
        /// Byte offset in the file.
        at: u64,
        source: quick_xml::Error,
    },
    Junit {
        path: String,
        detail: String,
    },
    Json {
        path: String,
        line: usize,
        source: serde_json::Error,
    },
}

impl fmt::Display for ResultsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResultsError::Read { path, source } => write!(
                f,
                "cannot read results file {}: {source} (run the tests first, or pass --no-results)",
                path.display()
            ),
            ResultsError::Xml { path, at, source } => {
                write!(f, "{path}: bad JUnit XML at byte {at}: {source}")
            }
            ResultsError::Junit { path, detail } => write!(f, "{path}: bad JUnit report: {detail}"),
            ResultsError::Json { path, line, source } => {
                write!(f, "{path}:{line}: bad libtest JSON line: {source}")
            }
        }
    }
}

/// The segments of a test name. Nextest's libtest-json output writes
/// `crate::bin/name$module::test`, hence `$` as a separator too.
fn segments(name: &str) -> impl Iterator<Item = &str> {
    name.split("::").flat_map(|s| s.split('$'))
}

/// The function name a result belongs to: `tests::foo` -> `foo`.
pub fn last_segment(name: &str) -> &str {
    segments(name).last().unwrap_or(name)
}

/// Keeps failure messages to one readable line in reports.
fn summarize(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    // libtest's panic line names only the location; the next line has the
    // assertion message.
    let joined = match lines.next() {
        Some(second) if first.contains("panicked at") => format!("{first} {second}"),
        _ => first.to_owned(),
    };
    let mut short: String = joined.chars().take(200).collect();
    if joined.chars().count() > 200 {
        short.push('…');
    }
    short
}

#[derive(Debug, Default)]
pub struct Results {
    entries: Vec<TestResult>,
    by_last: HashMap<String, Vec<usize>>,
    pub files: Vec<String>,
}

impl Results {
    pub fn from_entries(entries: Vec<TestResult>, files: Vec<String>) -> Self {
        let mut by_last: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            by_last
                .entry(last_segment(&entry.name).to_owned())
                .or_default()
                .push(index);
        }
        Results {
            entries,
            by_last,
            files,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// All results for the test function `name`. Results are matched on
    /// the last path segment; parameterized tests (`rstest`) report one
    /// result per case, named `<fn>::<case>`, so for them any earlier
    /// segment matches too.
    // [impl->req~trace.test-results~1]
    pub fn lookup(&self, name: &str, parameterized: bool) -> Vec<&TestResult> {
        let mut found: Vec<&TestResult> = self
            .by_last
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.entries.get(i))
            .collect();
        if parameterized {
            found.extend(self.entries.iter().filter(|e| {
                let segs: Vec<&str> = segments(&e.name).collect();
                segs.split_last()
                    .is_some_and(|(last, init)| *last != name && init.contains(&name))
            }));
        }
        found
    }
}

/// Reads all results files; the format is recognised by content.
pub fn load(root: &Path, files: &[String]) -> Result<Results, ResultsError> {
    let mut entries = Vec::new();
    for file in files {
        let path = root.join(file);
        let text = fs::read_to_string(&path).map_err(|source| ResultsError::Read {
            path: path.clone(),
            source,
        })?;
        let parsed = if text
            .trim_start_matches('\u{feff}')
            .trim_start()
            .starts_with('<')
        {
            parse_junit(file, &text)?
        } else {
            parse_libtest_json(file, &text)?
        };
        entries.extend(parsed);
    }
    Ok(Results::from_entries(entries, files.to_vec()))
}

/// The line prefix an integration test prints on stdout when it could not run (see
/// `hirte_tests::SKIP_MARKER`); libtest and nextest know no run-time skip, so such a test
/// ends as passed and only its output says that it showed nothing.
pub const SKIP_MARKER: &str = "HIRTE-TEST-SKIPPED:";

/// The line prefix of a measured value (`hirte_tests::measured`).
pub const MEASURED_MARKER: &str = "HIRTE-TEST-MEASURED:";
/// The line prefix of a part of a requirement this host cannot show (`hirte_tests::not_shown`).
pub const NOT_SHOWN_MARKER: &str = "HIRTE-TEST-NOT-SHOWN:";
/// The line prefix of such a part shown by this test (`hirte_tests::shown`).
pub const SHOWN_MARKER: &str = "HIRTE-TEST-SHOWN:";

/// The notes in a test's captured output: `MARKER req~x~1: text` lines.
// [impl->req~trace.evidence-notes~1]
fn notes_in(output: &str) -> Vec<Note> {
    let mut notes: Vec<Note> = output
        .lines()
        .filter_map(|line| {
            let (kind, rest) = [
                (NoteKind::Measured, MEASURED_MARKER),
                (NoteKind::NotShown, NOT_SHOWN_MARKER),
                (NoteKind::Shown, SHOWN_MARKER),
            ]
            .into_iter()
            .find_map(|(kind, marker)| Some((kind, line.split_once(marker)?.1)))?;
            let (requirement, text) = rest.trim().split_once(": ")?;
            Some(Note {
                kind,
                requirement: requirement.trim().to_owned(),
                text: summarize(text),
            })
        })
        .collect();
    notes.sort();
    notes.dedup();
    notes
}

/// The skip reason in a passing test's captured output, if it printed the marker.
// [impl->req~trace.skipped-tests~1]
fn skip_reason(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        // Uncaptured output (`--nocapture`) may have libtest's "test x ... " before it.
        let (_, reason) = line.split_once(SKIP_MARKER)?;
        Some(format!("skipped at run time: {}", summarize(reason)))
    })
}

/// What the text inside a `<testcase>` child is collected for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Capture {
    /// `<failure>`/`<error>`: the panic output, a better message than nextest's generic one.
    Failure,
    /// `<system-out>`/`<system-err>`: searched for [`SKIP_MARKER`].
    Output,
}

/// A `<testcase>` being read.
struct Case {
    name: String,
    outcome: Outcome,
    /// Open child elements.
    depth: usize,
    /// The open child whose text is collected, and at which depth it was opened.
    capture: Option<(Capture, usize)>,
    failure_text: String,
    output: String,
}

impl Case {
    fn text(&mut self, text: &str) {
        match self.capture {
            Some((Capture::Failure, _)) => self.failure_text.push_str(text),
            Some((Capture::Output, _)) => self.output.push_str(text),
            None => {}
        }
    }
}

/// The value of attribute `key`, unescaped.
fn attr(start: &BytesStart<'_>, key: &str) -> Result<Option<String>, quick_xml::Error> {
    for attribute in start.attributes() {
        let attribute = attribute?;
        if attribute.key.as_ref() == key.as_bytes() {
            return Ok(Some(attribute.unescape_value()?.into_owned()));
        }
    }
    Ok(None)
}

/// Reads `<testcase>` elements. A case with a `<failure>` or `<error>`
/// child failed, one with `<skipped>` or with the [`SKIP_MARKER`] in its
/// `<system-out>`/`<system-err>` did not run, any other passed.
/// Nextest's `<flakyFailure>`/`<rerunFailure>` children are retries and do
/// not change the final outcome.
// [impl->req~trace.results-junit~1]
pub fn parse_junit(path: &str, text: &str) -> Result<Vec<TestResult>, ResultsError> {
    let mut reader = Reader::from_str(text);
    let xml_err = |reader: &Reader<&[u8]>, source| ResultsError::Xml {
        path: path.to_owned(),
        at: reader.error_position(),
        source,
    };
    let junit_err = |detail: String| ResultsError::Junit {
        path: path.to_owned(),
        detail,
    };
    let mut out = Vec::new();
    let mut current: Option<Case> = None;
    // Open elements outside a test case: a truncated file ends with some still open.
    let mut open = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| xml_err(&reader, e))?;
        let (start, self_closing) = match &event {
            Event::Start(start) => (Some(start), false),
            Event::Empty(start) => (Some(start), true),
            _ => (None, false),
        };
        match (start, event_end(&event), current.as_mut()) {
            (Some(start), _, None) if start.name().as_ref() == b"testcase" => {
                let test_name = attr(start, "name")
                    .map_err(|e| xml_err(&reader, e))?
                    .ok_or_else(|| junit_err("<testcase> without a name attribute".to_owned()))?;
                let case = Case {
                    name: test_name,
                    outcome: Outcome::Passed,
                    depth: 0,
                    capture: None,
                    failure_text: String::new(),
                    output: String::new(),
                };
                if self_closing {
                    out.push(finish(case, path));
                } else {
                    current = Some(case);
                }
            }
            (Some(_), _, None) => {
                if !self_closing {
                    open += 1;
                }
            }
            (Some(start), _, Some(case)) => {
                if start.name().as_ref() == b"testcase" {
                    return Err(junit_err(format!(
                        "<testcase> nested inside <testcase name=\"{}\">",
                        case.name
                    )));
                }
                if case.depth == 0 {
                    let message = attr(start, "message")
                        .and_then(|m| match m {
                            Some(m) => Ok(Some(m)),
                            None => attr(start, "type"),
                        })
                        .map_err(|e| xml_err(&reader, e))?
                        .map(|m| summarize(&m))
                        .unwrap_or_default();
                    record_child(case, start.name().as_ref(), message, self_closing);
                }
                if !self_closing {
                    case.depth += 1;
                }
            }
            (None, true, Some(case)) if case.depth == 0 => {
                if let Some(done) = current.take() {
                    out.push(finish(done, path));
                }
            }
            (None, true, Some(case)) => {
                case.depth = case.depth.saturating_sub(1);
                if case.capture.is_some_and(|(_, d)| case.depth < d) {
                    case.capture = None;
                }
            }
            (None, true, None) => open = open.saturating_sub(1),
            (None, false, case) => {
                let Some(case) = case.filter(|c| c.capture.is_some()) else {
                    if matches!(event, Event::Eof) {
                        break;
                    }
                    continue;
                };
                match &event {
                    Event::Text(t) => {
                        case.text(&t.xml_content().map_err(|e| xml_err(&reader, e.into()))?)
                    }
                    Event::CData(t) => {
                        case.text(&t.decode().map_err(|e| xml_err(&reader, e.into()))?)
                    }
                    Event::GeneralRef(r) => {
                        let resolved = match r
                            .resolve_char_ref()
                            .map_err(|e| xml_err(&reader, e))?
                        {
                            Some(c) => c.to_string(),
                            None => {
                                let name = r.decode().map_err(|e| xml_err(&reader, e.into()))?;
                                quick_xml::escape::resolve_predefined_entity(&name)
                                    .ok_or_else(|| junit_err(format!("unknown entity &{name};")))?
                                    .to_owned()
                            }
                        };
                        case.text(&resolved);
                    }
                    Event::Eof => break,
                    _ => {}
                }
            }
        }
    }
    if let Some(case) = current {
        return Err(junit_err(format!(
            "the file ends inside <testcase name=\"{}\"> (truncated?)",
            case.name
        )));
    }
    if open > 0 {
        return Err(junit_err(format!(
            "the file ends with {open} element(s) still open (truncated?)"
        )));
    }
    Ok(out)
}

fn event_end(event: &Event<'_>) -> bool {
    matches!(event, Event::End(_))
}

fn record_child(case: &mut Case, name: &[u8], message: String, self_closing: bool) {
    match name {
        b"failure" | b"error" => {
            let already_failed = matches!(case.outcome, Outcome::Failed(_));
            if !already_failed {
                case.outcome = Outcome::Failed(message);
                if !self_closing {
                    case.capture = Some((Capture::Failure, case.depth + 1));
                }
            }
        }
        b"skipped" if !matches!(case.outcome, Outcome::Failed(_)) => {
            let why = if message.is_empty() {
                "skipped".to_owned()
            } else {
                format!("skipped: {message}")
            };
            case.outcome = Outcome::Skipped(why);
        }
        b"system-out" | b"system-err" if !self_closing => {
            case.capture = Some((Capture::Output, case.depth + 1));
        }
        _ => {}
    }
}

fn finish(case: Case, path: &str) -> TestResult {
    let outcome = match case.outcome {
        Outcome::Failed(message) => {
            let detail = summarize(&case.failure_text);
            Outcome::Failed(match (message.as_str(), detail.is_empty()) {
                (_, true) => message,
                ("" | "test failure", false) => detail,
                (_, false) => format!("{message}: {detail}"),
            })
        }
        Outcome::Passed => match skip_reason(&case.output) {
            Some(why) => Outcome::Skipped(why),
            None => Outcome::Passed,
        },
        other => other,
    };
    TestResult {
        name: case.name,
        outcome,
        source: path.to_owned(),
        notes: notes_in(&case.output),
    }
}

/// Reads libtest JSON events; lines that are not JSON objects (cargo's
/// own output mixed into the stream) are skipped, broken JSON objects are
/// errors.
// [impl->req~trace.results-libtest~1]
pub fn parse_libtest_json(path: &str, text: &str) -> Result<Vec<TestResult>, ResultsError> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|source| ResultsError::Json {
                path: path.to_owned(),
                line: index + 1,
                source,
            })?;
        if !value.is_object() {
            continue;
        }
        let field = |key: &str| value.get(key).and_then(serde_json::Value::as_str);
        if field("type") != Some("test") {
            continue;
        }
        let Some(name) = field("name") else {
            continue;
        };
        let outcome = match field("event") {
            // `--show-output` puts a passing test's output in `stdout`.
            Some("ok") => match field("stdout").and_then(skip_reason) {
                Some(why) => Outcome::Skipped(why),
                None => Outcome::Passed,
            },
            Some("failed") => {
                let text = field("message").or_else(|| field("stdout")).unwrap_or("");
                let message = summarize(text);
                Outcome::Failed(if message.is_empty() {
                    "failed".to_owned()
                } else {
                    message
                })
            }
            Some("ignored") => Outcome::Skipped(match field("message") {
                Some(reason) if !reason.is_empty() => format!("ignored: {reason}"),
                _ => "ignored".to_owned(),
            }),
            // `started` and `timeout` (a slow-test warning) are not outcomes.
            _ => continue,
        };
        out.push(TestResult {
            name: name.to_owned(),
            outcome,
            source: path.to_owned(),
            notes: notes_in(field("stdout").unwrap_or("")),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    const JUNIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="6" failures="2" errors="0">
    <testsuite name="hirte-trace::bin/hirte-trace" tests="6" disabled="0" errors="0" failures="2">
        <testcase name="spec::tests::parses" classname="hirte-trace::bin/hirte-trace" timestamp="2024-01-01T00:00:00Z" time="0.001">
        </testcase>
        <testcase name="check::tests::a&lt;b&gt;" classname="x"/>
        <testcase name="tags::tests::breaks" classname="x" time="0.01">
            <failure message="test failure" type="test failure">thread &apos;tags::tests::breaks&apos; panicked at src/tags.rs:10:5:
assertion `left == right` failed<nested>inner</nested></failure>
            <rerunFailure message="again"/>
            <system-out>out</system-out>
            <system-err>err</system-err>
        </testcase>
        <testcase name="flaky" classname="x"><flakyFailure message="first try"/><system-out/></testcase>
        <testcase name="crashes" classname="x"><error message="SIGSEGV"/></testcase>
        <testcase name="later" classname="x"><skipped message="not now"/></testcase>
    </testsuite>
</testsuites>
"#;

    // [utest->req~trace.results-junit~1]
    #[test]
    fn parses_nextest_junit() {
        let results = parse_junit("junit.xml", JUNIT).unwrap();
        let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "spec::tests::parses",
                "check::tests::a<b>",
                "tags::tests::breaks",
                "flaky",
                "crashes",
                "later"
            ]
        );
        assert_eq!(results[0].outcome, Outcome::Passed);
        assert_eq!(results[1].outcome, Outcome::Passed);
        assert_eq!(
            results[2].outcome,
            Outcome::Failed(
                "thread 'tags::tests::breaks' panicked at src/tags.rs:10:5: assertion `left == right` failedinner"
                    .into()
            )
        );
        assert_eq!(results[3].outcome, Outcome::Passed);
        assert_eq!(results[4].outcome, Outcome::Failed("SIGSEGV".into()));
        assert_eq!(
            results[5].outcome,
            Outcome::Skipped("skipped: not now".into())
        );
    }

    // [utest->req~trace.results-junit~1]
    #[test]
    fn broken_junit_is_an_error() {
        // Cut anywhere before the closing tag, the report is an error, never a shorter run.
        let end = JUNIT.find("</testsuites>").unwrap() + "</testsuites>".len();
        // Inside the XML declaration nothing is open yet.
        let first = JUNIT.find("<testsuites").unwrap() + 1;
        for cut in (first..end).filter(|&i| JUNIT.is_char_boundary(i)) {
            let truncated = JUNIT.get(..cut).unwrap();
            assert!(
                matches!(
                    parse_junit("j.xml", truncated),
                    Err(ResultsError::Xml { .. } | ResultsError::Junit { .. })
                ),
                "cut at {cut} was accepted"
            );
        }
        assert!(matches!(
            parse_junit(
                "j.xml",
                "<testsuite><testcase classname=\"x\"/></testsuite>"
            ),
            Err(ResultsError::Junit { .. })
        ));
    }

    // [utest->req~trace.skipped-tests~1]
    #[test]
    fn a_passing_case_that_printed_the_skip_marker_did_not_run() {
        let report = format!(
            "<testsuites><testsuite name=\"t\">\
             <testcase name=\"a::ran\"><system-out>all fine &amp; done</system-out></testcase>\
             <testcase name=\"a::skipped\"><system-out>setup\ntest a::skipped ... {SKIP_MARKER} skipped: needs &lt;root&gt;\n</system-out><system-err>SKIP</system-err></testcase>\
             <testcase name=\"a::failed\"><failure message=\"boom\"/><system-out>{SKIP_MARKER} x</system-out></testcase>\
             </testsuite></testsuites>"
        );
        let results = parse_junit("j.xml", &report).unwrap();
        assert_eq!(results[0].outcome, Outcome::Passed);
        assert_eq!(
            results[1].outcome,
            Outcome::Skipped("skipped at run time: skipped: needs <root>".into())
        );
        assert_eq!(results[2].outcome, Outcome::Failed("boom".into()));

        let json = format!(
            "{{\"type\":\"test\",\"event\":\"ok\",\"name\":\"a::s\",\"stdout\":\"{SKIP_MARKER} s: no root\\n\"}}\n"
        );
        let results = parse_libtest_json("r.json", &json).unwrap();
        assert_eq!(
            results[0].outcome,
            Outcome::Skipped("skipped at run time: s: no root".into())
        );
    }

    // [utest->req~trace.evidence-notes~1]
    #[test]
    fn measured_values_and_parts_not_shown_are_read_from_the_output() {
        let report = format!(
            "<testsuites><testsuite name=\"t\"><testcase name=\"a::timed\"><system-out>\
             {MEASURED_MARKER} req~x.y~1: offline after 1.62 s (bound 1.7 s)\n\
             test a::timed ... {NOT_SHOWN_MARKER} req~z~2: freezing &lt;refused&gt;\n\
             {SHOWN_MARKER} req~z~2: freezing: frozen and thawed\n\
             {MEASURED_MARKER} no requirement named\n\
             </system-out></testcase></testsuite></testsuites>"
        );
        let results = parse_junit("j.xml", &report).unwrap();
        assert_eq!(results[0].outcome, Outcome::Passed);
        assert_eq!(
            results[0].notes,
            vec![
                Note {
                    kind: NoteKind::Measured,
                    requirement: "req~x.y~1".into(),
                    text: "offline after 1.62 s (bound 1.7 s)".into()
                },
                Note {
                    kind: NoteKind::NotShown,
                    requirement: "req~z~2".into(),
                    text: "freezing <refused>".into()
                },
                Note {
                    kind: NoteKind::Shown,
                    requirement: "req~z~2".into(),
                    text: "freezing: frozen and thawed".into()
                },
            ]
        );
        assert_eq!(results[0].notes[1].part(), "freezing <refused>");
        assert_eq!(results[0].notes[2].part(), "freezing");
    }

    // [utest->req~trace.results-libtest~1]
    #[test]
    fn parses_libtest_json_lines() {
        let text = r#"   Compiling hirte-trace v0.1.0
{ "type": "suite", "event": "started", "test_count": 4 }
{ "type": "test", "event": "started", "name": "tests::foo" }
{ "type": "test", "name": "tests::foo", "event": "ok" }
{ "type": "test", "name": "tests::bar", "event": "failed", "stdout": "thread 'tests::bar' panicked at src/main.rs:3:5:\nboom\n" }
{ "type": "test", "name": "tests::baz", "event": "ignored", "message": "slow" }
{ "type": "test", "name": "tests::qux", "event": "timeout" }
{ "type": "suite", "event": "failed", "passed": 1, "failed": 1, "ignored": 1 }
"#;
        let results = parse_libtest_json("r.json", text).unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].outcome, Outcome::Passed);
        assert_eq!(
            results[1].outcome,
            Outcome::Failed("thread 'tests::bar' panicked at src/main.rs:3:5: boom".into())
        );
        assert_eq!(results[2].outcome, Outcome::Skipped("ignored: slow".into()));
        let err = parse_libtest_json("r.json", "{\"type\": \"test\"\n").unwrap_err();
        assert!(err.to_string().starts_with("r.json:1:"), "{err}");
    }

    // [utest->req~trace.test-results~1]
    #[test]
    fn lookup_by_last_segment_and_rstest_cases() {
        let r = |name: &str| TestResult {
            name: name.into(),
            outcome: Outcome::Passed,
            source: "x".into(),
            notes: Vec::new(),
        };
        let results = Results::from_entries(
            vec![
                r("a::tests::dup"),
                r("b::dup"),
                r("crate::bin/x$top"),
                r("tests::param::case_1"),
                r("tests::param::case_2"),
            ],
            vec![],
        );
        assert_eq!(results.lookup("dup", false).len(), 2);
        assert_eq!(results.lookup("top", false).len(), 1);
        assert_eq!(results.lookup("param", false).len(), 0);
        assert_eq!(results.lookup("param", true).len(), 2);
        assert_eq!(results.lookup("tests", true).len(), 3);
    }

    // [utest->req~trace.results-junit~1]
    // [utest->req~trace.results-libtest~1]
    #[test]
    fn load_detects_format_by_content() {
        let dir = TempDir::new("results-load");
        dir.write("junit.xml", JUNIT);
        dir.write(
            "libtest.json",
            "{\"type\":\"test\",\"event\":\"ok\",\"name\":\"m::json_test\"}\n",
        );
        let files = vec!["junit.xml".to_string(), "libtest.json".to_string()];
        let results = load(dir.path(), &files).unwrap();
        assert_eq!(results.len(), 7);
        assert_eq!(results.lookup("json_test", false).len(), 1);
        assert!(matches!(
            load(dir.path(), &["absent.xml".to_string()]),
            Err(ResultsError::Read { .. })
        ));
    }
}
