//! Row 7 (issue 11): what mutual TLS costs. The same 2-node cluster twice, plaintext and
//! TLS (a PKI made at run time): a relayed property read (D-Bus client -> manager -> agent
//! -> systemd and back), the time from TCP connect to an answered `Register` (the
//! difference is the handshake), and the manager's memory per registered link.

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use hirte_common::bounds::MAX_FRAME_SIZE;
use hirte_common::frame::encode_message;
use hirte_common::handshake::register_call;
use hirte_common::linkio::{prepare, FrameLink};
use hirte_common::stream::LinkStream;
use hirte_common::tls::{ClientPolicy, TlsFiles};
use hirte_tests::pki::{Pki, Spec};
use hirte_tests::{Cluster, ClusterSpec, MANAGER_PORT};

use crate::bench::dbusx::{self, call, method, HIRTE_DEST, HIRTE_NODE, SD_UNIT};
use crate::bench::error::{BenchError, Result};
use crate::bench::footprint::mb;
use crate::bench::report::{fmt_num, Goal, Json, Metric, TargetOn};
use crate::bench::stats::{Samples, Summary};
use crate::bench::{procfs, settle, summary_json, Ctx};

const NODES: [&str; 2] = ["m", "a1"];
/// Links opened to measure the manager's memory per link.
const LINKS: usize = 100;
/// Register round trips timed per mode.
const REGISTERS: usize = 200;
/// The unit read through the manager (present on every node).
const UNIT: &str = "dbus.socket";

struct Mode {
    relayed: Summary,
    register: Summary,
    per_link_kb: f64,
}

/// The client side of one test-made link: plaintext, or TLS with this node's certificate.
type Client = Option<ClientPolicy>;

fn policy(pki: &Pki, name: &str) -> Result<ClientPolicy> {
    let leaf = pki.issue(name, &Spec::node(name))?;
    let files = TlsFiles {
        certificate: Some(leaf.cert),
        key: Some(leaf.key),
        trusted: Some(pki.ca_file()),
        revocation_list: None,
    };
    ClientPolicy::load(&files, "hirte-manager", name).map_err(|e| BenchError::failed(e.to_string()))
}

