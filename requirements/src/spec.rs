//! Reads OpenFastTrace specification items from markdown files.
//!
//! The line grammar mirrors OFT's markdown importer (a heading directly
//! before the ID line is the title, an ID line starts an item, keyword lines
//! switch sections) so that the real OFT tool reads the same items.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::id::ItemId;

/// A reference from one item to another (`Depends:` or `Covers:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub id: ItemId,
    pub line: usize,
}

/// One specification item as written in a markdown file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub id: ItemId,
    pub title: String,
    /// Workspace-relative path, `/`-separated.
    pub file: String,
    /// Line of the ID.
    pub line: usize,
    pub statement: String,
    pub rationale: String,
    /// `None` when the item has no `Needs:` line at all.
    pub needs: Option<Vec<String>>,
    pub tags: Vec<String>,
    pub depends: Vec<Reference>,
    pub covers: Vec<Reference>,
}

/// Something in a specification file that cannot be read as intended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    pub file: String,
    pub line: usize,
    /// The text at fault (an ID or the line).
    pub subject: String,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct ParsedSpec {
    pub items: Vec<Requirement>,
    pub problems: Vec<SpecProblem>,
}

#[derive(Debug)]
pub enum SpecError {
    ListDir { dir: PathBuf, source: io::Error },
    Read { path: PathBuf, source: io::Error },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::ListDir { dir, source } => {
                write!(
                    f,
                    "cannot list requirement directory {}: {source}",
                    dir.display()
                )
            }
            SpecError::Read { path, source } => {
                write!(
                    f,
                    "cannot read requirement file {}: {source}",
                    path.display()
                )
            }
        }
    }
}

