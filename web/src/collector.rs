//! The one thread that talks to the manager: read-only calls on its D-Bus API (listings,
//! properties, one monitor) every [`WEB_REFRESH_INTERVAL`] and the manager's signals in
//! between, written into the shared [`Fleet`](crate::fleet::Fleet). HTTP requests never
//! cause a call to the manager, so the load on it does not depend on how many browsers look.

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
use std::sync::{Arc, PoisonError};
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

pub struct Collector {
    fleet: Shared,
    shutdown: Arc<AtomicBool>,
    conn: Option<Connection>,
    monitor: Option<dbus::Path<'static>>,
    next_refresh: Instant,
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

impl Collector {
    pub fn new(fleet: Shared, shutdown: Arc<AtomicBool>) -> Self {
        Collector {
            fleet,
            shutdown,
            conn: None,
            monitor: None,
            next_refresh: Instant::now(),
        }
    }

    fn with_fleet(&self, f: impl FnOnce(&mut crate::fleet::Fleet)) {
        let mut fleet = self.fleet.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut fleet);
    }

    fn unreachable(&mut self, why: String) {
        self.monitor = None;
        let now = now_realtime_us();
        self.with_fleet(|f| f.set_unreachable(why, now));
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

    /// Runs until the shutdown flag is set.
    pub fn run(mut self) {
        while !self.shutdown.load(Ordering::Relaxed) {
            if self.conn.is_none() {
                if let Err(e) = self.connect() {
                    self.unreachable(format!("cannot connect to the system bus: {e}"));
                    self.sleep(WEB_REFRESH_INTERVAL);
                    continue;
                }
            }
            if Instant::now() >= self.next_refresh {
                self.refresh();
            }
            let wait = self
                .next_refresh
                .saturating_duration_since(Instant::now())
                .min(TICK);
            let Some(conn) = &self.conn else { continue };
            match conn.channel().blocking_pop_message(wait) {
                Ok(Some(msg)) => self.handle(&msg),
                Ok(None) => {}
                Err(e) => {
                    log_warn!("lost the system bus: {}", describe(&e));
                    self.conn = None;
                    self.unreachable(format!("lost the system bus: {}", describe(&e)));
                }
            }
        }
        self.close_monitor();
    }

    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.shutdown.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
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
        self.next_refresh = Instant::now();
        Ok(())
    }

    /// A monitor subscribed to every unit of every node, for `UnitStateChanged`.
    // [impl->req~web.live~1]
    fn create_monitor(conn: &Connection) -> Result<dbus::Path<'static>, dbus::Error> {
        let (path,): (dbus::Path<'static>,) =
            Self::call(conn, MANAGER_PATH, MANAGER_IFACE, "CreateMonitor", ())?;
        let (_id,): (u32,) = Self::call(conn, &path, MONITOR_IFACE, "Subscribe", ("*", "*"))?;
        Ok(path)
    }

    fn close_monitor(&mut self) {
        if let (Some(conn), Some(path)) = (&self.conn, self.monitor.take()) {
            let _ = conn
                .with_proxy(MANAGER_BUS_NAME, &path, JOB_PROPS_TIMEOUT)
                .method_call::<(), _, _, _>(MONITOR_IFACE, "Close", ());
        }
    }

    fn read_nodes(conn: &Connection) -> Result<(String, Vec<NodeRow>), dbus::Error> {
        let (listing,): (NodeListing,) =
            Self::call(conn, MANAGER_PATH, MANAGER_IFACE, "ListNodes", ())?;
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
            Self::call(conn, MANAGER_PATH, MANAGER_IFACE, "ListUnits", ())?;
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
    fn refresh(&mut self) {
        self.next_refresh = Instant::now() + WEB_REFRESH_INTERVAL;
        let Some(conn) = &self.conn else { return };
        if self.monitor.is_none() {
            match Self::create_monitor(conn) {
                Ok(path) => {
                    log_info!("watching the fleet through monitor {path}");
                    self.monitor = Some(path);
                }
                Err(e) => log_debug!("cannot create a monitor yet: {}", describe(&e)),
            }
        }
        let listing = Self::read_nodes(conn).map(|nodes| (nodes, Self::read_units(conn)));
        let now = now_realtime_us();
        match listing {
            Ok(((status, nodes), Ok(units))) => {
                self.with_fleet(|f| f.set_listing(status, nodes, units, now));
            }
            Ok(((status, nodes), Err(e))) if !manager_gone(&e) => {
                // A node did not answer: nodes are current, units stay as last read.
                self.with_fleet(|f| {
                    let units = f.units.clone();
                    f.set_listing(status, nodes, units, now);
                    f.set_error(format!("listing units failed: {}", describe(&e)));
                });
            }
            Ok((_, Err(e))) | Err(e) => self.unreachable(describe(&e)),
        }
    }

    fn refresh_soon(&mut self) {
        self.next_refresh = self.next_refresh.min(Instant::now() + SOON);
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
                        if new.is_empty() {
                            log_info!("the manager left the bus");
                            self.unreachable("the manager is not running".to_string());
                        } else {
                            log_info!("the manager is on the bus ({new})");
                            self.monitor = None;
                            self.next_refresh = Instant::now();
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
                    self.with_fleet(|f| f.job_removed(id, node, unit, result, now, mono));
                }
            }
            (MANAGER_IFACE, "NodeConnectionStateChanged") => {
                if let Ok((node, state)) = msg.read2::<&str, &str>() {
                    self.with_fleet(|f| f.node_state(node, state, now));
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
                        self.with_fleet(|f| f.set_status(value, now));
                    } else if let Some(id) = path
                        .strip_prefix(protocol::JOB_PATH_PREFIX)
                        .and_then(|rest| rest.trim_start_matches('/').parse::<u32>().ok())
                    {
                        self.with_fleet(|f| f.job_state(id, &value));
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
                    self.with_fleet(|f| f.job_timing(timing));
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
                    self.with_fleet(|f| f.unit_state(node, unit, active, sub, reason, now));
                }
            }
            // The listing brings the new unit's description and load state.
            "UnitNew" | "UnitRemoved" => self.refresh_soon(),
            "PeerRemoved" => {
                self.monitor = None;
                self.refresh_soon();
            }
            _ => {}
        }
    }

    /// Records a new job with its type, read from the job object while it exists.
    fn job_new(&mut self, id: u32, path: &dbus::Path) {
        let Some(conn) = &self.conn else { return };
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
            started_usec: now_realtime_us(),
            started_mono_usec: now_monotonic_us(),
        };
        self.with_fleet(|f| f.job_new(job));
    }
}
