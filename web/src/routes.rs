//! Which path gives what. Every answer is built from the fleet snapshot under its lock; no
//! request reaches the manager (the collector alone talks to it, at its own pace).

use crate::fleet::{Event, Fleet, Job, JobTiming, NodeRow, UnitRow};
use crate::http::{query_pairs, Request, Response, JSON, TEXT};
use crate::metrics;
use serde::Serialize;

// [impl->req~web.page~1]
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// The dashboard's document (`/api/state`): everything but the unit list, which the page
/// fetches from `/api/units` only when `units_version` changes.
#[derive(Serialize)]
struct State<'a> {
    version: &'static str,
    manager: Manager<'a>,
    nodes: &'a [NodeRow],
    failed: Vec<&'a UnitRow>,
    units_version: u64,
    unit_count: usize,
    jobs: Vec<&'a Job>,
    timings: Vec<&'a JobTiming>,
    job_count: u64,
    job_seconds: f64,
    last_seq: u64,
    events: Vec<&'a Event>,
}

#[derive(Serialize)]
struct Manager<'a> {
    reachable: bool,
    status: &'a str,
    error: &'a str,
    refreshed_usec: u64,
}

#[derive(Serialize)]
struct ErrorDoc<'a> {
    error: &'a str,
}

fn json_response<T: Serialize + ?Sized>(status: u16, doc: &T) -> Response {
    // hirtectl prints one document per line, newline included.
    let mut body = hirte_common::json::to_line(doc);
    body.push('\n');
    Response::new(status, JSON, body)
}

fn json_error(status: u16, message: &str) -> Response {
    json_response(status, &ErrorDoc { error: message })
}

/// The query's pairs, refusing any key not in `allowed`.
fn query(req: &Request, allowed: &[&str]) -> Result<Vec<(String, String)>, Response> {
    let pairs = query_pairs(&req.query).ok_or_else(|| json_error(400, "malformed query string"))?;
    match pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        Some((k, _)) => Err(json_error(400, &format!("unknown query parameter '{k}'"))),
        None => Ok(pairs),
    }
}

/// The manager could not be read: the API says so instead of serving stale data.
fn unreachable(f: &Fleet) -> Response {
    json_error(
        503,
        &format!("the Hirte manager cannot be read: {}", f.error),
    )
}

// [impl->req~web.api~1]
fn units(req: &Request, f: &Fleet) -> Response {
    let pairs = match query(req, &["node"]) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !f.reachable {
        return unreachable(f);
    }
    let node = pairs.into_iter().find(|(k, _)| k == "node").map(|(_, v)| v);
    match node {
        None => json_response(200, &f.units),
        Some(name) => match f.nodes.iter().find(|n| n.node == name) {
            // As `hirtectl list-units NODE`: an unknown or offline node is an error.
            None => json_error(404, &format!("node '{name}' not found")),
            Some(n) if n.state != hirte_common::protocol::NODE_ONLINE => {
                json_error(503, &format!("node '{name}' is offline"))
            }
            Some(_) => {
                let rows: Vec<&UnitRow> = f.units.iter().filter(|u| u.node == name).collect();
                json_response(200, &rows)
            }
        },
    }
}

fn state(req: &Request, f: &Fleet) -> Response {
    let pairs = match query(req, &["since"]) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let since = match pairs.iter().find(|(k, _)| k == "since") {
        None => 0,
        Some((_, v)) => match v.parse::<u64>() {
            Ok(n) => n,
            Err(_) => return json_error(400, &format!("since: '{v}' is not a number")),
        },
    };
    let doc = State {
        version: env!("CARGO_PKG_VERSION"),
        manager: Manager {
            reachable: f.reachable,
            status: &f.status,
            error: &f.error,
            refreshed_usec: f.refreshed_usec,
        },
        nodes: &f.nodes,
        failed: f.failed_units().collect(),
        units_version: f.units_version,
        unit_count: f.units.len(),
        jobs: f.jobs.values().collect(),
        timings: f.timings.iter().rev().collect(),
        job_count: f.durations.count,
        job_seconds: f.durations.sum_seconds,
        last_seq: f.last_seq(),
        events: f.events.iter().filter(|e| e.seq > since).collect(),
    };
    json_response(200, &doc)
}

