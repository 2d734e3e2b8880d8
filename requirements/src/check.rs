//! The tracing rules: links requirements, tags and test results and
//! reports every defect with a location.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::id::{ItemId, ItemKey};
use crate::results::{Note, NoteKind, Outcome, Results, TestResult};
use crate::spec::{ParsedSpec, Reference, Requirement};
use crate::tags::{self, Attachment, Scan, Tag};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DefectKind {
    /// A requirement misses a coverage type it needs.
    Uncovered,
    /// A tag or reference names an unknown item.
    Orphan,
    /// A tag or reference names a known item with another revision.
    Revision,
    /// The same item name is defined twice.
    Duplicate,
    /// A test tag is not on a runnable test.
    NotATest,
    /// The tests covering a requirement did not pass.
    TestResult,
    /// A `Depends:`/`Covers:` entry names an unknown item.
    UnknownReference,
    /// Empty statement or no/empty `Needs:`.
    Incomplete,
    /// A coverage type that is not impl/utest/itest.
    UnknownType,
    /// Coverage a requirement does not ask for (OFT reports it too).
    Unwanted,
    /// Unreadable ID, tag or list entry.
    Malformed,
}

impl DefectKind {
    pub fn code(self) -> &'static str {
        match self {
            DefectKind::Uncovered => "uncovered",
            DefectKind::Orphan => "orphan",
            DefectKind::Revision => "revision",
            DefectKind::Duplicate => "duplicate",
            DefectKind::NotATest => "not-a-test",
            DefectKind::TestResult => "test-result",
            DefectKind::UnknownReference => "unknown-reference",
            DefectKind::Incomplete => "incomplete",
            DefectKind::UnknownType => "unknown-type",
            DefectKind::Unwanted => "unwanted",
            DefectKind::Malformed => "malformed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defect {
    pub kind: DefectKind,
    pub file: String,
    pub line: usize,
    /// The ID (or text) the defect is about.
    pub id: String,
    pub message: String,
    /// Index of the affected row, if any.
    pub row: Option<usize>,
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: [{}] {}: {}",
            self.file,
            self.line,
            self.kind.code(),
            self.id,
            self.message
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestStatus {
    Passed,
    Failed(String),
    NotRun(String),
    /// Run without results: nothing is known.
    NoResults,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Something that provides coverage of one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverer {
    /// Where the tag (or covering item) is.
    pub at: Location,
    /// Tests: the function (or script) name and its status.
    pub test: Option<(String, TestStatus)>,
    /// Covering spec items (`Covers:`).
    pub item: Option<ItemId>,
    /// What the test's results say about this requirement besides pass or fail.
    pub notes: Vec<Note>,
}

/// One line of the matrix.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: ItemId,
    pub title: String,
    pub statement: String,
    pub at: Location,
    pub needs: Vec<String>,
    pub coverage: BTreeMap<String, Vec<Coverer>>,
    pub covered: bool,
    pub defective: bool,
    /// A test reported a part of the requirement that this host cannot show: not covered,
    /// but no defect either.
    pub not_shown: bool,
}

#[derive(Debug)]
pub struct Analysis {
    pub rows: Vec<Row>,
    pub defects: Vec<Defect>,
}

impl Analysis {
    pub fn covered(&self) -> usize {
        self.rows.iter().filter(|r| r.covered).count()
    }
}

enum Resolution {
    Found(usize),
    OtherRevision(usize),
    Unknown,
}

struct Checker<'a> {
    items: &'a [Requirement],
    index: HashMap<ItemKey, usize>,
    rows: Vec<Row>,
    defects: Vec<Defect>,
    /// Per row and type: coverage that was found but not accepted.
    rejected: Vec<BTreeMap<String, usize>>,
    results: Option<&'a Results>,
}

/// Runs all rules. `results` is `None` when the run has no test results.
pub fn check(spec: &ParsedSpec, scan: &Scan, results: Option<&Results>) -> Analysis {
    let mut checker = Checker::new(&spec.items, results);
    checker.duplicates();
    checker.item_contents();
    for (i, item) in spec.items.iter().enumerate() {
        checker.references(i, item);
    }
    for tag in &scan.tags {
        checker.tag(tag);
    }
    checker.malformed(spec, scan);
    checker.needs();
    checker.finish()
}

impl<'a> Checker<'a> {
    fn new(items: &'a [Requirement], results: Option<&'a Results>) -> Self {
        let rows = items
            .iter()
            .map(|item| {
                let mut needs: Vec<String> = item.needs.clone().unwrap_or_default();
                needs.sort();
                needs.dedup();
                Row {
                    id: item.id.clone(),
                    title: item.title.clone(),
                    statement: item.statement.clone(),
                    at: Location {
                        file: item.file.clone(),
                        line: item.line,
                    },
                    needs,
                    coverage: BTreeMap::new(),
                    covered: false,
                    defective: false,
                    not_shown: false,
                }
            })
            .collect();
        Checker {
            items,
            index: HashMap::new(),
            rows,
            defects: Vec::new(),
            rejected: vec![BTreeMap::new(); items.len()],
            results,
        }
    }

