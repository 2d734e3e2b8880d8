#!/bin/sh
# keepalived helper for a pair of Hirte managers behind a virtual IP (docs/operations.md,
# "Manager failover").
#   hirte-failover.sh master|backup|fault|stop   notify_master/_backup/_fault/_stop
#   hirte-failover.sh check                      vrrp_script: fails when this node holds
#                                                the VIP but its manager does not serve
# Only the node holding the VIP runs the manager: a manager elsewhere would keep a stale
# view (nodes it believes online) and accept hirtectl calls it cannot carry out.
STATE_FILE=/run/hirte/ha-state
START="systemctl start hirte"
STOP="systemctl stop hirte"
IS_ACTIVE="systemctl is-active --quiet hirte"
PORT=2020
LOG="logger -t hirte-ha"

set_state() {
    mkdir -p "$(dirname "$STATE_FILE")"
    echo "$1" >"$STATE_FILE"
}

case "$1" in
master)
    set_state master
    $START
    $LOG "Became master, starting Hirte manager"
    ;;
backup | fault | stop)
    # Record first: keepalived may end this script while it exits (notify_stop), and a
    # stale "master" would fail the next keepalived's first checks.
    set_state "$1"
    $STOP
    $LOG "Became $1, stopping Hirte manager"
    ;;
check)
    [ "$(cat "$STATE_FILE" 2>/dev/null)" = master ] || exit 0
    $IS_ACTIVE || exit 1
    ss -Hltn "sport = :$PORT" | grep -q . || exit 1
    ;;
*)
    echo "usage: $0 master|backup|fault|stop|check" >&2
    exit 2
    ;;
esac
