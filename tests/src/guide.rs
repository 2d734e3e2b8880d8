//! The user's guide's configuration files (Step 2 of hirte-guide.txt), one copy for the
//! tests and the demo. Only the values the guide tells the reader to replace are parameters.

/// `/etc/hirte/hirte.conf`; the guide's own node list is `primary,agent`.
pub fn hirte_conf(allowed_node_names: &str) -> String {
    format!(
        "[hirte]
ManagerPort=2020
AllowedNodeNames={allowed_node_names}
LogLevel=info
LogTarget=journald
"
    )
}

/// `/etc/hirte/agent.conf` of the local agent on the primary node, verbatim.
pub const PRIMARY_AGENT_CONF: &str = "[hirte-agent]
NodeName=primary
ManagerHost=127.0.0.1
ManagerPort=2020
LogLevel=info
LogTarget=journald
HeartbeatInterval=5
";

/// `/etc/hirte/agent.conf` of an agent node; the guide's is `agent` at 192.168.1.10, which
/// it says to replace with the primary node's address.
pub fn agent_conf(name: &str, manager_ip: &str) -> String {
    format!(
        "[hirte-agent]
NodeName={name}
ManagerHost={manager_ip}
ManagerPort=2020
LogLevel=info
LogTarget=journald
HeartbeatInterval=5
ReconnectInterval=10
"
    )
}
