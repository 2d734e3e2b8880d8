//! The threads that talk to the manager, read-only, each on its own bus connection:
//! the [`Watcher`] receives the manager's signals (its monitor's unit state changes, jobs,
//! nodes, metrics) and records them at once; the [`Lister`] re-reads nodes and units every
//! [`WEB_REFRESH_INTERVAL`] (sooner when the watcher asks), so a listing that waits for a slow
//! node never delays a signal. Both write into the shared [`Fleet`](crate::fleet::Fleet).
//! HTTP requests never cause a call to the manager, so its load does not depend on how many
//! browsers look.

use crate::fleet::{Job, JobTiming, NodeRow, UnitRow};
use crate::server::Shared;
use dbus::arg::{PropMap, RefArg};
use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
use dbus::blocking::Connection;
use dbus::message::MessageType;
use dbus::Message;
use hirte_common::bounds::{WEB_CALL_TIMEOUT, WEB_REFRESH_INTERVAL};
use hirte_common::protocol::{self, MANAGER_BUS_NAME, MANAGER_IFACE, MANAGER_PATH, MONITOR_IFACE};
use hirte_common::wait::{now_monotonic_us, now_realtime_us};
use hirte_common::{log_debug, log_info, log_warn};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The manager's metrics signals (docs/api.md section 6).
const METRICS_IFACE: &str = "org.containers.hirte.Metrics";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";
/// Longest wait in the loop before looking at the shutdown flag again.
const TICK: Duration = Duration::from_millis(200);
/// After a change that the signals do not describe fully (a unit appeared, a node came
/// back), the next listing comes this soon instead of at the regular interval.
const SOON: Duration = Duration::from_millis(300);
/// Reading a new job's properties: short, the job may end any moment.
const JOB_PROPS_TIMEOUT: Duration = Duration::from_secs(2);

type NodeListing = Vec<(String, dbus::Path<'static>, String, String)>;

/// Asks the [`Lister`] for a listing before its interval is over.
#[derive(Default)]
pub struct RefreshRequest {
    asked: Mutex<bool>,
    cv: Condvar,
}

impl RefreshRequest {
    pub fn ask(&self) {
        *self.asked.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.cv.notify_one();
    }

    /// Waits until asked or `timeout` passes; whether it was asked (the request is cleared).
    fn wait(&self, timeout: Duration) -> bool {
        let asked = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut asked, _) = self
            .cv
            .wait_timeout_while(asked, timeout, |a| !*a)
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *asked)
    }
}

pub struct Watcher {
    fleet: Shared,
    shutdown: Arc<AtomicBool>,
    refresh: Arc<RefreshRequest>,
    conn: Option<Connection>,
    monitor: Option<dbus::Path<'static>>,
    /// When to try again to make a monitor (none while the manager is away).
    next_monitor_try: Instant,
}

pub struct Lister {
    fleet: Shared,
    shutdown: Arc<AtomicBool>,
    refresh: Arc<RefreshRequest>,
    conn: Option<Connection>,
}

/// One line for a D-Bus error: its message, or its name when it has none.
fn describe(e: &dbus::Error) -> String {
    match (e.message(), e.name()) {
        (Some(m), _) if !m.is_empty() => m.to_string(),
        (_, Some(n)) => n.to_string(),
        _ => "unknown D-Bus error".to_string(),
    }
}

/// Errors that mean the manager is not there (as opposed to a failed listing).
fn manager_gone(e: &dbus::Error) -> bool {
    matches!(
        e.name(),
        Some(
            "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner"
                | "org.freedesktop.DBus.Error.NoReply"
                | "org.freedesktop.DBus.Error.Disconnected"
                | "org.freedesktop.DBus.Error.AccessDenied"
        )
    )
}

fn prop_str(props: &PropMap, key: &str) -> String {
    props
        .get(key)
        .and_then(|v| v.0.as_str())
        .unwrap_or("")
        .to_string()
}

fn with_fleet(fleet: &Shared, f: impl FnOnce(&mut crate::fleet::Fleet)) {
    let mut fleet = fleet.lock().unwrap_or_else(PoisonError::into_inner);
    f(&mut fleet);
}

fn set_unreachable(fleet: &Shared, why: String) {
    let now = now_realtime_us();
    with_fleet(fleet, |f| f.set_unreachable(why, now));
}

