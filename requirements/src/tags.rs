//! Finds OpenFastTrace coverage tags in source files and attaches test tags
//! to the test function that follows them.
//!
//! A tag is `[<type> -> <item id>]` anywhere on a line (whitespace allowed
//! as in OFT). The whole line is searched, not only comments, because that
//! is what OFT does: a tag-shaped string literal counts for OFT too, so it
//! must count here.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::id::ItemId;

/// Coverage types a tag may have.
pub const COVERAGE_TYPES: [&str; 3] = ["impl", "utest", "itest"];

/// Coverage types that must be attached to a test (and can have results).
pub fn is_test_type(kind: &str) -> bool {
    kind == "utest" || kind == "itest"
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Shell,
}

impl Lang {
    /// By extension only, like OFT, so both tools see the same files.
    fn of(file_name: &str) -> Option<Lang> {
        let ext = Path::new(file_name).extension()?.to_str()?;
        match ext {
            "rs" => Some(Lang::Rust),
            "sh" | "bash" | "zsh" => Some(Lang::Shell),
            _ => None,
        }
    }
}

/// What a tag was found to be attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// `impl` tags (and tags of unknown type) are not attached to anything.
    None,
    /// A runnable Rust test. `parameterized` tests (`rstest`, `test_case`)
    /// report their results as `<name>::<case>`.
    Test {
        name: String,
        line: usize,
        parameterized: bool,
    },
    /// A function without a test attribute.
    NotATest { name: String, line: usize },
    /// An `#[ignore]`d function: it never runs in CI.
    Ignored { name: String, line: usize },
    /// No function follows the tag (`line` 0 means end of file).
    NoFunction { found: String, line: usize },
    /// A shell script, or a shell function in it; `name` is matched
    /// against results like a test name.
    Script { name: String, line: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// Workspace-relative path, `/`-separated.
    pub file: String,
    pub line: usize,
    pub kind: String,
    pub target: ItemId,
    pub attachment: Attachment,
}

/// Text that was meant to be a tag but cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagProblem {
    pub file: String,
    pub line: usize,
    pub subject: String,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Scan {
    pub tags: Vec<Tag>,
    pub problems: Vec<TagProblem>,
    pub files: usize,
}

#[derive(Debug)]
pub enum TagError {
    ListDir { dir: PathBuf, source: io::Error },
    Read { path: PathBuf, source: io::Error },
}

impl fmt::Display for TagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagError::ListDir { dir, source } => {
                write!(
                    f,
                    "cannot list source directory {}: {source}",
                    dir.display()
                )
            }
            TagError::Read { path, source } => {
                write!(f, "cannot read source file {}: {source}", path.display())
            }
        }
    }
}

fn normalize(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    trimmed.strip_prefix("./").unwrap_or(trimmed).to_owned()
}

