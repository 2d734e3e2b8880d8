//! Row 5: how fast the manager notices a dead or hung agent, and how fast a restarted
//! manager has every node back, against the bounds of `safety/timing.md`.

use std::time::{Duration, Instant};

use dbus::blocking::Connection;
use dbus::message::MessageType;
use hirte_tests::{Cluster, Signal};

use crate::bench::dbusx::{HIRTE_DEST, HIRTE_MANAGER, HIRTE_PATH};
use crate::bench::error::{BenchError, Result};
use crate::bench::footprint::wait_online;
use crate::bench::report::{Goal, Json, Metric, TargetOn};
use crate::bench::stats::Samples;
use crate::bench::{summary_json, Ctx};

/// The liveness settings of the bench cluster (`ClusterSpec` + harness defaults).
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub heartbeat_interval: Duration,
    pub node_threshold: Duration,
    pub reconnect_interval: Duration,
    pub core_tick: Duration,
}

/// Receives `NodeConnectionStateChanged` of the manager.
fn watch_states(conn: &Connection) -> Result<()> {
    let rule = format!(
        "type='signal',sender='{HIRTE_DEST}',path='{HIRTE_PATH}',interface='{HIRTE_MANAGER}',member='NodeConnectionStateChanged'"
    );
    conn.add_match_no_cb(&rule)
        .map_err(|e| BenchError::dbus("AddMatch NodeConnectionStateChanged", &e))
}

/// Drops what is queued on the connection.
fn drain(conn: &Connection) {
    while let Ok(Some(_)) = conn.channel().blocking_pop_message(Duration::ZERO) {}
}

/// Waits for `node` to become `state`; returns when the signal was read.
fn wait_state(conn: &Connection, node: &str, state: &str, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BenchError::failed(format!(
                "{node} not {state} within {timeout:?}"
            )));
        }
        let m = conn
            .channel()
            .blocking_pop_message(left)
            .map_err(|e| BenchError::dbus("waiting for a node state", &e))?;
        let Some(m) = m else { continue };
        if m.msg_type() != MessageType::Signal
            || m.member().as_deref() != Some("NodeConnectionStateChanged")
        {
            continue;
        }
        if let Ok((n, s)) = m.read2::<&str, &str>() {
            if n == node && s == state {
                return Ok(Instant::now());
            }
        }
    }
}

fn ms(s: &Samples) -> crate::bench::stats::Summary {
    let mut m = s.summary();
    for v in [
        &mut m.min,
        &mut m.p25,
        &mut m.median,
        &mut m.p75,
        &mut m.p99,
        &mut m.p999,
        &mut m.max,
        &mut m.mean,
    ] {
        *v /= 1000.0;
    }
    m
}