fn call<A: dbus::arg::AppendAll, R: dbus::arg::ReadAll + 'static>(
    conn: &Connection,
    path: &str,
    iface: &str,
    member: &str,
    args: A,
) -> Result<R, dbus::Error> {
    conn.with_proxy(MANAGER_BUS_NAME, path, WEB_CALL_TIMEOUT)
        .method_call(iface, member, args)
}

/// Sleeps `d` in steps, returning early when `shutdown` is set.
fn sleep_unless(shutdown: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !shutdown.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
    }
}

impl Lister {
    pub fn new(fleet: Shared, shutdown: Arc<AtomicBool>, refresh: Arc<RefreshRequest>) -> Self {
        Lister {
            fleet,
            shutdown,
            refresh,
            conn: None,
        }
    }

    /// Lists every [`WEB_REFRESH_INTERVAL`], or [`SOON`] after being asked, until shutdown.
    pub fn run(mut self) {
        while !self.shutdown.load(Ordering::Relaxed) {
            if self.conn.is_none() {
                match Connection::new_system() {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        set_unreachable(
                            &self.fleet,
                            format!("cannot connect to the system bus: {}", describe(&e)),
                        );
                        sleep_unless(&self.shutdown, WEB_REFRESH_INTERVAL);
                        continue;
                    }
                }
            }
            self.refresh();
            // At most one listing per SOON, however often the watcher asks.
            sleep_unless(&self.shutdown, SOON);
            let next = Instant::now() + WEB_REFRESH_INTERVAL.saturating_sub(SOON);
            while !self.shutdown.load(Ordering::Relaxed) {
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() || self.refresh.wait(left.min(TICK)) {
                    break;
                }
            }
        }
    }

    fn read_nodes(conn: &Connection) -> Result<(String, Vec<NodeRow>), dbus::Error> {
        let (listing,): (NodeListing,) = call(conn, MANAGER_PATH, MANAGER_IFACE, "ListNodes", ())?;
        let manager = conn.with_proxy(MANAGER_BUS_NAME, MANAGER_PATH, WEB_CALL_TIMEOUT);
        let status: String = manager.get(MANAGER_IFACE, "Status")?;
        let mut nodes = Vec::with_capacity(listing.len());
        for (name, path, state, ip) in listing {
            let last_seen_usec: u64 = conn
                .with_proxy(MANAGER_BUS_NAME, &path, WEB_CALL_TIMEOUT)
                .get(protocol::NODE_IFACE, "LastSeenTimestamp")?;
            nodes.push(NodeRow {
                node: name,
                state,
                ip,
                last_seen_usec,
            });
        }
        Ok((status, nodes))
    }

    fn read_units(conn: &Connection) -> Result<Vec<UnitRow>, dbus::Error> {
        let (all,): (HashMap<String, Vec<protocol::UnitRow>>,) =
            call(conn, MANAGER_PATH, MANAGER_IFACE, "ListUnits", ())?;
        let mut units = Vec::new();
        for (node, rows) in all {
            units.extend(rows.into_iter().map(|r| UnitRow {
                node: node.clone(),
                unit: r.0,
                description: r.1,
                load: r.2,
                active: r.3,
                sub: r.4,
            }));
        }
        Ok(units)
    }

    /// Reads nodes and units (and makes the monitor if there is none).
    /// Reads nodes and units into the fleet.
    fn refresh(&mut self) {
        let Some(conn) = &self.conn else { return };
        let listing = Self::read_nodes(conn).map(|nodes| (nodes, Self::read_units(conn)));
        let now = now_realtime_us();
        match listing {
            Ok(((status, nodes), Ok(units))) => {
                with_fleet(&self.fleet, |f| f.set_listing(status, nodes, units, now));
            }
            Ok(((status, nodes), Err(e))) if !manager_gone(&e) => {
                // A node did not answer: nodes are current, units stay as last read.
                with_fleet(&self.fleet, |f| {
                    let units = f.units.clone();
                    f.set_listing(status, nodes, units, now);
                    f.set_error(format!("listing units failed: {}", describe(&e)));
                });
            }
            Ok((_, Err(e))) | Err(e) => set_unreachable(&self.fleet, describe(&e)),
        }
    }
}