/// Connects from node a1, handshakes if TLS, registers `name`; the open link.
fn register(c: &Cluster, client: Option<&ClientPolicy>, name: &str) -> Result<FrameLink> {
    let ip = c
        .node_ip("m")
        .ok_or_else(|| BenchError::failed("no manager node"))?;
    let stream = c
        .in_node_net("a1", move || {
            TcpStream::connect((ip.as_str(), MANAGER_PORT))
        })?
        .map_err(|e| BenchError::io("connect", e))?;
    let stream = LinkStream::Tcp(stream);
    prepare(&stream).map_err(|e| BenchError::io("socket options", e))?;
    let fail = |e: &dyn std::fmt::Display| BenchError::failed(format!("{name}: {e}"));
    let mut link = match client {
        Some(p) => FrameLink::tls(stream, p.session().map_err(|e| fail(&e))?.0, MAX_FRAME_SIZE),
        None => FrameLink::plain(stream, MAX_FRAME_SIZE),
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    link.handshake(deadline, Duration::from_secs(5))
        .map_err(|e| fail(&e))?;
    let mut call = register_call(name).ok_or_else(|| fail(&"Register"))?;
    call.set_serial(1);
    let bytes = encode_message(&call, MAX_FRAME_SIZE).map_err(|e| fail(&e))?;
    link.write_frame(&bytes).map_err(|e| fail(&e))?;
    while Instant::now() < deadline {
        link.read_within(Duration::from_millis(100))
            .map_err(|e| fail(&e))?;
        if let Some(mut m) = link.next_message().map_err(|e| fail(&e))? {
            m.as_result().map_err(|e| fail(&e))?;
            return Ok(link);
        }
    }
    Err(fail(&"no answer to Register"))
}

fn measure(ctx: &mut Ctx, bins: &Path, tls: bool) -> Result<Mode> {
    let what = if tls { "TLS" } else { "plaintext" };
    ctx.phase(&format!("row 7: a 2-node cluster, {what}"));
    let fakes: Vec<String> = (0..LINKS).map(|i| format!("t{i:03}")).collect();
    let mut spec = ClusterSpec::new(&NODES);
    spec.start_manager = false;
    spec.start_agents = false;
    spec.bin_dir = Some(bins.to_path_buf());
    let mut c = Cluster::start(spec)?;
    let mut allowed: Vec<String> = NODES.iter().map(|n| n.to_string()).collect();
    allowed.push("reg".to_string());
    allowed.extend(fakes.iter().cloned());
    let mut manager_conf = format!(
        "[hirte]\nLogLevel=warn\nAllowedNodeNames={}\n",
        allowed.join(",")
    );
    let mut clients: Vec<Client> = (0..=LINKS).map(|_| None).collect();
    if tls {
        let pki = Pki::new(&c.dir().join("pki"), "bench")?;
        let m = pki.issue(
            "manager",
            &Spec::manager(&["hirte-manager", "10.200.0.1", "127.0.0.1"]),
        )?;
        manager_conf += &format!(
            "CertificateFile={}\nKeyFile={}\nTrustedCertificateFile={}\n",
            m.cert.display(),
            m.key.display(),
            pki.ca_file().display()
        );
        for n in NODES {
            let l = pki.issue(n, &Spec::node(n))?;
            let conf = format!(
                "[hirte-agent]\nCertificateFile={}\nKeyFile={}\nTrustedCertificateFile={}\n",
                l.cert.display(),
                l.key.display(),
                pki.ca_file().display()
            );
            let dir = c
                .node_config_dir(n)
                .ok_or_else(|| BenchError::failed("no config dir"))?
                .join("agent.conf.d");
            std::fs::create_dir_all(&dir).map_err(|e| BenchError::io("mkdir", e))?;
            std::fs::write(dir.join("50-tls.conf"), conf)
                .map_err(|e| BenchError::io("write", e))?;
        }
        clients = std::iter::once("reg")
            .chain(fakes.iter().map(String::as_str))
            .map(|n| policy(&pki, n).map(Some))
            .collect::<Result<_>>()?;
    }
    crate::bench::setup::drop_ins(&c, &manager_conf, "[hirte-agent]\nLogLevel=warn\n")?;
    c.start_manager()?;
    for n in NODES {
        c.start_agent(n)?;
    }
    let sys = c.system_bus()?;
    crate::bench::footprint::wait_online(&sys, NODES.len(), Duration::from_secs(30))?;

    // Relayed reads of one property of a unit on a1.
    let npath = dbusx::node_path(&sys, "a1")?;
    let read = || -> Result<Duration> {
        let m = method(HIRTE_DEST, &npath, HIRTE_NODE, "GetUnitProperty")?.append3(
            UNIT,
            SD_UNIT,
            "ActiveState",
        );
        let t = Instant::now();
        call(&sys, m)?;
        Ok(t.elapsed())
    };
    for _ in 0..200 {
        read()?;
    }
    let mut relayed = Samples::with_capacity(ctx.sizes.reads);
    for _ in 0..ctx.sizes.reads {
        relayed.push_us(read()?);
    }

    // Connect + (handshake) + Register answered, then closed.
    let first = clients.first().and_then(Option::as_ref);
    let mut reg = Samples::with_capacity(REGISTERS);
    for _ in 0..REGISTERS {
        let t = Instant::now();
        let mut link = register(&c, first, "reg")?;
        reg.push_us(t.elapsed());
        link.close();
        // The manager must see the close before "reg" may register again.
        wait_offline(&sys, "reg")?;
    }

    // Memory per registered link.
    settle(
        ctx,
        Duration::from_secs(2),
        "manager idle before opening links",
    );
    let pid = c
        .manager_pid()
        .ok_or_else(|| BenchError::failed("manager not running"))?;
    let before = procfs::stats(pid)?;
    let mut open = Vec::with_capacity(LINKS);
    for (name, client) in fakes.iter().zip(clients.iter().skip(1)) {
        open.push(register(&c, client.as_ref(), name)?);
    }
    settle(ctx, Duration::from_secs(1), "links registered");
    let after = procfs::stats(pid)?;
    let per_link_kb = (after.rss_kb as f64 - before.rss_kb as f64) / LINKS as f64;
    ctx.log(&format!(
        "   {what}: manager RSS {} -> {} MB with {LINKS} more links",
        fmt_num(mb(before.rss_kb)),
        fmt_num(mb(after.rss_kb))
    ));
    for mut l in open {
        l.close();
    }
    c.shutdown()?;
    Ok(Mode {
        relayed: relayed.summary(),
        register: reg.summary(),
        per_link_kb,
    })
}

/// Waits until `node` is no longer online.
fn wait_offline(sys: &dbus::blocking::Connection, node: &str) -> Result<()> {
    let t = Instant::now();
    while dbusx::list_nodes(sys)?
        .iter()
        .any(|(n, s)| n == node && s == "online")
    {
        if t.elapsed() > Duration::from_secs(10) {
            return Err(BenchError::failed(format!("{node} still online")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Row 7: plaintext against TLS.
// [impl->req~tls.link~1]
pub fn row7(ctx: &mut Ctx, bins: &Path) -> Result<()> {
    let plain = measure(ctx, bins, false)?;
    let tls = measure(ctx, bins, true)?;
    ctx.metric(Metric::median(
        "7",
        "tls.relay_plain",
        "relayed property read, plaintext link",
        &plain.relayed,
        "µs",
    ));
    ctx.metric(
        Metric::median(
            "7",
            "tls.relay_tls",
            "relayed property read, TLS link",
            &tls.relayed,
            "µs",
        )
        .vs("plaintext", plain.relayed.median),
    );
    ctx.metric(
        Metric::new(
            "7",
            "tls.relay_added",
            "relay latency TLS adds (median TLS - median plaintext)",
            tls.relayed.median - plain.relayed.median,
            "µs",
        )
        .target(TargetOn::Value, Goal::AtMost(100.0)),
    );
    ctx.metric(Metric::median(
        "7",
        "tls.register_plain",
        "TCP connect to Register answered, plaintext",
        &plain.register,
        "µs",
    ));
    ctx.metric(
        Metric::median(
            "7",
            "tls.register_tls",
            "TCP connect, TLS handshake, Register answered",
            &tls.register,
            "µs",
        )
        .vs("plaintext", plain.register.median),
    );
    ctx.metric(Metric::new(
        "7",
        "tls.handshake",
        "TLS handshake (median difference of the two above)",
        tls.register.median - plain.register.median,
        "µs",
    ));
    ctx.metric(Metric::new(
        "7",
        "mem.manager_per_link_plain",
        &format!("manager RSS per registered link, plaintext ({LINKS} links)"),
        plain.per_link_kb,
        "kB",
    ));
    ctx.metric(
        Metric::new(
            "7",
            "mem.manager_per_link_tls",
            &format!("manager RSS per registered link, TLS ({LINKS} links)"),
            tls.per_link_kb,
            "kB",
        )
        .vs("plaintext", plain.per_link_kb),
    );
    ctx.section(
        "row7",
        Json::obj(vec![
            ("relay_plain_us", summary_json(&plain.relayed, "us")),
            ("relay_tls_us", summary_json(&tls.relayed, "us")),
            ("register_plain_us", summary_json(&plain.register, "us")),
            ("register_tls_us", summary_json(&tls.register, "us")),
            ("per_link_plain_kb", Json::num(plain.per_link_kb)),
            ("per_link_tls_kb", Json::num(tls.per_link_kb)),
        ]),
    );
    Ok(())
}
