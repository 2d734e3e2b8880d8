//! Every fixed resource bound of Hirte-rs, in one place.
//!
//! `safety/bounds.md` lists each constant with what happens at the bound and the test that
//! shows it. Bounds an operator may tune are config keys instead (see `config`).

// [impl->req~bounds.documented~1]
use std::time::Duration;

/// Largest frame (one D-Bus message) accepted on the manager<->agent link.
/// A larger length prefix is a protocol error: the connection is closed.
// [impl->req~link.max-frame~1]
pub const MAX_FRAME_SIZE: usize = 4 * 1024 * 1024;

/// Largest frame an unregistered connection may send: `Register(s)` is tiny.
pub const MAX_HANDSHAKE_FRAME_SIZE: usize = 4 * 1024;

/// Time a new connection has to send its `Register` call.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections accepted but not yet registered; more are closed at once.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Node names the manager may be configured with (`AllowedNodeNames`).
pub const MAX_NODES: usize = 1024;

/// File descriptors the manager keeps for itself beside its connections (two each: the
/// socket and its queue's eventfd): the bus, the listeners, the core's eventfds, logging,
/// config files, with room to spare. The manager raises its soft `RLIMIT_NOFILE` to cover
/// both at start-up (`manager/src/fd_limit.rs`).
pub const FD_RESERVE: u64 = 64;

/// Longest node name, in bytes.
pub const MAX_NODE_NAME_LEN: usize = 64;

/// Events queued from connection threads to the manager's core thread.
pub const CORE_QUEUE_DEPTH: usize = 4096;

/// Bytes of frames queued from connection threads to the manager's core (each frame is
/// held as it arrived, so this bounds the queue's memory; `CORE_QUEUE_DEPTH` x
/// `MAX_FRAME_SIZE` would be 16 GiB). A connection thread waits for room as for a full queue.
// [impl->req~bounds.core-queue-bytes~1]
pub const CORE_QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// Bytes one agent may send unasked (anything but answers to the manager's calls) within
/// `UNASKED_WINDOW`; more, and the manager cuts the node off (link closed, node offline).
// [impl->req~bounds.agent-flood~1]
pub const MAX_UNASKED_BYTES_PER_WINDOW: usize = 16 * 1024 * 1024;

/// Messages one agent may send unasked within `UNASKED_WINDOW`; more, and it is cut off.
// [impl->req~bounds.agent-flood~1]
pub const MAX_UNASKED_FRAMES_PER_WINDOW: usize = 8192;

/// The interval the two budgets above apply to.
pub const UNASKED_WINDOW: Duration = Duration::from_secs(1);

/// Largest signal an agent may send (its unit events are a few KiB): the agent drops a
/// larger one with a warning; the manager cuts off a node that sends one, before decoding.
// [impl->req~bounds.agent-flood~1]
pub const MAX_AGENT_SIGNAL_SIZE: usize = 256 * 1024;

/// Frames queued for sending on one link.
pub const LINK_OUTBOUND_DEPTH: usize = 256;

/// Bytes of the nodes' answers one call that spans all nodes (`ListUnits`, `ListUnitFiles`
/// on the Manager) holds until every node has answered. Its combined answer goes to the
/// caller as one message, and the system bus (dbus-daemon's default `max_message_size`,
/// 32 MiB) drops a connection that sends a larger one: 30 MiB leaves room for the node names,
/// and holds 1,000 nodes x 180 units at up to 170 bytes per unit row. Beyond it the call
/// fails whole with `Busy` (warning logged once), the answers collected are dropped, and
/// later ones are not kept.
// [impl->req~bounds.fanout-bytes~1]
pub const MAX_FANOUT_BYTES: usize = 30 * 1024 * 1024;

/// Calls awaiting an agent's reply, per node. Beyond it a caller gets `Busy`.
pub const MAX_PENDING_CALLS_PER_NODE: usize = 128;

/// Of those, the slots read-only calls (listings, property reads, subscriptions) cannot
/// take: kept for calls that change state, so readers cannot delay root's start and stop.
// [impl->req~bounds.control-reserve~1]
pub const RESERVED_CONTROL_CALLS_PER_NODE: usize = 32;

/// Jobs in flight across the whole manager. Beyond it a caller gets `Busy`.
pub const MAX_JOBS: usize = 4096;

