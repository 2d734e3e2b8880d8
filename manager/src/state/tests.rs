//! The manager as a whole: what its parts do together, driven through its entry points
//! with in-memory links (no sockets).

use super::*;
use crate::events::LinkHandle;
use crate::objects::context_messages;
use hirte_common::bounds::{DEP_START_TIMEOUT, LINK_OUTBOUND_DEPTH, MAX_JOBS};
use hirte_common::handshake::register_call;
use hirte_common::stream::Peer;

fn manager() -> Manager {
    let cfg = ManagerConfig {
        allowed_node_names: vec!["n1".into()],
        ..ManagerConfig::default()
    };
    Manager::new(cfg)
}

fn call(member: &str) -> Context {
    let mut m = Message::new_method_call(
        protocol::MANAGER_BUS_NAME,
        "/org/containers/hirte/node/n1",
        protocol::NODE_IFACE,
        member,
    )
    .unwrap();
    m.set_serial(7);
    m.set_sender(Some(dbus::strings::BusName::new(":1.5").unwrap()));
    Context::new(m).unwrap()
}

fn error_of(ctx: Option<Context>) -> String {
    let mut ctx = ctx.expect("an immediate answer");
    let mut msgs = context_messages(&mut ctx);
    let mut reply = msgs.remove(0);
    reply.as_result().unwrap_err().name().unwrap().to_string()
}

/// `StartUnit(x.service)` on the node `n1`.
fn start_x(m: &mut Manager) -> Option<Context> {
    let fill = |_: &mut Message, _: u32| {};
    m.start_job(
        0,
        "StartUnit",
        "start",
        "x.service".into(),
        fill,
        call("StartUnit"),
    )
}

// [utest->req~bounds.jobs~1]
#[test]
fn job_table_is_bounded() {
    let mut m = manager();
    for _ in 1..=MAX_JOBS as u32 {
        m.jobs.create(0, "u".into(), "start").unwrap();
    }
    let ctx = start_x(&mut m);
    assert_eq!(error_of(ctx), error::BUSY);
    assert_eq!(m.jobs.len(), MAX_JOBS);
}

// [utest->req~api.node~1]
#[test]
fn calls_to_an_offline_node_fail_offline_and_leave_no_job() {
    let mut m = manager();
    let ctx = start_x(&mut m);
    assert_eq!(error_of(ctx), error::OFFLINE);
    assert!(m.jobs.is_empty());
    let ctx = m.relay(0, "ListUnits", |_| {}, call("ListUnits"));
    assert_eq!(error_of(ctx), error::OFFLINE);
}

// [utest->req~bounds.queues~1]
#[test]
fn a_call_to_a_node_whose_link_queue_is_full_gets_busy() {
    let mut m = manager();
    let h = LinkHandle::new(1, Peer::Unix).unwrap();
    let mut reg = register_call("n1").unwrap();
    reg.set_serial(1);
    m.on_register(h.clone(), "n1", &reg);
    // The connection thread is stuck writing: nothing leaves the queue.
    let mut serial = 100;
    while h.queue.len() < LINK_OUTBOUND_DEPTH {
        let sig = Message::new_signal("/a", "a.b", "C").unwrap();
        h.send(sig, serial).unwrap();
        serial += 1;
    }
    let mut ctx = m
        .relay(0, "ListUnits", |_| {}, call("ListUnits"))
        .expect("an immediate answer");
    let mut reply = context_messages(&mut ctx).remove(0);
    let err = reply.as_result().unwrap_err();
    assert_eq!(err.name(), Some(error::BUSY));
    assert_eq!(
        err.message(),
        Some("link to node 'n1' is congested; try again later")
    );
    // Nothing was left waiting for an answer that cannot come.
    assert!(m.is_idle());
}

// [utest->req~manager.status~1]
#[test]
fn status_without_nodes_online_is_down() {
    let m = manager();
    assert_eq!(m.nodes().status(), "down");
    assert!(m.is_idle());
}

