//! Mutual TLS on the agent link (issue 11): nodes register only under names their
//! certificates carry, agents talk only to a manager with a trusted certificate for
//! `ManagerName`, and every refusal is logged with peer, claimed name, subject and reason.
//! Real manager, agents and systemd per node (see `hirte_tests`); the PKI is made at test
//! time (rcgen). The refused clients that no real agent would be (an impostor, a client
//! without certificate, a plaintext client) are played by the test with the daemons' own
//! TLS code or rustls directly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod common;

use common::*;
use hirte_common::bounds::{HANDSHAKE_TIMEOUT, MAX_FRAME_SIZE};
use hirte_common::frame::encode_message;
use hirte_common::handshake::register_call;
use hirte_common::linkio::FrameLink;
use hirte_common::stream::LinkStream;
use hirte_common::tls::{fingerprint, ClientPolicy, TlsFiles};
use hirte_tests::pki::{Leaf, Pki, Spec, Usage, Validity};
use hirte_tests::{Cluster, ClusterSpec, MANAGER_PORT};
use nix::sys::signal::Signal;
use rustls::pki_types::pem::PemObject;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: [&str; 3] = ["primary", "agent1", "agent2"];
/// The manager's address as the agents on other nodes see it, and on its own node.
const MANAGER_NAMES: [&str; 3] = ["hirte-manager", "10.200.0.1", "127.0.0.1"];

/// A cluster whose daemons are not started yet, and its CA (in `<cluster dir>/pki`).
fn tls_cluster(nodes: &[&str]) -> (Cluster, Pki) {
    let mut spec = ClusterSpec::new(nodes);
    spec.start_manager = false;
    spec.start_agents = false;
    let c = Cluster::start(spec).unwrap_or_else(|e| panic!("cluster start: {e}"));
    let pki = Pki::new(&c.dir().join("pki"), "fleet").unwrap();
    (c, pki)
}

