//! The lookup of the manager's host name, bounded in time.
//!
//! `getaddrinfo` (behind `ToSocketAddrs`) has no timeout the caller sets: with a resolver
//! that does not answer it blocks for as long as the system's resolver configuration says,
//! and meanwhile the link thread would neither reconnect nor see SIGTERM. So each lookup
//! runs in a thread of its own and the link thread waits at most
//! [`MANAGER_LOOKUP_TIMEOUT`]; a lookup that takes longer is a failed attempt. Its thread
//! cannot be stopped: it ends when the resolver gives up. Until then that name is not
//! looked up again (each attempt fails at once, saying so), so abandoned lookups cannot
//! pile up: at most one per name, and at most [`MAX_MANAGERS`] in all.
//!
//! An IP address is not looked up (no thread), as `ToSocketAddrs` does not either.

// [impl->req~agent.reconnect~1]
use hirte_common::bounds::{MANAGER_LOOKUP_TIMEOUT, MAX_MANAGERS};
use hirte_common::timespan::format_timespan;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A name lookup: the system's (`getaddrinfo`), or a stand-in in tests.
pub type LookupFn = dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync;

/// Looks names up with a time bound; at most one lookup per name in flight.
pub struct Resolver {
    lookup: Arc<LookupFn>,
    timeout: Duration,
    /// Names whose lookup has not returned yet (also those given up on).
    in_flight: Arc<Mutex<Vec<String>>>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::with(Arc::new(system_lookup), MANAGER_LOOKUP_TIMEOUT)
    }
}

fn system_lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Takes its name off the in-flight list when the lookup thread ends, also by a panic.
struct InFlight {
    names: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = names.iter().position(|n| *n == self.name) {
            names.swap_remove(i);
        }
    }
}

impl Resolver {
    pub fn with(lookup: Arc<LookupFn>, timeout: Duration) -> Self {
        Resolver {
            lookup,
            timeout,
            in_flight: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The addresses of `host` (at least one), or why there are none: the lookup failed,
    /// took longer than the timeout, or an earlier lookup of the name is still running.
    pub fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let timeout = format_timespan(self.timeout);
        {
            let mut names = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if names.iter().any(|n| n == host) {
                return Err(format!(
                    "the previous lookup of '{host}' (given up after {timeout}) has not \
                     returned yet; not starting another"
                ));
            }
            if names.len() >= MAX_MANAGERS {
                return Err(format!(
                    "{} earlier name lookups have not returned yet; not looking up '{host}'",
                    names.len()
                ));
            }
            names.push(host.to_string());
        }
        let guard = InFlight {
            names: self.in_flight.clone(),
            name: host.to_string(),
        };
        let (tx, rx) = sync_channel(1);
        let lookup = self.lookup.clone();
        let name = host.to_string();
        let spawned = std::thread::Builder::new()
            .name("resolve".to_string())
            .spawn(move || {
                let result = lookup(&name, port);
                // Off the list before the answer is sent: the caller may look up again at once.
                drop(guard);
                let _ = tx.send(result);
            });
        if let Err(e) = spawned {
            // The closure (and with it the guard) was dropped: the name is off the list.
            return Err(format!("cannot start the lookup of '{host}': {e}"));
        }
        match rx.recv_timeout(self.timeout) {
            Ok(Ok(addrs)) if addrs.is_empty() => Err(format!("'{host}' has no addresses")),
            Ok(Ok(addrs)) => Ok(addrs),
            Ok(Err(e)) => Err(format!("'{host}': {e}")),
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "the lookup of '{host}' took longer than {timeout}; given up"
            )),
            Err(RecvTimeoutError::Disconnected) => {
                Err(format!("the lookup of '{host}' ended without an answer"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    /// Lookups of "stuck..." hang until `release` is set (at most 60 s); others answer at once.
    fn resolver(release: Arc<AtomicBool>, timeout: Duration) -> Resolver {
        Resolver::with(
            Arc::new(move |host: &str, port: u16| {
                if host.starts_with("stuck") {
                    let until = Instant::now() + Duration::from_secs(60);
                    while !release.load(Ordering::Relaxed) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                Ok(vec![SocketAddr::from(([10, 0, 0, 1], port))])
            }),
            timeout,
        )
    }

    // [utest->req~agent.reconnect~1]
    #[test]
    fn a_hanging_lookup_is_given_up_after_the_manager_lookup_timeout() {
        let r = resolver(Arc::new(AtomicBool::new(false)), MANAGER_LOOKUP_TIMEOUT);
        let t0 = Instant::now();
        let err = r.resolve("stuck", 2020).unwrap_err();
        let took = t0.elapsed();
        assert!(
            took >= MANAGER_LOOKUP_TIMEOUT
                && took < MANAGER_LOOKUP_TIMEOUT + Duration::from_millis(500),
            "returned after {took:?}"
        );
        assert_eq!(
            err,
            format!(
                "the lookup of 'stuck' took longer than {}; given up",
                format_timespan(MANAGER_LOOKUP_TIMEOUT)
            )
        );
    }

    // [utest->req~agent.reconnect~1]
    #[test]
    fn a_name_still_being_looked_up_fails_at_once_until_that_lookup_returns() {
        let release = Arc::new(AtomicBool::new(false));
        let r = resolver(release.clone(), Duration::from_millis(100));
        assert!(r.resolve("stuck", 2020).is_err());
        let t0 = Instant::now();
        let err = r.resolve("stuck", 2020).unwrap_err();
        assert!(
            t0.elapsed() < Duration::from_millis(50),
            "{:?}",
            t0.elapsed()
        );
        assert!(err.contains("previous lookup of 'stuck'"), "{err}");
        // Other names are not held up by it.
        assert_eq!(
            r.resolve("other", 7).unwrap(),
            vec![SocketAddr::from(([10, 0, 0, 1], 7))]
        );
        // Once the hung lookup returns, the name is looked up again.
        release.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        while !r.in_flight.lock().unwrap().is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(r.resolve("stuck", 2020).is_ok());
    }

    // [utest->req~agent.reconnect~1]
    #[test]
    fn abandoned_lookups_are_bounded_and_addresses_need_no_lookup() {
        let r = resolver(Arc::new(AtomicBool::new(false)), Duration::from_millis(10));
        for i in 0..MAX_MANAGERS {
            assert!(r.resolve(&format!("stuck{i}"), 1).is_err());
            assert!(r.resolve(&format!("stuck{i}"), 1).is_err());
        }
        assert_eq!(r.in_flight.lock().unwrap().len(), MAX_MANAGERS);
        let t0 = Instant::now();
        let err = r.resolve("more", 1).unwrap_err();
        assert!(
            t0.elapsed() < Duration::from_millis(10),
            "{:?}",
            t0.elapsed()
        );
        assert!(err.contains("earlier name lookups"), "{err}");
        assert_eq!(r.in_flight.lock().unwrap().len(), MAX_MANAGERS);
        assert_eq!(
            r.resolve("10.1.2.3", 5).unwrap(),
            vec![SocketAddr::from(([10, 1, 2, 3], 5))]
        );
        assert_eq!(r.resolve("::1", 5).unwrap().len(), 1);
    }
}