/// Jobs an agent tracks (systemd job path -> manager job id).
pub const MAX_AGENT_JOBS: usize = 1024;

/// A link write that cannot make progress for this long means the peer stalled: the link is closed.
pub const LINK_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Timeout of one TCP connect attempt by the agent.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest the agent waits for the lookup of a `ManagerHost` name; then the attempt has
/// failed and the backoff follows. Of the order of `CONNECT_TIMEOUT` (a lookup and a connect
/// make one attempt), and as long as glibc's resolver asks one nameserver before it tries the
/// next (`timeout:5` in resolv.conf), so a first nameserver that answers is waited for. The given-up lookup's thread runs on until the
/// resolver returns; that name is not looked up again meanwhile (`agent/src/resolve.rs`).
// [impl->req~agent.reconnect~1]
pub const MANAGER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Managers an agent may list (`ManagerHost=a,b`, `ManagerAddress=A;B`).
pub const MAX_MANAGERS: usize = 8;

/// Timeout of the connect with which an agent registered elsewhere checks whether its first
/// manager is back (`ManagerPreferFirst=yes`); it holds up that agent's heartbeats, so short.
pub const FAILBACK_PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// First delay of the agent's reconnect backoff (doubled per failed round, capped at
/// `ReconnectInterval`).
pub const RECONNECT_BACKOFF_START: Duration = Duration::from_millis(200);

/// Failed connect attempts between two warning-level summaries (the rest log at debug).
pub const RECONNECT_SUMMARY_EVERY: u32 = 10;

/// Messages waiting for a bus that takes none of them for this long mean the bus stalled:
/// the manager exits (systemd restarts it), the agent reconnects to its bus.
pub const BUS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Timeout of one D-Bus call from the agent to systemd.
pub const SYSTEMD_CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// At exit, after the core finished its shutdown: longest the main thread waits for the
/// listener and the connection threads (agent: the link thread) to end. Threads still running
/// then are logged by name and ended by the process exit.
// [impl->req~manager.sigterm~1]
// [impl->req~agent.sigterm~1]
pub const SHUTDOWN_JOIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest the core threads sleep before re-checking timers and the shutdown flag.
pub const CORE_TICK: Duration = Duration::from_millis(100);

/// Events of one kind (bus messages, link events) a core thread handles per turn before it
/// checks its timers, heartbeats and watchdog again; the rest waits for the next turn.
// [impl->req~bounds.core-turn~1]
pub const MAX_EVENTS_PER_TURN: usize = 64;

/// Stack of a connection thread: it only frames bytes, it needs little.
pub const CONNECTION_THREAD_STACK: usize = 256 * 1024;

/// Read chunk of a connection thread: small, since most frames are; a large frame simply
/// takes several reads (its bound is `MAX_FRAME_SIZE`, not this).
pub const READ_CHUNK: usize = 8 * 1024;

/// Monitors across all D-Bus clients of the manager.
pub const MAX_MONITORS: usize = 256;

/// Monitors one D-Bus client (unique name) may own.
pub const MAX_MONITORS_PER_OWNER: usize = 32;

/// Subscriptions in one monitor.
pub const MAX_SUBSCRIPTIONS_PER_MONITOR: usize = 256;

/// Units named in one `SubscribeList`.
pub const MAX_UNITS_PER_SUBSCRIPTION: usize = 256;

/// Peers one monitor may forward to.
pub const MAX_PEERS_PER_MONITOR: usize = 8;

/// Bytes of monitor signals one unit event from an agent may turn into: the event is copied
/// once per recipient (the owner and up to `MAX_PEERS_PER_MONITOR` peers of every monitor that
/// wants it, at most 256 x 9 = 2,304 copies), so a 256 KiB event could become 576 MiB. Within
/// 16 MiB an event of 7 KiB still reaches all 2,304 recipients, a maximal one 64; the
/// monitors beyond the budget miss that event, and a warning says so.
// [impl->req~bounds.monitor-copies~1]
pub const MAX_MONITOR_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Units a wildcard subscription remembers (for virtual events when their node drops).
pub const MAX_SEEN_UNITS_PER_SUBSCRIPTION: usize = 1024;

/// Units one agent watches for the manager (`*` counts as one).
pub const MAX_AGENT_SUBSCRIPTIONS: usize = 2048;