    fn defect(
        &mut self,
        kind: DefectKind,
        at: (&str, usize),
        id: String,
        message: String,
        row: Option<usize>,
    ) {
        self.defects.push(Defect {
            kind,
            file: at.0.to_owned(),
            line: at.1,
            id,
            message,
            row,
        });
    }

    /// The first definition of a name wins; later ones are defects.
    // [impl->req~trace.duplicate~1]
    fn duplicates(&mut self) {
        for (i, item) in self.items.iter().enumerate() {
            let key = item.id.key();
            match self
                .index
                .get(&key)
                .and_then(|&first| self.items.get(first))
            {
                Some(first) => {
                    let message = format!(
                        "duplicate item: `{key}` is already defined as {} at {}:{}",
                        first.id, first.file, first.line
                    );
                    self.defect(
                        DefectKind::Duplicate,
                        (&item.file, item.line),
                        item.id.to_string(),
                        message,
                        Some(i),
                    );
                }
                None => {
                    self.index.insert(key, i);
                }
            }
        }
    }

    fn is_first_definition(&self, row: usize) -> bool {
        self.items
            .get(row)
            .is_some_and(|item| self.index.get(&item.id.key()) == Some(&row))
    }

    /// Coverage types a `Needs:` may list: the tag types and the types of
    /// spec items (which can cover others through `Covers:`).
    fn known_types(&self) -> Vec<String> {
        let mut known: Vec<String> = tags::COVERAGE_TYPES.iter().map(|t| t.to_string()).collect();
        known.extend(self.items.iter().map(|i| i.id.kind.clone()));
        known.sort();
        known.dedup();
        known
    }

    // [impl->req~trace.item-complete~1]
    // [impl->req~trace.coverage-type~1]
    fn item_contents(&mut self) {
        let known = self.known_types();
        for (i, item) in self.items.iter().enumerate() {
            let at = (item.file.as_str(), item.line);
            let id = item.id.to_string();
            if item.statement.trim().is_empty() {
                self.defect(
                    DefectKind::Incomplete,
                    at,
                    id.clone(),
                    "empty statement: write the requirement text between the ID line and \
                     `Rationale:`/`Needs:`"
                        .to_owned(),
                    Some(i),
                );
            }
            match &item.needs {
                None => self.defect(
                    DefectKind::Incomplete,
                    at,
                    id.clone(),
                    "no `Needs:` line: say which coverage it needs (impl, utest, itest)".to_owned(),
                    Some(i),
                ),
                Some(needs) if needs.is_empty() => self.defect(
                    DefectKind::Incomplete,
                    at,
                    id.clone(),
                    "empty `Needs:`: list the coverage it needs (impl, utest, itest)".to_owned(),
                    Some(i),
                ),
                Some(needs) => {
                    for need in needs.iter().filter(|n| !known.contains(n)) {
                        let message = format!(
                            "`Needs:` lists unknown coverage type `{need}` (known: {})",
                            known.join(", ")
                        );
                        self.defect(DefectKind::UnknownType, at, id.clone(), message, Some(i));
                    }
                }
            }
        }
    }

    fn resolve(&self, id: &ItemId) -> Resolution {
        match self.index.get(&id.key()) {
            Some(&i) if self.items.get(i).is_some_and(|item| item.id == *id) => {
                Resolution::Found(i)
            }
            Some(&i) => Resolution::OtherRevision(i),
            None => Resolution::Unknown,
        }
    }

    fn current_revision(&self, row: usize) -> u32 {
        self.items.get(row).map_or(0, |item| item.id.revision)
    }

    /// Explains a revision mismatch, e.g. an outdated tag.
    // [impl->req~trace.revision~1]
    fn revision_message(&self, what: &str, id: &ItemId, row: usize) -> String {
        let current = self.current_revision(row);
        let state = if id.revision < current {
            "is outdated"
        } else {
            "does not exist"
        };
        format!(
            "{what} names revision {} which {state}: the current revision is {current} ({})",
            id.revision,
            ItemId {
                revision: current,
                ..id.clone()
            }
        )
    }

    /// `Depends:` must name existing items; `Covers:` too, and provides
    /// coverage of the covering item's type.
    // [impl->req~trace.depends~1]
    fn references(&mut self, from: usize, item: &Requirement) {
        let lists: [(&str, &[Reference]); 2] =
            [("Depends:", &item.depends), ("Covers:", &item.covers)];
        for (what, refs) in lists {
            for reference in refs {
                let at = (item.file.as_str(), reference.line);
                let id = reference.id.to_string();
                match self.resolve(&reference.id) {
                    Resolution::Unknown => {
                        let message = format!("{what} of {} names unknown item {id}", item.id);
                        self.defect(DefectKind::UnknownReference, at, id, message, Some(from));
                    }
                    Resolution::OtherRevision(row) => {
                        let message = self.revision_message(
                            &format!("{what} of {}", item.id),
                            &reference.id,
                            row,
                        );
                        self.defect(DefectKind::Revision, at, id, message, Some(from));
                    }
                    Resolution::Found(row) if what == "Covers:" => {
                        let coverer = Coverer {
                            at: Location {
                                file: item.file.clone(),
                                line: item.line,
                            },
                            test: None,
                            item: Some(item.id.clone()),
                            notes: Vec::new(),
                        };
                        self.add_coverage(row, &item.id.kind, coverer, at);
                    }
                    Resolution::Found(_) => {}
                }
            }
        }
    }

