#!/usr/bin/python3
"""Drives Hirte-rs through BlueChi's own Python bindings (`bluechi` on PyPI), unchanged.

Usage: client.py controller NODE UNIT ENABLE_UNIT | agent
Prints one "ok <check>" line per check that passed; any failure raises (exit status 1).
For the offline check, `controller` prints "ready-offline" and waits for a line on stdin,
after which the test stops NODE's agent.
"""

import sys
import time

from gi.repository import GLib
from bluechi.api import Agent, Controller, Job, Metrics, Monitor, Node

CTX = GLib.MainContext.default()


def wait_for(what, pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        CTX.iteration(False)
        time.sleep(0.01)


def ok(check):
    print(f"ok {check}", flush=True)


def controller(node_name, unit, enable_unit):
    ctl = Controller()
    nodes = ctl.list_nodes()
    names = sorted(n[0] for n in nodes)
    assert all(str(n[1]).startswith("/org/eclipse/bluechi/node/") for n in nodes), nodes
    assert all(n[2] == "online" for n in nodes), nodes
    ok(f"list_nodes {','.join(names)}")
    assert str(ctl.get_node(node_name)).startswith("/org/eclipse/bluechi/node/")
    assert ctl.status == "up", ctl.status
    assert ctl.log_level, ctl.log_level
    ok("controller properties")

    units = ctl.list_units()
    assert node_name in units, units.keys()
    assert any(u[0] == "default.target" for u in units[node_name])
    ok("list_units")
    files = ctl.list_unit_files()
    assert any(f[0].endswith(enable_unit) for f in files[node_name]), files[node_name][:5]
    ok("list_unit_files")

    node = Node(node_name)
    assert node.name == node_name and node.status == "online", (node.name, node.status)
    assert node.last_seen_timestamp > 0
    ok("node properties")
    assert any(u[0] == "default.target" for u in node.list_units())
    ok("node list_units")

    # A monitor subscribed to the unit, then start and stop it and wait for JobRemoved.
    monitor = Monitor(ctl.create_monitor())
    states = []
    monitor.on_unit_state_changed(lambda n, u, a, s, r: states.append((n, u, a, s, r)))
    news = []
    monitor.on_unit_new(lambda n, u, r: news.append((n, u, r)))
    monitor.subscribe(node_name, unit)

    removed = {}
    ctl.on_job_removed(lambda i, p, n, u, r: removed.setdefault(str(p), (i, n, u, r)))
    metrics = []
    Metrics().on_start_unit_job_metrics(lambda *a: metrics.append(a))
    ctl.enable_metrics()

    job_path = node.start_unit(unit, "replace")
    assert str(job_path).startswith("/org/eclipse/bluechi/job/"), job_path
    job = Job(job_path)
    try:
        assert job.unit == unit and job.node == node_name and job.job_type == "start"
        ok("job properties")
    except Exception as e:  # the job may be gone already; it must then have been removed
        wait_for("JobRemoved of the start", lambda: str(job_path) in removed)
        ok(f"job properties (job already finished: {type(e).__name__})")
    wait_for("JobRemoved of the start", lambda: str(job_path) in removed)
    assert removed[str(job_path)][1:] == (node_name, unit, "done"), removed[str(job_path)]
    ok("start_unit JobRemoved done")
    wait_for("UnitStateChanged active", lambda: any(s[2] == "active" for s in states))
    ok("monitor UnitStateChanged active")
    wait_for("StartUnitJobMetrics", lambda: len(metrics) > 0)
    ok("metrics StartUnitJobMetrics")
    ctl.disable_metrics()

    props = node.get_unit_properties(unit, "org.freedesktop.systemd1.Unit")
    assert props["ActiveState"].unpack() == "active", props["ActiveState"]
    assert node.get_unit_property(unit, "org.freedesktop.systemd1.Unit", "SubState").unpack() == "running"
    ok("unit properties")

    job_path = node.stop_unit(unit, "replace")
    wait_for("JobRemoved of the stop", lambda: str(job_path) in removed)
    assert removed[str(job_path)][3] == "done", removed[str(job_path)]
    ok("stop_unit JobRemoved done")

    changes = node.enable_unit_files([enable_unit], False, False)
    assert any(c[0] == "symlink" for c in changes[1]), changes
    assert node.get_unit_file_state(enable_unit) == "enabled"
    changes = node.disable_unit_files([enable_unit], False)
    assert any(c[0] == "unlink" for c in changes), changes
    assert node.get_unit_file_state(enable_unit) == "disabled"
    ok("enable/disable unit files")

    # BlueChi's own error names.
    try:
        ctl.get_node("no-such-node")
        raise AssertionError("GetNode of an unknown node succeeded")
    except Exception as e:
        assert "ServiceUnknown" in repr(e) or "Node not found" in repr(e) or "not found" in repr(e), repr(e)
    ok("unknown node error")

    # The node goes offline: its Status property changes, the monitor hears of the unit.
    statuses = []
    node.on_status_changed(lambda v: statuses.append(v.unpack() if hasattr(v, "unpack") else v))
    removed_units = []
    monitor.on_unit_removed(lambda n, u, r: removed_units.append((n, u, r)))
    print("ready-offline", flush=True)
    sys.stdin.readline()
    wait_for("node Status offline", lambda: "offline" in statuses, timeout=60)
    assert Node(node_name).status == "offline"
    ok("node offline")
    wait_for("monitor event of the offline node",
             lambda: any(s[4] == "virtual" or s[2] in ("inactive", "unknown") for s in states)
             or removed_units, timeout=30)
    ok("monitor offline event")
    monitor.close()
    ok("monitor close")


def agent():
    a = Agent()
    assert a.status == "online", a.status
    assert a.controller_address, a.controller_address
    assert a.last_seen_timestamp > 0 and a.last_seen_timestamp_monotonic > 0
    assert a.disconnect_timestamp >= 0 and a.disconnect_timestamp_monotonic >= 0
    assert a.log_level and a.log_target
    ok(f"agent properties {a.status} {a.controller_address}")


if __name__ == "__main__":
    if sys.argv[1] == "controller":
        controller(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        agent()