/// Match rules for units' property changes one agent keeps on its node's bus, one per
/// watched unit; beyond it (or for `*`) one rule takes every unit's. Under the bus daemon's
/// default of 512 rules per connection on a system bus.
// [impl->req~agent.unit-match-rules~1]
pub const MAX_UNIT_MATCH_RULES: usize = 256;

/// Bytes of stdout, and of stderr, `Exec` returns; the rest is cut.
pub const EXEC_MAX_OUTPUT: usize = 64 * 1024;

/// Proxies (cross-node dependencies) one agent keeps for its node's units.
pub const MAX_AGENT_PROXIES: usize = 128;

/// Proxies the manager keeps per requesting node.
pub const MAX_PROXIES_PER_NODE: usize = 128;

/// How long the agent lets a `CreateProxy` caller wait for its target to become active
/// (systemd's default start timeout is 90 s; the target's start must fit in).
pub const PROXY_START_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the manager waits for a node's answer to `StartDep` (the anchor's start job).
pub const DEP_START_TIMEOUT: Duration = Duration::from_secs(110);

// ----- hirte-web (the read-only dashboard; its own process) -----

/// Worker threads of hirte-web's HTTP server: requests served at once. Fixed at start-up.
pub const WEB_WORKERS: usize = 4;

/// Accepted connections waiting for a worker; beyond it a new connection gets `503` at once.
pub const WEB_ACCEPT_QUEUE_DEPTH: usize = 64;

/// Largest HTTP request head (request line and headers) hirte-web reads; larger: `431`.
pub const WEB_MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Headers one request may carry; more: `431`.
pub const WEB_MAX_HEADERS: usize = 32;

/// Time a client has to send its whole request head after being served by a worker;
/// later: `408` and the connection is closed.
pub const WEB_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A response write that cannot make progress for this long: the connection is dropped.
pub const WEB_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Events (unit state changes, nodes going on/offline, jobs ending) hirte-web keeps for the page.
pub const WEB_MAX_EVENTS: usize = 256;

/// Jobs in flight hirte-web tracks (the manager allows `MAX_JOBS`; the page shows these).
pub const WEB_MAX_JOBS: usize = MAX_JOBS;

/// `StartUnitJobMetrics` results hirte-web keeps for the page's job timing table.
pub const WEB_MAX_JOB_TIMINGS: usize = 64;

/// Distinct `hirte_jobs_total{node,type,result}` series; a job beyond it is still counted in
/// `hirte_job_duration_seconds`, and the overflow is logged.
pub const WEB_MAX_JOB_SERIES: usize = 4096;

/// How often hirte-web re-reads nodes and units from the manager (events update it between).
pub const WEB_REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// Timeout of one D-Bus call from hirte-web to the manager: the manager's own longest answer
/// (`AgentCallTimeout`, 30 s by default) plus slack.
pub const WEB_CALL_TIMEOUT: Duration = Duration::from_secs(35);

/// Certificates in a TLS peer's chain (its own plus intermediates); a longer chain is refused
/// before any signature is checked.
pub const MAX_CERT_CHAIN_LEN: usize = 4;

/// Bytes of a TLS peer's certificate chain; a larger one is refused before any signature is
/// checked (rustls itself caps one handshake message at 64 KiB).
pub const MAX_CERT_CHAIN_BYTES: usize = 16 * 1024;

/// Bytes of one PEM file named by `CertificateFile=`, `KeyFile=`, `TrustedCertificateFile=`
/// or `RevocationListFile=`; a larger file is refused at start or SIGHUP.
pub const MAX_PEM_FILE_SIZE: usize = 1024 * 1024;

/// Clients whose bus credentials the manager's audit keeps (UID, PID, command name); when
/// full, the cache starts over (a client's credentials are then asked for again).
pub const MAX_AUDIT_CALLERS: usize = 1024;

/// Calls that change something and await their answer, for the audit record; beyond it a
/// call is recorded at once with `answer not tracked` (never without a record).
pub const MAX_AUDIT_OPEN: usize = 4096;

/// Longest the manager's core waits for the bus daemon's credentials of a new client (once
/// per client connection); without an answer the record says `?`.
pub const AUDIT_CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(1);

/// Calls through `org.eclipse.bluechi` whose answer is still to come (relayed to agents); one
/// more is refused with `LimitsExceeded`.
pub const BLUECHI_PENDING_CALLS: usize = 1024;