/// Reads every `*.md` file directly in `dir` except `README.md`, in name
/// order so that output and duplicate detection are deterministic.
// [impl->req~trace.spec-format~1]
pub fn load_dir(root: &Path, dir_rel: &str) -> Result<ParsedSpec, SpecError> {
    let dir = root.join(dir_rel);
    let entries = fs::read_dir(&dir).map_err(|source| SpecError::ListDir {
        dir: dir.clone(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SpecError::ListDir {
            dir: dir.clone(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_md = path.extension().is_some_and(|ext| ext == "md");
        if is_md && !name.eq_ignore_ascii_case("README.md") && path.is_file() {
            files.push((name, path));
        }
    }
    files.sort();
    let mut parsed = ParsedSpec::default();
    for (name, path) in files {
        let text = fs::read_to_string(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        let rel = join_rel(dir_rel, &name);
        let one = parse(&rel, &text);
        parsed.items.extend(one.items);
        parsed.problems.extend(one.problems);
    }
    Ok(parsed)
}

fn join_rel(dir: &str, name: &str) -> String {
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() || dir == "." {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Description,
    Rationale,
    Comment,
    Needs,
    Tags,
    Depends,
    Covers,
}

/// An item while its lines are being read.
struct Draft {
    id: ItemId,
    title: String,
    line: usize,
    description: Vec<String>,
    rationale: Vec<String>,
    needs: Option<Vec<String>>,
    tags: Vec<String>,
    depends: Vec<Reference>,
    covers: Vec<Reference>,
    section: Section,
}

impl Draft {
    fn finish(self, file: &str) -> Requirement {
        Requirement {
            id: self.id,
            title: self.title,
            file: file.to_owned(),
            line: self.line,
            statement: join_paragraphs(&self.description),
            rationale: join_paragraphs(&self.rationale),
            needs: self.needs,
            tags: self.tags,
            depends: self.depends,
            covers: self.covers,
        }
    }
}

/// Joins text lines, dropping leading and trailing blank lines.
fn join_paragraphs(lines: &[String]) -> String {
    lines.join("\n").trim().to_owned()
}

/// The ID at the start of an ID line: optionally backticked, anything may
/// follow (OFT allows e.g. an HTML anchor after it).
fn id_line(line: &str) -> Option<ItemId> {
    let text = line.strip_prefix('`').unwrap_or(line);
    ItemId::parse_prefix(text).map(|(id, _)| id)
}

/// A line that was clearly meant to be an ID line (`` `type~...` ``) but is
/// not a valid ID: reported, because OFT would silently read it as text.
fn malformed_id_line(line: &str) -> Option<String> {
    let inner = line.strip_prefix('`')?;
    let token_end = inner.find('`').unwrap_or(inner.len());
    let token = inner.get(..token_end)?;
    let kind_len = token.find('~')?;
    let kind = token.get(..kind_len)?;
    let looks_like_id = !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphabetic());
    (looks_like_id && ItemId::parse(token).is_err()).then(|| token.to_owned())
}

/// Splits `Needs: impl, utest` or `Tags: a, b` values.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .map(|w| w.trim_matches('`'))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
}

/// The text after a markdown bullet (`*`, `-` or `+`, up to three spaces of
/// indentation as in OFT).
fn bullet(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let rest = trimmed
        .strip_prefix('*')
        .or_else(|| trimmed.strip_prefix('-'))
        .or_else(|| trimmed.strip_prefix('+'))?;
    (rest.is_empty() || rest.starts_with(char::is_whitespace)).then_some(rest.trim())
}

/// Finds the first ID among the tokens of a reference text such as
/// `` `req~a~1` `` or `[req~a~1](#req~a~1)`.
fn find_reference(text: &str) -> Option<ItemId> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "~._-".contains(c)))
        .find_map(|token| ItemId::parse(token).ok())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    Rationale,
    Comment,
    Description,
    Needs,
    Tags,
    Depends,
    Covers,
    Status,
}

const KEYWORDS: [(&str, Keyword); 8] = [
    ("Rationale:", Keyword::Rationale),
    ("Comment:", Keyword::Comment),
    ("Description:", Keyword::Description),
    ("Needs:", Keyword::Needs),
    ("Tags:", Keyword::Tags),
    ("Depends:", Keyword::Depends),
    ("Covers:", Keyword::Covers),
    ("Status:", Keyword::Status),
];

/// A keyword line and the text after the keyword.
fn keyword(line: &str) -> Option<(Keyword, &str)> {
    let line = line.trim_start();
    KEYWORDS
        .iter()
        .find_map(|(prefix, kw)| line.strip_prefix(prefix).map(|rest| (*kw, rest.trim())))
}

/// Parses one markdown file. `file` is the workspace-relative path used in
/// locations.
// [impl->req~trace.spec-format~1]
pub fn parse(file: &str, text: &str) -> ParsedSpec {
    let mut parsed = ParsedSpec::default();
    let mut current: Option<Draft> = None;
    // A heading is the title of the next item only if nothing but blank
    // lines stands between them (OFT's rule).
    let mut pending_title: Option<String> = None;

    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim_end();

        if let Some(id) = id_line(line) {
            if let Some(done) = current.take() {
                parsed.items.push(done.finish(file));
            }
            current = Some(Draft {
                id,
                title: pending_title.take().unwrap_or_default(),
                line: line_no,
                description: Vec::new(),
                rationale: Vec::new(),
                needs: None,
                tags: Vec::new(),
                depends: Vec::new(),
                covers: Vec::new(),
                section: Section::Description,
            });
            continue;
        }
        if let Some(token) = malformed_id_line(line) {
            let message = match ItemId::parse(&token) {
                Err(err) => format!("malformed requirement ID: {err}"),
                Ok(_) => "malformed requirement ID".to_owned(),
            };
            parsed.problems.push(SpecProblem {
                file: file.to_owned(),
                line: line_no,
                subject: token,
                message,
            });
            continue;
        }
        if line.starts_with('#') {
            if let Some(done) = current.take() {
                parsed.items.push(done.finish(file));
            }
            pending_title = Some(line.trim_start_matches('#').trim().to_owned());
            continue;
        }
        let Some(draft) = current.as_mut() else {
            if !line.trim().is_empty() {
                pending_title = None;
            }
            continue;
        };
        if let Some((kw, rest)) = keyword(line) {
            apply_keyword(draft, kw, rest, file, line_no, &mut parsed.problems);
            continue;
        }
        read_section_line(draft, line, file, line_no, &mut parsed.problems);
    }
    if let Some(done) = current.take() {
        parsed.items.push(done.finish(file));
    }
    parsed
}

