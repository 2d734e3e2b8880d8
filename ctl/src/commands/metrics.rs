//! `metrics enable|disable|listen`: the manager's job timing signals.

use super::wait::{Next, Waiter};
use super::Ctx;
use crate::cli::MetricsAction;
use crate::client::CtlError;
use crate::json::{self, Json};
use crate::output;
use dbus::Message;
use hirte_common::protocol;

const METRICS_PATH: &str = "/org/containers/hirte/metrics";
const METRICS_IFACE: &str = "org.containers.hirte.Metrics";

/// Milliseconds with three decimals, from microseconds.
fn ms(us: u64) -> String {
    format!("{}.{:03}ms", us / 1000, us % 1000)
}

/// One metrics signal as a text line and a JSON object.
fn describe(msg: &Message) -> Option<(String, Json)> {
    if msg.interface().as_deref() != Some(METRICS_IFACE) {
        return None;
    }
    match msg.member().as_deref()? {
        "StartUnitJobMetrics" => {
            let (node, job, unit, job_us, prop_us) =
                msg.read5::<&str, &str, &str, u64, u64>().ok()?;
            let text = format!(
                "{node} {unit}: start job {job} took {} (unit start propagation {})",
                ms(job_us),
                ms(prop_us)
            );
            let json = json::obj([
                ("signal", json::str("StartUnitJobMetrics")),
                ("node", json::str(node)),
                ("job_id", json::str(job)),
                ("unit", json::str(unit)),
                ("job_measured_time_usec", Json::from(job_us)),
                ("unit_start_prop_time_usec", Json::from(prop_us)),
            ]);
            Some((text, json))
        }
        "AgentJobMetrics" => {
            let (node, unit, method, us) = msg.read4::<&str, &str, &str, u64>().ok()?;
            let text = format!("{node} {unit}: {method} in systemd took {}", ms(us));
            let json = json::obj([
                ("signal", json::str("AgentJobMetrics")),
                ("node", json::str(node)),
                ("unit", json::str(unit)),
                ("method", json::str(method)),
                ("systemd_job_time_usec", Json::from(us)),
            ]);
            Some((text, json))
        }
        _ => None,
    }
}

// [impl->req~ctl.metrics~1]
pub fn metrics(ctx: &Ctx, action: &MetricsAction) -> Result<(), CtlError> {
    let c = ctx.c;
    let bounds = match action {
        MetricsAction::Enable => return c.manager("EnableMetrics", ()),
        MetricsAction::Disable => return c.manager("DisableMetrics", ()),
        MetricsAction::Listen { bounds } => *bounds,
    };
    let waiter = Waiter::new(c, bounds.timeout)?;
    c.add_match(&format!(
        "type='signal',sender='{}',path='{METRICS_PATH}',interface='{METRICS_IFACE}'",
        protocol::MANAGER_BUS_NAME
    ))?;
    let mut seen = 0u64;
    loop {
        if bounds.count.is_some_and(|n| seen >= n) {
            return Ok(());
        }
        let msg = match waiter.next()? {
            Next::Message(m) => m,
            Next::Quiet => continue,
            Next::Stop => {
                return waiter
                    .count_not_reached(&bounds, seen, "metrics signals")
                    .map_or(Ok(()), Err)
            }
        };
        if let Some((text, json)) = describe(&msg) {
            if ctx.json() {
                output::print_json(&json);
            } else {
                output::line(&text);
            }
            seen += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::ToLine;

    #[test]
    fn lines() {
        assert_eq!(ms(1_234_567), "1234.567ms");
        assert_eq!(ms(5), "0.005ms");
        let m = Message::new_signal(METRICS_PATH, METRICS_IFACE, "AgentJobMetrics")
            .unwrap()
            .append3("n1", "a.service", "StartUnit")
            .append1(1500u64);
        let (text, json) = describe(&m).unwrap();
        assert_eq!(text, "n1 a.service: StartUnit in systemd took 1.500ms");
        assert!(json.to_line().contains(r#""systemd_job_time_usec":1500"#));
    }
}
