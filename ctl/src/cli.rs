//! The command line, as clap definitions. Kept apart from the commands so that `completions`
//! and `man` generate from exactly what the parser accepts.

use crate::output::Format;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const EXIT_STATUS: &str = "\
Exit status:
  0    success (is-enabled: a unit is enabled; is-online: online/up)
  1    failure; the reason is one line on stderr
  2    usage error
  4    no such node, unit or unit file
  124  exec: the command did not finish within --timeout
  exec exits with the command's own exit status (128+N when killed by signal N).

The manager is reached on the system bus (DBUS_SYSTEM_BUS_ADDRESS is honoured).
-o json prints one JSON document per line; see docs/hirtectl.md for every field.";

#[derive(Parser)]
#[command(
    name = "hirtectl",
    version,
    about = "Control systemd units on the nodes of a Hirte-rs cluster",
    after_long_help = EXIT_STATUS,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// Output format of listing and status commands
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// List the nodes with their state and when each was last seen
    ListNodes {
        #[command(flatten)]
        filter: Filter,
    },
    /// List the units of one node, or of all online nodes
    ListUnits {
        /// Only this node
        node: Option<String>,
        #[command(flatten)]
        filter: Filter,
    },
    /// List the unit files of one node, or of all online nodes, with their enablement state
    ListUnitFiles {
        /// Only this node
        node: Option<String>,
        #[command(flatten)]
        filter: Filter,
    },
    /// Start a unit on a node and wait for the job to finish
    Start(UnitOp),
    /// Stop a unit on a node and wait for the job to finish
    Stop(UnitOp),
    /// Restart a unit on a node and wait for the job to finish
    Restart(UnitOp),
    /// Reload a unit on a node and wait for the job to finish
    Reload(UnitOp),
    /// Show nodes (no NODE), all units of a node (NODE), or the state of units (NODE UNIT...)
    ///
    /// Without arguments: the node table (NODE STATE IP LAST SEEN). With NODE: one row per
    /// loaded unit of that node. With NODE UNIT...: one row per unit with its load, active,
    /// sub, freezer and unit-file state. -w redraws whenever something changes.
    Status {
        /// Node name
        node: Option<String>,
        /// Unit names
        units: Vec<String>,
        /// Redraw whenever the shown state changes, until interrupted
        #[arg(short = 'w', long = "watch")]
        watch: bool,
        /// With -w: stop after N redraws caused by changes
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
        /// With -w: stop after SECS seconds (1-86400)
        #[arg(long, value_name = "SECS", requires = "watch", value_parser = wait_secs())]
        timeout: Option<u64>,
    },
    /// Enable unit files on a node (then reload its systemd)
    Enable {
        /// Node name
        node: String,
        /// Unit names
        #[arg(required = true)]
        units: Vec<String>,
        /// Replace existing symlinks that are in the way
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        opts: UnitFileOpts,
    },
    /// Disable unit files on a node (then reload its systemd)
    Disable {
        /// Node name
        node: String,
        /// Unit names
        #[arg(required = true)]
        units: Vec<String>,
        #[command(flatten)]
        opts: UnitFileOpts,
    },
    /// Print the enablement state of unit files on a node
    IsEnabled {
        /// Node name
        node: String,
        /// Unit names
        #[arg(required = true)]
        units: Vec<String>,
        /// Print nothing, only set the exit status
        #[arg(short, long)]
        quiet: bool,
    },
    /// Reload the systemd configuration of a node
    DaemonReload {
        /// Node name
        node: String,
    },
    /// Freeze (suspend all processes of) a unit on a node
    Freeze {
        /// Node name
        node: String,
        /// Unit name
        unit: String,
    },
    /// Thaw a frozen unit on a node
    Thaw {
        /// Node name
        node: String,
        /// Unit name
        unit: String,
    },
    /// Send a signal to the processes of a unit on a node
    Kill {
        /// Node name
        node: String,
        /// Unit name
        unit: String,
        /// Which processes get the signal
        #[arg(long, value_enum, default_value_t = KillWhom::All)]
        kill_whom: KillWhom,
        /// Signal number or name (TERM, SIGKILL, 9, ...)
        #[arg(short, long, default_value = "SIGTERM")]
        signal: String,
    },
    /// Reset the failed state of units (all nodes, all units of NODE, or the given units)
    ResetFailed {
        /// Node name
        node: Option<String>,
        /// Unit names
        #[arg(requires = "node")]
        units: Vec<String>,
    },
    /// Set unit properties at runtime on a node (e.g. CPUWeight=200 MemoryMax=512M)
    ///
    /// Supported keys: Description, CPUWeight, StartupCPUWeight, IOWeight, StartupIOWeight,
    /// CPUShares, StartupCPUShares, BlockIOWeight, StartupBlockIOWeight, MemoryMin, MemoryLow,
    /// MemoryHigh, MemoryMax, MemorySwapMax, MemoryLimit (bytes with K/M/G/T/P/E suffix, base
    /// 1024, or infinity), TasksMax (number or infinity), CPUQuota (percent), and the booleans
    /// CPUAccounting, MemoryAccounting, IOAccounting, BlockIOAccounting, TasksAccounting,
    /// IPAccounting, MemoryOOMGroup. The change is runtime only (lost at reboot).
    SetProperty {
        /// Node name
        node: String,
        /// Unit name
        unit: String,
        /// Property assignments, Key=Value
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
    },
    /// Print the default target of a node
    GetDefault {
        /// Node name
        node: String,
    },
    /// Set the default target of a node
    SetDefault {
        /// Node name
        node: String,
        /// Target unit, e.g. multi-user.target
        target: String,
    },
    /// Print unit events (state changes, new and removed units) until interrupted
    ///
    /// Without NODE: all units of all nodes. With NODE: all its units, or only UNITS. Each
    /// event is one line, e.g. `n1 httpd.service: active/running (real)`; `(virtual)` events
    /// are made up by the manager, e.g. `inactive/agent-offline` when a node disconnects.
    Monitor {
        /// Only this node (`*` for all)
        node: Option<String>,
        /// Only these units
        units: Vec<String>,
        /// Also print property changes
        #[arg(long)]
        properties: bool,
        #[command(flatten)]
        bounds: Bounds,
    },
    /// Set the log level of the manager, or of a node's agent (debug, info, warn, error)
    #[command(override_usage = "hirtectl set-loglevel [NODE] LEVEL")]
    SetLoglevel {
        /// Node name, or the level when there is no second argument
        #[arg(value_name = "NODE")]
        first: String,
        /// Log level: debug, info, warn, error
        #[arg(value_name = "LEVEL")]
        second: Option<String>,
    },
    /// Run a command on a node; prints its output and exits with its status
    ///
    /// One argument is split into words like systemd's ExecStart= (`exec n1 "pg_isready -U
    /// postgres"`), never given to a shell (write `sh -c '...'` for one); several arguments
    /// are run as they are. The command runs as a transient unit of the
    /// node's systemd. Options of hirtectl go before NODE.
    Exec {
        /// Longest time the command may run, in seconds
        #[arg(long, value_name = "SECS", default_value_t = 30,
              value_parser = clap::value_parser!(u64).range(1..=EXEC_MAX_TIMEOUT_SECS))]
        timeout: u64,
        /// Node name
        node: String,
        /// The command and its arguments
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// Enable, disable or listen to the manager's job timing metrics
    Metrics {
        #[command(subcommand)]
        action: MetricsAction,
    },
    /// Exit 0 if a node, the local agent, or the whole system is online
    IsOnline {
        #[command(subcommand)]
        what: OnlineTarget,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(hide = true)]
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
    /// Write man pages for hirtectl and each of its commands into DIR (default: .)
    #[command(hide = true)]
    Man {
        /// Directory to write into (created if missing)
        dir: Option<PathBuf>,
    },
}

