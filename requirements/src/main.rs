//! hirte-trace: requirement traceability checker for Hirte-rs.
//!
//! Requirements are OpenFastTrace specification items in
//! `requirements/*.md`; coverage is OFT tags in sources; optionally the
//! JUnit/libtest results of the same CI run prove that the tagged tests
//! passed. See `requirements/README.md`.

mod check;
mod cli;
mod id;
mod report;
mod results;
mod settings;
mod spec;
mod tags;
#[cfg(test)]
mod testutil;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use check::Analysis;

#[derive(Debug)]
enum Error {
    Settings(settings::SettingsError),
    Spec(spec::SpecError),
    Tags(tags::TagError),
    Results(results::ResultsError),
    Report(report::ReportError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Settings(e) => e.fmt(f),
            Error::Spec(e) => e.fmt(f),
            Error::Tags(e) => e.fmt(f),
            Error::Results(e) => e.fmt(f),
            Error::Report(e) => e.fmt(f),
        }
    }
}

impl From<settings::SettingsError> for Error {
    fn from(e: settings::SettingsError) -> Self {
        Error::Settings(e)
    }
}
impl From<spec::SpecError> for Error {
    fn from(e: spec::SpecError) -> Self {
        Error::Spec(e)
    }
}
impl From<tags::TagError> for Error {
    fn from(e: tags::TagError) -> Self {
        Error::Tags(e)
    }
}
impl From<results::ResultsError> for Error {
    fn from(e: results::ResultsError) -> Self {
        Error::Results(e)
    }
}
impl From<report::ReportError> for Error {
    fn from(e: report::ReportError) -> Self {
        Error::Report(e)
    }
}

/// What one run produced.
struct Run {
    analysis: Analysis,
    out_dir: PathBuf,
    files_scanned: usize,
    tags_found: usize,
}

/// The whole check for the workspace at `root`; paths in `args` and the
/// settings are relative to it (absolute paths stay as they are).
// [impl->req~trace.cli~1]
fn run(args: &cli::Args, root: &Path) -> Result<Run, Error> {
    let (config, explicit) = match &args.config {
        Some(path) => (root.join(path), true),
        None => (root.join(settings::DEFAULT_CONFIG), false),
    };
    let settings = settings::load(&config, explicit)?;
    let spec = spec::load_dir(root, &settings.requirements_dir)?;
    let scan = tags::scan_roots(root, &settings.source_roots, &settings.exclude)?;

    let result_files = if args.no_results {
        Vec::new()
    } else if !args.results.is_empty() {
        args.results.clone()
    } else {
        settings.results.clone()
    };
    let results = if result_files.is_empty() {
        None
    } else {
        Some(results::load(root, &result_files)?)
    };
    let note = match &results {
        _ if args.no_results => "not used (--no-results)".to_owned(),
        None => "none given: test tags are checked, test outcomes are not".to_owned(),
        Some(r) => format!("{} results from {}", r.len(), r.files.join(", ")),
    };

    let analysis = check::check(&spec, &scan, results.as_ref());
    let out_dir = root.join(args.out.as_deref().unwrap_or(&settings.out_dir));
    report::write(&out_dir, &analysis, &note)?;
    Ok(Run {
        analysis,
        out_dir,
        files_scanned: scan.files,
        tags_found: scan.tags.len(),
    })
}

