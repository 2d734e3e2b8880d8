//! `hirte`: the Hirte-rs manager.
//!
//! Threads: the core (D-Bus API and all state), the listener, and one per agent connection.
//!
//! Modules, each using only those listed before it (no cycles):
//! - `events`: what connection threads and the core exchange (link handles, link events);
//! - `objects`: exported object paths, signal builders, the `Outbox` of a step's effects;
//! - `agent_msg`: the agents' signals, decoded;
//! - `nodes`: the node table (registry, sessions, cluster status);
//! - `calls`: calls in flight to agents and their deadlines;
//! - `agents`: node table and call table together (a call is recorded only once queued);
//! - `jobs`: the job table;
//! - `fanout`: calls spanning all nodes, their parts collected into one reply;
//! - `monitor`: monitors, their subscriptions and signals;
//! - `proxy`, `dependencies`: cross-node dependencies (bookkeeping, then decisions);
//! - `state`: the `Manager`, where the parts above meet (and only there);
//! - `api`: the public D-Bus interfaces, over `state`;
//! - `link`, `listener`: connection threads; `core`: the core thread, over all of them.

mod agent_msg;
mod agents;
mod api;
mod audit;
mod calls;
mod core;
mod dependencies;
mod events;
mod fanout;
mod fd_limit;
mod flood;
mod jobs;
mod link;
mod listener;
mod monitor;
mod nodes;
mod objects;
mod proxy;
mod state;

use crate::events::LinkEvent;
use clap::Parser;
use hirte_common::bounds::{CORE_QUEUE_BYTES, CORE_QUEUE_DEPTH, SHUTDOWN_JOIN_TIMEOUT};
use hirte_common::config::{cli_entry, config_dir, ConfigError, ManagerConfig};
use hirte_common::queue::BoundedQueue;
use hirte_common::tls::{Reloadable, ServerPolicy, TlsError};
use hirte_common::wait::wait_for;
use hirte_common::wake::Waker;
use hirte_common::{log, log_debug, log_info, log_warn, protocol};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Parser)]
#[command(
    name = "hirte",
    version,
    about = "Hirte-rs manager: controls systemd on many nodes"
)]
struct Cli {
    /// Extra configuration file, read after /etc/hirte/hirte.conf and its drop-ins
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// TCP port for agents (overrides ManagerPort)
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    port: Option<String>,
}

/// Why the manager could not start, or stopped.
enum FatalError {
    Config(ConfigError),
    Signals(std::io::Error),
    Bus(String),
    BusName(&'static str, String),
    NameTaken(&'static str),
    OpenActivatedSocket,
    Listen(IpAddr, u16, std::io::Error),
    Socket(String),
    Queue(nix::errno::Errno),
    Wake(nix::errno::Errno),
    Thread(std::io::Error),
    Core(core::CoreError),
    /// The TLS settings or files (`CertificateFile=` ...) are unusable.
    Tls(TlsError),
    /// A user of `ManagerSocketAllowedUsers=` does not exist.
    User(String),
}

impl fmt::Display for FatalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FatalError::Config(e) => write!(f, "{e}"),
            FatalError::Signals(e) => write!(f, "cannot install signal handler: {e}"),
            FatalError::Bus(e) => write!(f, "cannot connect to the system bus: {e}"),
            FatalError::BusName(name, e) => write!(
                f,
                "cannot own {name} on the system bus: {e} (is the D-Bus policy installed?)"
            ),
            FatalError::NameTaken(name) => {
                write!(f, "{name} is already owned: is another manager running?")
            }
            FatalError::OpenActivatedSocket => write!(
                f,
                "AllowedNodeNames is empty while the activated socket listens on all \
                 interfaces; list the nodes that may connect"
            ),
            FatalError::Listen(addr, port, e) => write!(f, "cannot listen on {addr}:{port}: {e}"),
            FatalError::Socket(e) => write!(f, "{e}"),
            FatalError::Queue(e) => write!(f, "cannot create queue: {e}"),
            FatalError::Wake(e) => write!(f, "cannot create the listener's eventfd: {e}"),
            FatalError::Thread(e) => write!(f, "cannot start listener thread: {e}"),
            FatalError::Core(e) => write!(f, "{e}"),
            FatalError::Tls(e) => write!(f, "{e}"),
            FatalError::User(e) => write!(f, "ManagerSocketAllowedUsers: {e}"),
        }
    }
}

