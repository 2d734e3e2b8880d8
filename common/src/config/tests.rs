//! Unit tests of the settings, through the parser as the daemons use it.

use super::*;
use crate::bounds::{MAX_MANAGERS, MAX_NODES};
use crate::log::{Level, Target};
use crate::tls::TlsFiles;
use std::path::PathBuf;
use std::time::Duration;

const GUIDE_MANAGER: &str = "[hirte]\nManagerPort=2020\nAllowedNodeNames=primary,agent\nLogLevel=info\nLogTarget=journald\n";
const GUIDE_AGENT: &str = "[hirte-agent]\nNodeName=agent\nManagerHost=192.168.1.10\nManagerPort=2020\nLogLevel=info\nLogTarget=journald\nHeartbeatInterval=5\nReconnectInterval=10\n";

fn manager(text: &str) -> Result<ManagerConfig, ConfigError> {
    let mut c = ManagerConfig::default();
    for e in parse_text(text, "hirte.conf", "hirte")? {
        c.apply(&e)?;
    }
    Ok(c)
}

fn agent(text: &str) -> Result<AgentConfig, ConfigError> {
    let mut c = AgentConfig::default();
    for e in parse_text(text, "agent.conf", "hirte-agent")? {
        c.apply(&e)?;
    }
    Ok(c)
}

// [utest->req~config.syntax~1]
// [utest->req~config.manager-keys~1]
#[test]
fn guide_manager_config_loads_verbatim() {
    let c = manager(GUIDE_MANAGER).unwrap();
    assert_eq!(c.port, 2020);
    assert_eq!(c.allowed_node_names, vec!["primary", "agent"]);
    assert_eq!(c.log.level, Level::Info);
    assert_eq!(c.log.target, Target::Journald);
    c.validate().unwrap();
}

// [utest->req~config.agent-keys~1]
#[test]
fn guide_agent_config_loads_verbatim() {
    let c = agent(GUIDE_AGENT).unwrap();
    assert_eq!(c.node_name, "agent");
    assert_eq!(c.manager_host, "192.168.1.10");
    assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
    assert_eq!(c.reconnect_interval, Duration::from_secs(10));
    assert_eq!(c.effective_manager_timeout(), Duration::from_secs(15));
    c.validate().unwrap();
}

#[test]
fn toml_spelling_is_accepted() {
    let c = manager(
        "# comment\n[hirte]\nManagerPort = 2021\nAllowedNodeNames = [\"a\", \"b\"]\nLogLevel = \"debug\"\nAllowExec = false\nNodeHeartbeatThreshold = \"500ms\"\n",
    )
    .unwrap();
    assert_eq!(c.port, 2021);
    assert_eq!(c.allowed_node_names, vec!["a", "b"]);
    assert_eq!(c.log.level, Level::Debug);
    assert!(!c.allow_exec);
    assert_eq!(c.node_heartbeat_threshold, Duration::from_millis(500));
    let a = agent("[hirte-agent]\nManagerAddress=tcp:host=h1,port=99\nNodeName=\"n\"\n").unwrap();
    assert_eq!((a.manager_host.as_str(), a.manager_port), ("h1", 99));
}

// [utest->req~proxy.allow~1]
#[test]
fn node_sections_carry_allow_dependencies_on() {
    let c = manager(
        "[hirte]\nAllowedNodeNames=laptop,pi,x\n[node laptop]\nAllowDependenciesOn=pi,x\n[node pi]\nAllowDependenciesOn=\n",
    )
    .unwrap();
    c.validate().unwrap();
    assert!(c.may_depend_on("laptop", "pi"));
    assert!(!c.may_depend_on("pi", "laptop"));
    assert!(!c.may_depend_on("x", "pi"));
    let e = manager("[hirte]\nAllowedNodeNames=a\n[node a]\nAllowed=true\n").unwrap_err();
    assert_eq!(e.to_string(), "hirte.conf:4: unknown key 'Allowed'");
    let e =
        manager("[hirte]\n[node a]\nAllowDependenciesOn=b\nAllowDependenciesOn=c\n").unwrap_err();
    assert!(e.to_string().contains("set twice"), "{e}");
    // The same key in the daemon's section and a node section is no duplicate.
    let e = manager("[hirte]\nAllowedNodeNames=a\n[node a]\nAllowedNodeNames=a\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "hirte.conf:4: unknown key 'AllowedNodeNames'"
    );
    let e = manager("[hirte]\n[node bad name]\n").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("hirte.conf:2: section [node bad name]"),
        "{e}"
    );
    let c = manager("[hirte]\nAllowedNodeNames=a\n[node a]\nAllowDependenciesOn=zz\n").unwrap();
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "invalid configuration: hirte.conf:4: [node a] names 'zz', which is not in AllowedNodeNames"
    );
    let e = agent("[hirte-agent]\n[node a]\n").unwrap_err();
    assert_eq!(e.to_string(), "agent.conf:2: unknown section [node a]");
}

