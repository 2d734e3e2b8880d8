//! `hirte`: the Hirte-rs manager.
//!
//! Threads: the core (D-Bus API and all state), the listener, and one per agent connection.

mod api;
mod core;
mod dependencies;
mod events;
mod link;
mod listener;
mod monitor;
mod proxy;
mod state;

use clap::Parser;
use dbus_crossroads::Crossroads;
use hirte_common::bounds::CORE_QUEUE_DEPTH;
use hirte_common::config::{cli_entry, config_dir, ManagerConfig};
use hirte_common::queue::BoundedQueue;
use hirte_common::{log, log_info, protocol};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

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

fn load_config(cli: &Cli) -> Result<ManagerConfig, String> {
    let mut cfg =
        ManagerConfig::load(&config_dir(), cli.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(p) = &cli.port {
        cfg.apply(&cli_entry("ManagerPort", p))
            .map_err(|e| e.to_string())?;
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn run(cli: Cli) -> Result<(), String> {
    let cfg = load_config(&cli)?;
    log::init("hirte", cfg.log.level, cfg.log.target, cfg.log.is_quiet);
    log_info!(
        "Starting hirte {} (port {}, {} allowed nodes)",
        env!("CARGO_PKG_VERSION"),
        cfg.port,
        cfg.allowed_node_names.len()
    );

    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone())
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(|e| format!("cannot install signal handler: {e}"))?;

    let conn = hirte_common::sys::open_bus(dbus::channel::BusType::System).map_err(|e| {
        format!(
            "cannot connect to the system bus: {}",
            e.message().unwrap_or("unknown error")
        )
    })?;
    let owned = conn
        .request_name(protocol::MANAGER_BUS_NAME, false, false, true)
        .map_err(|e| {
            format!(
                "cannot own {} on the system bus: {} (is the D-Bus policy installed?)",
                protocol::MANAGER_BUS_NAME,
                e.message().unwrap_or("unknown error")
            )
        })?;
    if owned != dbus::blocking::stdintf::org_freedesktop_dbus::RequestNameReply::PrimaryOwner {
        return Err(format!(
            "{} is already owned: is another manager running?",
            protocol::MANAGER_BUS_NAME
        ));
    }

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
                return Err(
                    "AllowedNodeNames is empty while the activated socket listens on all \
                            interfaces; list the nodes that may connect"
                        .to_string(),
                );
            }
            l
        }
        None => {
            let l = TcpListener::bind((addr, cfg.port))
                .map_err(|e| format!("cannot listen on {addr}:{}: {e}", cfg.port))?;
            log_info!("Listening on {addr}:{}", cfg.port);
            l
        }
    };
    // [impl->req~link.unix-socket~1]
    // Kept until `run` returns: dropping it removes the socket file.
    let (unix, _socket_file) = match &cfg.socket {
        Some(path) => {
            let (l, f) = listener::SocketFile::bind(path)?;
            log_info!("Listening on unix:path={}", path.display());
            (Some(l), Some(f))
        }
        None => (None, None),
    };

    let events = Arc::new(
        BoundedQueue::new(CORE_QUEUE_DEPTH).map_err(|e| format!("cannot create queue: {e}"))?,
    );
    let model = Arc::new(Mutex::new(state::Manager::new(cfg)));
    let mut cr = Crossroads::new();
    let tokens = api::export(&mut cr, &model);
    let first_node = state::lock(&model).nodes.first().map(|n| n.path.clone());
    let signatures = api::input_signatures(&mut cr, &tokens, first_node);

    // Links outlive the SIGTERM by the drain time: jobs in flight must still be answered.
    let stop_links = Arc::new(AtomicBool::new(false));
    let listener = listener::Listener {
        listener: tcp,
        unix,
        events: events.clone(),
        shutdown: shutdown.clone(),
        stop_links: stop_links.clone(),
    };
    let listener_thread = std::thread::Builder::new()
        .name("listener".into())
        .spawn(move || listener.run())
        .map_err(|e| format!("cannot start listener thread: {e}"))?;

    hirte_common::notify::ready(&format!("listening on {addr}:{port}"));
    let mut core = core::Core {
        conn,
        cr,
        tokens,
        model,
        events: events.clone(),
        shutdown: shutdown.clone(),
        reload,
        signatures,
        extra_config: cli.config.clone(),
        bus_writer: Default::default(),
    };
    let result = core.run().map_err(|e| e.to_string());
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    stop_links.store(true, std::sync::atomic::Ordering::Relaxed);
    events.close();
    let _ = listener_thread.join();
    log_info!("Stopped");
    result
}

fn main() -> ExitCode {
    hirte_common::sys::disable_libdbus_abort();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::report_fatal("hirte", &e);
            ExitCode::FAILURE
        }
    }
}