fn load_config(cli: &Cli) -> Result<ManagerConfig, ConfigError> {
    let mut cfg = ManagerConfig::load(&config_dir(), cli.config.as_deref())?;
    if let Some(p) = &cli.port {
        cfg.apply(&cli_entry("ManagerPort", p))?;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// With all three TLS files set, the TCP link is mutual TLS; with none, it is plaintext.
// [impl->req~tls.config~1]
fn tls_policy(cfg: &ManagerConfig) -> Result<Option<Arc<Reloadable<ServerPolicy>>>, TlsError> {
    if !cfg.tls.enabled()? {
        return Ok(None);
    }
    Ok(Some(Arc::new(Reloadable::new(ServerPolicy::load(
        &cfg.tls,
    )?))))
}

/// `ManagerSocketAllowedUsers=`: names or UIDs to UIDs.
// [impl->req~link.unix-peercred~1]
fn resolve_users(users: &[String]) -> Result<Vec<u32>, FatalError> {
    users
        .iter()
        .map(|u| match u.parse::<u32>() {
            Ok(uid) => Ok(uid),
            Err(_) => match nix::unistd::User::from_name(u) {
                Ok(Some(user)) => Ok(user.uid.as_raw()),
                Ok(None) => Err(FatalError::User(format!("no user '{u}'"))),
                Err(e) => Err(FatalError::User(format!("cannot look up '{u}': {e}"))),
            },
        })
        .collect()
}

fn run(cli: Cli) -> Result<(), FatalError> {
    let cfg = load_config(&cli).map_err(FatalError::Config)?;
    // Before anything else: TLS files that do not load stop the daemon at once.
    let tls = tls_policy(&cfg).map_err(FatalError::Tls)?;
    log::init("hirte", cfg.log.level, cfg.log.target, cfg.log.is_quiet);
    log_info!(
        "Starting hirte {} (port {}, {} allowed nodes)",
        env!("CARGO_PKG_VERSION"),
        cfg.port,
        cfg.allowed_node_names.len()
    );
    // [impl->req~bounds.connections~1]
    match fd_limit::raise() {
        Ok(o @ fd_limit::Outcome::Short { .. }) => log_warn!("{o}"),
        Ok(o) => log_debug!("{o}"),
        Err(e) => log_warn!("Cannot read or raise the open-file limit: {e}"),
    }

    if tls.is_some() {
        log_info!("The agent link on TCP is mutual TLS (TLS 1.3)");
    } else {
        log_warn!(
            "The agent link on TCP is not authenticated: any host that reaches port {} may \
             register as an allowed node (set CertificateFile=, KeyFile= and \
             TrustedCertificateFile= for mutual TLS)",
            cfg.port
        );
    }

    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone()).map_err(FatalError::Signals)?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(FatalError::Signals)?;

    let text = |e: dbus::Error| e.message().unwrap_or("unknown error").to_string();
    let conn = hirte_common::sys::open_bus(dbus::channel::BusType::System)
        .map_err(|e| FatalError::Bus(text(e)))?;
    let bluechi = cfg
        .bluechi_bus_name
        .then(|| api::bluechi::Gateway::new(cfg.hirte_bus_name));

    let addr = cfg.address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let port = cfg.port;
    let allowed_empty = cfg.allowed_node_names.is_empty();
    let tcp = match hirte_common::sys::activated_listener() {
        Some(l) => {
            log_info!("Using the listening socket passed by systemd (socket activation)");
            // The socket unit, not ManagerAddress, decides where we listen: check it too.
            let open = l
                .local_addr()
                .map(|a| a.ip().is_unspecified())
                .unwrap_or(true);
            if open && allowed_empty {
                return Err(FatalError::OpenActivatedSocket);
            }
            l
        }
        None => {
            let l = TcpListener::bind((addr, cfg.port))
                .map_err(|e| FatalError::Listen(addr, cfg.port, e))?;
            log_info!("Listening on {addr}:{}", cfg.port);
            l
        }
    };
    // [impl->req~link.unix-socket~1]
    // Kept until `run` returns: dropping it removes the socket file.
    let (unix, _socket_file) = match &cfg.socket {
        Some(path) => {
            let (l, f) = listener::SocketFile::bind(path).map_err(FatalError::Socket)?;
            log_info!("Listening on unix:path={}", path.display());
            (Some(l), Some(f))
        }
        None => (None, None),
    };

    // The names come after the listeners: whoever sees the manager's name on the bus (the
    // test harness, a Type=dbus unit, a script) can connect to its port at once.
    // [impl->req~bluechi.bus-name~1]
    let names = [
        (cfg.hirte_bus_name, protocol::MANAGER_BUS_NAME),
        (cfg.bluechi_bus_name, api::bluechi::BUS_NAME),
    ];
    for (_, name) in names.iter().filter(|(on, _)| *on) {
        let owned = conn
            .request_name(*name, false, false, true)
            .map_err(|e| FatalError::BusName(name, text(e)))?;
        if owned != dbus::blocking::stdintf::org_freedesktop_dbus::RequestNameReply::PrimaryOwner {
            return Err(FatalError::NameTaken(name));
        }
    }
    let tls_files = cfg.tls.clone();
    let socket_uids = resolve_users(&cfg.socket_allowed_users)?;
    let allow_exec = cfg.allow_exec;
    let tls_reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, tls_reload.clone())
        .map_err(FatalError::Signals)?;

    let events =
        BoundedQueue::with_byte_budget(CORE_QUEUE_DEPTH, CORE_QUEUE_BYTES, LinkEvent::weight);
    let events = Arc::new(events.map_err(FatalError::Queue)?);
    let model = Arc::new(Mutex::new(state::Manager::new(cfg)));

    // Links outlive the SIGTERM by the drain time: jobs in flight must still be answered.
    let stop_links = Arc::new(AtomicBool::new(false));
    let live_links = Arc::new(AtomicUsize::new(0));
    let links = Arc::new(events::LiveLinks::default());
    // The core and the listener sleep with no timer: the signals' flags ring them.
    // [impl->req~manager.idle-no-wakeups~1]
    let listener_wake = Arc::new(Waker::new().map_err(FatalError::Wake)?);
    let wake_both = (events.clone(), listener_wake.clone());
    hirte_common::wake::wake_on_signals(move || {
        wake_both.0.wake_only();
        wake_both.1.wake();
    })
    .map_err(FatalError::Signals)?;
    let listener = listener::Listener::new(
        tcp,
        unix,
        events.clone(),
        shutdown.clone(),
        stop_links.clone(),
        tls,
        tls_files,
        tls_reload,
        socket_uids,
        live_links.clone(),
        links.clone(),
        listener_wake.clone(),
    );
    let listener_thread = std::thread::Builder::new()
        .name("listener".into())
        .spawn(move || listener.run())
        .map_err(FatalError::Thread)?;

    hirte_common::notify::ready(&format!("listening on {addr}:{port}"));
    let flags = core::CoreFlags {
        shutdown: shutdown.clone(),
        reload,
    };
    let mut core = core::Core::new(
        conn,
        model,
        events.clone(),
        flags,
        cli.config.clone(),
        allow_exec,
        bluechi,
    );
    let result = core.run().map_err(FatalError::Core);
    shutdown.store(true, Ordering::Relaxed);
    stop_links.store(true, Ordering::Relaxed);
    // The link threads sleep without a timer: wake each to see `stop_links`. One the listener
    // adds after this sees the flag on its first turn (the registry's lock orders the two).
    links.wake_all();
    listener_wake.wake();
    events.close();
    join_threads(listener_thread, &live_links);
    log_info!("Stopped");
    result
}

/// Waits at most `SHUTDOWN_JOIN_TIMEOUT` for the listener and the connection threads (told to
/// stop by `stop_links`); those still running then are logged and end with the process.
// [impl->req~manager.sigterm~1]
fn join_threads(listener: JoinHandle<()>, live: &AtomicUsize) {
    let links = || live.load(Ordering::SeqCst);
    if wait_for(SHUTDOWN_JOIN_TIMEOUT, || {
        listener.is_finished() && links() == 0
    }) {
        let _ = listener.join();
        return;
    }
    let mut left = Vec::new();
    if !listener.is_finished() {
        left.push("the listener thread".to_string());
    }
    if links() > 0 {
        left.push(format!("{} connection thread(s)", links()));
    }
    log_warn!(
        "Exiting with {} still running {} ms after shutdown (SHUTDOWN_JOIN_TIMEOUT)",
        left.join(" and "),
        SHUTDOWN_JOIN_TIMEOUT.as_millis()
    );
}

fn main() -> ExitCode {
    hirte_common::sys::disable_libdbus_abort();
    hirte_common::sys::tune_malloc();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::report_fatal("hirte", &e.to_string());
            ExitCode::FAILURE
        }
    }
}