fn apply_keyword(
    draft: &mut Draft,
    kw: Keyword,
    rest: &str,
    file: &str,
    line: usize,
    problems: &mut Vec<SpecProblem>,
) {
    let push_text = |target: &mut Vec<String>, rest: &str| {
        if !rest.is_empty() {
            target.push(rest.to_owned());
        }
    };
    match kw {
        Keyword::Rationale => {
            draft.section = Section::Rationale;
            push_text(&mut draft.rationale, rest);
        }
        Keyword::Comment => draft.section = Section::Comment,
        Keyword::Description => {
            draft.section = Section::Description;
            push_text(&mut draft.description, rest);
        }
        Keyword::Needs => {
            draft.section = Section::Needs;
            draft.needs.get_or_insert_with(Vec::new).extend(words(rest));
        }
        Keyword::Tags => {
            draft.section = Section::Tags;
            draft.tags.extend(words(rest));
        }
        Keyword::Depends => {
            draft.section = Section::Depends;
            let refs = inline_references(rest, file, line, problems);
            draft.depends.extend(refs);
        }
        Keyword::Covers => {
            draft.section = Section::Covers;
            let refs = inline_references(rest, file, line, problems);
            draft.covers.extend(refs);
        }
        Keyword::Status => {}
    }
}

/// `Depends: req~a~1, req~b~2` on the keyword line itself.
fn inline_references(
    rest: &str,
    file: &str,
    line: usize,
    problems: &mut Vec<SpecProblem>,
) -> Vec<Reference> {
    let mut refs = Vec::new();
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let token = part.trim_matches('`');
        match ItemId::parse(token) {
            Ok(id) => refs.push(Reference { id, line }),
            Err(err) => problems.push(SpecProblem {
                file: file.to_owned(),
                line,
                subject: token.to_owned(),
                message: format!("unreadable reference: {err}"),
            }),
        }
    }
    refs
}

fn read_section_line(
    draft: &mut Draft,
    line: &str,
    file: &str,
    line_no: usize,
    problems: &mut Vec<SpecProblem>,
) {
    let blank = line.trim().is_empty();
    match draft.section {
        Section::Description => draft.description.push(line.to_owned()),
        Section::Rationale => draft.rationale.push(line.to_owned()),
        Section::Comment => {}
        Section::Needs | Section::Tags | Section::Depends | Section::Covers if blank => {}
        Section::Needs | Section::Tags => match bullet(line) {
            Some(entry) if draft.section == Section::Needs => {
                draft
                    .needs
                    .get_or_insert_with(Vec::new)
                    .extend(words(entry));
            }
            Some(entry) => draft.tags.extend(words(entry)),
            None => problems.push(stray_text(draft, line, file, line_no)),
        },
        Section::Depends | Section::Covers => {
            let Some(entry) = bullet(line) else {
                problems.push(stray_text(draft, line, file, line_no));
                return;
            };
            match find_reference(entry) {
                Some(id) => {
                    let reference = Reference { id, line: line_no };
                    if draft.section == Section::Depends {
                        draft.depends.push(reference);
                    } else {
                        draft.covers.push(reference);
                    }
                }
                None => problems.push(SpecProblem {
                    file: file.to_owned(),
                    line: line_no,
                    subject: draft.id.to_string(),
                    message: format!("list entry `{}` names no valid item ID", entry.trim()),
                }),
            }
        }
    }
}