    /// Records coverage unless the target does not ask for this type.
    // [impl->req~trace.coverage~1]
    fn add_coverage(&mut self, row: usize, kind: &str, coverer: Coverer, at: (&str, usize)) {
        let Some(target) = self.rows.get(row) else {
            return;
        };
        // Without a usable `Needs:` every coverage would be "unwanted";
        // the incomplete item is reported once instead.
        let has_needs = !target.needs.is_empty();
        if has_needs && !target.needs.iter().any(|n| n == kind) {
            let message = format!(
                "{} does not need `{kind}` coverage (Needs: {}); OFT reports this as unwanted \
                 coverage",
                target.id,
                target.needs.join(", ")
            );
            let id = target.id.to_string();
            self.defect(DefectKind::Unwanted, at, id, message, Some(row));
            return;
        }
        if let Some(target) = self.rows.get_mut(row) {
            target
                .coverage
                .entry(kind.to_owned())
                .or_default()
                .push(coverer);
        }
    }

    fn reject(&mut self, row: usize, kind: &str) {
        if let Some(map) = self.rejected.get_mut(row) {
            *map.entry(kind.to_owned()).or_default() += 1;
        }
    }

    // [impl->req~trace.orphan~1]
    // [impl->req~trace.revision~1]
    // [impl->req~trace.coverage-type~1]
    fn tag(&mut self, tag: &Tag) {
        let at = (tag.file.as_str(), tag.line);
        let id = tag.target.to_string();
        if !tags::COVERAGE_TYPES.contains(&tag.kind.as_str()) {
            let message = format!(
                "tag has unknown coverage type `{}` (known: {})",
                tag.kind,
                tags::COVERAGE_TYPES.join(", ")
            );
            self.defect(DefectKind::UnknownType, at, id, message, None);
            return;
        }
        let row = match self.resolve(&tag.target) {
            Resolution::Found(row) => row,
            Resolution::OtherRevision(row) => {
                let message =
                    self.revision_message(&format!("`{}` tag", tag.kind), &tag.target, row);
                self.defect(DefectKind::Revision, at, id, message, Some(row));
                self.reject(row, &tag.kind);
                return;
            }
            Resolution::Unknown => {
                let message = format!(
                    "`{}` tag names unknown requirement {id} (orphaned coverage)",
                    tag.kind
                );
                self.defect(DefectKind::Orphan, at, id, message, None);
                return;
            }
        };
        let (test, notes) = match self.test_of(tag, row) {
            Ok(found) => found,
            Err(message) => {
                self.defect(DefectKind::NotATest, at, id, message, Some(row));
                self.reject(row, &tag.kind);
                return;
            }
        };
        let coverer = Coverer {
            at: Location {
                file: tag.file.clone(),
                line: tag.line,
            },
            test,
            item: None,
            notes,
        };
        self.add_coverage(row, &tag.kind, coverer, at);
    }

    /// For test tags: the test, its status and its notes on this requirement, or why it is
    /// no test.
    // [impl->req~trace.test-attach~1]
    #[allow(clippy::type_complexity)]
    fn test_of(
        &self,
        tag: &Tag,
        row: usize,
    ) -> Result<(Option<(String, TestStatus)>, Vec<Note>), String> {
        if !tags::is_test_type(&tag.kind) {
            return Ok((None, Vec::new()));
        }
        let kind = &tag.kind;
        let target = self
            .rows
            .get(row)
            .map(|r| r.id.to_string())
            .unwrap_or_default();
        let (name, parameterized) = match &tag.attachment {
            Attachment::Test {
                name,
                parameterized,
                ..
            } => (name, *parameterized),
            Attachment::Script { name, .. } => (name, false),
            Attachment::NotATest { name, line } => {
                return Err(format!(
                    "`{kind}` tag for {target} is on `fn {name}` ({}:{line}), which is not a \
                     test (no #[test] attribute)",
                    tag.file
                ))
            }
            Attachment::Ignored { name, line } => {
                return Err(format!(
                    "`{kind}` tag for {target} is on `fn {name}` ({}:{line}), which is \
                     #[ignore]d and never runs",
                    tag.file
                ))
            }
            Attachment::NoFunction { found, line } => {
                let what = if *line == 0 {
                    "the end of the file".to_owned()
                } else {
                    format!("`{found}` (line {line})")
                };
                return Err(format!(
                    "`{kind}` tag for {target} must stand directly above a test function, but \
                     is followed by {what}"
                ));
            }
            Attachment::None => {
                return Err(format!(
                    "`{kind}` tag for {target} is not attached to a test"
                ))
            }
        };
        let (status, notes) = match self.results {
            None => (TestStatus::NoResults, Vec::new()),
            Some(results) => {
                let found = results.lookup(name, parameterized);
                // [impl->req~trace.evidence-notes~1]
                let notes = found
                    .iter()
                    .flat_map(|r| r.notes.iter())
                    .filter(|n| n.requirement == target)
                    .cloned()
                    .collect();
                (status_of(&found), notes)
            }
        };
        Ok((Some((name.clone(), status)), notes))
    }