#[test]
fn a_node_going_offline_fails_its_calls_and_cancels_its_jobs() {
    let mut m = manager();
    let h = LinkHandle::new(1, Peer::Unix).unwrap();
    m.on_register(h.clone(), "n1", &register("n1"));
    sent(&h);
    assert!(m.relay(0, "ListUnits", |_| {}, call("ListUnits")).is_none());
    let fill = |_: &mut Message, _: u32| {};
    assert!(m
        .start_job(
            0,
            "StartUnit",
            "start",
            "x.service".into(),
            fill,
            call("StartUnit")
        )
        .is_none());
    // The agent accepts the job.
    let start = sent(&h)
        .into_iter()
        .find(|c| member(c) == "StartUnit")
        .unwrap();
    let mut accepted = start.method_return();
    accepted.set_serial(50);
    m.on_frame(1, accepted);
    m.take_effects();
    m.on_link_closed(1, "gone");
    assert!(m.is_idle());
    let (ops, msgs) = m.take_effects();
    assert!(ops.contains(&ObjectOp::RemoveJob(1)));
    let mut errors = msgs
        .into_iter()
        .filter(|m| m.msg_type() == MessageType::Error);
    let mut relayed = errors.next().expect("the relayed call fails");
    assert_eq!(
        relayed.as_result().unwrap_err().name(),
        Some(error::OFFLINE)
    );
    assert_eq!(h.close_requested().as_deref(), Some("gone"));
}

#[test]
fn an_unanswered_call_times_out() {
    let (mut m, _links) = cluster();
    assert!(m.relay(1, "ListUnits", |_| {}, call("ListUnits")).is_none());
    assert!(m.next_deadline(Instant::now()).is_some());
    let timeout = m.agent_call_timeout();
    m.tick(Instant::now() + timeout / 2);
    assert!(!m.is_idle());
    m.take_effects();
    m.tick(Instant::now() + timeout + Duration::from_secs(1));
    assert!(m.is_idle());
    let mut msgs = m.take_effects().1;
    let err = msgs[0].as_result().unwrap_err();
    assert_eq!(err.name(), Some(error::TIMEOUT));
    assert!(err.message().unwrap().contains("did not answer ListUnits"));
}

// ---- cross-node dependencies --------------------------------------------------------------

const PROXY: &str = "/org/containers/hirte/internal/proxy/1";

/// Nodes `a` (may depend on `b`), `b` and `c`, all registered; links 1, 2, 3.
fn cluster() -> (Manager, Vec<Arc<LinkHandle>>) {
    let text = "[hirte]\nAllowedNodeNames=a,b,c\nNodeHeartbeatThreshold=1h\n\
                [node a]\nAllowDependenciesOn=b\n";
    let mut cfg = ManagerConfig::default();
    for e in hirte_common::config::parse_text(text, "hirte.conf", "hirte").unwrap() {
        cfg.apply(&e).unwrap();
    }
    let mut m = Manager::new(cfg);
    let mut links = Vec::new();
    for (id, name) in [(1, "a"), (2, "b"), (3, "c")] {
        let h = LinkHandle::new(id, Peer::Unix).unwrap();
        m.on_register(h.clone(), name, &register(name));
        links.push(h);
    }
    for h in &links {
        sent(h); // the Register answers and subscriptions
    }
    (m, links)
}

fn register(name: &str) -> Message {
    let mut r = register_call(name).unwrap();
    r.set_serial(1);
    r
}

/// What the manager queued for one link since the last look.
fn sent(h: &LinkHandle) -> Vec<Message> {
    h.take_queued()
}

fn member(m: &Message) -> String {
    m.member().map(|s| s.to_string()).unwrap_or_default()
}

fn from_agent(member: &str) -> Message {
    Message::new_signal(
        protocol::INTERNAL_AGENT_PATH,
        protocol::INTERNAL_AGENT_IFACE,
        member,
    )
    .unwrap()
}

fn proxy_new(target: &str, unit: &str) -> Message {
    from_agent("ProxyNew").append3(target, unit, dbus::Path::new(PROXY).unwrap())
}

fn start_dep_of(msgs: &[Message]) -> &Message {
    msgs.iter()
        .find(|m| member(m) == "StartDep")
        .expect("a StartDep call")
}