/// Longest `exec --timeout` (the manager's `EXEC_MAX_TIMEOUT`).
pub const EXEC_MAX_TIMEOUT_SECS: u64 = 3600;

/// Longest `--timeout` of the commands that wait (start, stop, `status -w`, monitor,
/// `metrics listen`): one day. Checked when the arguments are parsed, so a huge value is an
/// argument error, never an overflowing deadline after a job was already sent.
// [impl->req~ctl.timeout-range~1]
pub const MAX_WAIT_SECS: u64 = 86_400;

fn wait_secs() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..=MAX_WAIT_SECS)
}

#[derive(Args)]
pub struct Filter {
    /// Only names matching this shell pattern (*, ?, [...])
    #[arg(long, value_name = "GLOB")]
    pub filter: Option<String>,
}

#[derive(Args)]
pub struct UnitOp {
    /// Node name
    pub node: String,
    /// Unit name
    pub unit: String,
    /// Job mode, as systemctl's --job-mode
    #[arg(long, default_value = "replace")]
    pub mode: String,
    /// Longest time to wait for the job, in seconds (1-86400)
    #[arg(long, default_value_t = 900, value_parser = wait_secs())]
    pub timeout: u64,
}

#[derive(Args)]
pub struct UnitFileOpts {
    /// Change only until the next reboot (below /run)
    #[arg(long)]
    pub runtime: bool,
    /// Do not reload the node's systemd afterwards
    #[arg(long)]
    pub no_reload: bool,
}

