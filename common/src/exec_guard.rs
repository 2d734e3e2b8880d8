//! What `AllowExec=no` closes besides `Exec` itself: the two other ways a caller could make
//! a node run a command of its choice. Sans-IO: names and paths in, a refusal reason out.
//! Used by the manager (its `AllowExec`) and by the agent (the node's own `AllowExec`).

/// Directories systemd reads unit files from (system and user, systemd.unit(5)), as prefixes.
/// A unit file named by path must lie below one of them; a bare unit name is looked up there.
pub const UNIT_DIRS: [&str; 5] = [
    "/etc/systemd/",
    "/run/systemd/",
    "/usr/lib/systemd/",
    "/usr/local/lib/systemd/",
    "/lib/systemd/",
];

/// The first transient-unit property that makes systemd run a command (`ExecStart`,
/// `ExecStartPre`, `ExecStop`, `ExecReload`, `ExecCondition`, ...: every `Exec*`).
// [impl->req~api.exec-bypass~1]
pub fn command_property<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names.into_iter().find(|n| n.starts_with("Exec"))
}

/// The property names of a `StartTransientUnit(s name, s mode, a(sv) props, a(sa(sv)) aux, ...)`
/// call, those of its auxiliary units included.
pub fn transient_property_names(msg: &dbus::Message) -> Vec<String> {
    use dbus::arg::ArgType;
    let mut names = Vec::new();
    let mut args = msg.iter_init();
    // Names of an a(sv) at `it`.
    fn props(it: &mut dbus::arg::Iter<'_>, names: &mut Vec<String>) {
        let Some(mut arr) = it.recurse(ArgType::Array) else {
            return;
        };
        while let Some(mut entry) = arr.recurse(ArgType::Struct) {
            if let Some(n) = entry.get::<&str>() {
                names.push(n.to_string());
            }
            if !arr.next() {
                break;
            }
        }
    }
    if !(args.next() && args.next()) {
        return names;
    }
    props(&mut args, &mut names);
    if args.next() {
        if let Some(mut aux) = args.recurse(ArgType::Array) {
            while let Some(mut unit) = aux.recurse(ArgType::Struct) {
                if unit.next() {
                    props(&mut unit, &mut names);
                }
                if !aux.next() {
                    break;
                }
            }
        }
    }
    names
}

/// Why a unit file given to `EnableUnitFiles` is refused: a path outside [`UNIT_DIRS`] (or
/// one with `..`), which would make systemd link and later run a file the caller wrote.
// [impl->req~api.exec-bypass~1]
pub fn unit_file_refusal(file: &str) -> Option<String> {
    if !file.contains('/') {
        return None;
    }
    let inside = UNIT_DIRS.iter().any(|d| file.starts_with(d));
    let escapes = file.split('/').any(|part| part == "..");
    (!inside || escapes).then(|| {
        format!(
            "unit file '{file}' is outside systemd's unit directories; with AllowExec=no \
             only unit names or files below {} may be enabled",
            UNIT_DIRS.join(", ")
        )
    })
}

/// Why a call is refused under `AllowExec=no`, besides `Exec` itself (which each daemon
/// refuses in its own words): a transient unit with a command, or a foreign unit file.
// [impl->req~api.exec-bypass~1]
pub fn refusal(member: &str, msg: &dbus::Message) -> Option<String> {
    match member {
        "StartTransientUnit" => {
            let names = transient_property_names(msg);
            command_property(names.iter().map(String::as_str)).map(|p| {
                format!(
                    "transient unit with {p}= refused: it would run a command, and AllowExec=no"
                )
            })
        }
        "EnableUnitFiles" => msg
            .read1::<Vec<String>>()
            .ok()?
            .iter()
            .find_map(|f| unit_file_refusal(f)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // [utest->req~api.exec-bypass~1]
    #[test]
    fn exec_properties_and_foreign_unit_files_are_found() {
        assert_eq!(
            command_property(["Description", "ExecStart", "ExecStop"]),
            Some("ExecStart")
        );
        assert_eq!(command_property(["ExecStartPre"]), Some("ExecStartPre"));
        assert_eq!(
            command_property(["Description", "Slice", "RemainAfterExit"]),
            None
        );
        assert_eq!(command_property([]), None);
        type Props = Vec<(String, dbus::arg::Variant<String>)>;
        let p = |n: &str| -> Props { vec![(n.to_string(), dbus::arg::Variant("x".to_string()))] };
        let msg = dbus::Message::new_method_call("a.b", "/", "a.b", "StartTransientUnit")
            .unwrap()
            .append3("t.service", "replace", p("Description"))
            .append1(vec![("aux.service".to_string(), p("ExecStop"))]);
        assert_eq!(transient_property_names(&msg), ["Description", "ExecStop"]);
        assert!(refusal("StartTransientUnit", &msg)
            .unwrap()
            .contains("ExecStop="));
        let enable = |f: &str| {
            dbus::Message::new_method_call("a.b", "/", "a.b", "EnableUnitFiles")
                .unwrap()
                .append3(vec![f.to_string()], false, false)
        };
        assert!(refusal("EnableUnitFiles", &enable("/tmp/x.service")).is_some());
        assert!(refusal("EnableUnitFiles", &enable("x.service")).is_none());
        assert!(refusal("StopUnit", &enable("/tmp/x.service")).is_none());

        for ok in [
            "web.service",
            "/etc/systemd/system/web.service",
            "/usr/lib/systemd/user/a.service",
        ] {
            assert_eq!(unit_file_refusal(ok), None, "{ok}");
        }
        for bad in [
            "/tmp/evil.service",
            "/home/u/.config/systemd/user/x.service",
            "/etc/systemd/system/../../tmp/evil.service",
            "./x.service",
            "/etc/systemdx/evil.service",
        ] {
            let why = unit_file_refusal(bad).unwrap_or_default();
            assert!(why.contains(bad), "{bad}: {why}");
        }
    }
}