// [utest->req~proxy.refcount~1]
#[test]
fn start_dep_answer_makes_the_proxy_ready_and_last_release_stops_the_anchor() {
    let (mut m, links) = cluster();
    m.on_frame(1, proxy_new("b", "db.service"));
    let to_b = sent(&links[1]);
    let start = start_dep_of(&to_b);
    assert_eq!(start.read1::<&str>().unwrap(), "db.service");
    assert!(to_b.iter().any(|m| member(m) == "Subscribe"));
    let mut answer = start.method_return();
    answer.set_serial(99);
    m.on_frame(2, answer);
    let to_a = sent(&links[0]);
    assert_eq!(to_a.len(), 1);
    assert_eq!(member(&to_a[0]), "Ready");
    assert_eq!(to_a[0].path().unwrap().to_string(), PROXY);
    // The target really stops: the started proxy is told.
    let stopped = from_agent("UnitStateChanged").append3("db.service", "failed", "failed");
    m.on_frame(2, stopped.append1("real"));
    let to_a = sent(&links[0]);
    assert_eq!(member(&to_a[0]), "TargetStopped");
    assert_eq!(to_a[0].read1::<&str>().unwrap(), "failed");
    // Released: StopDep, and the watch ends.
    m.on_frame(1, from_agent("ProxyRemoved").append2("b", "db.service"));
    let to_b: Vec<String> = sent(&links[1]).iter().map(member).collect();
    assert!(to_b.contains(&"StopDep".to_string()), "{to_b:?}");
    assert!(to_b.contains(&"Unsubscribe".to_string()), "{to_b:?}");
}

// [utest->req~proxy.allow~1]
#[test]
fn proxies_outside_allow_dependencies_on_are_refused_with_a_reason() {
    let (mut m, links) = cluster();
    for (from, target, unit) in [
        (3, "b", "db.service"), // c may not depend on anything
        (1, "c", "db.service"), // a may depend on b only
        (1, "zz", "db.service"),
        (1, "b", "db.socket"),
    ] {
        m.on_frame(from, proxy_new(target, unit));
        let back = sent(&links[usize::try_from(from - 1).unwrap()]);
        assert_eq!(back.len(), 1, "{target} {unit}");
        assert_eq!(member(&back[0]), "Error");
        let why: &str = back[0].read1().unwrap();
        assert!(!why.is_empty());
        assert!(sent(&links[1]).iter().all(|m| member(m) != "StartDep"));
    }
}

// [utest->req~proxy.allow~1]
#[test]
fn malformed_proxy_signals_are_logged_and_change_nothing() {
    let (mut m, links) = cluster();
    m.on_frame(1, from_agent("ProxyNew").append2("b", "db.service"));
    m.on_frame(
        1,
        from_agent("ProxyNew").append3("b", "db.service", "/not/an/object"),
    );
    let elsewhere = dbus::Path::new("/org/containers/hirte/elsewhere").unwrap();
    m.on_frame(
        1,
        from_agent("ProxyNew").append3("b", "db.service", elsewhere),
    );
    m.on_frame(1, from_agent("ProxyNew").append3(1u32, 2u32, 3u32));
    m.on_frame(1, from_agent("ProxyRemoved").append1(7u32));
    m.on_frame(1, from_agent("ProxyRemoved").append2("b", "never.service"));
    for h in &links {
        assert!(sent(h).is_empty());
    }
    assert!(m.deps.target_back("b").is_empty());
}

// [utest->req~proxy.refcount~1]
#[test]
fn start_dep_unanswered_past_its_deadline_fails_the_waiting_proxy() {
    let (mut m, links) = cluster();
    m.on_frame(1, proxy_new("b", "db.service"));
    sent(&links[1]);
    m.tick(Instant::now() + DEP_START_TIMEOUT - Duration::from_secs(1));
    assert!(sent(&links[0]).is_empty());
    m.tick(Instant::now() + DEP_START_TIMEOUT + Duration::from_secs(1));
    let to_a = sent(&links[0]);
    assert_eq!(to_a.len(), 1);
    assert_eq!(member(&to_a[0]), "Error");
    let why: &str = to_a[0].read1().unwrap();
    assert!(why.contains("did not answer StartDep"), "{why}");
}