// [utest->req~config.agent-keys~1]
#[test]
fn manager_heartbeat_threshold_must_exceed_the_interval() {
    let text = "[hirte-agent]\nNodeName=n\nHeartbeatInterval=5s\nManagerHeartbeatThreshold=";
    for (threshold, ok) in [("5s", false), ("4s", false), ("5100ms", true)] {
        let c = agent(&format!("{text}{threshold}\n")).unwrap();
        let r = c.validate();
        assert_eq!(r.is_ok(), ok, "{threshold}: {r:?}");
        if let Err(e) = r {
            assert_eq!(
                e.to_string(),
                "invalid configuration: ManagerHeartbeatThreshold must be longer than HeartbeatInterval"
            );
        }
    }
    // The default (3 x HeartbeatInterval) always is.
    let c = agent("[hirte-agent]\nNodeName=n\nHeartbeatInterval=1h\n").unwrap();
    assert!(c.validate().is_ok());
}

// [utest->req~config.errors~1]
#[test]
fn errors_name_file_line_and_key() {
    let e = manager("[hirte]\nManagerPort=abc\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "hirte.conf:2: key 'ManagerPort': invalid value 'abc': expected a TCP port from 1 to 65535"
    );
    let e = manager("[hirte]\nBogus=1\n").unwrap_err();
    assert_eq!(e.to_string(), "hirte.conf:2: unknown key 'Bogus'");
    let e = manager("[other]\n").unwrap_err();
    assert_eq!(e.to_string(), "hirte.conf:1: unknown section [other]");
    let e = manager("ManagerPort=1\n").unwrap_err();
    assert!(matches!(e, ConfigError::OutsideSection { .. }));
    let e = manager("[hirte]\nManagerPort=1\nManagerPort=2\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "hirte.conf:3: key 'ManagerPort' is set twice (first on line 2)"
    );
    for bad_line in [
        "ManagerPort=0",
        "ManagerPort=70000",
        "LogLevel=loud",
        "LogTarget=paper",
        "AllowedNodeNames=ok,bad name",
        "NodeHeartbeatThreshold=1ms",
        "NodeHeartbeatThreshold=soon",
        "AllowExec=maybe",
        "ManagerAddress=not-an-ip",
        "ManagerPort=[1,2]",
        "LogLevel=\"unterminated",
        "just text",
    ] {
        let text = format!("[hirte]\n{bad_line}\n");
        let err = manager(&text).unwrap_err().to_string();
        assert!(err.starts_with("hirte.conf:2:"), "{bad_line}: {err}");
    }
    assert!(agent("[hirte-agent]\nHeartbeatInterval=-5\n").is_err());
    assert!(agent("[hirte-agent]\nNodeName=a/b\n").is_err());
    assert!(agent("[hirte-agent]\nManagerAddress=udp:x\n").is_err());
}

