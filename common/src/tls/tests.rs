//! The policy without sockets: files, key checks, the identity rule, and whole handshakes
//! between a `ServerPolicy` and a `ClientPolicy` pumped in memory.

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::os::unix::fs::PermissionsExt;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("hirte-tls-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// Writes a leaf signed by `ca` for `names` and returns its TLS files (trusting `trusted`).
fn leaf(
    d: &Dir,
    tag: &str,
    ca: &Ca,
    names: &[&str],
    eku: ExtendedKeyUsagePurpose,
    trusted: &Ca,
) -> TlsFiles {
    let mut p =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.extended_key_usages = vec![eku];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    TlsFiles {
        certificate: Some(d.write(&format!("{tag}.pem"), &cert.pem(), 0o644)),
        key: Some(d.write(&format!("{tag}.key"), &key.serialize_pem(), 0o600)),
        trusted: Some(d.write(&format!("{tag}-ca.pem"), &trusted.cert.pem(), 0o644)),
        revocation_list: None,
    }
}

/// Runs a handshake in memory and Register-free: the server's and the client's outcome.
fn handshake(
    server: &ServerPolicy,
    client: &ClientPolicy,
) -> (Result<(), String>, Result<(), String>) {
    let (mut s, _) = server.session().unwrap();
    let (mut c, _) = client.session().unwrap();
    let mut buf = Vec::new();
    let (mut s_err, mut c_err) = (None, None);
    for _ in 0..10 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut buf.as_slice()).unwrap();
            if let Err(e) = s.process_new_packets() {
                s_err.get_or_insert(e.to_string());
            }
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut buf.as_slice()).unwrap();
            if let Err(e) = c.process_new_packets() {
                c_err.get_or_insert(e.to_string());
            }
        }
    }
    let done = |hs: bool, e: Option<String>| match e {
        Some(e) => Err(e),
        None if hs => Err("still handshaking".to_string()),
        None => Ok(()),
    };
    (
        done(s.is_handshaking(), s_err),
        done(c.is_handshaking(), c_err),
    )
}

// [utest->req~tls.config~1]
#[test]
fn all_three_files_or_none() {
    let mut f = TlsFiles::default();
    assert_eq!(f.enabled(), Ok(false));
    assert!(f.set("CertificateFile", "/c.pem"));
    assert!(!f.set("ManagerPort", "1"));
    let e = f.enabled().unwrap_err();
    assert_eq!(
        e.to_string(),
        "TLS needs CertificateFile=, KeyFile= and TrustedCertificateFile= together; \
         missing: KeyFile=, TrustedCertificateFile="
    );
    f.set("KeyFile", "/k.pem");
    f.set("TrustedCertificateFile", "/ca.pem");
    assert_eq!(f.enabled(), Ok(true));
    f.set("CertificateFile", "");
    assert!(f.enabled().is_err());
    let only_crl = TlsFiles {
        revocation_list: Some("/x.crl".into()),
        ..TlsFiles::default()
    };
    assert!(matches!(only_crl.enabled(), Err(TlsError::Incomplete(m)) if m.len() == 3));
}

// [utest->req~tls.key-file~1]
#[test]
fn key_file_mode_and_owner_are_checked() {
    let d = Dir::new("key");
    let k = d.write("k.pem", "x", 0o600);
    assert_eq!(check_key_file(&k), Ok(()));
    for mode in [0o640, 0o604, 0o644] {
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = check_key_file(&k).unwrap_err();
        assert!(matches!(e, TlsError::KeyMode { .. }), "{mode:o}");
        assert!(e.to_string().contains(&format!("mode {mode:04o}")), "{e}");
    }
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o400)).unwrap();
    let other = nix::unistd::geteuid().as_raw() + 1;
    nix::unistd::chown(&k, Some(nix::unistd::Uid::from_raw(other)), None).unwrap();
    let e = check_key_file(&k).unwrap_err();
    assert!(
        e.to_string().contains(&format!("owned by uid {other}")),
        "{e}"
    );
    assert!(matches!(
        check_key_file(&d.0.join("missing")),
        Err(TlsError::Read { .. })
    ));
}