// [utest->req~proxy.refcount~1]
#[test]
fn an_offline_requester_releases_and_an_offline_target_is_started_on_return() {
    let (mut m, links) = cluster();
    m.on_frame(1, proxy_new("b", "db.service"));
    sent(&links[1]);
    // The target drops: the waiting proxy waits, no error.
    m.node_offline(1, "test");
    assert!(sent(&links[0]).is_empty());
    let b = LinkHandle::new(4, Peer::Unix).unwrap();
    m.on_register(b.clone(), "b", &register("b"));
    start_dep_of(&sent(&b));
    // The requester drops: nothing needs the unit, the anchor is stopped.
    m.node_offline(0, "test");
    assert!(sent(&b).iter().any(|m| member(m) == "StopDep"));
}

// [utest->req~bounds.static-decode~1]
#[test]
fn unit_events_of_the_wrong_types_are_dropped_and_the_node_goes_on() {
    let (mut m, _links) = cluster();
    let wildcard = |mons: &mut Monitors, out: &mut Outbox| {
        let id = mons.open(":1.7", out)?;
        mons.subscribe(id, "*", vec!["*".into()])
    };
    m.change_monitors(wildcard).unwrap();
    m.take_effects();
    let strings = std::collections::HashMap::from([("MainPID", "1")]);
    let iface = "org.freedesktop.systemd1.Service";
    let wrong = from_agent("UnitPropertiesChanged").append3("x.service", iface, strings);
    m.on_frame(2, wrong);
    m.on_frame(2, from_agent("UnitStateChanged").append2("x.service", 7u32));
    m.on_frame(
        2,
        from_agent("UnitNew").append1(dbus::Path::new("/x").unwrap()),
    );
    assert!(m.take_effects().1.is_empty(), "nothing relayed");
    assert!(m.nodes().is_online(1));
    let mut props = dbus::arg::PropMap::new();
    props.insert("MainPID".into(), dbus::arg::Variant(Box::new(1u32)));
    m.on_frame(
        2,
        from_agent("UnitPropertiesChanged").append3("x.service", iface, props),
    );
    let sent = m.take_effects().1;
    assert_eq!(sent.len(), 1);
    let (node, unit, _, got): (&str, &str, &str, dbus::arg::PropMap) = sent[0].read4().unwrap();
    assert_eq!((node, unit), ("b", "x.service"));
    assert_eq!(got["MainPID"].0.as_u64(), Some(1));
}

// ---- panics (safety/manual.md 3.4a) -----------------------------------------------------

fn shared(m: Manager) -> Shared {
    Arc::new(Mutex::new(m))
}

/// The one error among `msgs`: its name and the serial it answers.
fn the_error(msgs: &mut [Message]) -> (String, Option<u32>) {
    let mut errors = msgs
        .iter_mut()
        .filter(|m| m.msg_type() == MessageType::Error);
    let e = errors.next().expect("an error answer");
    let serial = e.get_reply_serial();
    let name = e.as_result().unwrap_err().name().unwrap().to_string();
    assert!(errors.next().is_none(), "answered once");
    (name, serial)
}

// [utest->req~manager.panic-answered~1]
#[test]
fn a_dbus_call_whose_handler_panics_holding_the_model_is_answered_failed() {
    let model = shared(manager());
    let ctx = call("ListUnits");
    let owed = internal_error(ctx.message());
    let answer = contain(&model, "a D-Bus call", owed, || {
        let _m = lock(&model);
        panic!("handler bug");
    });
    let mut answer = answer.expect("the call is answered");
    assert_eq!(answer.get_reply_serial(), Some(7));
    let err = answer.as_result().unwrap_err();
    assert_eq!(err.name(), Some("org.freedesktop.DBus.Error.Failed"));
    assert_eq!(
        err.message(),
        Some("internal error in the manager handling this call")
    );
    // The lock is not left poisoned, and the model serves the next call.
    assert!(!model.is_poisoned());
    let ctx = lock(&model).relay(0, "ListUnits", |_| {}, call("ListUnits"));
    assert_eq!(error_of(ctx), error::OFFLINE);
}

