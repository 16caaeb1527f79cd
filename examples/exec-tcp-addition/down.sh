# Stops this instance's challenge service.
#
# chall-manager also runs this after a failed up, so every step tolerates
# a service that never started or already exited.
set -eu

state="$CM_STATE_DIR"
pidfile="$state/server.pid"
if [ ! -f "$pidfile" ]; then
    echo "no server.pid in the state directory, nothing to stop" >&2
    exit 0
fi
pid=$(cat "$pidfile")

# A pid file can outlive its process (a reboot, say) and the pid be
# reused: only signal a process that runs server.py.
is_service() {
    [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q 'server.py serve'
}

if is_service "$pid"; then
    kill "$pid" 2>/dev/null || true
    tries=0
    while is_service "$pid" && [ "$tries" -lt 50 ]; do
        tries=$((tries + 1))
        sleep 0.1
    done
    if is_service "$pid"; then
        kill -9 "$pid" 2>/dev/null || true
    fi
fi

rm -f "$pidfile" "$state/port"
