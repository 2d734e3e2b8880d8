//! `requirements/trace.toml` and locating the workspace root.
//!
//! All paths in the settings and on the command line are relative to the
//! workspace root, so the checker gives the same answer from any directory
//! of the checkout.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "requirements/trace.toml";

/// Unknown keys are rejected: a misspelt key silently falling back to a
/// default could hide requirements or tests from the trace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Directory whose `*.md` files (except README.md) hold requirements.
    pub requirements_dir: String,
    /// Directories (or files) scanned for tags.
    pub source_roots: Vec<String>,
    /// Paths (and everything below them) not scanned for tags.
    pub exclude: Vec<String>,
    /// JUnit XML or libtest JSON files of the same CI run.
    pub results: Vec<String>,
    /// Where matrix.md and matrix.html are written.
    pub out_dir: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            requirements_dir: "requirements".to_owned(),
            source_roots: [
                "common",
                "manager",
                "agent",
                "ctl",
                "tests",
                "requirements",
                "ci",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            exclude: vec!["requirements/tests/fixtures".to_owned()],
            results: Vec::new(),
            out_dir: "target/trace".to_owned(),
        }
    }
}

#[derive(Debug)]
pub enum SettingsError {
    CurrentDir(io::Error),
    NoWorkspace(PathBuf),
    Read { path: PathBuf, source: io::Error },
    Parse { path: PathBuf, message: String },
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsError::CurrentDir(err) => write!(f, "cannot get the current directory: {err}"),
            SettingsError::NoWorkspace(start) => write!(
                f,
                "no Cargo.toml with a [workspace] table in {} or any parent directory",
                start.display()
            ),
            SettingsError::Read { path, source } => {
                write!(f, "cannot read settings {}: {source}", path.display())
            }
            SettingsError::Parse { path, message } => {
                write!(
                    f,
                    "invalid settings {}: {}",
                    path.display(),
                    message.trim_end()
                )
            }
        }
    }
}

fn declares_workspace(manifest: &Path) -> bool {
    fs::read_to_string(manifest)
        .map(|text| text.lines().any(|l| l.trim() == "[workspace]"))
        .unwrap_or(false)
}

/// The nearest directory at or above `start` whose Cargo.toml has a
/// `[workspace]` table.
// [impl->req~trace.settings~1]
pub fn find_workspace_root(start: &Path) -> Result<PathBuf, SettingsError> {
    start
        .ancestors()
        .find(|dir| declares_workspace(&dir.join("Cargo.toml")))
        .map(Path::to_path_buf)
        .ok_or_else(|| SettingsError::NoWorkspace(start.to_path_buf()))
}

pub fn parse(path: &Path, text: &str) -> Result<Settings, SettingsError> {
    toml::from_str(text).map_err(|err| SettingsError::Parse {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

/// Reads the settings. A missing file is an error only if it was asked
/// for explicitly; the default file may be absent (defaults apply).
// [impl->req~trace.settings~1]
pub fn load(path: &Path, explicit: bool) -> Result<Settings, SettingsError> {
    match fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(err) if err.kind() == io::ErrorKind::NotFound && !explicit => Ok(Settings::default()),
        Err(source) => Err(SettingsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    // [utest->req~trace.settings~1]
    #[test]
    fn defaults_and_partial_files() {
        let s = parse(Path::new("t.toml"), "").unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.source_roots.len(), 7);
        assert_eq!(s.out_dir, "target/trace");
        let s = parse(
            Path::new("t.toml"),
            "results = [\"target/nextest/ci/junit.xml\"]\nexclude = []\n",
        )
        .unwrap();
        assert_eq!(s.results, vec!["target/nextest/ci/junit.xml"]);
        assert!(s.exclude.is_empty());
        assert_eq!(s.requirements_dir, "requirements");
    }

    // [utest->req~trace.settings~1]
    #[test]
    fn unknown_keys_and_bad_types_are_rejected() {
        let err = parse(Path::new("t.toml"), "source_root = [\"x\"]\n").unwrap_err();
        assert!(err.to_string().contains("source_root"), "{err}");
        assert!(parse(Path::new("t.toml"), "out_dir = 3\n").is_err());
    }

    // [utest->req~trace.settings~1]
    #[test]
    fn finds_workspace_root_and_loads_files() {
        let dir = TempDir::new("settings");
        dir.write("Cargo.toml", "[workspace]\nmembers = [\"a\"]\n");
        dir.write("a/Cargo.toml", "[package]\nname = \"a\"\n");
        dir.write("a/src/x.rs", "");
        let root = find_workspace_root(&dir.path().join("a/src")).unwrap();
        assert_eq!(root, dir.path());

        let cfg = dir.path().join("trace.toml");
        assert_eq!(load(&cfg, false).unwrap(), Settings::default());
        assert!(matches!(load(&cfg, true), Err(SettingsError::Read { .. })));
        dir.write("trace.toml", "out_dir = \"out\"\n");
        assert_eq!(load(&cfg, true).unwrap().out_dir, "out");
    }
}