// [utest->req~link.unix-socket~1]
// [utest->req~config.errors~1]
#[test]
fn manager_socket_and_unix_manager_address_are_checked() {
    // Manager: default none; an absolute path; empty = none again.
    assert_eq!(manager("[hirte]\n").unwrap().socket, None);
    let c = manager("[hirte]\nManagerSocket=/run/hirte/hirte.sock\n").unwrap();
    assert_eq!(c.socket, Some(PathBuf::from("/run/hirte/hirte.sock")));
    assert_eq!(manager("[hirte]\nManagerSocket=\n").unwrap().socket, None);
    let longest = format!("/{}", "s".repeat(MAX_SOCKET_PATH - 1));
    let c = manager(&format!("[hirte]\nManagerSocket={longest}\n")).unwrap();
    assert_eq!(c.socket, Some(PathBuf::from(&longest)));
    let e = manager("[hirte]\nManagerSocket=run/hirte.sock\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "hirte.conf:2: key 'ManagerSocket': invalid value 'run/hirte.sock': expected an absolute path"
    );
    let too_long = format!("{longest}x");
    let e = manager(&format!(
        "[hirte]\nAllowExec=yes\nManagerSocket={too_long}\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("hirte.conf:3: key 'ManagerSocket'")
            && e.ends_with("socket path of 108 bytes is longer than 107"),
        "{e}"
    );
    assert!(manager("[hirte]\nManagerSocket=[\"/a\", \"/b\"]\n").is_err());

    // Agent: unix:path=PATH, shown back in D-Bus syntax; TCP is unchanged.
    let a = agent("[hirte-agent]\nManagerAddress=unix:path=/run/hirte/hirte.sock\n").unwrap();
    assert_eq!(
        a.manager_socket,
        Some(PathBuf::from("/run/hirte/hirte.sock"))
    );
    assert_eq!(a.manager_address(), "unix:path=/run/hirte/hirte.sock");
    assert_eq!(a.manager_endpoint(), "unix:path=/run/hirte/hirte.sock");
    let a = agent("[hirte-agent]\nManagerAddress=tcp:host=h,port=7\n").unwrap();
    assert_eq!(a.manager_socket, None);
    assert_eq!(a.manager_address(), "tcp:host=h,port=7");
    assert_eq!(a.manager_endpoint(), "h:7");
    assert_eq!(
        AgentConfig::default().manager_address(),
        "tcp:host=127.0.0.1,port=2020"
    );
    // The last of ManagerAddress / ManagerHost / ManagerPort decides.
    let a = agent("[hirte-agent]\nManagerAddress=unix:path=/s\nManagerPort=9\n").unwrap();
    assert_eq!((a.manager_socket, a.manager_port), (None, 9));
    let a = agent("[hirte-agent]\nManagerHost=h\nManagerAddress=unix:path=/s\n").unwrap();
    assert_eq!(a.manager_address(), "unix:path=/s");
    let mut a = agent("[hirte-agent]\nManagerAddress=unix:path=/s\n").unwrap();
    a.apply(&cli_entry("ManagerHost", "10.0.0.1")).unwrap();
    assert_eq!(a.manager_address(), "tcp:host=10.0.0.1,port=2020");

    for (value, reason) in [
        ("unix:path=", "empty socket path"),
        ("unix:path=relative.sock", "expected an absolute path"),
        (
            "unix:",
            "unexpected '' in address (expected unix:path=PATH)",
        ),
        (
            "unix:abstract=hirte",
            "unexpected 'abstract=hirte' in address (expected unix:path=PATH)",
        ),
        ("unix:path=/a,path=/b", "path given twice"),
    ] {
        let e = agent(&format!(
            "[hirte-agent]\nNodeName=n\nManagerAddress={value}\n"
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("agent.conf:3: key 'ManagerAddress': invalid value '{value}': {reason}")
        );
    }
    let e = agent(&format!(
        "[hirte-agent]\nManagerAddress=unix:path={too_long}\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("agent.conf:2: key 'ManagerAddress'") && e.contains("longer than 107"),
        "{e}"
    );
}

#[test]
fn allowed_node_names_are_bounded() {
    let names: Vec<String> = (0..=MAX_NODES).map(|i| format!("n{i}")).collect();
    let text = format!("[hirte]\nAllowedNodeNames={}\n", names.join(","));
    let err = manager(&text).unwrap_err().to_string();
    assert!(err.contains("more than 1024 node names"), "{err}");
    let ok = format!(
        "[hirte]\nAllowedNodeNames={}\n",
        names[..MAX_NODES].join(",")
    );
    assert_eq!(manager(&ok).unwrap().allowed_node_names.len(), MAX_NODES);
}

// [utest->req~config.manager-open-refused~1]
#[test]
fn open_manager_without_allowed_names_is_refused() {
    let c = manager("[hirte]\n").unwrap();
    assert!(c.validate().is_err());
    let c = manager("[hirte]\nManagerAddress=127.0.0.1\n").unwrap();
    assert!(c.validate().is_ok());
    let c = manager("[hirte]\nAllowedNodeNames=a,a\n").unwrap();
    assert!(c.validate().is_err());
}

// [utest->req~config.layers~1]
#[test]
fn layers_override_in_order() {
    let dir = std::env::temp_dir().join(format!("hirte-cfg-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("hirte.conf.d")).unwrap();
    std::fs::write(dir.join("hirte.conf"), GUIDE_MANAGER).unwrap();
    std::fs::write(
        dir.join("hirte.conf.d/20-b.conf"),
        "[hirte]\nManagerPort=3\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("hirte.conf.d/10-a.conf"),
        "[hirte]\nManagerPort=2\n",
    )
    .unwrap();
    std::fs::write(dir.join("hirte.conf.d/ignored.txt"), "garbage").unwrap();
    let c = ManagerConfig::load(&dir, None).unwrap();
    assert_eq!(c.port, 3);
    let extra = dir.join("extra.conf");
    std::fs::write(&extra, "[hirte]\nManagerPort=4\n").unwrap();
    assert_eq!(ManagerConfig::load(&dir, Some(&extra)).unwrap().port, 4);
    assert!(ManagerConfig::load(&dir, Some(&dir.join("missing.conf"))).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

// [utest->req~tls.config~1]
// [utest->req~link.unix-peercred~1]
// [utest->req~agent.allow-exec~1]
#[test]
fn tls_keys_manager_name_and_socket_users() {
    let m = manager(
        "[hirte]\nCertificateFile=/etc/hirte/m.pem\nKeyFile=/etc/hirte/m.key\n\
         TrustedCertificateFile=/etc/hirte/ca.pem\nRevocationListFile=/etc/hirte/ca.crl\n\
         ManagerSocketAllowedUsers=hirte, 1000\n",
    )
    .unwrap();
    assert_eq!(m.tls.enabled(), Ok(true));
    assert_eq!(
        m.tls.revocation_list,
        Some(PathBuf::from("/etc/hirte/ca.crl"))
    );
    assert_eq!(m.socket_allowed_users, ["hirte", "1000"]);
    let e = manager("[hirte]\nCertificateFile=m.pem\n").unwrap_err();
    assert!(e.to_string().contains("expected an absolute path"), "{e}");
    let e = manager("[hirte]\nManagerSocketAllowedUsers=a b\n").unwrap_err();
    assert!(e.to_string().contains("not a user name or UID"), "{e}");
    let mut partial = manager("[hirte]\nAllowedNodeNames=a\nKeyFile=/k\n").unwrap();
    let e = partial.validate().unwrap_err();
    assert!(
        e.to_string()
            .contains("missing: CertificateFile=, TrustedCertificateFile="),
        "{e}"
    );
    partial.tls = TlsFiles::default();
    assert!(partial.validate().is_ok());

    let a = agent("[hirte-agent]\nNodeName=n\nManagerHost=10.0.0.1\n").unwrap();
    assert_eq!(a.effective_manager_name(), "10.0.0.1");
    let a = agent("[hirte-agent]\nNodeName=n\nManagerName=hirte.example\nKeyFile=/k\n").unwrap();
    assert_eq!(a.effective_manager_name(), "hirte.example");
    assert!(a
        .validate()
        .unwrap_err()
        .to_string()
        .contains("missing: CertificateFile="));
    assert!(agent("[hirte-agent]\nManagerName=has space\n").is_err());
    assert!(!agent("[hirte-agent]\nAllowExec=no\n").unwrap().allow_exec);
    assert!(AgentConfig::default().allow_exec);
}

/// `read_file` on `path` in a thread, so a read that blocks fails the test instead of hanging it.
fn read_within_5s(path: PathBuf) -> Option<Result<String, ConfigError>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(super::layers::read_file(&path));
    });
    rx.recv_timeout(Duration::from_secs(5)).ok()
}

// [utest->req~config.regular-file~1]
#[test]
fn config_reader_refuses_fifos_devices_and_directories_at_once() {
    let dir = std::env::temp_dir().join(format!("hirte-cfg-nonregular-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.conf");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    for path in [fifo, PathBuf::from("/dev/zero"), dir.clone()] {
        let shown = path.display().to_string();
        match read_within_5s(path) {
            Some(Err(e)) => assert_eq!(e.to_string(), format!("{shown}: not a regular file")),
            Some(Ok(_)) => panic!("{shown} read as a config file"),
            None => panic!("reading {shown} blocked"),
        }
    }
    // A regular file just over the limit is still refused as too large.
    let big = dir.join("big.conf");
    std::fs::write(&big, vec![b'#'; 1024 * 1024 + 1]).unwrap();
    assert!(matches!(
        read_within_5s(big),
        Some(Err(ConfigError::TooLarge { .. }))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

// [utest->req~agent.manager-list~1]
// [utest->req~config.agent-keys~1]
#[test]
fn manager_lists_keep_their_order_and_are_checked() {
    let names = |a: &AgentConfig| -> Vec<String> {
        a.managers().iter().map(ManagerAddress::endpoint).collect()
    };
    let a = agent("[hirte-agent]\nManagerHost=a,b\nManagerPort=2021\n").unwrap();
    assert_eq!(names(&a), ["a:2021", "b:2021"]);
    assert_eq!(a.manager_address(), "tcp:host=a,port=2021");
    assert_eq!(a.manager_endpoint(), "a:2021, b:2021");
    assert!(!a.manager_prefer_first);
    let a = agent(
        "[hirte-agent]\nManagerAddress=tcp:host=a,port=1;unix:path=/run/h.sock\nManagerPreferFirst=yes\n",
    )
    .unwrap();
    assert_eq!(names(&a), ["a:1", "unix:path=/run/h.sock"]);
    assert!(a.manager_prefer_first);
    let a =
        agent("[hirte-agent]\nManagerAddress = [\"tcp:host=a,port=1\", \"tcp:host=b,port=2\"]\n")
            .unwrap();
    assert_eq!(names(&a), ["a:1", "b:2"]);
    // The last key wins, lists included; a single host is still a list of one.
    let mut a = agent("[hirte-agent]\nManagerHost=a,b\n").unwrap();
    a.apply(&cli_entry("ManagerHost", "c")).unwrap();
    assert_eq!(names(&a), ["c:2020"]);
    // Duplicates, too many, empty entries and bad addresses are errors.
    let e = agent("[hirte-agent]\nNodeName=n\nManagerHost=a,a\n")
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid configuration: manager a:2020 is listed twice"
    );
    let nine = ["h"; MAX_MANAGERS + 1].join(",");
    let e = agent(&format!("[hirte-agent]\nManagerHost={nine}\n")).unwrap_err();
    assert!(e.to_string().ends_with("more than 8 managers"), "{e}");
    let e = agent("[hirte-agent]\nManagerAddress=tcp:host=a,port=1;\n").unwrap_err();
    assert!(
        e.to_string().contains("expected tcp:host=HOST,port=PORT"),
        "{e}"
    );
    let e = agent("[hirte-agent]\nManagerHost=a,b c\n").unwrap_err();
    assert!(e.to_string().contains("'b c': expected a host name"), "{e}");
    assert!(agent("[hirte-agent]\nManagerPreferFirst=maybe\n").is_err());
}

/// BlueChi's own files, renamed only: the sample configurations of BlueChi 1.2's docs.
const BLUECHI_CONTROLLER: &str = "[bluechi-controller]\nControllerPort=842\nAllowedNodeNames=a,b\n\
                          LogLevel=DEBUG\nLogTarget=journald\nUseTCP=true\n\
                          HeartbeatInterval=0\nNodeHeartbeatThreshold=6000ms\n";
const BLUECHI_AGENT: &str =
    "[bluechi-agent]\nNodeName=a\nControllerHost=10.0.0.1\nControllerPort=842\n\
                     HeartbeatInterval=2000ms\nControllerHeartbeatThreshold=0s\n\
                     TCPKeepAliveTime=1\nIPReceiveErrors=true\n";

// [utest->req~bluechi.config~1]
#[test]
fn bluechi_files_work_after_a_rename() {
    let m = manager(BLUECHI_CONTROLLER).unwrap();
    assert_eq!(m.port, 842);
    assert_eq!(m.allowed_node_names, ["a", "b"]);
    let a = agent(BLUECHI_AGENT).unwrap();
    assert_eq!(a.manager_address(), "tcp:host=10.0.0.1,port=842");
    let a = agent("[bluechi-agent]\nNodeName=a\nControllerAddress=tcp:host=h,port=9\n").unwrap();
    assert_eq!(a.manager_address(), "tcp:host=h,port=9");
}

// [utest->req~bluechi.config~1]
#[test]
fn bluechi_keys_keep_their_spelling_in_errors_and_unknown_keys_stay_errors() {
    let e = agent("[bluechi-agent]\nControllerPort=x\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("ControllerPort"), "{e}");
    let e = manager("[bluechi-controller]\nControllerPrt=1\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("ControllerPrt"), "{e}");
    // The other daemon's section is still refused.
    assert!(agent("[bluechi-controller]\nNodeName=a\n").is_err());
}