impl Watcher {
    pub fn new(fleet: Shared, shutdown: Arc<AtomicBool>, refresh: Arc<RefreshRequest>) -> Self {
        Watcher {
            fleet,
            shutdown,
            refresh,
            conn: None,
            monitor: None,
            next_monitor_try: Instant::now(),
        }
    }

    /// Receives and records signals until the shutdown flag is set.
    pub fn run(mut self) {
        while !self.shutdown.load(Ordering::Relaxed) {
            if self.conn.is_none() {
                if let Err(e) = self.connect() {
                    log_debug!("cannot connect to the system bus: {e}");
                    sleep_unless(&self.shutdown, WEB_REFRESH_INTERVAL);
                    continue;
                }
            }
            if self.monitor.is_none() && Instant::now() >= self.next_monitor_try {
                self.make_monitor();
            }
            let Some(conn) = &self.conn else { continue };
            match conn.channel().blocking_pop_message(TICK) {
                Ok(Some(msg)) => self.handle(&msg),
                Ok(None) => {}
                Err(e) => {
                    log_warn!("lost the system bus: {}", describe(&e));
                    self.conn = None;
                    self.monitor = None;
                }
            }
        }
        self.close_monitor();
    }

    fn make_monitor(&mut self) {
        let Some(conn) = &self.conn else { return };
        match Self::create_monitor(conn) {
            Ok(path) => {
                log_info!("watching the fleet through monitor {path}");
                self.monitor = Some(path);
                // What changed while there was no monitor comes with the next listing.
                self.refresh.ask();
            }
            Err(e) => {
                log_debug!("cannot create a monitor yet: {}", describe(&e));
                self.next_monitor_try = Instant::now() + WEB_REFRESH_INTERVAL;
            }
        }
    }

    fn connect(&mut self) -> Result<(), String> {
        let conn = Connection::new_system().map_err(|e| describe(&e))?;
        let rules = [
            // JobNew, JobRemoved, NodeConnectionStateChanged, the manager's PropertiesChanged.
            format!("type='signal',sender='{MANAGER_BUS_NAME}',path='{MANAGER_PATH}'"),
            // Job State changes.
            format!(
                "type='signal',sender='{MANAGER_BUS_NAME}',interface='{PROPERTIES_IFACE}',\
                 member='PropertiesChanged',path_namespace='{}'",
                protocol::JOB_PATH_PREFIX
            ),
            format!("type='signal',sender='{MANAGER_BUS_NAME}',interface='{METRICS_IFACE}'"),
            // The manager (re)starting or stopping.
            format!(
                "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{MANAGER_BUS_NAME}'"
            ),
        ];
        for rule in &rules {
            conn.add_match_no_cb(rule).map_err(|e| describe(&e))?;
        }
        // Monitor signals are sent to us by name: they need no match rule.
        self.conn = Some(conn);
        self.monitor = None;
        self.next_monitor_try = Instant::now();
        Ok(())
    }

    /// A monitor subscribed to every unit of every node, for `UnitStateChanged`.
    // [impl->req~web.live~1]
    fn create_monitor(conn: &Connection) -> Result<dbus::Path<'static>, dbus::Error> {
        let (path,): (dbus::Path<'static>,) =
            call(conn, MANAGER_PATH, MANAGER_IFACE, "CreateMonitor", ())?;
        let (_id,): (u32,) = call(conn, &path, MONITOR_IFACE, "Subscribe", ("*", "*"))?;
        Ok(path)
    }

    fn close_monitor(&mut self) {
        if let (Some(conn), Some(path)) = (&self.conn, self.monitor.take()) {
            let _ = conn
                .with_proxy(MANAGER_BUS_NAME, &path, JOB_PROPS_TIMEOUT)
                .method_call::<(), _, _, _>(MONITOR_IFACE, "Close", ());
        }
    }

    fn refresh_soon(&self) {
        self.refresh.ask();
    }

