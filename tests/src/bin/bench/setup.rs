//! The units the bench uses, installed on every node of the cluster.

use std::path::Path;

use hirte_tests::Cluster;

use crate::bench::dbusx::{self, SD_DEST, SD_MANAGER, SD_PATH};
use crate::bench::error::{BenchError, Result};

/// A oneshot `/bin/true`: every start runs it again (rows 1 and 4).
pub const TRUE_UNIT: &str = "bench-true.service";
/// A oneshot that stays active: the start/stop loops of the load nodes (row 2).
pub const TOGGLE_UNIT: &str = "bench-toggle.service";
/// Loaded (inactive) filler units reach the node through this target (row 3).
pub const FILLER_TARGET: &str = "bench.target";
/// Units per node row 3 aims at (the issue's ~180).
pub const UNITS_PER_NODE: usize = 180;

fn write(path: &Path, content: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| BenchError::io(format!("creating {}", parent.display()), e))?;
    }
    std::fs::write(path, content)
        .map_err(|e| BenchError::io(format!("writing {}", path.display()), e))
}

/// Number of units a node's systemd has loaded (`ListUnits`).
pub fn unit_count(c: &Cluster, node: &str) -> Result<usize> {
    let conn = c.node_bus(node)?;
    let r = dbusx::call(
        &conn,
        dbusx::method(SD_DEST, SD_PATH, SD_MANAGER, "ListUnits")?,
    )?;
    let rows: Vec<hirte_common::protocol::UnitRow> = r
        .read1()
        .map_err(|e| BenchError::failed(format!("ListUnits answered {e}")))?;
    Ok(rows.len())
}

/// Writes the bench units into every node's `$XDG_RUNTIME_DIR/systemd/user/`, with as many
/// `bench-N.service` fillers (wanted by `bench.target`, itself wanted by `default.target`, so
/// systemd keeps them loaded without running them) as bring each node to about
/// [`UNITS_PER_NODE`] loaded units; reloads each systemd over D-Bus. Returns the units per node.
pub fn install_units(c: &Cluster) -> Result<Vec<(String, usize)>> {
    let nodes: Vec<String> = c.nodes().into_iter().map(str::to_string).collect();
    let first = nodes
        .first()
        .ok_or_else(|| BenchError::failed("cluster without nodes"))?;
    let baseline = unit_count(c, first)?;
    let fillers = UNITS_PER_NODE.saturating_sub(baseline + 1);
    let wants: Vec<String> = (1..=fillers)
        .map(|i| format!("bench-{i}.service"))
        .collect();
    let mut counts = Vec::new();
    for node in &nodes {
        let dir = c
            .node_runtime_dir(node)
            .ok_or_else(|| BenchError::failed(format!("no runtime dir for {node}")))?
            .join("systemd/user");
        write(
            &dir.join(TRUE_UNIT),
            "[Unit]\nDescription=Bench oneshot\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
        )?;
        write(
            &dir.join(TOGGLE_UNIT),
            "[Unit]\nDescription=Bench toggle\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
        )?;
        for (i, w) in wants.iter().enumerate() {
            write(
                &dir.join(w),
                &format!(
                    "[Unit]\nDescription=Bench filler unit {}\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
                    i + 1
                ),
            )?;
        }
        write(
            &dir.join(FILLER_TARGET),
            &format!(
                "[Unit]\nDescription=Bench filler units\nWants={}\n",
                wants.join(" ")
            ),
        )?;
        write(
            &dir.join("default.target.d/bench.conf"),
            &format!("[Unit]\nWants={FILLER_TARGET}\n"),
        )?;
        let conn = c.node_bus(node)?;
        // Reload answers once the reload is complete.
        dbusx::call(
            &conn,
            dbusx::method(SD_DEST, SD_PATH, SD_MANAGER, "Reload")?,
        )?;
    }
    for node in &nodes {
        counts.push((node.clone(), unit_count(c, node)?));
    }
    Ok(counts)
}

/// The bench's settings as drop-ins (`hirte.conf.d/bench.conf` on the first node,
/// `agent.conf.d/bench.conf` on every node), which override the harness' files (a key may
/// appear only once per file). Written before the daemons start.
pub fn drop_ins(c: &Cluster, manager: &str, agent: &str) -> Result<()> {
    let nodes = c.nodes();
    for (i, node) in nodes.iter().enumerate() {
        let etc = c
            .node_config_dir(node)
            .ok_or_else(|| BenchError::failed(format!("no config dir for {node}")))?;
        if i == 0 {
            write(&etc.join("hirte.conf.d/bench.conf"), manager)?;
        }
        write(&etc.join("agent.conf.d/bench.conf"), agent)?;
    }
    Ok(())
}