// [utest->req~tls.identity~1]
#[test]
fn node_name_is_a_san_dns_name_or_the_cn_without_san() {
    let san = der::CertNames {
        common_name: Some("agent1".into()),
        has_san: true,
        dns_names: vec!["agent2".into(), "agent3".into()],
        not_after: 0,
    };
    assert_eq!(check_node_name(&san, "agent2"), Ok(()));
    // With a SAN, the CN does not count, and no name matches partly or by case.
    for n in ["agent1", "Agent2", "agent", "agent2.example"] {
        assert!(check_node_name(&san, n).is_err(), "{n}");
    }
    assert_eq!(
        check_node_name(&san, "agent1").unwrap_err().to_string(),
        "certificate names [agent2, agent3] in its subjectAltName"
    );
    let cn_only = der::CertNames {
        common_name: Some("agent1".into()),
        has_san: false,
        dns_names: vec![],
        not_after: 0,
    };
    assert_eq!(check_node_name(&cn_only, "agent1"), Ok(()));
    assert!(check_node_name(&cn_only, "agent2").is_err());
    let ip_san_only = der::CertNames {
        has_san: true,
        ..cn_only
    };
    assert!(check_node_name(&ip_san_only, "agent1").is_err());
}

// [utest->req~tls.link~1]
// [utest->req~tls.identity~1]
#[test]
fn handshakes_accept_the_fleet_and_refuse_strangers() {
    let d = Dir::new("hs");
    let fleet = ca("fleet");
    let rogue = ca("rogue");
    let server_auth = ExtendedKeyUsagePurpose::ServerAuth;
    let client_auth = ExtendedKeyUsagePurpose::ClientAuth;
    let server = ServerPolicy::load(&leaf(
        &d,
        "m",
        &fleet,
        &["hirte-manager", "10.0.0.1"],
        server_auth.clone(),
        &fleet,
    ))
    .unwrap();
    let agent = |tag: &str, issuer: &Ca, eku: ExtendedKeyUsagePurpose, manager: &str| {
        ClientPolicy::load(
            &leaf(&d, tag, issuer, &["agent1"], eku, &fleet),
            manager,
            "agent1",
        )
        .unwrap()
    };

    let ok = agent("a", &fleet, client_auth.clone(), "hirte-manager");
    assert_eq!(handshake(&server, &ok), (Ok(()), Ok(())));
    let by_ip = agent("ip", &fleet, client_auth.clone(), "10.0.0.1");
    assert_eq!(handshake(&server, &by_ip), (Ok(()), Ok(())));

    let stranger = agent("r", &rogue, client_auth.clone(), "hirte-manager");
    let (s, _) = handshake(&server, &stranger);
    assert!(s.unwrap_err().contains("UnknownIssuer"));

    let wrong_eku = agent("e", &fleet, server_auth.clone(), "hirte-manager");
    let (s, _) = handshake(&server, &wrong_eku);
    assert!(s.unwrap_err().contains("extended key usage"));

    let wrong_name = agent("n", &fleet, client_auth.clone(), "other-manager");
    let (_, c) = handshake(&server, &wrong_name);
    assert!(c.unwrap_err().contains("not valid for name"));

    // An agent whose own certificate lacks its NodeName does not start.
    let files = leaf(&d, "x", &fleet, &["agent1"], client_auth, &fleet);
    let e = ClientPolicy::load(&files, "hirte-manager", "agent9")
        .err()
        .unwrap();
    assert!(e.to_string().contains("not usable for 'agent9'"), "{e}");
    assert!(matches!(
        ClientPolicy::load(&files, "bad name", "agent1"),
        Err(TlsError::BadManagerName(_))
    ));
}