    fn malformed(&mut self, spec: &ParsedSpec, scan: &Scan) {
        let problems = spec
            .problems
            .iter()
            .map(|p| (&p.file, p.line, &p.subject, &p.message))
            .chain(
                scan.problems
                    .iter()
                    .map(|p| (&p.file, p.line, &p.subject, &p.message)),
            );
        let defects: Vec<Defect> = problems
            .map(|(file, line, subject, message)| Defect {
                kind: DefectKind::Malformed,
                file: file.clone(),
                line,
                id: subject.clone(),
                message: message.clone(),
                row: None,
            })
            .collect();
        self.defects.extend(defects);
    }

    /// Every needed type must be covered; with results, test coverage must
    /// also pass.
    // [impl->req~trace.coverage~1]
    // [impl->req~trace.test-results~1]
    fn needs(&mut self) {
        let with_results = self.results.is_some();
        let known = self.known_types();
        for row in 0..self.rows.len() {
            if !self.is_first_definition(row) {
                continue;
            }
            let Some(current) = self.rows.get(row) else {
                continue;
            };
            let mut found = Vec::new();
            let mut all_ok = !current.needs.is_empty();
            for need in &current.needs {
                // Unknown types are reported by `item_contents` already.
                if !known.contains(need) {
                    all_ok = false;
                    continue;
                }
                let coverers = current.coverage.get(need).map_or(&[][..], Vec::as_slice);
                if coverers.is_empty() {
                    all_ok = false;
                    let rejected = self
                        .rejected
                        .get(row)
                        .and_then(|m| m.get(need))
                        .copied()
                        .unwrap_or(0);
                    found.push((DefectKind::Uncovered, uncovered_message(need, rejected)));
                    continue;
                }
                if !(with_results && tags::is_test_type(need)) {
                    continue;
                }
                let passed = coverers
                    .iter()
                    .any(|c| matches!(c.test, Some((_, TestStatus::Passed))));
                let failed = coverers
                    .iter()
                    .any(|c| matches!(c.test, Some((_, TestStatus::Failed(_)))));
                // A tagged test that was skipped or is missing from the results is no
                // evidence, even beside a passing one: the matrix would name it as shown.
                // [impl->req~trace.skipped-tests~1]
                let not_run = coverers
                    .iter()
                    .any(|c| matches!(c.test, Some((_, TestStatus::NotRun(_)))));
                if !passed || failed || not_run {
                    all_ok = false;
                    found.push((
                        DefectKind::TestResult,
                        results_message(need, coverers, passed, failed),
                    ));
                }
            }
            let at = (current.at.file.clone(), current.at.line);
            let id = current.id.to_string();
            // [impl->req~trace.evidence-notes~1]
            let not_shown = not_shown_here(current.coverage.values().flatten());
            if let Some(r) = self.rows.get_mut(row) {
                r.covered = all_ok && !not_shown;
                r.not_shown = not_shown;
            }
            for (kind, message) in found {
                self.defect(kind, (&at.0, at.1), id.clone(), message, Some(row));
            }
        }
    }

    fn finish(mut self) -> Analysis {
        self.defects.sort_by(|a, b| {
            (&a.file, a.line, a.kind, &a.message).cmp(&(&b.file, b.line, b.kind, &b.message))
        });
        self.defects.dedup();
        for defect in &self.defects {
            if let Some(row) = defect.row.and_then(|r| self.rows.get_mut(r)) {
                row.defective = true;
            }
        }
        Analysis {
            rows: self.rows,
            defects: self.defects,
        }
    }
}

/// Whether a part of a requirement some test reports not shown was shown by no passing test
/// (a `Shown` note of the same part): e.g. freezing, refused by `systemd --user` but done
/// under system-mode systemd.
// [impl->req~trace.evidence-notes~1]
fn not_shown_here<'a>(coverers: impl Iterator<Item = &'a Coverer> + Clone) -> bool {
    let shown: Vec<&str> = coverers
        .clone()
        .filter(|c| matches!(c.test, Some((_, TestStatus::Passed))))
        .flat_map(|c| &c.notes)
        .filter(|n| n.kind == NoteKind::Shown)
        .map(Note::part)
        .collect();
    coverers
        .flat_map(|c| &c.notes)
        .filter(|n| n.kind == NoteKind::NotShown)
        .any(|n| !shown.contains(&n.part()))
}

// [impl->req~trace.coverage~1]
fn uncovered_message(need: &str, rejected: usize) -> String {
    let source = if tags::COVERAGE_TYPES.contains(&need) {
        format!("no valid `{need}` tag names it")
    } else {
        format!("no `{need}` item covers it (`Covers:`)")
    };
    let note = match rejected {
        0 => String::new(),
        1 => format!(" (1 `{need}` tag was rejected, see the defect at its location)"),
        n => format!(" ({n} `{need}` tags were rejected, see the defects at their locations)"),
    };
    format!("needs `{need}` coverage, but {source}{note}")
}