fn drop_in(c: &Cluster, node: &str, file: &str, text: &str) {
    let etc = c.node_config_dir(node).unwrap();
    let dir = etc.join(format!("{file}.d"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("50-tls.conf"), text).unwrap();
}

fn tls_keys(cert: &Path, key: &Path, trusted: &Path) -> String {
    format!(
        "CertificateFile={}\nKeyFile={}\nTrustedCertificateFile={}\n",
        cert.display(),
        key.display(),
        trusted.display()
    )
}

/// The manager's TLS drop-in: its certificate from `pki`, trusting `trusted`, maybe a CRL.
fn manager_tls(c: &Cluster, leaf: &Leaf, trusted: &Path, crl: Option<&Path>) {
    let mut text = format!("[hirte]\n{}", tls_keys(&leaf.cert, &leaf.key, trusted));
    if let Some(crl) = crl {
        text += &format!("RevocationListFile={}\n", crl.display());
    }
    drop_in(c, c.nodes()[0], "hirte.conf", &text);
}

/// A node's agent TLS drop-in: its own certificate, trusting `trusted`.
fn agent_tls(c: &Cluster, node: &str, leaf: &Leaf, trusted: &Path, extra: &str) {
    let text = format!(
        "[hirte-agent]\n{}{extra}",
        tls_keys(&leaf.cert, &leaf.key, trusted)
    );
    drop_in(c, node, "agent.conf", &text);
}

/// Issues the manager's and each node's certificate and configures every daemon for TLS;
/// returns the nodes' certificates in the order given.
fn configure_all(c: &Cluster, pki: &Pki, nodes: &[&str], crl: Option<&Path>) -> Vec<Leaf> {
    let manager = pki
        .issue("manager", &Spec::manager(&MANAGER_NAMES))
        .unwrap();
    manager_tls(c, &manager, &pki.ca_file(), crl);
    nodes
        .iter()
        .map(|n| {
            let leaf = pki.issue(n, &Spec::node(n)).unwrap();
            agent_tls(c, n, &leaf, &pki.ca_file(), "");
            leaf
        })
        .collect()
}

/// What became of a test-played client.
#[derive(Debug)]
enum Outcome {
    /// The manager answered Register with success.
    Registered,
    /// The manager answered Register with this error.
    Error(String),
    /// The connection ended without an answer (TLS alert or close).
    Closed(#[allow(dead_code)] String),
}

/// Connects from `from`'s namespace to the manager over TLS (or plaintext with `tls: None`)
/// and sends `Register(claim)`.
fn try_register(c: &Cluster, from: &str, tls: Option<ClientPolicy>, claim: &str) -> Outcome {
    let stream = connect_from(c, from);
    let mut link = match tls {
        Some(p) => FrameLink::tls(stream, p.session().unwrap().0, MAX_FRAME_SIZE),
        None => FrameLink::plain(stream, MAX_FRAME_SIZE),
    };
    register_on(&mut link, claim)
}

/// A TCP connection to the manager's port from `from`'s network namespace.
fn connect_from(c: &Cluster, from: &str) -> LinkStream {
    let ip = c.node_ip(c.nodes()[0]).unwrap();
    let stream = c
        .in_node_net(from, move || {
            TcpStream::connect((ip.as_str(), MANAGER_PORT))
        })
        .unwrap()
        .unwrap();
    let stream = LinkStream::Tcp(stream);
    hirte_common::linkio::prepare(&stream).unwrap();
    stream
}

fn register_on(link: &mut FrameLink, claim: &str) -> Outcome {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    if let Err(e) = link.handshake(deadline, HANDSHAKE_TIMEOUT) {
        return Outcome::Closed(e.to_string());
    }
    let mut call = register_call(claim).unwrap();
    call.set_serial(1);
    if let Err(e) = link.write_frame(&encode_message(&call, MAX_FRAME_SIZE).unwrap()) {
        return Outcome::Closed(e.to_string());
    }
    while Instant::now() < deadline + SOON {
        if let Err(e) = link.read_within(Duration::from_millis(200)) {
            return Outcome::Closed(e.to_string());
        }
        if let Some(mut m) = link.next_message().unwrap_or(None) {
            return match m.as_result() {
                Ok(_) => Outcome::Registered,
                Err(e) => Outcome::Error(e.message().unwrap_or("").to_string()),
            };
        }
    }
    panic!("no answer and no close within {SOON:?}");
}

/// The daemons' own client policy for a test-played agent with `leaf` (named `own`).
fn client(leaf: &Leaf, trusted: &Path, own: &str) -> ClientPolicy {
    let files = TlsFiles {
        certificate: Some(leaf.cert.clone()),
        key: Some(leaf.key.clone()),
        trusted: Some(trusted.to_path_buf()),
        revocation_list: None,
    };
    ClientPolicy::load(&files, "hirte-manager", own).unwrap_or_else(|e| panic!("{e}"))
}

// [itest->req~tls.link~1]
// [itest->req~tls.identity~1]
// [itest->req~tls.config~1]
// [itest->req~tls.refusal-log~1]
#[test]
fn tls_nodes_online_start_and_exec_over_tls_plaintext_refused() {
    if !hirte_tests::require_root("tls_nodes_online_start_and_exec_over_tls_plaintext_refused") {
        return;
    }
    let (mut c, pki) = tls_cluster(&NODES);
    let leaves = configure_all(&c, &pki, &NODES, None);
    c.start_manager().unwrap();
    for n in NODES {
        c.start_agent(n).unwrap();
    }
    c.wait_all_online(SOON)
        .unwrap_or_else(|e| panic!("nodes online over TLS: {e}\n{}", c.log_tails()));

    c.write_unit("agent1", "tls-sleep.service", SLEEP_UNIT)
        .unwrap();
    let out = c.hirtectl(&["start", "agent1", "tls-sleep.service"]);
    ok(&out, "hirtectl start over TLS");
    assert_eq!(is_active(&c, "agent1", "tls-sleep.service"), "active");
    let out = c.hirtectl(&["exec", "agent2", "echo over-tls"]);
    assert!(ok(&out, "hirtectl exec over TLS").contains("over-tls"));

    // The accepted identity is logged with the certificate's SHA-256 fingerprint.
    manager_log_line(
        &c,
        &[
            "Connection from 10.200.0.2",
            "certificate CN=agent1 verified for node 'agent1'",
            &fingerprint(leaves[1].der()),
        ],
    );
    assert!(c.agent_log("agent2").contains("Manager at 10.200.0.1:"));
    assert!(c
        .manager_log()
        .contains("The agent link on TCP is mutual TLS (TLS 1.3)"));
    assert!(!c.manager_log().contains("not authenticated"));

    // A plaintext client on the TLS port is refused at the handshake.
    let outcome = try_register(&c, "agent2", None, "agent2");
    assert!(matches!(outcome, Outcome::Closed(_)), "{outcome:?}");
    manager_log_line(
        &c,
        &[
            "Refused connection from 10.200.0.3",
            "claimed name (none yet)",
            "certificate subject (none)",
            "TLS handshake failed",
        ],
    );
    assert_all_online(&c, &NODES);
}

// [itest->req~tls.identity~1]
// [itest->req~tls.refusal-log~1]
#[test]
fn tls_refused_impostor_no_cert_self_signed_expired_not_yet_valid_wrong_eku_revoked() {
    if !hirte_tests::require_root(
        "tls_refused_impostor_no_cert_self_signed_expired_not_yet_valid_wrong_eku_revoked",
    ) {
        return;
    }
    let nodes = ["primary", "agent1", "agent2"];
    let (mut c, pki) = tls_cluster(&nodes);
    let crl = c.dir().join("pki/fleet.crl");
    let ca = pki.ca_file();
    let agent2 = configure_all(&c, &pki, &["agent2"], Some(&crl)).remove(0);
    let revoked = pki.issue("revoked", &Spec::node("agent1")).unwrap();
    pki.write_crl(&crl, &[&revoked]).unwrap();
    c.start_manager().unwrap();
    c.start_agent("agent2").unwrap();
    c.wait_node_state("agent2", "online", SOON).unwrap();

    // agent1 is away: an impostor on agent2's machine, with agent2's valid certificate,
    // claims its name. Refused, agent1 stays offline, and the log says who and why.
    let outcome = try_register(&c, "agent2", Some(client(&agent2, &ca, "agent2")), "agent1");
    match &outcome {
        Outcome::Error(e) => assert!(e.contains("does not carry the name 'agent1'"), "{e}"),
        other => panic!("impostor not refused with a reason: {other:?}"),
    }
    manager_log_line(
        &c,
        &[
            "Refused connection from 10.200.0.3",
            "claimed name 'agent1'",
            "certificate subject CN=agent2",
            "does not carry the name 'agent1'",
        ],
    );
    assert_eq!(c.node_state("agent1").as_deref(), Some("offline"));

    // Certificates the chain check refuses, each with webpki's reason in the log line.
    let cases: Vec<(&str, Leaf, &str)> = vec![
        (
            "self-signed",
            pki.self_signed("self", &Spec::node("agent1")).unwrap(),
            "UnknownIssuer",
        ),
        (
            "expired",
            pki.issue(
                "expired",
                &Spec {
                    validity: Validity::Expired,
                    ..Spec::node("agent1")
                },
            )
            .unwrap(),
            "xpired",
        ),
        (
            "not yet valid",
            pki.issue(
                "early",
                &Spec {
                    validity: Validity::NotYetValid,
                    ..Spec::node("agent1")
                },
            )
            .unwrap(),
            "not valid yet",
        ),
        (
            "wrong EKU",
            pki.issue(
                "server-only",
                &Spec {
                    usage: Usage::Server,
                    ..Spec::node("agent1")
                },
            )
            .unwrap(),
            "does not allow extended key usage for client authentication",
        ),
        ("revoked", revoked.clone(), "Revoked"),
    ];
    // Refusals from one peer are logged PEER_BURST per PEER_WINDOW (req~log.peer-rate-limit~1):
    // the impostor's was the first; the sixth waits for the next window.
    let mut refused = 1;
    let next_window = |refused: &mut u32| {
        if *refused == hirte_common::log::PEER_BURST {
            std::thread::sleep(hirte_common::log::PEER_WINDOW);
            *refused = 0;
        }
        *refused += 1;
    };
    for (what, leaf, reason) in &cases {
        next_window(&mut refused);
        let outcome = try_register(&c, "agent2", Some(client(leaf, &ca, "agent1")), "agent1");
        assert!(
            !matches!(outcome, Outcome::Registered),
            "{what}: registered: {outcome:?}"
        );
        let line = manager_log_line(
            &c,
            &[
                "Refused connection from 10.200.0.3",
                "certificate subject CN=agent1",
                "TLS handshake failed",
                reason,
            ],
        );
        eprintln!("{what}: {line}");
    }

    // No certificate at all.
    let no_cert = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots(&ca))
    .with_no_client_auth();
    let session = rustls::ClientConnection::new(
        Arc::new(no_cert),
        rustls::pki_types::ServerName::try_from("hirte-manager").unwrap(),
    )
    .unwrap();
    next_window(&mut refused);
    let mut link = FrameLink::tls(connect_from(&c, "agent2"), session, MAX_FRAME_SIZE);
    let outcome = register_on(&mut link, "agent1");
    assert!(matches!(outcome, Outcome::Closed(_)), "{outcome:?}");
    manager_log_line(
        &c,
        &[
            "Refused connection from 10.200.0.3",
            "certificate subject (none)",
            "TLS handshake failed",
        ],
    );

    assert_eq!(c.node_state("agent1").as_deref(), Some("offline"));
    assert_eq!(c.node_state("agent2").as_deref(), Some("online"));
}

fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

// [itest->req~tls.reload~1]
#[test]
fn tls_revoked_while_connected_is_closed_after_sighup_and_stays_out() {
    if !hirte_tests::require_root(
        "tls_revoked_while_connected_is_closed_after_sighup_and_stays_out",
    ) {
        return;
    }
    let nodes = ["primary", "agent1"];
    let (mut c, pki) = tls_cluster(&nodes);
    let crl = c.dir().join("pki/fleet.crl");
    pki.write_crl(&crl, &[]).unwrap();
    let leaves = configure_all(&c, &pki, &nodes, Some(&crl));
    c.start_manager().unwrap();
    for n in nodes {
        c.start_agent(n).unwrap();
    }
    c.wait_all_online(SOON).unwrap();

    pki.write_crl(&crl, &[&leaves[1]]).unwrap();
    c.signal_manager(Signal::SIGHUP).unwrap();
    manager_log_line(
        &c,
        &[
            "Closing connection",
            "from 10.200.0.2",
            "certificate subject CN=agent1 is no longer valid",
            "Revoked",
        ],
    );
    c.wait_node_state("agent1", "offline", SOON).unwrap();
    // Its reconnects are refused at the handshake.
    manager_log_line(
        &c,
        &[
            "Refused connection from 10.200.0.2",
            "certificate subject CN=agent1",
            "Revoked",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.node_state("agent1").as_deref(), Some("offline"));
    assert_eq!(c.node_state("primary").as_deref(), Some("online"));
}

// [itest->req~tls.link~1]
// [itest->req~tls.identity~1]
// [itest->req~tls.refusal-log~1]
#[test]
fn tls_agent_refuses_a_rogue_manager_and_a_manager_name_mismatch() {
    if !hirte_tests::require_root("tls_agent_refuses_a_rogue_manager_and_a_manager_name_mismatch") {
        return;
    }
    let (mut c, pki) = tls_cluster(&NODES);
    // The manager trusts the fleet's CA, but its own certificate is from another CA.
    let rogue = Pki::new(&c.dir().join("pki"), "rogue").unwrap();
    let manager = rogue
        .issue("rogue-manager", &Spec::manager(&MANAGER_NAMES))
        .unwrap();
    manager_tls(&c, &manager, &pki.ca_file(), None);
    // agent1 trusts the fleet's CA only; agent2 trusts the rogue CA too but expects
    // another name than the manager's certificate carries.
    let a1 = pki.issue("agent1", &Spec::node("agent1")).unwrap();
    agent_tls(&c, "agent1", &a1, &pki.ca_file(), "");
    let a2 = pki.issue("agent2", &Spec::node("agent2")).unwrap();
    agent_tls(
        &c,
        "agent2",
        &a2,
        &rogue.ca_file(),
        "ManagerName=manager.example\n",
    );
    c.start_manager().unwrap();
    c.start_agent("agent1").unwrap();
    c.start_agent("agent2").unwrap();

    wait_agent_log(&c, "agent1", "the refusal of the rogue manager", |l| {
        l.contains("refused the manager at 10.200.0.1:")
            && l.contains("expected name '10.200.0.1'")
            && l.contains("certificate subject CN=hirte-manager")
            && l.contains("UnknownIssuer")
    });
    wait_agent_log(
        &c,
        "agent2",
        "the refusal of a manager with another name",
        |l| {
            l.contains("expected name 'manager.example'")
                && l.contains("certificate not valid for name \"manager.example\"")
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    for n in ["agent1", "agent2"] {
        assert_eq!(c.node_state(n).as_deref(), Some("offline"), "{n}");
        assert!(
            !c.agent_log(n).contains("Connected to manager"),
            "{n} registered with a manager it should refuse"
        );
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hirte-tls-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// [itest->req~tls.config~1]
// [itest->req~tls.key-file~1]
#[test]
fn tls_bad_settings_stop_the_daemons_naming_the_problem() {
    let dir = temp_dir("settings");
    let pki = Pki::new(&dir.join("pki"), "fleet").unwrap();
    let manager = pki
        .issue("manager", &Spec::manager(&["hirte-manager"]))
        .unwrap();
    let agent1 = pki.issue("agent1", &Spec::node("agent1")).unwrap();
    let ca = pki.ca_file();
    let head_m = "[hirte]\nAllowedNodeNames=agent1\n";
    let head_a = "[hirte-agent]\nNodeName=agent1\nManagerHost=hirte-manager\n";
    let cases: Vec<(&str, &str, String, String)> = vec![
        (
            "hirte",
            "hirte.conf",
            format!("{head_m}CertificateFile={}\n", manager.cert.display()),
            "missing: KeyFile=, TrustedCertificateFile=".to_string(),
        ),
        (
            "hirte-agent",
            "agent.conf",
            format!(
                "{head_a}KeyFile={}\nRevocationListFile=/x.crl\n",
                agent1.key.display()
            ),
            "missing: CertificateFile=, TrustedCertificateFile=".to_string(),
        ),
        (
            "hirte",
            "hirte.conf",
            format!("{head_m}{}", tls_keys(&manager.cert, &manager.key, &ca)),
            format!("KeyFile={}: mode 0644", manager.key.display()),
        ),
        (
            "hirte-agent",
            "agent.conf",
            format!("{head_a}{}", tls_keys(&agent1.cert, &agent1.key, &ca)),
            format!("KeyFile={}: mode 0644", agent1.key.display()),
        ),
        (
            "hirte-agent",
            "agent.conf",
            format!(
                "[hirte-agent]\nNodeName=agent2\n{}",
                tls_keys(&agent1.cert, &agent1.key, &ca)
            ),
            "not usable for 'agent2'".to_string(),
        ),
        (
            "hirte",
            "hirte.conf",
            format!("{head_m}CertificateFile=relative.pem\n"),
            "CertificateFile".to_string(),
        ),
    ];
    for (i, (bin, file, text, needle)) in cases.iter().enumerate() {
        // Cases 2 and 3 make the key world-readable; the others keep 0600.
        let mode = if (2..=3).contains(&i) { 0o644 } else { 0o600 };
        for k in [&manager.key, &agent1.key] {
            std::fs::set_permissions(k, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
        }
        let conf = dir.join(format!("case{i}"));
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join(file), text).unwrap();
        let out = run_daemon_without_bus(bin, &conf);
        assert_eq!(out.status.code(), Some(1), "case {i}: {}", show(&out));
        let err = stderr(&out);
        assert!(
            err.contains(needle.as_str()),
            "case {i}: {needle:?} not in {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "case {i}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// [itest->req~link.unix-peercred~1]
#[test]
fn tls_unix_socket_admits_root_only_unless_configured() {
    if !hirte_tests::require_root("tls_unix_socket_admits_root_only_unless_configured") {
        return;
    }
    let mut spec = ClusterSpec::new(&["primary"]);
    spec.start_manager = false;
    spec.start_agents = false;
    let mut c = Cluster::start(spec).unwrap();
    let sock = c.dir().join("hirte.sock");
    drop_in(
        &c,
        "primary",
        "hirte.conf",
        &format!("[hirte]\nManagerSocket={}\n", sock.display()),
    );
    c.start_manager().unwrap();
    // uid 65534 in group root may open the 0660 socket; the manager refuses it.
    let connect_as = |uid: &str| {
        let script = format!(
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect('{}'); s.settimeout(10); print(repr(s.recv(1)))",
            sock.display()
        );
        run_timeout(
            std::process::Command::new("/usr/bin/setpriv")
                .args([
                    "--reuid",
                    uid,
                    "--regid",
                    "0",
                    "--clear-groups",
                    "/usr/bin/python3",
                    "-c",
                ])
                .arg(script),
            Duration::from_secs(20),
        )
    };
    let out = connect_as("65534");
    assert!(
        stdout(&out).contains("b''"),
        "not closed at once: {}",
        show(&out)
    );
    manager_log_line(
        &c,
        &[
            "Refused connection on the Unix socket from uid 65534",
            "ManagerSocketAllowedUsers",
        ],
    );
    // Root is admitted (the link then waits for Register).
    let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    drop(s);

    // With the user allowed, its connection is admitted too (and then times out unregistered).
    c.kill_manager(Signal::SIGTERM);
    drop_in(
        &c,
        "primary",
        "hirte.conf",
        &format!(
            "[hirte]\nManagerSocket={}\nManagerSocketAllowedUsers=nobody\n",
            sock.display()
        ),
    );
    c.start_manager().unwrap();
    let before = c
        .manager_log()
        .matches("Refused connection on the Unix socket")
        .count();
    let out = connect_as("65534");
    assert!(stdout(&out).contains("b''"), "{}", show(&out));
    manager_log_line(
        &c,
        &[
            "Connection from unix closed before registering",
            "no Register",
        ],
    );
    assert_eq!(
        c.manager_log()
            .matches("Refused connection on the Unix socket")
            .count(),
        before
    );
}

/// Runs `ci/pki` (the openssl steps of docs/security.md).
fn ci_pki(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/pki");
    let out = run_timeout(
        std::process::Command::new("bash").arg(script).args(args),
        Duration::from_secs(60),
    );
    ok(&out, &format!("ci/pki {}", args.join(" ")));
}

// [itest->req~tls.link~1]
// [itest->req~tls.reload~1]
#[test]
fn tls_openssl_pki_of_the_docs_brings_nodes_up_and_revokes_one() {
    if !hirte_tests::require_root("tls_openssl_pki_of_the_docs_brings_nodes_up_and_revokes_one") {
        return;
    }
    let mut spec = ClusterSpec::new(&NODES);
    spec.start_manager = false;
    spec.start_agents = false;
    let mut c = Cluster::start(spec).unwrap();
    let dir = c.dir().join("pki");
    let d = dir.to_str().unwrap();
    ci_pki(&["init", d]);
    for n in NODES {
        ci_pki(&["node", d, n]);
    }
    let mut names = vec!["manager"];
    names.extend(MANAGER_NAMES);
    ci_pki(&[&["manager", d][..], &names[1..]].concat());
    ci_pki(&["crl", d]);
    let (ca, crl) = (dir.join("ca.pem"), dir.join("ca.crl"));
    drop_in(
        &c,
        "primary",
        "hirte.conf",
        &format!(
            "[hirte]\n{}RevocationListFile={}\n",
            tls_keys(&dir.join("manager.pem"), &dir.join("manager.key"), &ca),
            crl.display()
        ),
    );
    for n in NODES {
        let text = format!(
            "[hirte-agent]\n{}",
            tls_keys(
                &dir.join(format!("{n}.pem")),
                &dir.join(format!("{n}.key")),
                &ca
            )
        );
        drop_in(&c, n, "agent.conf", &text);
    }
    c.start_manager().unwrap();
    for n in NODES {
        c.start_agent(n).unwrap();
    }
    c.wait_all_online(SOON)
        .unwrap_or_else(|e| panic!("nodes online with the openssl PKI: {e}\n{}", c.log_tails()));
    let out = c.hirtectl(&["exec", "agent1", "echo openssl-pki"]);
    assert!(ok(&out, "exec").contains("openssl-pki"));

    ci_pki(&["revoke", d, dir.join("agent2.pem").to_str().unwrap()]);
    c.signal_manager(Signal::SIGHUP).unwrap();
    manager_log_line(
        &c,
        &[
            "certificate subject CN=agent2 is no longer valid",
            "Revoked",
        ],
    );
    c.wait_node_state("agent2", "offline", SOON).unwrap();
    assert_eq!(c.node_state("agent1").as_deref(), Some("online"));
}