pub fn row5(
    ctx: &mut Ctx,
    c: &mut Cluster,
    kill_node: &str,
    stop_node: &str,
    lv: Liveness,
) -> Result<()> {
    ctx.phase("row 5: liveness");
    let mon = c.system_bus()?;
    watch_states(&mon)?;
    let nodes = c.nodes().len();

    // D1: the agent process dies, the kernel closes its connection.
    let mut kill = Samples::new();
    let mut rejoin = Samples::new();
    for _ in 0..ctx.sizes.kills {
        drain(&mon);
        let t0 = Instant::now();
        c.signal_agent(kill_node, Signal::SIGKILL)?;
        let t1 = wait_state(&mon, kill_node, "offline", Duration::from_secs(30))?;
        kill.push_us(t1 - t0);
        c.kill_agent(kill_node, Signal::SIGKILL);
        let t2 = Instant::now();
        c.start_agent(kill_node)?;
        let t3 = wait_state(&mon, kill_node, "online", Duration::from_secs(30))?;
        rejoin.push_us(t3 - t2);
    }
    // D2: the agent hangs (SIGSTOP): only the missing heartbeats tell.
    let mut hang = Samples::new();
    for _ in 0..ctx.sizes.stops {
        drain(&mon);
        let t0 = Instant::now();
        c.signal_agent(stop_node, Signal::SIGSTOP)?;
        let res = wait_state(
            &mon,
            stop_node,
            "offline",
            lv.node_threshold + Duration::from_secs(10),
        );
        c.signal_agent(stop_node, Signal::SIGCONT)?;
        hang.push_us(res? - t0);
        wait_state(&mon, stop_node, "online", Duration::from_secs(30))?;
    }
    // D9: the manager restarts; every agent reconnects.
    let mut ready = Samples::new();
    let mut all = Samples::new();
    for _ in 0..ctx.sizes.restarts {
        c.kill_manager(Signal::SIGTERM)
            .ok_or_else(|| BenchError::failed("manager was not running"))?;
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        c.start_manager()?;
        ready.push_us(t0.elapsed());
        let conn = c.system_bus()?;
        wait_online(&conn, nodes, Duration::from_secs(30))?;
        all.push_us(t0.elapsed());
    }
    let (kill_s, rejoin_s, hang_s) = (ms(&kill), ms(&rejoin), ms(&hang));
    let (ready_s, all_s) = (ms(&ready), ms(&all));
    let tick_ms = lv.core_tick.as_secs_f64() * 1e3;
    let nt = lv.node_threshold.as_secs_f64() * 1e3;
    let hi = lv.heartbeat_interval.as_secs_f64() * 1e3;
    let ri = lv.reconnect_interval.as_secs_f64() * 1e3;
    ctx.metric(
        Metric::median(
            "5",
            "live.sigkill_offline",
            "agent SIGKILL -> node `offline` (D1: connection closed)",
            &kill_s,
            "ms",
        )
        .detail(format!(
            "max {:.1} ms; bound 2 x CORE_TICK = {:.0} ms",
            kill_s.max,
            2.0 * tick_ms
        ))
        .target(TargetOn::Value, Goal::AtMost(2.0 * tick_ms)),
    );
    ctx.metric(
        Metric::median(
            "5",
            "live.sigstop_offline",
            "agent SIGSTOP (hung) -> node `offline` (D2: heartbeats missing)",
            &hang_s,
            "ms",
        )
        .detail(format!(
            "min {:.0} / max {:.0} ms; bound NT - HI .. NT + T = {:.0} .. {:.0} ms",
            hang_s.min,
            hang_s.max,
            nt - hi,
            nt + tick_ms
        ))
        .target(TargetOn::Value, Goal::AtMost(nt + tick_ms)),
    );
    ctx.metric(Metric::median(
        "5",
        "live.agent_start_online",
        "agent started -> node `online`",
        &rejoin_s,
        "ms",
    ));
    ctx.metric(Metric::median(
        "5",
        "live.manager_ready",
        "manager started -> owns its bus name",
        &ready_s,
        "ms",
    ));
    ctx.metric(
        Metric::median(
            "5",
            "live.manager_all_online",
            &format!("manager restart (SIGTERM, start) -> all {nodes} nodes `online` (D9)"),
            &all_s,
            "ms",
        )
        .detail(format!(
            "max {:.0} ms; bound manager start + RI + one registration, RI = {ri:.0} ms",
            all_s.max
        ))
        .target(TargetOn::Value, Goal::AtMost(ready_s.max + ri + 100.0)),
    );
    ctx.section(
        "row5",
        Json::obj(vec![
            ("heartbeat_interval_ms", Json::num(hi)),
            ("node_heartbeat_threshold_ms", Json::num(nt)),
            ("reconnect_interval_ms", Json::num(ri)),
            ("core_tick_ms", Json::num(tick_ms)),
            ("sigkill_to_offline_ms", summary_json(&kill_s, "ms")),
            ("agent_start_to_online_ms", summary_json(&rejoin_s, "ms")),
            ("sigstop_to_offline_ms", summary_json(&hang_s, "ms")),
            ("manager_start_to_ready_ms", summary_json(&ready_s, "ms")),
            ("manager_start_to_all_online_ms", summary_json(&all_s, "ms")),
        ]),
    );
    Ok(())
}
