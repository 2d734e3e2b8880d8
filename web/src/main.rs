//! `hirte-web`: a read-only web dashboard and Prometheus endpoint for the Hirte-rs manager.
//!
//! Its own process (never the manager's): it reads the manager's public D-Bus API as a
//! member of `hirte-operators` (the read-only policy) and serves what it read over HTTP.
//! Threads: the watcher and the lister (the only ones that talk to the manager, see
//! collector.rs), the accepting thread and a fixed pool of HTTP workers.

mod collector;
mod fleet;
mod http;
mod metrics;
mod routes;
mod server;
mod settings;

use clap::Parser;
use hirte_common::config::{cli_entry, config_dir};
use hirte_common::{log, log_info};
use settings::WebSettings;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(
    name = "hirte-web",
    version,
    about = "Hirte-rs read-only web dashboard and Prometheus endpoint"
)]
struct Cli {
    /// Extra configuration file, read after /etc/hirte/web.conf and its drop-ins
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, IP:PORT (overrides ListenAddress; default 127.0.0.1:8080)
    #[arg(short = 'l', long = "listen", value_name = "IP:PORT")]
    listen: Option<String>,
    /// Log level: debug, info, warn, error (overrides LogLevel)
    #[arg(long = "log-level", value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log target: journald, syslog, stderr (overrides LogTarget)
    #[arg(long = "log-target", value_name = "TARGET")]
    log_target: Option<String>,
}

/// The packaged unit (packaging/systemd/hirte-web.service) starts this with no arguments:
/// /etc/hirte/web.conf and its drop-ins give the settings.
// [impl->req~install.web~1]
fn load_settings(cli: &Cli) -> Result<WebSettings, String> {
    let mut s =
        WebSettings::load(&config_dir(), cli.config.as_deref()).map_err(|e| e.to_string())?;
    for (key, value) in [
        ("ListenAddress", &cli.listen),
        ("LogLevel", &cli.log_level),
        ("LogTarget", &cli.log_target),
    ] {
        if let Some(v) = value {
            s.apply(&cli_entry(key, v)).map_err(|e| e.to_string())?;
        }
    }
    Ok(s)
}

fn run(cli: Cli) -> Result<(), String> {
    let settings = load_settings(&cli)?;
    log::init("hirte-web", settings.log.level, settings.log.target, false);
    let listener = TcpListener::bind(settings.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    log_info!(
        "Starting hirte-web {} on http://{}/",
        env!("CARGO_PKG_VERSION"),
        settings.listen
    );

    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone())
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    let fleet = Arc::new(Mutex::new(fleet::Fleet::default()));
    let refresh = Arc::new(collector::RefreshRequest::default());
    let watcher = collector::Watcher::new(fleet.clone(), shutdown.clone(), refresh.clone());
    let lister = collector::Lister::new(fleet.clone(), shutdown.clone(), refresh);
    let mut readers = Vec::new();
    for (name, body) in [
        (
            "watcher",
            Box::new(move || watcher.run()) as Box<dyn FnOnce() + Send>,
        ),
        ("lister", Box::new(move || lister.run())),
    ] {
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(body)
            .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
        readers.push(handle);
    }
    let served = server::run(listener, fleet, shutdown.clone());
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        let _ = r.join();
    }
    log_info!("hirte-web stopped");
    served
}

fn main() -> ExitCode {
    hirte_common::sys::disable_libdbus_abort();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::report_fatal("hirte-web", &e);
            ExitCode::FAILURE
        }
    }
}