/// Lists the tests that did not pass and why.
// [impl->req~trace.test-results~1]
fn results_message(need: &str, coverers: &[Coverer], passed: bool, failed: bool) -> String {
    let failing: Vec<String> = coverers
        .iter()
        .filter_map(|c| {
            let (name, status) = c.test.as_ref()?;
            let why = match status {
                TestStatus::Passed | TestStatus::NoResults => return None,
                TestStatus::Failed(msg) => format!("failed: {msg}"),
                TestStatus::NotRun(msg) => format!("not run: {msg}"),
            };
            Some(format!("`{name}` ({}) {why}", c.at))
        })
        .collect();
    let head = if passed && failed {
        format!("a `{need}` test failed")
    } else if passed {
        format!("a `{need}` test did not run and shows nothing")
    } else {
        format!("no `{need}` test passed")
    };
    format!("{head}: {}", failing.join("; "))
}

/// A test passes only if every result with its name passed; no result at
/// all means it did not run.
// [impl->req~trace.test-results~1]
pub fn status_of(found: &[&TestResult]) -> TestStatus {
    if found.is_empty() {
        return TestStatus::NotRun("not found in the results".to_owned());
    }
    let several = found.len() > 1;
    let label = |r: &TestResult, text: &str| {
        if several {
            format!("{}: {text}", r.name)
        } else {
            text.to_owned()
        }
    };
    let failures: Vec<String> = found
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Failed(msg) => Some(label(r, msg)),
            _ => None,
        })
        .collect();
    if !failures.is_empty() {
        return TestStatus::Failed(failures.join(" | "));
    }
    let skipped: Vec<String> = found
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Skipped(msg) => Some(label(r, msg)),
            _ => None,
        })
        .collect();
    if skipped.is_empty() {
        TestStatus::Passed
    } else {
        TestStatus::NotRun(skipped.join(" | "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::TestResult;
    use crate::spec;
    use crate::tags::{scan_text, Lang};
    use crate::testutil::tag;

    const SPEC: &str = "\
### A
`req~a~1`
Statement A.
Needs: impl, utest

### B
`req~b~2`
Statement B.
Needs: impl, itest
Depends:
* `req~a~1`
";

    /// Source covering the spec above completely.
    fn clean_source() -> String {
        format!(
            "// {}\nfn a() {{}}\n// {}\nfn b() {{}}\n\
             // {}\n#[test]\nfn a_works() {{}}\n// {}\n#[test]\nfn b_works() {{}}\n",
            tag("impl", "req~a~1"),
            tag("impl", "req~b~2"),
            tag("utest", "req~a~1"),
            tag("itest", "req~b~2"),
        )
    }

    fn analyse(spec_text: &str, source: &str, results: Option<&Results>) -> Analysis {
        let parsed = spec::parse("requirements/r.md", spec_text);
        let (tags, problems) = scan_text("src/lib.rs", source, Lang::Rust);
        let scan = Scan {
            tags,
            problems,
            files: 1,
        };
        check(&parsed, &scan, results)
    }

    fn kinds(analysis: &Analysis) -> Vec<DefectKind> {
        analysis.defects.iter().map(|d| d.kind).collect()
    }

    fn results(entries: &[(&str, Outcome)]) -> Results {
        Results::from_entries(
            entries
                .iter()
                .map(|(name, outcome)| TestResult {
                    name: name.to_string(),
                    outcome: outcome.clone(),
                    source: "junit.xml".into(),
                    notes: Vec::new(),
                })
                .collect(),
            vec!["junit.xml".into()],
        )
    }

    // [utest->req~trace.coverage~1]
    #[test]
    fn clean_tree_has_no_defects() {
        let analysis = analyse(SPEC, &clean_source(), None);
        assert!(analysis.defects.is_empty(), "{:?}", analysis.defects);
        assert_eq!(analysis.covered(), 2);
        assert!(analysis.rows.iter().all(|r| r.covered && !r.defective));
        let a = &analysis.rows[0];
        assert_eq!(a.coverage["impl"][0].at.to_string(), "src/lib.rs:1");
        assert_eq!(
            a.coverage["utest"][0].test,
            Some(("a_works".into(), TestStatus::NoResults))
        );
    }

    // [utest->req~trace.coverage~1]
    #[test]
    fn missing_coverage_is_reported_per_type() {
        let source = format!("// {}\n", tag("impl", "req~a~1"));
        let analysis = analyse(SPEC, &source, None);
        let messages: Vec<String> = analysis.defects.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            messages,
            vec![
                "requirements/r.md:2: [uncovered] req~a~1: needs `utest` coverage, but no valid `utest` tag names it",
                "requirements/r.md:7: [uncovered] req~b~2: needs `impl` coverage, but no valid `impl` tag names it",
                "requirements/r.md:7: [uncovered] req~b~2: needs `itest` coverage, but no valid `itest` tag names it",
            ]
        );
        assert_eq!(analysis.covered(), 0);
    }

    // [utest->req~trace.coverage~1]
    #[test]
    fn unwanted_coverage_is_reported() {
        let source = format!(
            "{}// {}\n#[test]\nfn extra() {{}}\n",
            clean_source(),
            tag("itest", "req~a~1")
        );
        let analysis = analyse(SPEC, &source, None);
        assert_eq!(kinds(&analysis), vec![DefectKind::Unwanted]);
        assert_eq!(analysis.defects[0].line, 11);
        assert!(analysis.defects[0]
            .message
            .contains("does not need `itest`"));
    }

    // [utest->req~trace.orphan~1]
    #[test]
    fn orphan_tag_is_reported() {
        let source = format!("{}// {}\n", clean_source(), tag("impl", "req~nope~1"));
        let analysis = analyse(SPEC, &source, None);
        assert_eq!(
            analysis.defects[0].to_string(),
            "src/lib.rs:11: [orphan] req~nope~1: `impl` tag names unknown requirement req~nope~1 (orphaned coverage)"
        );
        assert_eq!(analysis.defects.len(), 1);
    }

    // [utest->req~trace.revision~1]
    #[test]
    fn wrong_revision_names_current_one() {
        let source = clean_source()
            .replace(&tag("impl", "req~b~2"), &tag("impl", "req~b~1"))
            .replace(&tag("utest", "req~a~1"), &tag("utest", "req~a~3"));
        let analysis = analyse(SPEC, &source, None);
        let messages: Vec<String> = analysis.defects.iter().map(|d| d.to_string()).collect();
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(messages.contains(&"src/lib.rs:3: [revision] req~b~1: `impl` tag names revision 1 which is outdated: the current revision is 2 (req~b~2)".to_string()));
        assert!(messages.contains(&"src/lib.rs:5: [revision] req~a~3: `utest` tag names revision 3 which does not exist: the current revision is 1 (req~a~1)".to_string()));
        assert!(messages
            .iter()
            .any(|m| m.contains("req~b~2: needs `impl` coverage")
                && m.contains("1 `impl` tag was rejected")));
    }

    // [utest->req~trace.duplicate~1]
    #[test]
    fn duplicate_ids_are_reported_with_both_locations() {
        let spec_text = format!("{SPEC}\n### A again\n`req~a~2`\nOther.\nNeeds: impl\n");
        let analysis = analyse(&spec_text, &clean_source(), None);
        assert_eq!(
            analysis.defects[0].to_string(),
            "requirements/r.md:14: [duplicate] req~a~2: duplicate item: `req~a` is already defined as req~a~1 at requirements/r.md:2"
        );
        assert_eq!(analysis.defects.len(), 1);
        assert!(analysis.rows[2].defective);
        assert!(!analysis.rows[0].defective);
    }

    // [utest->req~trace.test-attach~1]
    #[test]
    fn test_tags_on_non_tests_are_reported() {
        let source = clean_source()
            .replace("#[test]\nfn a_works", "fn a_works")
            .replace("#[test]\nfn b_works", "#[test]\n#[ignore]\nfn b_works");
        let analysis = analyse(SPEC, &source, None);
        let messages: Vec<String> = analysis.defects.iter().map(|d| d.to_string()).collect();
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(messages.contains(&"src/lib.rs:5: [not-a-test] req~a~1: `utest` tag for req~a~1 is on `fn a_works` (src/lib.rs:6), which is not a test (no #[test] attribute)".to_string()));
        assert!(messages.contains(&"src/lib.rs:7: [not-a-test] req~b~2: `itest` tag for req~b~2 is on `fn b_works` (src/lib.rs:10), which is #[ignore]d and never runs".to_string()));
        assert_eq!(
            kinds(&analysis),
            vec![
                DefectKind::Uncovered,
                DefectKind::Uncovered,
                DefectKind::NotATest,
                DefectKind::NotATest
            ]
        );
    }

    // [utest->req~trace.coverage~1]
    #[test]
    fn impl_tag_on_a_test_is_fine() {
        let source = clean_source().replace(
            "#[test]\nfn a_works",
            &format!("// {}\n#[test]\nfn a_works", tag("impl", "req~b~2")),
        );
        let analysis = analyse(SPEC, &source, None);
        assert!(analysis.defects.is_empty(), "{:?}", analysis.defects);
    }

    // [utest->req~trace.coverage-type~1]
    #[test]
    fn unknown_coverage_types_are_reported() {
        let source = format!("{}// {}\n", clean_source(), tag("test", "req~a~1"));
        let spec_text = SPEC.replace("Needs: impl, utest", "Needs: impl, utest, uman");
        let analysis = analyse(&spec_text, &source, None);
        let messages: Vec<String> = analysis.defects.iter().map(|d| d.to_string()).collect();
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert!(messages[0].starts_with("requirements/r.md:2: [unknown-type] req~a~1: `Needs:` lists unknown coverage type `uman`"));
        assert!(messages[1].starts_with(
            "src/lib.rs:11: [unknown-type] req~a~1: tag has unknown coverage type `test`"
        ));
    }

    // [utest->req~trace.test-results~1]
    #[test]
    fn test_results_failed_and_not_run() {
        let r = results(&[
            ("tests::a_works", Outcome::Failed("assertion failed".into())),
            ("other::b_works", Outcome::Skipped("ignored".into())),
        ]);
        let analysis = analyse(SPEC, &clean_source(), Some(&r));
        let messages: Vec<String> = analysis.defects.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            messages,
            vec![
                "requirements/r.md:2: [test-result] req~a~1: no `utest` test passed: `a_works` (src/lib.rs:5) failed: assertion failed",
                "requirements/r.md:7: [test-result] req~b~2: no `itest` test passed: `b_works` (src/lib.rs:8) not run: ignored",
            ]
        );
        assert_eq!(analysis.covered(), 0);

        let missing = results(&[("tests::a_works", Outcome::Passed)]);
        let analysis = analyse(SPEC, &clean_source(), Some(&missing));
        assert_eq!(analysis.defects.len(), 1);
        assert!(analysis.defects[0]
            .message
            .ends_with("`b_works` (src/lib.rs:8) not run: not found in the results"));
        assert_eq!(analysis.covered(), 1);
    }

    // [utest->req~trace.evidence-notes~1]
    #[test]
    fn a_part_not_shown_on_this_host_is_neither_covered_nor_a_defect() {
        let note = |kind, requirement: &str, text: &str| Note {
            kind,
            requirement: requirement.into(),
            text: text.into(),
        };
        let mut r = results(&[("a_works", Outcome::Passed), ("b_works", Outcome::Passed)]);
        let entries = vec![
            TestResult {
                name: "a_works".into(),
                outcome: Outcome::Passed,
                source: "junit.xml".into(),
                notes: vec![
                    note(NoteKind::Measured, "req~a~1", "took 1.2 s"),
                    note(NoteKind::NotShown, "req~b~2", "for another requirement"),
                ],
            },
            TestResult {
                name: "b_works".into(),
                outcome: Outcome::Passed,
                source: "junit.xml".into(),
                notes: vec![note(NoteKind::NotShown, "req~b~2", "freezing is refused")],
            },
        ];
        r = Results::from_entries(entries, r.files.clone());
        let analysis = analyse(SPEC, &clean_source(), Some(&r));
        assert!(analysis.defects.is_empty(), "{:?}", analysis.defects);
        assert_eq!(analysis.covered(), 1);
        let a = &analysis.rows[0];
        assert!(a.covered && !a.not_shown);
        let a_notes: Vec<&Note> = a
            .coverage
            .values()
            .flatten()
            .flat_map(|c| &c.notes)
            .collect();
        assert_eq!(
            a_notes,
            vec![&note(NoteKind::Measured, "req~a~1", "took 1.2 s")]
        );
        let b = &analysis.rows[1];
        assert!(!b.covered && b.not_shown && !b.defective);
    }

    // [utest->req~trace.evidence-notes~1]
    #[test]
    fn a_part_not_shown_is_covered_when_another_passing_test_shows_that_part() {
        let note = |kind, text: &str| Note {
            kind,
            requirement: "req~b~2".into(),
            text: text.into(),
        };
        let source = format!(
            "{}// {}\n#[test]\nfn b_system() {{}}\n",
            clean_source(),
            tag("itest", "req~b~2")
        );
        // (what b_system shows, its outcome) -> (b covered, b not shown)
        let cases = [
            (
                "freezing: frozen and thawed",
                Outcome::Passed,
                (true, false),
            ),
            // Another part: freezing stays not shown.
            ("exec: ran", Outcome::Passed, (false, true)),
            // A failing test shows nothing.
            (
                "freezing: frozen",
                Outcome::Failed("boom".into()),
                (false, true),
            ),
        ];
        for (shown, outcome, want) in cases {
            let entries = vec![
                TestResult {
                    name: "a_works".into(),
                    outcome: Outcome::Passed,
                    source: "junit.xml".into(),
                    notes: Vec::new(),
                },
                TestResult {
                    name: "b_works".into(),
                    outcome: Outcome::Passed,
                    source: "junit.xml".into(),
                    notes: vec![note(NoteKind::NotShown, "freezing: systemd refuses it")],
                },
                TestResult {
                    name: "b_system".into(),
                    outcome: outcome.clone(),
                    source: "junit.xml".into(),
                    notes: vec![note(NoteKind::Shown, shown)],
                },
            ];
            let r = Results::from_entries(entries, vec!["junit.xml".into()]);
            let analysis = analyse(SPEC, &source, Some(&r));
            let b = &analysis.rows[1];
            assert_eq!((b.covered, b.not_shown), want, "{shown} {outcome:?}");
            let failed = matches!(outcome, Outcome::Failed(_));
            assert_eq!(b.defective, failed, "{:?}", analysis.defects);
        }
    }

    // [utest->req~trace.skipped-tests~1]
    #[test]
    fn a_skipped_or_missing_test_is_a_defect_even_if_another_passes() {
        let source = format!(
            "{}// {}\n#[test]\nfn a_again() {{}}\n",
            clean_source(),
            tag("utest", "req~a~1")
        );
        for outcome in [
            Some(Outcome::Skipped("skipped at run time: needs root".into())),
            None,
        ] {
            let mut entries = vec![("a_works", Outcome::Passed), ("b_works", Outcome::Passed)];
            entries.extend(outcome.clone().map(|o| ("a_again", o)));
            let analysis = analyse(SPEC, &source, Some(&results(&entries)));
            assert_eq!(analysis.defects.len(), 1, "{:?}", analysis.defects);
            let message = &analysis.defects[0].message;
            assert!(
                message.starts_with("a `utest` test did not run and shows nothing: `a_again` (src/lib.rs:11) not run: "),
                "{message}"
            );
            let why = if outcome.is_some() {
                "needs root"
            } else {
                "not found in the results"
            };
            assert!(message.ends_with(why), "{message}");
            assert_eq!(analysis.covered(), 1);
        }
    }

    // [utest->req~trace.test-results~1]
    #[test]
    fn all_results_of_a_name_must_pass() {
        let r = results(&[
            ("a::a_works", Outcome::Passed),
            ("b::a_works", Outcome::Failed("boom".into())),
            ("b_works", Outcome::Passed),
        ]);
        let analysis = analyse(SPEC, &clean_source(), Some(&r));
        assert_eq!(analysis.defects.len(), 1);
        assert!(analysis.defects[0]
            .message
            .contains("failed: b::a_works: boom"));

        let ok = results(&[
            ("a::a_works", Outcome::Passed),
            ("b::a_works", Outcome::Passed),
            ("b_works", Outcome::Passed),
        ]);
        let analysis = analyse(SPEC, &clean_source(), Some(&ok));
        assert!(analysis.defects.is_empty(), "{:?}", analysis.defects);
        assert_eq!(analysis.covered(), 2);
    }

    // [utest->req~trace.test-results~1]
    #[test]
    fn one_failing_test_is_a_defect_even_if_another_passes() {
        let source = format!(
            "{}// {}\n#[test]\nfn a_again() {{}}\n",
            clean_source(),
            tag("utest", "req~a~1")
        );
        let r = results(&[
            ("a_works", Outcome::Passed),
            ("a_again", Outcome::Failed("nope".into())),
            ("b_works", Outcome::Passed),
        ]);
        let analysis = analyse(SPEC, &source, Some(&r));
        assert_eq!(analysis.defects.len(), 1, "{:?}", analysis.defects);
        assert!(analysis.defects[0]
            .message
            .starts_with("a `utest` test failed: `a_again` (src/lib.rs:11) failed: nope"));
    }

    // [utest->req~trace.depends~1]
    #[test]
    fn unknown_and_outdated_depends() {
        let spec_text = SPEC.replace("* `req~a~1`", "* `req~zzz~1`\n* `req~a~0`");
        let analysis = analyse(&spec_text, &clean_source(), None);
        let messages: Vec<String> = analysis.defects.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            messages,
            vec![
                "requirements/r.md:11: [unknown-reference] req~zzz~1: Depends: of req~b~2 names unknown item req~zzz~1",
                "requirements/r.md:12: [revision] req~a~0: Depends: of req~b~2 names revision 0 which is outdated: the current revision is 1 (req~a~1)",
            ]
        );
    }

    // [utest->req~trace.depends~1]
    #[test]
    fn covers_provides_coverage() {
        let spec_text = format!(
            "{SPEC}\n### Feature\n`feat~top~1`\nTop.\nNeeds: req\n\n### C\n`req~c~1`\nC.\nNeeds: impl\nCovers:\n* feat~top~1\n"
        );
        let source = format!("{}// {}\n", clean_source(), tag("impl", "req~c~1"));
        let analysis = analyse(&spec_text, &source, None);
        assert!(analysis.defects.is_empty(), "{:?}", analysis.defects);
        assert_eq!(analysis.covered(), 4);
    }

    // [utest->req~trace.item-complete~1]
    #[test]
    fn empty_statement_and_missing_needs() {
        let spec_text = "`req~a~1`\n\nRationale:\nwhy\n\n`req~b~1`\nText.\nNeeds:\n";
        let analysis = analyse(spec_text, "", None);
        let messages: Vec<String> = analysis.defects.iter().map(|d| d.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(
            messages[0].starts_with("requirements/r.md:1: [incomplete] req~a~1: empty statement")
        );
        assert!(
            messages[1].starts_with("requirements/r.md:1: [incomplete] req~a~1: no `Needs:` line")
        );
        assert!(
            messages[2].starts_with("requirements/r.md:6: [incomplete] req~b~1: empty `Needs:`")
        );
        assert_eq!(analysis.covered(), 0);
    }

    // [utest->req~trace.tag-scan~1]
    #[test]
    fn malformed_tags_and_ids_are_defects() {
        let spec_text = format!("{SPEC}\n`req~Bad Id~1`\n");
        let source = format!("{}// {}\n", clean_source(), concat!("[", "impl->req~a~x]"));
        let analysis = analyse(&spec_text, &source, None);
        assert_eq!(
            kinds(&analysis),
            vec![DefectKind::Malformed, DefectKind::Malformed]
        );
        assert_eq!(analysis.defects[0].line, 13);
        assert_eq!(analysis.defects[1].file, "src/lib.rs");
    }
}
