//! `hirte-agent`: runs on every node, connects to the manager and drives the node's systemd.
//!
//! Threads: the core (systemd bus, executes calls) and the link (manager connection).

mod bluechi_api;
mod core;
mod error;
mod link;
mod local_api;
mod proxy;
mod reconnect;
mod resolve;
mod systemd;
#[cfg(test)]
mod testing;

use crate::error::AgentError;
use crate::systemd::SystemdBus;

use clap::Parser;
use dbus::channel::BusType;
use hirte_common::bounds::{CORE_QUEUE_DEPTH, LINK_OUTBOUND_DEPTH, SHUTDOWN_JOIN_TIMEOUT};
use hirte_common::config::{cli_entry, config_dir, AgentConfig};
use hirte_common::frame::SerialCounter;
use hirte_common::queue::BoundedQueue;
use hirte_common::sys::open_bus;
use hirte_common::tls::{ClientPolicy, TlsError};
use hirte_common::{log, log_debug, log_info, log_warn};
use local_api::LocalApi;
use reconnect::{Reconnect, SwitchRequest};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "hirte-agent",
    version,
    about = "Hirte-rs agent: runs one node's systemd for the manager"
)]
struct Cli {
    /// Extra configuration file, read after /etc/hirte/agent.conf and its drop-ins
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Node name (overrides NodeName)
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    name: Option<String>,
    /// Manager host name or address (overrides ManagerHost)
    #[arg(short = 'H', long = "host", value_name = "HOST")]
    host: Option<String>,
    /// Manager port (overrides ManagerPort)
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    port: Option<String>,
    /// Drive the calling user's systemd (session bus) instead of the system manager
    #[arg(long = "user")]
    user: bool,
}

