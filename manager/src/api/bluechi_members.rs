//! Our description of BlueChi 1.2's public interfaces (`org.eclipse.bluechi.*`): every method,
//! signal and property with its arguments, written from BlueChi's documented API. The gateway
//! (`bluechi.rs`) serves introspection from it, checks input signatures against it and drops
//! whatever Hirte has that BlueChi lacks.

/// One argument: name and D-Bus type.
pub type Arg = (&'static str, &'static str);

pub enum Member {
    Method {
        name: &'static str,
        ins: &'static [Arg],
        outs: &'static [Arg],
    },
    Signal {
        name: &'static str,
        args: &'static [Arg],
    },
    /// A read-only property; `emits`: its `EmitsChangedSignal` annotation.
    Property {
        name: &'static str,
        emits: &'static str,
        ty: &'static str,
    },
}

use Member::{Method, Property, Signal};

/// One interface and the Hirte interface that does its work.
pub struct Interface {
    pub name: &'static str,
    pub hirte: &'static str,
    pub members: &'static [Member],
}

const NAME_MODE: &[Arg] = &[("name", "s"), ("mode", "s")];
const JOB: &[Arg] = &[("job", "o")];
const NAME: &[Arg] = &[("name", "s")];

const CONTROLLER: &[Member] = &[
    Method {
        name: "ListUnits",
        ins: &[],
        outs: &[("units", "a{sa(ssssssouso)}")],
    },
    Method {
        name: "ListUnitFiles",
        ins: &[],
        outs: &[("unitfiles", "a{sa(ss)}")],
    },
    Method {
        name: "ListNodes",
        ins: &[],
        outs: &[("nodes", "a(soss)")],
    },
    Method {
        name: "GetNode",
        ins: NAME,
        outs: &[("path", "o")],
    },
    Method {
        name: "CreateMonitor",
        ins: &[],
        outs: &[("monitor", "o")],
    },
    Method {
        name: "EnableMetrics",
        ins: &[],
        outs: &[],
    },
    Method {
        name: "DisableMetrics",
        ins: &[],
        outs: &[],
    },
    Method {
        name: "SetLogLevel",
        ins: &[("loglevel", "s")],
        outs: &[],
    },
    Signal {
        name: "JobNew",
        args: &[("id", "u"), ("job", "o")],
    },
    Signal {
        name: "JobRemoved",
        args: &[
            ("id", "u"),
            ("job", "o"),
            ("node", "s"),
            ("unit", "s"),
            ("result", "s"),
        ],
    },
    Property {
        name: "Status",
        emits: "true",
        ty: "s",
    },
    Property {
        name: "LogLevel",
        emits: "false",
        ty: "s",
    },
    Property {
        name: "LogTarget",
        emits: "const",
        ty: "s",
    },
];

