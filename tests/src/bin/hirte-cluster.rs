//! Manual use of the harness: bring a cluster up and leave it running, or tear one down.
//!
//! ```text
//! hirte-cluster up [--systemd-only] NODE...   # prints the dir and how to reach the cluster
//! hirte-cluster down DIR                      # stop and remove a cluster left by `up`
//! hirte-cluster gc                            # remove clusters whose test process died
//! ```

use std::process::ExitCode;

use hirte_tests::{cleanup_kept, cleanup_stale, Cluster, ClusterSpec};

const USAGE: &str = "usage: hirte-cluster up [--systemd-only] NODE... | down DIR | gc";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter().map(String::as_str);
    match it.next() {
        Some("up") => {
            let rest: Vec<&str> = it.collect();
            let systemd_only = rest.contains(&"--systemd-only");
            let nodes: Vec<&str> = rest.into_iter().filter(|a| !a.starts_with("--")).collect();
            let spec = if systemd_only {
                ClusterSpec::systemd_only(&nodes)
            } else {
                ClusterSpec::new(&nodes)
            };
            match Cluster::start(spec) {
                Ok(c) => {
                    println!("cluster {} up in {:?}", c.id(), c.startup_time());
                    println!("export DBUS_SYSTEM_BUS_ADDRESS={}", c.bus_address());
                    for n in c.nodes() {
                        let ip = c.node_ip(n).unwrap_or_default();
                        let pid = c.systemd_pid(n).unwrap_or(0);
                        println!("node {n}: {ip}, enter with: nsenter -t {pid} --net --mount");
                    }
                    let dir = c.keep();
                    println!("stop with: hirte-cluster down {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hirte-cluster: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("down") => match it.next() {
            Some(dir) => match cleanup_kept(std::path::Path::new(dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hirte-cluster: {e}");
                    ExitCode::FAILURE
                }
            },
            None => {
                eprintln!("{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("gc") => {
            for d in cleanup_stale() {
                println!("removed {}", d.display());
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