    fn handle(&mut self, msg: &Message) {
        if msg.msg_type() != MessageType::Signal {
            return;
        }
        let iface = msg.interface().map(|i| i.to_string()).unwrap_or_default();
        let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
        let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
        let now = now_realtime_us();
        match (iface.as_str(), member.as_str()) {
            ("org.freedesktop.DBus", "NameOwnerChanged") => {
                if let Ok((name, _, new)) = msg.read3::<&str, &str, &str>() {
                    if name == MANAGER_BUS_NAME {
                        self.monitor = None;
                        if new.is_empty() {
                            log_info!("the manager left the bus");
                            set_unreachable(&self.fleet, "the manager is not running".to_string());
                        } else {
                            log_info!("the manager is on the bus ({new})");
                            self.next_monitor_try = Instant::now();
                        }
                    }
                }
            }
            (MANAGER_IFACE, "JobNew") => {
                if let Ok((id, job)) = msg.read2::<u32, dbus::Path>() {
                    self.job_new(id, &job);
                }
            }
            (MANAGER_IFACE, "JobRemoved") => {
                if let Ok((id, _, node, unit, result)) =
                    msg.read5::<u32, dbus::Path, &str, &str, &str>()
                {
                    let mono = now_monotonic_us();
                    with_fleet(&self.fleet, |f| {
                        f.job_removed(id, node, unit, result, now, mono)
                    });
                }
            }
            (MANAGER_IFACE, "NodeConnectionStateChanged") => {
                if let Ok((node, state)) = msg.read2::<&str, &str>() {
                    with_fleet(&self.fleet, |f| f.node_state(node, state, now));
                    self.refresh_soon();
                }
            }
            (PROPERTIES_IFACE, "PropertiesChanged") => {
                if let Ok((iface, changed)) = msg.read2::<&str, PropMap>() {
                    let value = prop_str(
                        &changed,
                        if iface == MANAGER_IFACE {
                            "Status"
                        } else {
                            "State"
                        },
                    );
                    if value.is_empty() {
                        return;
                    }
                    if path == MANAGER_PATH && iface == MANAGER_IFACE {
                        with_fleet(&self.fleet, |f| f.set_status(value, now));
                    } else if let Some(id) = path
                        .strip_prefix(protocol::JOB_PATH_PREFIX)
                        .and_then(|rest| rest.trim_start_matches('/').parse::<u32>().ok())
                    {
                        with_fleet(&self.fleet, |f| f.job_state(id, &value));
                    }
                }
            }
            (MONITOR_IFACE, _) if self.monitor.as_deref() == Some(path.as_str()) => {
                self.monitor_signal(msg, &member, now);
            }
            (METRICS_IFACE, "StartUnitJobMetrics") => {
                if let Ok((node, job_id, unit, job_usec, unit_start_usec)) =
                    msg.read5::<&str, &str, &str, u64, u64>()
                {
                    let timing = JobTiming {
                        time_usec: now,
                        node: node.to_string(),
                        unit: unit.to_string(),
                        job_id: job_id.to_string(),
                        job_usec,
                        unit_start_usec,
                    };
                    with_fleet(&self.fleet, |f| f.job_timing(timing));
                }
            }
            _ => {}
        }
    }

    fn monitor_signal(&mut self, msg: &Message, member: &str, now: u64) {
        match member {
            "UnitStateChanged" => {
                if let Ok((node, unit, active, sub, reason)) =
                    msg.read5::<&str, &str, &str, &str, &str>()
                {
                    with_fleet(&self.fleet, |f| {
                        f.unit_state(node, unit, active, sub, reason, now)
                    });
                }
            }
            // The listing brings the new unit's description and load state.
            "UnitNew" | "UnitRemoved" => self.refresh_soon(),
            "PeerRemoved" => {
                self.monitor = None;
                self.next_monitor_try = Instant::now();
            }
            _ => {}
        }
    }

    /// Records a new job with its type, read from the job object while it exists.
    fn job_new(&mut self, id: u32, path: &dbus::Path) {
        let Some(conn) = &self.conn else { return };
        // Its duration runs from here; the read below takes a round trip.
        let (started_usec, started_mono_usec) = (now_realtime_us(), now_monotonic_us());
        let props: PropMap = conn
            .with_proxy(MANAGER_BUS_NAME, path, JOB_PROPS_TIMEOUT)
            .get_all(protocol::JOB_IFACE)
            .unwrap_or_default();
        let field = |k: &str, fallback: &str| {
            let v = prop_str(&props, k);
            if v.is_empty() {
                fallback.to_string()
            } else {
                v
            }
        };
        let job = Job {
            id,
            node: field("Node", ""),
            unit: field("Unit", ""),
            job_type: field("JobType", "unknown"),
            state: field("State", "waiting"),
            started_usec,
            started_mono_usec,
        };
        with_fleet(&self.fleet, |f| f.job_new(job));
    }
}