fn load_config(cli: &Cli) -> Result<AgentConfig, AgentError> {
    let mut cfg = AgentConfig::load(&config_dir(), cli.config.as_deref())?;
    let overrides = [
        ("NodeName", &cli.name),
        ("ManagerHost", &cli.host),
        ("ManagerPort", &cli.port),
    ];
    for (key, value) in overrides {
        if let Some(v) = value {
            cfg.apply(&cli_entry(key, v))?;
        }
    }
    if cfg.node_name.is_empty() {
        // As BlueChi does: the host name is the default node name.
        let host = nix::unistd::gethostname().map_err(AgentError::HostNameUnknown)?;
        cfg.apply(&cli_entry("NodeName", &host.to_string_lossy()))
            .map_err(AgentError::HostNameUnusable)?;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Connects to the bus of the systemd instance this agent drives, and subscribes to it.
fn connect_systemd(user: bool) -> Result<SystemdBus, AgentError> {
    let (sd, which) = if user {
        (open_bus(BusType::Session), "session")
    } else {
        (open_bus(BusType::System), "system")
    };
    let sd = sd.map_err(|e| AgentError::Bus {
        which,
        why: e.message().unwrap_or("unknown error").to_string(),
    })?;
    let sd = SystemdBus::new(sd);
    sd.subscribe()?;
    Ok(sd)
}

/// The local status API on the node's bus.
fn local_api(
    sd: &SystemdBus,
    address: &str,
    last_seen_us: &Arc<AtomicU64>,
    switch: &Arc<SwitchRequest>,
) -> LocalApi {
    let local = LocalApi::new(address.to_string(), last_seen_us.clone(), switch.clone());
    LocalApi::claim_name(sd.conn());
    local
}

/// With all three TLS files set, the TCP link is mutual TLS; with none, plaintext, said once.
// [impl->req~tls.config~1]
fn tls_policy(cfg: &AgentConfig) -> Result<Option<ClientPolicy>, TlsError> {
    if !cfg.tls.enabled()? {
        return Ok(None);
    }
    ClientPolicy::load(&cfg.tls, cfg.effective_manager_name(), &cfg.node_name).map(Some)
}

/// Start-up check of the watchdog against the systemd call timeout: says which timeout the
/// calls get, and warns when WatchdogSec forced it below `SYSTEMD_CALL_TIMEOUT`.
// [impl->req~ops.watchdog-call-timeout~1]
fn check_watchdog() {
    use hirte_common::timespan::format_timespan;
    let Some(watchdog) = hirte_common::notify::watchdog_interval() else {
        return;
    };
    let timeout = systemd::call_timeout();
    if timeout < hirte_common::bounds::SYSTEMD_CALL_TIMEOUT {
        log_warn!(
            "WatchdogSec={} is short for systemd calls: they time out after {} instead of {}",
            format_timespan(watchdog),
            format_timespan(timeout),
            format_timespan(hirte_common::bounds::SYSTEMD_CALL_TIMEOUT)
        );
    } else {
        log_info!(
            "Watchdog every {}; systemd calls time out after {}",
            format_timespan(watchdog),
            format_timespan(timeout)
        );
    }
}

fn run(cli: Cli) -> Result<(), AgentError> {
    let cfg = load_config(&cli)?;
    // Before anything else: TLS files that do not load stop the daemon at once.
    let tls = tls_policy(&cfg)?;
    log::init(
        "hirte-agent",
        cfg.log.level,
        cfg.log.target,
        cfg.log.is_quiet,
    );
    log_info!(
        "Starting hirte-agent {} as node '{}', manager {}",
        env!("CARGO_PKG_VERSION"),
        cfg.node_name,
        cfg.manager_endpoint()
    );
    if tls.is_some() {
        log_info!(
            "The link to the manager is mutual TLS (TLS 1.3); the manager must be '{}'",
            cfg.effective_manager_name()
        );
    } else if cfg.manager_socket.is_none() {
        log_warn!(
            "The link to the manager is not authenticated: whoever answers at {} is taken \
             for the manager (set CertificateFile=, KeyFile= and TrustedCertificateFile= \
             for mutual TLS)",
            cfg.manager_endpoint()
        );
    }
    check_watchdog();
    // [impl->req~agent.sigterm~1]
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone()).map_err(AgentError::Signal)?;
    }
    // The link's flag first (signal-hook runs actions in registration order): the core wakes
    // the idle link thread when it sees its own flag, and the link's must be set by then.
    let tls_reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, tls_reload.clone())
        .map_err(AgentError::Signal)?;
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(AgentError::Signal)?;
    let sd = connect_systemd(cli.user)?;

    let events = Arc::new(BoundedQueue::new(CORE_QUEUE_DEPTH).map_err(AgentError::Queue)?);
    let outbound = Arc::new(BoundedQueue::new(LINK_OUTBOUND_DEPTH).map_err(AgentError::Queue)?);
    let last_seen_us = Arc::new(AtomicU64::new(0));
    let manager_address = cfg.manager_address();
    let switch = Arc::new(SwitchRequest::waking(outbound.clone()));
    let local = local_api(&sd, &manager_address, &last_seen_us, &switch);
    let channels = core::Channels {
        events: events.clone(),
        outbound: outbound.clone(),
        shutdown: shutdown.clone(),
        serials: Arc::new(SerialCounter::default()),
        session: Arc::new(AtomicU64::new(0)),
    };
    // The core and the idle link thread sleep with no timer: the signals' flags ring them.
    // [impl->req~agent.core-idle-no-wakeups~1]
    let wake_both = (events.clone(), outbound.clone());
    hirte_common::wake::wake_on_signals(move || {
        wake_both.0.wake_only();
        wake_both.1.wake_only();
    })
    .map_err(AgentError::Signal)?;
    let link = link::Link::new(
        cfg.clone(),
        &channels,
        last_seen_us.clone(),
        tls,
        tls_reload,
        Reconnect::new(&cfg, switch.clone()),
    );
    let mut core = core::Core::new(sd, cfg.node_name.clone(), channels, local);
    core.adopt_running_proxies();
    let link_thread = std::thread::Builder::new()
        .name("link".into())
        .spawn(move || link.run())
        .map_err(AgentError::Thread)?;
    core.configure(reload, cli.config.clone(), cfg.allow_exec);
    hirte_common::notify::ready(&format!("node '{}'", cfg.node_name));
    let result = loop {
        match core.run() {
            Ok(core::Exit::Shutdown) => break Ok(()),
            Err(e) => break Err(AgentError::Poll(e)),
            Ok(core::Exit::BusLost(why)) => {
                log_warn!(
                    "Lost systemd: {why}; reconnecting every {}",
                    hirte_common::timespan::format_timespan(cfg.reconnect_interval)
                );
                core.bus_lost();
                // [impl->req~agent.systemd-reconnect~1]
                loop {
                    core.refuse_while_detached(cfg.reconnect_interval);
                    if shutdown.load(Ordering::Relaxed) {
                        break;
                    }
                    match connect_systemd(cli.user) {
                        Ok(sd) => {
                            let local = local_api(&sd, &manager_address, &last_seen_us, &switch);
                            core.attach(sd, local);
                            log_info!("Reconnected to systemd");
                            break;
                        }
                        Err(e) => log_debug!("systemd still unreachable: {e}"),
                    }
                }
            }
        }
    };
    shutdown.store(true, Ordering::Relaxed);
    events.close();
    // The link thread sleeps on the outbound queue's eventfd with no timer while idle.
    // [impl->req~agent.idle-no-wakeups~1]
    outbound.wake_only();
    // [impl->req~agent.sigterm~1]
    // Bounded: the link thread may be in a connection attempt or a TLS file read.
    if hirte_common::wait::wait_for(SHUTDOWN_JOIN_TIMEOUT, || link_thread.is_finished()) {
        let _ = link_thread.join();
    } else {
        log_warn!(
            "Exiting with the link thread still running {} ms after shutdown \
             (SHUTDOWN_JOIN_TIMEOUT)",
            SHUTDOWN_JOIN_TIMEOUT.as_millis()
        );
    }
    result
}

fn main() -> ExitCode {
    hirte_common::sys::disable_libdbus_abort();
    hirte_common::sys::tune_malloc();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::report_fatal("hirte-agent", &e.to_string());
            ExitCode::FAILURE
        }
    }
}