fn is_excluded(rel: &str, exclude: &[String]) -> bool {
    exclude.iter().map(|e| normalize(e)).any(|e| {
        rel == e
            || rel
                .strip_prefix(e.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Scans the given roots (workspace-relative) for tags. Missing roots are
/// skipped: not every checkout has every directory.
// [impl->req~trace.tag-scan~1]
pub fn scan_roots(root: &Path, roots: &[String], exclude: &[String]) -> Result<Scan, TagError> {
    let mut files = Vec::new();
    for start in roots.iter().map(|r| normalize(r)) {
        if is_excluded(&start, exclude) {
            continue;
        }
        let abs = root.join(&start);
        if abs.is_dir() {
            walk(&abs, &start, exclude, &mut files)?;
        } else if let Some(lang) = abs.is_file().then(|| Lang::of(&start)).flatten() {
            files.push((start, abs, lang));
        }
    }
    // Overlapping roots must not count a tag twice.
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.dedup_by(|a, b| a.0 == b.0);

    let mut scan = Scan::default();
    for (rel, abs, lang) in files {
        let bytes = fs::read(&abs).map_err(|source| TagError::Read {
            path: abs.clone(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let (tags, problems) = scan_text(&rel, &text, lang);
        scan.tags.extend(tags);
        scan.problems.extend(problems);
        scan.files += 1;
    }
    Ok(scan)
}

// [impl->req~trace.tag-scan~1]
fn walk(
    dir: &Path,
    rel: &str,
    exclude: &[String],
    out: &mut Vec<(String, PathBuf, Lang)>,
) -> Result<(), TagError> {
    let list_err = |source| TagError::ListDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_err)? {
        entries.push(entry.map_err(list_err)?);
    }
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let child_rel = format!("{rel}/{name}");
        if is_excluded(&child_rel, exclude) {
            continue;
        }
        // file_type() does not follow symlinks, so link loops cannot hang us.
        let file_type = entry.file_type().map_err(list_err)?;
        if file_type.is_dir() {
            // Build output and hidden directories (.git) hold no sources.
            if name == "target" || name.starts_with('.') {
                continue;
            }
            walk(&entry.path(), &child_rel, exclude, out)?;
        } else if file_type.is_file() {
            if let Some(lang) = Lang::of(&name) {
                out.push((child_rel, entry.path(), lang));
            }
        }
    }
    Ok(())
}

/// A tag as written on a line, before attachment.
#[derive(Debug, PartialEq, Eq)]
enum RawTag {
    Ok { kind: String, target: ItemId },
    Malformed { text: String, reason: String },
}

/// All tags on one line, left to right.
// [impl->req~trace.tag-scan~1]
fn find_tags(line: &str) -> Vec<RawTag> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(pos) = rest.find('[') {
        let after = rest.get(pos + 1..).unwrap_or("");
        match parse_tag(after) {
            Some((raw, remaining)) => {
                found.push(raw);
                rest = remaining;
            }
            None => rest = after,
        }
    }
    found
}

/// Parses a tag after its `[`. Returns `None` for text that is not a tag
/// attempt at all. A bracket, a word and `->` followed by text with a `~`
/// is a tag attempt: if it fails to parse, it is a typo that would silently
/// drop coverage, so it is `Malformed`.
fn parse_tag(text: &str) -> Option<(RawTag, &str)> {
    let t = text.trim_start();
    let kind_len = t
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(t.len());
    if kind_len == 0 {
        return None;
    }
    let kind = t.get(..kind_len)?;
    let t = t.get(kind_len..)?.trim_start().strip_prefix("->")?;
    let close = t.find(']');
    let body = close.and_then(|c| t.get(..c)).unwrap_or(t);
    let after_close = close.and_then(|c| t.get(c + 1..)).unwrap_or("");

    if let Some((target, after_id)) = ItemId::parse_prefix(t.trim_start()) {
        let after_id = after_id.trim_start();
        if let Some(rest) = after_id.strip_prefix(']') {
            let tag = RawTag::Ok {
                kind: kind.to_owned(),
                target,
            };
            return Some((tag, rest));
        }
        if after_id.starts_with(">>") {
            let tag = RawTag::Malformed {
                text: format!("[{kind}->{}]", body.trim()),
                reason: "needed-coverage suffix `>>` is not supported: list coverage in the \
                         requirement's `Needs:` instead"
                    .to_owned(),
            };
            return Some((tag, after_close));
        }
    }
    if !body.contains('~') {
        return None;
    }
    let reason = match (close, ItemId::parse(body.trim())) {
        (None, _) => "missing closing `]`".to_owned(),
        (Some(_), Err(err)) => err.to_string(),
        (Some(_), Ok(_)) => "unreadable tag".to_owned(),
    };
    let tag = RawTag::Malformed {
        text: format!("[{kind}->{}]", body.trim()),
        reason,
    };
    Some((tag, after_close))
}

/// Scans one file's text. `file` is the workspace-relative path used in
/// locations.
// [impl->req~trace.tag-scan~1]
pub fn scan_text(file: &str, text: &str, lang: Lang) -> (Vec<Tag>, Vec<TagProblem>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut tags = Vec::new();
    let mut problems = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        for raw in find_tags(line) {
            match raw {
                RawTag::Ok { kind, target } => {
                    let attachment = if !is_test_type(&kind) {
                        Attachment::None
                    } else {
                        match lang {
                            Lang::Rust => attach_rust(&lines, index),
                            Lang::Shell => attach_shell(&lines, index, file),
                        }
                    };
                    tags.push(Tag {
                        file: file.to_owned(),
                        line: index + 1,
                        kind,
                        target,
                        attachment,
                    });
                }
                RawTag::Malformed { text, reason } => problems.push(TagProblem {
                    file: file.to_owned(),
                    line: index + 1,
                    subject: text,
                    message: format!("malformed tag: {reason}"),
                }),
            }
        }
    }
    (tags, problems)
}

fn is_comment(trimmed: &str) -> bool {
    trimmed.starts_with("//") || trimmed.starts_with("/*") || trimmed.starts_with('*')
}

/// Leading outer attributes of a (possibly multi-line) text.
struct AttrSplit {
    attrs: Vec<String>,
    rest: String,
    unterminated: bool,
}

/// Splits `#[a] #[b(x = "]")] fn f()` into attribute bodies and the rest,
/// respecting nested brackets and string literals.
fn split_attrs(text: &str) -> AttrSplit {
    let mut attrs = Vec::new();
    let mut rest = text.trim_start();
    while let Some(body) = rest.strip_prefix("#[") {
        let mut depth = 1usize;
        let mut in_string = false;
        let mut escaped = false;
        let mut end = None;
        for (pos, c) in body.char_indices() {
            if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(pos);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            return AttrSplit {
                attrs,
                rest: rest.to_owned(),
                unterminated: true,
            };
        };
        attrs.push(body.get(..end).unwrap_or("").trim().to_owned());
        rest = body.get(end + 1..).unwrap_or("").trim_start();
    }
    AttrSplit {
        attrs,
        rest: rest.to_owned(),
        unterminated: false,
    }
}

/// The path of an attribute body: `test`, `tokio::test`, `ignore`, ...
fn attr_path(body: &str) -> &str {
    let end = body
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(body.len());
    body.get(..end).unwrap_or(body)
}

/// The name of the function declared by `line`, if it declares one.
fn fn_name(line: &str) -> Option<String> {
    let mut t = line.trim_start();
    loop {
        if let Some(r) = t.strip_prefix("pub(") {
            let close = r.find(')')?;
            t = r.get(close + 1..)?.trim_start();
            continue;
        }
        if let Some(r) = t.strip_prefix('"') {
            // The ABI string of `extern "C" fn`.
            let close = r.find('"')?;
            t = r.get(close + 1..)?.trim_start();
            continue;
        }
        let qualifier = ["pub", "const", "async", "unsafe", "default", "extern"]
            .iter()
            .find_map(|q| {
                t.strip_prefix(q)
                    .filter(|r| r.starts_with(char::is_whitespace))
            });
        match qualifier {
            Some(r) => t = r.trim_start(),
            None => break,
        }
    }
    let r = t.strip_prefix("fn")?;
    if !r.starts_with(char::is_whitespace) {
        return None;
    }
    let r = r.trim_start();
    let r = r.strip_prefix("r#").unwrap_or(r);
    let len = r
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(r.len());
    r.get(..len).filter(|n| !n.is_empty()).map(str::to_owned)
}

// [impl->req~trace.test-attach~1]
fn classify(attrs: &[String], name: String, line: usize) -> Attachment {
    let paths: Vec<&str> = attrs.iter().map(|a| attr_path(a)).collect();
    let last = |p: &str| p.rsplit("::").next().unwrap_or(p).to_owned();
    let parameterized = paths
        .iter()
        .any(|p| matches!(last(p).as_str(), "rstest" | "test_case"));
    let is_test = parameterized || paths.iter().any(|p| last(p) == "test");
    if paths.contains(&"ignore") {
        Attachment::Ignored { name, line }
    } else if is_test {
        Attachment::Test {
            name,
            line,
            parameterized,
        }
    } else {
        Attachment::NotATest { name, line }
    }
}

/// Finds the function a Rust test tag belongs to: the next `fn` after the
/// tag, skipping comments, blank lines and attributes. Attributes written
/// directly above the tag comment count too.
// [impl->req~trace.test-attach~1]
fn attach_rust(lines: &[&str], tag_index: usize) -> Attachment {
    let mut attrs: Vec<String> = Vec::new();
    for above in lines.get(..tag_index).unwrap_or(&[]).iter().rev() {
        let t = above.trim();
        if t.starts_with("#[") {
            attrs.extend(split_attrs(t).attrs);
        } else if !is_comment(t) {
            break;
        }
    }

    let mut in_block_comment = false;
    // Collects an attribute that spans several lines.
    let mut pending = String::new();
    for (index, raw) in lines.iter().enumerate().skip(tag_index + 1) {
        let t = raw.trim();
        if in_block_comment {
            in_block_comment = !t.contains("*/");
            continue;
        }
        let text = if pending.is_empty() {
            if t.is_empty() || t.starts_with("//") {
                continue;
            }
            if t.starts_with("/*") {
                in_block_comment = !t.contains("*/");
                continue;
            }
            t.to_owned()
        } else {
            let mut joined = std::mem::take(&mut pending);
            joined.push(' ');
            joined.push_str(t);
            joined
        };
        let split = split_attrs(&text);
        if split.unterminated {
            pending = text;
            continue;
        }
        attrs.extend(split.attrs);
        let rest = split.rest.trim();
        if rest.is_empty() || rest.starts_with("//") {
            continue;
        }
        return match fn_name(rest) {
            Some(name) => classify(&attrs, name, index + 1),
            None => Attachment::NoFunction {
                found: rest.to_owned(),
                line: index + 1,
            },
        };
    }
    Attachment::NoFunction {
        found: "end of file".to_owned(),
        line: 0,
    }
}

/// A shell test tag belongs to the shell function right after it, or else
/// to the whole script (named by its file stem).
// [impl->req~trace.test-attach~1]
fn attach_shell(lines: &[&str], tag_index: usize, file: &str) -> Attachment {
    for (index, raw) in lines.iter().enumerate().skip(tag_index + 1) {
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(name) = shell_function(t) {
            return Attachment::Script {
                name,
                line: index + 1,
            };
        }
        break;
    }
    let stem = Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.to_owned());
    Attachment::Script {
        name: stem,
        line: tag_index + 1,
    }
}

/// `name() {` or `function name {`.
fn shell_function(line: &str) -> Option<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let (body, keyword) = match line.strip_prefix("function ") {
        Some(rest) => (rest.trim_start(), true),
        None => (line, false),
    };
    let len = body.find(|c: char| !is_name_char(c)).unwrap_or(body.len());
    let name = body.get(..len).filter(|n| !n.is_empty())?;
    let after = body.get(len..)?.trim_start();
    (keyword || after.starts_with("()")).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{tag, TempDir};

    fn rust(text: &str) -> (Vec<Tag>, Vec<TagProblem>) {
        scan_text("src/x.rs", text, Lang::Rust)
    }

    // [utest->req~trace.tag-scan~1]
    #[test]
    fn finds_several_tags_on_one_line() {
        let line = format!(
            "// {} and {}{}",
            tag("impl", "req~a.b~1"),
            tag(" impl ", " req~c~2 "),
            tag("impl", "req~d~3")
        );
        let (tags, problems) = rust(&line);
        assert!(problems.is_empty());
        let ids: Vec<String> = tags.iter().map(|t| t.target.to_string()).collect();
        assert_eq!(ids, vec!["req~a.b~1", "req~c~2", "req~d~3"]);
        assert!(tags.iter().all(|t| t.line == 1 && t.kind == "impl"));
        assert!(tags.iter().all(|t| t.attachment == Attachment::None));
    }

    // [utest->req~trace.tag-scan~1]
    #[test]
    fn ignores_non_tags_and_reports_malformed_ones() {
        let text = format!(
            "let v = a[i];\nlet s = \"[{{kind}}->x]\";\n// {}\n// {}\n// {}\n// {}\n",
            tag("impl", "req~missing-revision"),
            concat!("[", "impl->req~a~1"),
            tag("impl", "req~a~1>>impl"),
            tag("impl", "nothing")
        );
        let (tags, problems) = rust(&text);
        assert!(tags.is_empty(), "{tags:?}");
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![3, 4, 5], "{problems:?}");
        assert!(problems[1].message.contains("missing closing"));
        assert!(problems[2].message.contains(">>"));
    }

    // [utest->req~trace.test-attach~1]
    #[test]
    fn attaches_test_tags_to_next_test_fn() {
        let text = format!(
            "\
mod tests {{
    // {}
    /// doc
    #[test]
    #[should_panic(expected = \"]\")]
    fn first_test() {{}}

    #[test]
    // {}
    pub(crate) async fn r#second() {{}}

    // {}
    #[rstest]
    #[case(1)]
    fn third(#[case] x: u8) {{}}
}}
",
            tag("utest", "req~a~1"),
            tag("utest", "req~a~1"),
            tag("itest", "req~a~1")
        );
        let (tags, problems) = rust(&text);
        assert!(problems.is_empty());
        assert_eq!(
            tags[0].attachment,
            Attachment::Test {
                name: "first_test".into(),
                line: 6,
                parameterized: false
            }
        );
        assert_eq!(
            tags[1].attachment,
            Attachment::Test {
                name: "second".into(),
                line: 10,
                parameterized: false
            }
        );
        assert_eq!(
            tags[2].attachment,
            Attachment::Test {
                name: "third".into(),
                line: 15,
                parameterized: true
            }
        );
    }

    // [utest->req~trace.test-attach~1]
    #[test]
    fn rejects_non_tests_ignored_tests_and_missing_fns() {
        let text = format!(
            "\
// {}
fn helper() {{}}
// {}
#[test]
#[ignore = \"slow\"]
fn slow() {{}}
// {}
#[tokio::test]
#[ignore]
async fn also_slow() {{}}
// {}
struct NotAFn;
#[test]
fn f() {{
    // {}
}}
",
            tag("utest", "req~a~1"),
            tag("utest", "req~a~1"),
            tag("itest", "req~a~1"),
            tag("utest", "req~a~1"),
            tag("utest", "req~a~1")
        );
        let (tags, _) = rust(&text);
        assert_eq!(
            tags[0].attachment,
            Attachment::NotATest {
                name: "helper".into(),
                line: 2
            }
        );
        assert_eq!(
            tags[1].attachment,
            Attachment::Ignored {
                name: "slow".into(),
                line: 6
            }
        );
        assert!(matches!(tags[2].attachment, Attachment::Ignored { .. }));
        assert_eq!(
            tags[3].attachment,
            Attachment::NoFunction {
                found: "struct NotAFn;".into(),
                line: 12
            }
        );
        assert!(matches!(
            tags[4].attachment,
            Attachment::NoFunction { line: 16, .. }
        ));
    }

    // [utest->req~trace.test-attach~1]
    #[test]
    fn multi_line_attributes_and_block_comments() {
        let text = format!(
            "// {}\n/* note\n   more */\n#[cfg_attr(\n    feature = \"x\",\n    allow(dead_code)\n)]\n#[test] fn inline() {{}}\n",
            tag("utest", "req~a~1")
        );
        let (tags, _) = rust(&text);
        assert_eq!(
            tags[0].attachment,
            Attachment::Test {
                name: "inline".into(),
                line: 8,
                parameterized: false
            }
        );
    }

    // [utest->req~trace.test-attach~1]
    #[test]
    fn shell_tags_attach_to_function_or_script() {
        let text = format!(
            "#!/bin/sh\n# {}\n\nsmoke_start() {{\n  true\n}}\n# {}\necho hi\n",
            tag("itest", "req~a~1"),
            tag("itest", "req~b~1")
        );
        let (tags, _) = scan_text("ci/smoke.sh", &text, Lang::Shell);
        assert_eq!(
            tags[0].attachment,
            Attachment::Script {
                name: "smoke_start".into(),
                line: 4
            }
        );
        assert_eq!(
            tags[1].attachment,
            Attachment::Script {
                name: "smoke".into(),
                line: 7
            }
        );
    }

    // [utest->req~trace.tag-scan~1]
    #[test]
    fn walks_roots_skipping_target_hidden_and_excluded() {
        let dir = TempDir::new("tags-walk");
        let t = format!("// {}\n", tag("impl", "req~a~1"));
        dir.write("common/src/lib.rs", &t);
        dir.write("common/target/debug/gen.rs", &t);
        dir.write("common/.hidden/x.rs", &t);
        dir.write("requirements/tests/fixtures/bad.rs", &t);
        dir.write("ci/check.sh", &format!("# {}\n", tag("impl", "req~a~1")));
        dir.write("ci/notes.md", &t);
        let roots: Vec<String> = ["common", "ci", "requirements", "absent", "common/src"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let exclude = vec!["requirements/tests/fixtures/".to_string()];
        let scan = scan_roots(dir.path(), &roots, &exclude).unwrap();
        let files: Vec<&str> = scan.tags.iter().map(|t| t.file.as_str()).collect();
        assert_eq!(files, vec!["ci/check.sh", "common/src/lib.rs"]);
        assert_eq!(scan.files, 2);
    }
}