// [utest->req~tls.bounds~1]
#[test]
fn chains_and_files_beyond_the_bounds_are_refused() {
    assert!(check_chain_size(MAX_CERT_CHAIN_LEN, MAX_CERT_CHAIN_BYTES).is_ok());
    assert!(check_chain_size(MAX_CERT_CHAIN_LEN + 1, 100).is_err());
    assert!(check_chain_size(1, MAX_CERT_CHAIN_BYTES + 1).is_err());

    let d = Dir::new("bounds");
    let fleet = ca("fleet");
    let mut files = leaf(
        &d,
        "m",
        &fleet,
        &["m"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &fleet,
    );
    // An own chain longer than peers accept is refused at start.
    let one = std::fs::read_to_string(files.certificate.as_ref().unwrap()).unwrap();
    let long = d.write("long.pem", &one.repeat(MAX_CERT_CHAIN_LEN + 1), 0o644);
    files.certificate = Some(long);
    assert!(matches!(
        ServerPolicy::load(&files),
        Err(TlsError::ChainTooLong { .. })
    ));
    // A PEM file above the size bound is refused before parsing.
    let big = d.write("big.pem", &"#".repeat(MAX_PEM_FILE_SIZE + 1), 0o644);
    files.certificate = Some(big);
    assert!(matches!(
        ServerPolicy::load(&files),
        Err(TlsError::TooLarge { .. })
    ));
    let empty = d.write("empty.pem", "no pem here\n", 0o644);
    files.certificate = Some(empty);
    assert!(matches!(
        ServerPolicy::load(&files),
        Err(TlsError::Pem { .. })
    ));
}

// [utest->req~tls.refusal-log~1]
#[test]
fn a_refused_peer_chain_beyond_the_bound_is_noted_and_refused() {
    let seen = verify::Seen::default();
    assert_eq!(seen.subject(), "(none)");
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["agent1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "agent1");
    let cert = p.self_signed(&key).unwrap();
    let der = CertificateDer::from(cert.der().to_vec());
    let intermediates = vec![der.clone(); MAX_CERT_CHAIN_LEN];
    let e = seen_note(&seen, &der, &intermediates).unwrap_err();
    assert!(e.contains("exceeds"), "{e}");
    assert_eq!(seen.subject(), "CN=agent1");
    assert!(seen_note(&seen, &der, &[]).is_ok());
    // The fingerprint is the one `openssl x509 -fingerprint -sha256` prints.
    let fp = fingerprint(&der);
    assert_eq!(fp.len(), 32 * 3 - 1);
    assert!(fp.chars().all(|c| c.is_ascii_hexdigit() || c == ':'));
}

fn seen_note(
    seen: &verify::Seen,
    leaf: &CertificateDer<'_>,
    rest: &[CertificateDer<'_>],
) -> Result<(), String> {
    seen.note(leaf, rest).map_err(|e| e.to_string())
}

// [utest->req~tls.reload~1]
#[test]
fn reloads_bump_the_generation() {
    let r = Reloadable::new(1u8);
    assert_eq!(r.get().0, 0);
    r.replace(2);
    let (g, v) = r.get();
    assert_eq!((g, *v), (1, 2));
}

// [utest->req~tls.link~1]
#[test]
fn frames_of_any_size_cross_a_tls_link_unchanged() {
    use crate::linkio::FrameLink;
    use crate::stream::LinkStream;
    use std::time::{Duration, Instant};
    let d = Dir::new("link");
    let fleet = ca("fleet");
    let server = ServerPolicy::load(&leaf(
        &d,
        "m",
        &fleet,
        &["m"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &fleet,
    ))
    .unwrap();
    let client = ClientPolicy::load(
        &leaf(
            &d,
            "a",
            &fleet,
            &["agent1"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &fleet,
        ),
        "m",
        "agent1",
    )
    .unwrap();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (a, b) = (LinkStream::Unix(a), LinkStream::Unix(b));
    crate::linkio::prepare(&a).unwrap();
    crate::linkio::prepare(&b).unwrap();
    let big = crate::bounds::MAX_FRAME_SIZE / 2;
    let msgs: Vec<dbus::Message> = [10usize, big, 3]
        .iter()
        .map(|n| {
            let mut m = crate::handshake::register_call("x").unwrap();
            m = m.append1(vec![7u8; *n]);
            m.set_serial(1);
            m
        })
        .collect();
    let frames: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| crate::frame::encode_message(m, crate::bounds::MAX_FRAME_SIZE).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let t = std::thread::spawn(move || {
        let mut s = FrameLink::tls(
            b,
            server.session().unwrap().0,
            crate::bounds::MAX_FRAME_SIZE,
        );
        s.handshake(deadline, Duration::from_secs(5)).unwrap();
        assert!(s.peer_certificates().is_some());
        let mut sizes = Vec::new();
        while sizes.len() < 3 && Instant::now() < deadline {
            s.read_within(Duration::from_millis(100)).unwrap();
            while let Some(m) = s.next_message().unwrap() {
                let v: Vec<u8> = m.get2::<String, Vec<u8>>().1.unwrap();
                sizes.push(v.len());
            }
        }
        s.close();
        sizes
    });
    let mut c = FrameLink::tls(
        a,
        client.session().unwrap().0,
        crate::bounds::MAX_FRAME_SIZE,
    );
    c.handshake(deadline, Duration::from_secs(5)).unwrap();
    for f in &frames {
        c.write_frame(f).unwrap();
    }
    assert_eq!(t.join().unwrap(), vec![10, big, 3]);
    // The server's close_notify ends the client's side cleanly.
    let end = loop {
        match c.read_within(Duration::from_millis(100)) {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline),
        }
    };
    assert!(matches!(end, crate::linkio::LinkIoError::Closed), "{end}");
}
