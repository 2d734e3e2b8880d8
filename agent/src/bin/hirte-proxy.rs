//! `hirte-proxy create|remove NODE_UNIT.service`: what `hirte-proxy@.service` runs. Asks the
//! local agent to stand in for a service on another node, and waits for its answer.

use clap::{Parser, ValueEnum};
use dbus::blocking::Connection;
use hirte_common::bounds::PROXY_START_TIMEOUT;
use hirte_common::names::split_proxy_instance;
use hirte_common::protocol::{self, PROXY_TEMPLATE};
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

/// Beyond the agent's own bound, so the agent's answer (even `Timeout`) is what we report.
const CALL_MARGIN: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, ValueEnum)]
enum Operation {
    /// Register the proxy; returns once the target is active (or failed)
    Create,
    /// Unregister the proxy; releases the target
    Remove,
}

#[derive(Parser)]
#[command(
    name = "hirte-proxy",
    version,
    about = "Hirte-rs proxy helper: run by hirte-proxy@.service, not by hand"
)]
struct Cli {
    /// Talk to the agent on the session bus (user service manager)
    #[arg(long = "user")]
    user: bool,
    operation: Operation,
    /// NODE_UNIT.service: the target node, '_', the target service
    instance: String,
}

/// Why the proxy helper failed.
enum ProxyError {
    /// The node's bus cannot be reached.
    Bus(String),
    /// The agent refused or failed the call.
    Call {
        verb: &'static str,
        unit: String,
        node: String,
        why: String,
    },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Bus(e) => write!(f, "cannot reach the local bus: {e}"),
            ProxyError::Call {
                verb,
                unit,
                node,
                why,
            } => write!(f, "cannot {verb} {unit} on node '{node}': {why}"),
        }
    }
}

// [impl->req~proxy.helper~1]
fn run(cli: &Cli, node: &str, unit: &str) -> Result<(), ProxyError> {
    let local_service = format!("{PROXY_TEMPLATE}{}", cli.instance);
    let conn = if cli.user {
        Connection::new_session()
    } else {
        Connection::new_system()
    }
    .map_err(|e| ProxyError::Bus(e.message().unwrap_or("").to_string()))?;
    let proxy = conn.with_proxy(
        protocol::AGENT_BUS_NAME,
        protocol::MANAGER_PATH,
        PROXY_START_TIMEOUT + CALL_MARGIN,
    );
    let method = match cli.operation {
        Operation::Create => "CreateProxy",
        Operation::Remove => "RemoveProxy",
    };
    proxy
        .method_call::<(), _, _, _>(
            protocol::AGENT_IFACE,
            method,
            (local_service.as_str(), node, unit),
        )
        .map_err(|e| ProxyError::Call {
            verb: match cli.operation {
                Operation::Create => "start",
                Operation::Remove => "release",
            },
            unit: unit.to_string(),
            node: node.to_string(),
            why: e.message().unwrap_or("no reason given").to_string(),
        })
}

fn main() -> ExitCode {
    hirte_common::sys::disable_libdbus_abort();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // A malformed instance is a usage error, found before any call.
    let (node, unit) = match split_proxy_instance(&cli.instance) {
        Ok(parts) => parts,
        Err(e) => {
            eprintln!("hirte-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&cli, node, unit) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hirte-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