const NODE: &[Member] = &[
    Method {
        name: "StartUnit",
        ins: NAME_MODE,
        outs: JOB,
    },
    Method {
        name: "StartTransientUnit",
        ins: &[
            ("name", "s"),
            ("mode", "s"),
            ("props", "a(sv)"),
            ("aux", "a(sa(sv))"),
        ],
        outs: JOB,
    },
    Method {
        name: "StopUnit",
        ins: NAME_MODE,
        outs: JOB,
    },
    Method {
        name: "FreezeUnit",
        ins: NAME,
        outs: &[],
    },
    Method {
        name: "ThawUnit",
        ins: NAME,
        outs: &[],
    },
    Method {
        name: "ReloadUnit",
        ins: NAME_MODE,
        outs: JOB,
    },
    Method {
        name: "RestartUnit",
        ins: NAME_MODE,
        outs: JOB,
    },
    Method {
        name: "KillUnit",
        ins: &[("name", "s"), ("who", "s"), ("signal", "i")],
        outs: &[],
    },
    Method {
        name: "GetUnitProperties",
        ins: &[("name", "s"), ("interface", "s")],
        outs: &[("props", "a{sv}")],
    },
    Method {
        name: "GetUnitProperty",
        ins: &[("name", "s"), ("interface", "s"), ("property", "s")],
        outs: &[("value", "v")],
    },
    Method {
        name: "SetUnitProperties",
        ins: &[("name", "s"), ("runtime", "b"), ("keyvalues", "a(sv)")],
        outs: &[],
    },
    Method {
        name: "EnableUnitFiles",
        ins: &[("files", "as"), ("runtime", "b"), ("force", "b")],
        outs: &[("carries_install_info", "b"), ("changes", "a(sss)")],
    },
    Method {
        name: "DisableUnitFiles",
        ins: &[("files", "as"), ("runtime", "b")],
        outs: &[("changes", "a(sss)")],
    },
    Method {
        name: "ListUnits",
        ins: &[],
        outs: &[("units", "a(ssssssouso)")],
    },
    Method {
        name: "ListUnitFiles",
        ins: &[],
        outs: &[("unitfiles", "a(ss)")],
    },
    Method {
        name: "GetUnitFileState",
        ins: &[("file", "s")],
        outs: &[("state", "s")],
    },
    Method {
        name: "Reload",
        ins: &[],
        outs: &[],
    },
    Method {
        name: "SetLogLevel",
        ins: &[("level", "s")],
        outs: &[],
    },
    Method {
        name: "ResetFailed",
        ins: &[],
        outs: &[],
    },
    Method {
        name: "ResetFailedUnit",
        ins: NAME,
        outs: &[],
    },
    Method {
        name: "GetDefaultTarget",
        ins: &[],
        outs: &[("defaulttarget", "s")],
    },
    Method {
        name: "SetDefaultTarget",
        ins: &[("defaulttarget", "s"), ("force", "b")],
        outs: &[("out", "a(sss)")],
    },
    Property {
        name: "Name",
        emits: "const",
        ty: "s",
    },
    Property {
        name: "Status",
        emits: "true",
        ty: "s",
    },
    Property {
        name: "PeerIp",
        emits: "false",
        ty: "s",
    },
    Property {
        name: "LastSeenTimestamp",
        emits: "false",
        ty: "t",
    },
    Property {
        name: "LastSeenTimestampMonotonic",
        emits: "false",
        ty: "t",
    },
];

const JOB_MEMBERS: &[Member] = &[
    Method {
        name: "Cancel",
        ins: &[],
        outs: &[],
    },
    Property {
        name: "Id",
        emits: "const",
        ty: "u",
    },
    Property {
        name: "Node",
        emits: "const",
        ty: "s",
    },
    Property {
        name: "Unit",
        emits: "const",
        ty: "s",
    },
    Property {
        name: "JobType",
        emits: "const",
        ty: "s",
    },
    Property {
        name: "State",
        emits: "true",
        ty: "s",
    },
];

const MONITOR: &[Member] = &[
    Method {
        name: "Close",
        ins: &[],
        outs: &[],
    },
    Method {
        name: "Subscribe",
        ins: &[("node", "s"), ("unit", "s")],
        outs: &[("id", "u")],
    },
    Method {
        name: "Unsubscribe",
        ins: &[("id", "u")],
        outs: &[],
    },
    Method {
        name: "SubscribeList",
        ins: &[("node", "s"), ("units", "as")],
        outs: &[("id", "u")],
    },
    Method {
        name: "AddPeer",
        ins: &[("name", "s")],
        outs: &[("id", "u")],
    },
    Method {
        name: "RemovePeer",
        ins: &[("id", "u"), ("reason", "s")],
        outs: &[],
    },
    Signal {
        name: "UnitPropertiesChanged",
        args: &[
            ("node", "s"),
            ("unit", "s"),
            ("interface", "s"),
            ("props", "a{sv}"),
        ],
    },
    Signal {
        name: "UnitStateChanged",
        args: &[
            ("node", "s"),
            ("unit", "s"),
            ("active_state", "s"),
            ("sub_state", "s"),
            ("reason", "s"),
        ],
    },
    Signal {
        name: "UnitNew",
        args: &[("node", "s"), ("unit", "s"), ("reason", "s")],
    },
    Signal {
        name: "UnitRemoved",
        args: &[("node", "s"), ("unit", "s"), ("reason", "s")],
    },
    Signal {
        name: "PeerRemoved",
        args: &[("reason", "s")],
    },
];