/// 0 only without defects; 1 for defects; 2 (elsewhere) for errors.
// [impl->req~trace.summary-exit~1]
fn exit_status(analysis: &Analysis) -> u8 {
    if analysis.defects.is_empty() {
        0
    } else {
        1
    }
}

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("hirte-trace: {err}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    if args.help {
        println!("{}", cli::USAGE);
        return ExitCode::SUCCESS;
    }
    let root = std::env::current_dir()
        .map_err(settings::SettingsError::CurrentDir)
        .and_then(|cwd| settings::find_workspace_root(&cwd));
    let outcome = root.map_err(Error::from).and_then(|root| run(&args, &root));
    match outcome {
        Ok(run) => {
            // Defects go to stderr so that stdout is just the summary line.
            for defect in &run.analysis.defects {
                eprintln!("{defect}");
            }
            eprintln!(
                "hirte-trace: {} tags in {} files; report in {}",
                run.tags_found,
                run.files_scanned,
                run.out_dir.display()
            );
            println!("{}", report::summary_line(&run.analysis));
            ExitCode::from(exit_status(&run.analysis))
        }
        Err(err) => {
            eprintln!("hirte-trace: {err}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{tag, TempDir};

    /// A small workspace: one requirement, its implementation and test.
    fn workspace(test_attr: &str) -> TempDir {
        let dir = TempDir::new("e2e");
        dir.write("Cargo.toml", "[workspace]\nmembers = [\"common\"]\n");
        dir.write(
            "requirements/core.md",
            "### Core\n`req~core.start~1`\n\nStarts.\n\nRationale:\nNeeded.\n\nNeeds: impl, utest\n",
        );
        dir.write("requirements/README.md", "not a requirement file\n");
        dir.write(
            "common/src/lib.rs",
            &format!(
                "// {}\npub fn start() {{}}\n\n#[cfg(test)]\nmod tests {{\n    // {}\n    {test_attr}\n    fn starts() {{}}\n}}\n",
                tag("impl", "req~core.start~1"),
                tag("utest", "req~core.start~1")
            ),
        );
        dir
    }

    fn args(list: &[&str]) -> cli::Args {
        cli::parse(list.iter().map(|s| s.to_string())).unwrap()
    }

    // [utest->req~trace.cli~1]
    // [utest->req~trace.summary-exit~1]
    #[test]
    fn end_to_end_clean_and_with_results() {
        let dir = workspace("#[test]");
        let run_ok = run(&args(&["--no-results"]), dir.path()).unwrap();
        assert_eq!(
            report::summary_line(&run_ok.analysis),
            "trace: 1 requirements, 1 covered, 0 defects"
        );
        assert_eq!(exit_status(&run_ok.analysis), 0);
        assert!(dir.path().join("target/trace/matrix.html").is_file());
        assert_eq!(run_ok.tags_found, 2);

        dir.write(
            "target/nextest/ci/junit.xml",
            "<testsuites><testsuite name=\"common\"><testcase name=\"tests::starts\" classname=\"common\"><failure message=\"boom\"/></testcase></testsuite></testsuites>",
        );
        let failed = run(
            &args(&["--results", "target/nextest/ci/junit.xml", "--out", "out"]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(
            report::summary_line(&failed.analysis),
            "trace: 1 requirements, 0 covered, 1 defects"
        );
        assert_eq!(exit_status(&failed.analysis), 1);
        let md = std::fs::read_to_string(dir.path().join("out/matrix.md")).unwrap();
        assert!(md.contains("FAIL: boom"), "{md}");
    }

    // [utest->req~trace.settings~1]
    // [utest->req~trace.cli~1]
    #[test]
    fn settings_file_drives_the_run() {
        let dir = workspace("#[test]\n    #[ignore]");
        dir.write(
            "requirements/trace.toml",
            "source_roots = [\"common\"]\nresults = [\"missing.xml\"]\nout_dir = \"rep\"\n",
        );
        // The configured results file is missing: an input error.
        assert!(matches!(
            run(&args(&[]), dir.path()),
            Err(Error::Results(_))
        ));
        let ran = run(&args(&["--no-results"]), dir.path()).unwrap();
        let codes: Vec<&str> = ran.analysis.defects.iter().map(|d| d.kind.code()).collect();
        assert_eq!(codes, vec!["not-a-test", "uncovered"]);
        assert!(dir.path().join("rep/matrix.md").is_file());

        dir.write("requirements/trace.toml", "bogus = 1\n");
        assert!(matches!(
            run(&args(&[]), dir.path()),
            Err(Error::Settings(_))
        ));
        assert!(matches!(
            run(&args(&["--config", "nope.toml"]), dir.path()),
            Err(Error::Settings(_))
        ));
    }
}