/// Text after a `Needs:`/`Tags:`/`Depends:`/`Covers:` list belongs to no
/// section; OFT drops it silently, so it is reported instead.
fn stray_text(draft: &Draft, line: &str, file: &str, line_no: usize) -> SpecProblem {
    SpecProblem {
        file: file.to_owned(),
        line: line_no,
        subject: draft.id.to_string(),
        message: format!(
            "text `{}` after a list is not part of the item (start a new heading, or move it \
             above `Rationale:`/`Needs:`)",
            line.trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(text: &str) -> Requirement {
        let parsed = parse("requirements/x.md", text);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.items.len(), 1, "{:?}", parsed.items);
        parsed.items.into_iter().next().unwrap()
    }

    // [utest->req~trace.spec-format~1]
    #[test]
    fn parses_full_item() {
        let text = "\
# Manager

### Manager accepts registration
`req~manager.register~1`

The manager shall accept
registrations.

Second paragraph.

Rationale:
Because nodes must join.

Needs: impl, itest
Tags: link
Depends:
* `req~other.thing~1`
- req~third~2
";
        let item = parse_one(text);
        assert_eq!(item.id.to_string(), "req~manager.register~1");
        assert_eq!(item.title, "Manager accepts registration");
        assert_eq!(item.line, 4);
        assert_eq!(
            item.statement,
            "The manager shall accept\nregistrations.\n\nSecond paragraph."
        );
        assert_eq!(item.rationale, "Because nodes must join.");
        assert_eq!(
            item.needs,
            Some(vec!["impl".to_owned(), "itest".to_owned()])
        );
        assert_eq!(item.tags, vec!["link".to_owned()]);
        let deps: Vec<String> = item.depends.iter().map(|d| d.id.to_string()).collect();
        assert_eq!(deps, vec!["req~other.thing~1", "req~third~2"]);
        assert_eq!(item.depends[0].line, 17);
    }

    // [utest->req~trace.spec-format~1]
    #[test]
    fn parses_several_items_and_inline_lists() {
        let text = "\
## One
`req~a~1`
First.
Needs: impl
Depends: `req~b~2`, req~c~3
Covers:
  * feat~top~1

## Two
`req~b~2` <a id=\"req~b~2\"></a>

Second.

Needs:
* utest
* itest
";
        let parsed = parse("f.md", text);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.items.len(), 2);
        let a = &parsed.items[0];
        assert_eq!(a.title, "One");
        assert_eq!(a.depends.len(), 2);
        assert_eq!(a.covers[0].id.to_string(), "feat~top~1");
        let b = &parsed.items[1];
        assert_eq!(b.title, "Two");
        assert_eq!(b.statement, "Second.");
        assert_eq!(b.needs, Some(vec!["utest".to_owned(), "itest".to_owned()]));
    }

    // [utest->req~trace.spec-format~1]
    #[test]
    fn title_only_when_directly_before_id() {
        let text = "## Heading\nsome text\n`req~a~1`\nStatement.\nNeeds: impl\n";
        assert_eq!(parse_one(text).title, "");
    }

    // [utest->req~trace.item-complete~1]
    #[test]
    fn missing_needs_and_statement_are_visible() {
        let item = parse_one("`req~a~1`\n\nRationale:\nwhy\n");
        assert_eq!(item.statement, "");
        assert_eq!(item.needs, None);
    }

    // [utest->req~trace.spec-format~1]
    #[test]
    fn reports_malformed_ids_and_stray_text() {
        let text = "`req~Bad Name~1`\n\n`req~ok~1`\nText.\nNeeds: impl\nlost words\nDepends:\n* nothing here\n";
        let parsed = parse("f.md", text);
        assert_eq!(parsed.items.len(), 1);
        let lines: Vec<usize> = parsed.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![1, 6, 8], "{:?}", parsed.problems);
        assert!(parsed.problems[0]
            .message
            .contains("malformed requirement ID"));
        assert!(parsed.problems[1].message.contains("lost words"));
        assert!(parsed.problems[2].message.contains("nothing here"));
    }

    // [utest->req~trace.spec-format~1]
    #[test]
    fn loads_directory_without_readme() {
        let dir = crate::testutil::TempDir::new("spec-load");
        dir.write("reqs/b.md", "`req~b~1`\nB.\nNeeds: impl\n");
        dir.write("reqs/a.md", "`req~a~1`\nA.\nNeeds: impl\n");
        dir.write("reqs/README.md", "`req~readme~1`\nR.\nNeeds: impl\n");
        dir.write("reqs/notes.txt", "`req~txt~1`\n");
        let parsed = load_dir(dir.path(), "reqs").unwrap();
        let ids: Vec<String> = parsed.items.iter().map(|i| i.id.to_string()).collect();
        assert_eq!(ids, vec!["req~a~1", "req~b~1"]);
        assert_eq!(parsed.items[0].file, "reqs/a.md");
        assert!(load_dir(dir.path(), "missing").is_err());
    }
}
