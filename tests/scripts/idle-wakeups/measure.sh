#!/bin/bash
# usage: measure.sh HIRTE_BINARY NODES [SECONDS] [HEARTBEAT_INTERVAL]
# Voluntary context switches (= wake-ups of a sleeping thread) of an idle manager with N fake agents.
set -u
bin=$1; n=$2; secs=${3:-10}; hb=${4:-5}
port=$((28000 + RANDOM % 1000))
dir=$(mktemp -d /tmp/idle-wakeups.XXXX)
names=$(python3 -c "print(','.join('fake-%04d' % i for i in range($n)))")
printf '[hirte]\nManagerPort=%s\nManagerAddress=127.0.0.1\nAllowedNodeNames=%s\nNodeHeartbeatThreshold=60s\nLogLevel=warning\n' $port "$names" > $dir/hirte.conf
ulimit -n 8192
addr=$(dbus-daemon --session --fork --print-address=1 --print-pid=3 3>$dir/dbus.pid)
export DBUS_SYSTEM_BUS_ADDRESS=$addr
$bin -c $dir/hirte.conf 2>$dir/hirte.log & mpid=$!
sleep 1
python3 "$(dirname "$0")/fake.py" $port $n $hb > $dir/fake.log 2>&1 & fpid=$!
sleep $((3 + n / 50))
sum() { local t=0; for f in /proc/$mpid/task/*/status; do v=$(awk '/^voluntary_ctxt_switches/{print $2}' $f 2>/dev/null); t=$((t + ${v:-0})); done; echo $t; }
links() { local t=0; for d in /proc/$mpid/task/*; do grep -q '^link-' $d/comm 2>/dev/null || continue; v=$(awk '/^voluntary_ctxt_switches/{print $2}' $d/status); t=$((t + ${v:-0})); done; echo $t; }
cpu() { awk '{print $14 + $15}' /proc/$mpid/stat; }
a=$(sum); la=$(links); ca=$(cpu)
sleep $secs
b=$(sum); lb=$(links); cb=$(cpu)
threads=$(ls /proc/$mpid/task | wc -l); fds=$(ls /proc/$mpid/fd | wc -l)
online=$(grep -c . $dir/fake.log)
echo "nodes=$n secs=$secs hb=${hb}s threads=$threads fds=$fds wakeups_total/s=$(( (b - a) / secs )) link_threads/s=$(( (lb - la) / secs )) other/s=$(( ((b - a) - (lb - la)) / secs )) cpu_ticks=$((cb - ca)) fake_log=$(head -c 80 $dir/fake.log | tr '\n' ' ')"
kill $fpid $mpid; wait $mpid 2>/dev/null; kill $(cat $dir/dbus.pid)
grep -v "^$" $dir/hirte.log | head -3