/// The answer to one request.
// [impl->req~web.read-only~1]
pub fn route(req: &Request, fleet: &Fleet) -> Response {
    match req.path.as_str() {
        "/" | "/index.html" => Response::new(200, "text/html; charset=utf-8", INDEX_HTML),
        "/static/app.css" => Response::new(200, "text/css; charset=utf-8", APP_CSS),
        "/static/app.js" => Response::new(200, "text/javascript; charset=utf-8", APP_JS),
        "/metrics" => Response::new(200, metrics::CONTENT_TYPE, metrics::render(fleet)),
        "/api/nodes" if fleet.reachable => json_response(200, &fleet.nodes),
        "/api/nodes" => unreachable(fleet),
        "/api/units" => units(req, fleet),
        "/api/state" => state(req, fleet),
        other => Response::new(
            404,
            TEXT,
            format!(
                "404 Not Found: no page '{}' (pages: /, /metrics, /api/nodes, /api/units[?node=NAME], /api/state)\n",
                other.chars().take(200).collect::<String>()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(target: &str) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            head_only: false,
            path: path.into(),
            query: query.into(),
        }
    }

    fn fleet() -> Fleet {
        let mut f = Fleet::default();
        let node = |n: &str, s: &str| NodeRow {
            node: n.into(),
            state: s.into(),
            ip: "10.0.0.1".into(),
            last_seen_usec: 5,
        };
        let unit = |n: &str, u: &str, a: &str| UnitRow {
            node: n.into(),
            unit: u.into(),
            load: "loaded".into(),
            active: a.into(),
            sub: "dead".into(),
            description: "D \"q\"".into(),
        };
        f.set_listing(
            "degraded".into(),
            vec![node("n1", "online"), node("n2", "offline")],
            vec![
                unit("n1", "b.service", "failed"),
                unit("n1", "a.service", "active"),
            ],
            1,
        );
        f
    }

    fn body(r: &Response) -> String {
        String::from_utf8(r.body.clone()).unwrap()
    }

    // [utest->req~web.api~1]
    #[test]
    fn api_documents_are_hirtectls() {
        let f = fleet();
        let r = route(&get("/api/nodes"), &f);
        assert_eq!(r.status, 200);
        assert_eq!(
            body(&r),
            "[{\"node\":\"n1\",\"state\":\"online\",\"ip\":\"10.0.0.1\",\"last_seen_usec\":5},\
             {\"node\":\"n2\",\"state\":\"offline\",\"ip\":\"10.0.0.1\",\"last_seen_usec\":5}]\n"
        );
        let r = route(&get("/api/units?node=n1"), &f);
        assert_eq!(
            body(&r),
            "[{\"node\":\"n1\",\"unit\":\"a.service\",\"load\":\"loaded\",\"active\":\"active\",\"sub\":\"dead\",\"description\":\"D \\\"q\\\"\"},\
             {\"node\":\"n1\",\"unit\":\"b.service\",\"load\":\"loaded\",\"active\":\"failed\",\"sub\":\"dead\",\"description\":\"D \\\"q\\\"\"}]\n"
        );
        assert_eq!(route(&get("/api/units"), &f).body, r.body);
        assert_eq!(route(&get("/api/units?node=n2"), &f).status, 503);
        assert_eq!(route(&get("/api/units?node=zz"), &f).status, 404);
        assert_eq!(route(&get("/api/units?nod=n1"), &f).status, 400);
        assert_eq!(route(&get("/api/units?node=%g1"), &f).status, 400);
    }

    #[test]
    fn state_lists_failed_units_and_new_events() {
        let mut f = fleet();
        f.node_state("n1", "online", 2);
        let text = body(&route(&get("/api/state"), &f));
        assert!(
            text.contains("\"failed\":[{\"node\":\"n1\",\"unit\":\"b.service\""),
            "{text}"
        );
        assert!(text.contains("\"text\":\"node online\""), "{text}");
        let last = f.last_seq();
        let text = body(&route(&get(&format!("/api/state?since={last}")), &f));
        assert!(text.contains("\"events\":[]"), "{text}");
        assert_eq!(route(&get("/api/state?since=x"), &f).status, 400);
    }

    #[test]
    fn pages_and_errors() {
        let mut f = fleet();
        assert_eq!(
            route(&get("/"), &f).content_type,
            "text/html; charset=utf-8"
        );
        assert_eq!(route(&get("/static/app.js"), &f).status, 200);
        assert_eq!(
            route(&get("/metrics"), &f).content_type,
            metrics::CONTENT_TYPE
        );
        let r = route(&get("/etc/passwd"), &f);
        assert_eq!(r.status, 404);
        assert!(body(&r).contains("no page '/etc/passwd'"));
        f.set_unreachable("no bus".into(), 3);
        let r = route(&get("/api/nodes"), &f);
        assert_eq!(r.status, 503);
        assert!(body(&r).contains("no bus"));
        assert_eq!(route(&get("/metrics"), &f).status, 200);
    }
}