const METRICS: &[Member] = &[
    Signal {
        name: "StartUnitJobMetrics",
        args: &[
            ("node_name", "s"),
            ("job_id", "s"),
            ("unit", "s"),
            ("job_measured_time_micros", "t"),
            ("unit_start_prop_time_micros", "t"),
        ],
    },
    Signal {
        name: "AgentJobMetrics",
        args: &[
            ("node_name", "s"),
            ("unit", "s"),
            ("method", "s"),
            ("systemd_job_time_micros", "t"),
        ],
    },
];

/// The interfaces the manager serves under `org.eclipse.bluechi`.
pub const INTERFACES: &[Interface] = &[
    Interface {
        name: "org.eclipse.bluechi.Controller",
        hirte: "org.containers.hirte.Manager",
        members: CONTROLLER,
    },
    Interface {
        name: "org.eclipse.bluechi.Node",
        hirte: "org.containers.hirte.Node",
        members: NODE,
    },
    Interface {
        name: "org.eclipse.bluechi.Job",
        hirte: "org.containers.hirte.Job",
        members: JOB_MEMBERS,
    },
    Interface {
        name: "org.eclipse.bluechi.Monitor",
        hirte: "org.containers.hirte.Monitor",
        members: MONITOR,
    },
    Interface {
        name: "org.eclipse.bluechi.Metrics",
        hirte: "org.containers.hirte.Metrics",
        members: METRICS,
    },
];

pub fn by_name(name: &str) -> Option<&'static Interface> {
    INTERFACES.iter().find(|i| i.name == name)
}

pub fn by_hirte(hirte: &str) -> Option<&'static Interface> {
    INTERFACES.iter().find(|i| i.hirte == hirte)
}

impl Interface {
    pub fn method(&self, member: &str) -> Option<(&'static [Arg], &'static [Arg])> {
        self.members.iter().find_map(|m| match m {
            Method { name, ins, outs } if *name == member => Some((*ins, *outs)),
            _ => None,
        })
    }

    pub fn has_signal(&self, member: &str) -> bool {
        self.members
            .iter()
            .any(|m| matches!(m, Signal { name, .. } if *name == member))
    }

    pub fn has_property(&self, prop: &str) -> bool {
        self.members
            .iter()
            .any(|m| matches!(m, Property { name, .. } if *name == prop))
    }

    /// The interface's introspection XML (one `<interface>` element).
    // [impl->req~bluechi.introspection~1]
    pub fn xml(&self) -> String {
        let mut x = format!("  <interface name=\"{}\">\n", self.name);
        let args = |x: &mut String, args: &[Arg], dir: Option<&str>| {
            for (n, t) in args {
                let d = dir
                    .map(|d| format!(" direction=\"{d}\""))
                    .unwrap_or_default();
                x.push_str(&format!("      <arg name=\"{n}\" type=\"{t}\"{d}/>\n"));
            }
        };
        for m in self.members {
            match m {
                Method { name, ins, outs } => {
                    x.push_str(&format!("    <method name=\"{name}\">\n"));
                    args(&mut x, ins, Some("in"));
                    args(&mut x, outs, Some("out"));
                    x.push_str("    </method>\n");
                }
                Signal { name, args: a } => {
                    x.push_str(&format!("    <signal name=\"{name}\">\n"));
                    args(&mut x, a, None);
                    x.push_str("    </signal>\n");
                }
                Property { name, emits, ty } => x.push_str(&format!(
                    "    <property name=\"{name}\" type=\"{ty}\" access=\"read\">\n      \
                     <annotation name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\" \
                     value=\"{emits}\"/>\n    </property>\n"
                )),
            }
        }
        x.push_str("  </interface>\n");
        x
    }
}
