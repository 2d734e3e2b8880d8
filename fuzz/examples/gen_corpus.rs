//! Writes the committed seed corpus of the fuzz targets to `fuzz/corpus/<target>/`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus`. Deterministic: running it
//! again rewrites the same files.

use dbus::Message;
use hirte_common::bounds::MAX_FRAME_SIZE;
use hirte_common::frame::encode_message;
use hirte_common::handshake::register_call;
use std::path::Path;

fn framed(mut m: Message, serial: u32) -> Vec<u8> {
    m.set_serial(serial);
    encode_message(&m, MAX_FRAME_SIZE).expect("encode")
}

fn agent_signal(member: &str) -> Message {
    Message::new_signal(
        "/org/containers/hirte/internal/agent",
        "org.containers.hirte.internal.Agent",
        member,
    )
    .expect("signal")
}

fn agent_call(member: &str) -> Message {
    Message::new_method_call(
        "org.containers.hirte.Link",
        "/org/containers/hirte/internal/agent",
        "org.containers.hirte.internal.Agent",
        member,
    )
    .expect("call")
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn main() {
    let register = framed(register_call("agent1").expect("register"), 1);
    let heartbeat = framed(agent_signal("Heartbeat"), 2);
    let job_done = framed(agent_signal("JobDone").append2(7u32, "done"), 3);
    let state = framed(
        agent_signal("UnitStateChanged")
            .append3("a.service", "active", "running")
            .append1("real"),
        4,
    );
    let mut call = agent_call("StartUnit").append3("a.service", "replace", 7u32);
    call.set_serial(9);
    let reply = {
        let mut r = call
            .method_return()
            .append1(dbus::Path::from("/org/freedesktop/systemd1/job/1"));
        r.set_serial(5);
        encode_message(&r, MAX_FRAME_SIZE).expect("encode")
    };
    let error = {
        let mut e = call.error(
            &dbus::strings::ErrorName::new("org.containers.hirte.Error.Busy").expect("name"),
            &std::ffi::CString::new("busy").expect("text"),
        );
        e.set_serial(6);
        encode_message(&e, MAX_FRAME_SIZE).expect("encode")
    };
    let call = framed(
        agent_call("StartUnit").append3("a.service", "replace", 7u32),
        10,
    );

    // frame_decoder: [bound selector, chunk size] + stream.
    let with = |b0: u8, b1: u8, parts: &[&[u8]]| -> Vec<u8> {
        let mut v = vec![b0, b1];
        for p in parts {
            v.extend_from_slice(p);
        }
        v
    };
    write("frame_decoder", "register", &with(1, 255, &[&register]));
    write(
        "frame_decoder",
        "register-then-signals",
        &with(2, 7, &[&register, &heartbeat, &job_done, &state]),
    );
    write(
        "frame_decoder",
        "reply-and-error",
        &with(2, 3, &[&reply, &error, &call]),
    );
    write(
        "frame_decoder",
        "truncated",
        &with(2, 1, &[&register[..register.len() - 5]]),
    );
    write(
        "frame_decoder",
        "zero-length",
        &with(1, 4, &[&[0, 0, 0, 0]]),
    );
    write(
        "frame_decoder",
        "oversized",
        &with(0, 4, &[&[0, 0, 16, 1], &register[4..]]),
    );
    write(
        "frame_decoder",
        "garbage",
        &with(2, 16, &[b"hello manager, this is not a frame\r\n"]),
    );

    // register_check: a frame payload (no length prefix), or a name.
    write("register_check", "register-payload", &register[4..]);
    write("register_check", "heartbeat-payload", &heartbeat[4..]);
    write("register_check", "call-payload", &call[4..]);
    write("register_check", "name-ok", b"agent1.lab_x-2");
    write("register_check", "name-space", b"bad name");
    write("register_check", "name-long", "n".repeat(65).as_bytes());

    // config_parse: files as the guide and the harness write them, and broken ones.
    for (name, text) in [
        ("guide-manager", "[hirte]\nManagerPort=2020\nAllowedNodeNames=primary,agent\nLogLevel=info\nLogTarget=journald\n"),
        ("guide-agent", "[hirte-agent]\nNodeName=agent\nManagerHost=192.168.1.10\nManagerPort=2020\nLogLevel=info\nLogTarget=journald\nHeartbeatInterval=5\nReconnectInterval=10\n"),
        ("toml", "# comment\n[hirte]\nManagerPort = 2021\nAllowedNodeNames = [\"a\", \"b\"]\nAllowExec = false\nNodeHeartbeatThreshold = \"500ms\"\n"),
        ("agent-address", "[hirte-agent]\nManagerAddress=tcp:host=h1,port=99\nNodeName=\"n\"\nManagerHeartbeatThreshold=1min 30s\n"),
        ("duplicate", "[hirte]\nManagerPort=1\nManagerPort=2\n"),
        ("bad-values", "[hirte]\nManagerPort=70000\nLogLevel=loud\nAgentCallTimeout=1ms\n"),
        ("malformed", "ManagerPort=1\n[hirte\njust text\nLogLevel=\"unterminated\n"),
        ("timespan", "1h 30min 500ms"),
    ] {
        write("config_parse", name, text.as_bytes());
    }

    // ctl_args: NUL-separated argv after `hirtectl`.
    for (name, argv) in [
        ("list-nodes", "list-nodes"),
        (
            "list-units-json",
            "-o\0json\0list-units\0agent1\0--filter\0*.service",
        ),
        (
            "start",
            "start\0agent1\0x.service\0--mode\0isolate\0--timeout\05",
        ),
        (
            "kill",
            "kill\0agent1\0x.service\0--whom\0main\0--signal\0SIGHUP",
        ),
        (
            "set-property",
            "set-property\0agent1\0x.service\0CPUQuota=50%\0MemoryMax=1G",
        ),
        (
            "exec",
            "exec\0agent1\0--timeout\03\0--\0/bin/sh\0-c\0echo hi",
        ),
        ("monitor", "monitor\0agent1\0a.service,b.service"),
        ("is-online", "is-online\0node\0agent1\0--wait\0500"),
        ("glob", "a[b-d]?.service\0abx.service"),
        ("help", "--help"),
    ] {
        write("ctl_args", name, argv.as_bytes());
    }
}