// [utest->req~manager.panic-answered~1]
#[test]
fn a_dbus_call_passed_to_its_node_before_a_panic_is_left_to_the_nodes_answer() {
    let (m, links) = cluster();
    let model = shared(m);
    let ctx = call("ListUnits");
    let owed = internal_error(ctx.message());
    let answer = contain(&model, "a D-Bus call", owed, || {
        let mut m = lock(&model);
        assert!(m.relay(1, "ListUnits", |_| {}, ctx).is_none());
        panic!("handler bug after the call was sent");
    });
    assert!(answer.is_none(), "the node's answer answers it, once");
    // The node answers: relayed as usual.
    let c = sent(&links[1])
        .into_iter()
        .find(|c| member(c) == "ListUnits");
    let mut ret = c.unwrap().method_return();
    ret.set_serial(60);
    lock(&model).on_frame(2, ret);
    let msgs = lock(&model).take_effects().1;
    let answers: Vec<_> = msgs
        .iter()
        .filter(|m| m.get_reply_serial() == Some(7))
        .collect();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].msg_type(), MessageType::MethodReturn);
}

/// Node `b`'s answer to the last call it was sent, handled by `handle` inside `contain`.
fn answer_panicking(model: &Shared, link: &LinkHandle, wanted: &str) -> Option<Message> {
    let c = sent(link).into_iter().find(|c| member(c) == wanted);
    let mut ret = c.expect("the call reached the node").method_return();
    ret.set_serial(60);
    contain(model, "an agent message", None, || {
        lock(model).on_answer(1, ret, |_, _, _, _| panic!("bug handling the answer"));
    })
}

// [utest->req~manager.panic-answered~1]
#[test]
fn a_relayed_call_whose_answer_panics_is_answered_failed_not_lost() {
    let (m, links) = cluster();
    let model = shared(m);
    assert!(lock(&model)
        .relay(1, "ListUnits", |_| {}, call("ListUnits"))
        .is_none());
    assert!(answer_panicking(&model, &links[1], "ListUnits").is_none());
    assert!(!model.is_poisoned());
    let mut msgs = lock(&model).take_effects().1;
    let failed = "org.freedesktop.DBus.Error.Failed".to_string();
    assert_eq!(the_error(&mut msgs), (failed, Some(7)));
    assert!(lock(&model).is_idle());
}

// [utest->req~manager.panic-answered~1]
#[test]
fn a_job_whose_acceptance_panics_is_answered_failed_and_withdrawn() {
    let (m, links) = cluster();
    let model = shared(m);
    let fill = |_: &mut Message, _: u32| {};
    let started = lock(&model).start_job(
        1,
        "StartUnit",
        "start",
        "x.service".into(),
        fill,
        call("StartUnit"),
    );
    assert!(started.is_none());
    assert!(answer_panicking(&model, &links[1], "StartUnit").is_none());
    let (ops, mut msgs) = lock(&model).take_effects();
    let failed = "org.freedesktop.DBus.Error.Failed".to_string();
    assert_eq!(the_error(&mut msgs), (failed, Some(7)));
    assert!(ops.contains(&ObjectOp::RemoveJob(1)));
    assert!(lock(&model).jobs().is_empty());
}

// [utest->req~manager.panic-answered~1]
#[test]
fn a_fan_out_part_whose_answer_panics_fails_the_fan_out_once() {
    let (m, links) = cluster();
    let model = shared(m);
    let mut ctx = Some(call("ListUnits"));
    lock(&model).fan_out("ListUnits", FanOut::Units, ctx.take());
    assert!(answer_panicking(&model, &links[1], "ListUnits").is_none());
    // The other nodes answer; the caller gets one answer: the failure.
    for (link, h) in [(1, &links[0]), (3, &links[2])] {
        let c = sent(h).into_iter().find(|c| member(c) == "ListUnits");
        let mut ret = c.unwrap().method_return();
        ret.set_serial(61);
        lock(&model).on_frame(link, ret);
    }
    let mut msgs = lock(&model).take_effects().1;
    let failed = "org.freedesktop.DBus.Error.Failed".to_string();
    assert_eq!(the_error(&mut msgs), (failed, Some(7)));
    assert!(lock(&model).is_idle());
}