/// Ends commands that otherwise run until interrupted.
#[derive(Args, Clone, Copy)]
pub struct Bounds {
    /// Stop after N events
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after SECS seconds, 1-86400 (an error if --count was given and not reached)
    #[arg(long, value_name = "SECS", value_parser = wait_secs())]
    pub timeout: Option<u64>,
}

#[derive(Subcommand)]
pub enum MetricsAction {
    /// Make the manager and agents send job timing signals
    Enable,
    /// Stop the job timing signals
    Disable,
    /// Print the job timing signals (org.containers.hirte.Metrics) until interrupted
    Listen {
        #[command(flatten)]
        bounds: Bounds,
    },
}

#[derive(Subcommand)]
pub enum OnlineTarget {
    /// Whether the node NAME is connected to the manager
    Node {
        /// Node name
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Whether the local hirte-agent is connected to its manager
    Agent {
        #[command(flatten)]
        wait: Wait,
    },
    /// Whether the manager runs with every configured node online (Status up)
    System {
        #[command(flatten)]
        wait: Wait,
    },
}

#[derive(Args, Clone, Copy)]
pub struct Wait {
    /// Wait up to MS milliseconds for it to be online
    #[arg(long, value_name = "MS")]
    pub wait: Option<u64>,
    /// Print nothing, only set the exit status
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KillWhom {
    All,
    Main,
    Control,
}

impl KillWhom {
    pub fn as_str(self) -> &'static str {
        match self {
            KillWhom::All => "all",
            KillWhom::Main => "main",
            KillWhom::Control => "control",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_the_rest_verbatim() {
        let cli =
            Cli::try_parse_from(["hirtectl", "exec", "n1", "ls", "-l", "--timeout", "3"]).unwrap();
        match cli.command {
            Command::Exec {
                node,
                command,
                timeout,
            } => {
                assert_eq!(node, "n1");
                assert_eq!(command, ["ls", "-l", "--timeout", "3"]);
                assert_eq!(timeout, 30);
            }
            _ => panic!("not exec"),
        }
        let cli =
            Cli::try_parse_from(["hirtectl", "exec", "--timeout", "3", "n1", "true"]).unwrap();
        assert!(matches!(cli.command, Command::Exec { timeout: 3, .. }));
    }

    // [utest->req~ctl.timeout-range~1]
    #[test]
    fn every_timeout_is_range_checked_when_parsed() {
        let huge = u64::MAX.to_string();
        let commands: [&[&str]; 5] = [
            &["start", "n1", "a.service"],
            &["stop", "n1", "a.service"],
            &["status", "n1", "a.service", "-w"],
            &["monitor"],
            &["metrics", "listen"],
        ];
        for cmd in commands {
            for (value, ok) in [
                ("1", true),
                ("86400", true),
                ("0", false),
                ("86401", false),
                (huge.as_str(), false),
            ] {
                let mut args = vec!["hirtectl"];
                args.extend_from_slice(cmd);
                args.extend_from_slice(&["--timeout", value]);
                match Cli::try_parse_from(&args) {
                    Ok(_) => assert!(ok, "{args:?} accepted"),
                    Err(e) => {
                        assert!(!ok, "{args:?} refused: {e}");
                        assert!(e.to_string().contains("1..=86400"), "{e}");
                    }
                }
            }
        }
        for value in ["0", "3601", huge.as_str()] {
            assert!(
                Cli::try_parse_from(["hirtectl", "exec", "--timeout", value, "n1", "true"])
                    .is_err()
            );
        }
    }

    #[test]
    fn output_is_global() {
        for args in [
            &["hirtectl", "-o", "json", "list-nodes"][..],
            &["hirtectl", "list-nodes", "--output", "json"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.output, Format::Json);
        }
    }

    #[test]
    fn set_loglevel_takes_one_or_two() {
        assert!(Cli::try_parse_from(["hirtectl", "set-loglevel", "debug"]).is_ok());
        assert!(Cli::try_parse_from(["hirtectl", "set-loglevel", "n1", "debug"]).is_ok());
        assert!(Cli::try_parse_from(["hirtectl", "set-loglevel"]).is_err());
    }
}
