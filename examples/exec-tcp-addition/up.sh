# Starts this instance's challenge service and prints its outputs.
#
# Inputs (from chall-manager): CM_IDENTITY, CM_STATE_DIR, and CHALL_MANAGER
# (the chall-manager binary, to vary the flag per instance).
# Output: the last stdout line is the JSON object chall-manager reads.
set -eu

state="$CM_STATE_DIR"

# The flag is fixed once per instance. `chall-manager flag variate` gives the
# same variant as the Go SDK; run by hand, without chall-manager, the
# service derives one from the identity instead.
if [ ! -s "$state/flag" ]; then
    if [ -n "${CHALL_MANAGER:-}" ]; then
        echo "CTF{$("$CHALL_MANAGER" flag variate --identity "$CM_IDENTITY" 'sums_are_easy_to_brute_force')}" >"$state/flag"
    else
        python3 server.py flag >"$state/flag"
    fi
fi
flag=$(cat "$state/flag")

# `up` may run again for the same instance (after a crash of chall-manager,
# or for an update): a service that still runs is kept.
if [ -s "$state/port" ] && [ -s "$state/server.pid" ] && kill -0 "$(cat "$state/server.pid")" 2>/dev/null; then
    printf '{"connection_info":"nc 127.0.0.1 %s","flags":["%s"]}\n' "$(cat "$state/port")" "$flag"
    exit 0
fi
rm -f "$state/port"

# The service is left running after this script exits: it is the
# challenge. Its output goes to a log file, so it does not hold the
# runner's pipes, and it reads no terminal input.
nohup python3 server.py serve "$state" >"$state/server.log" 2>&1 </dev/null &
echo "$!" >"$state/server.pid"

# The service binds port 0 and writes the port it got once it listens.
tries=0
while [ ! -s "$state/port" ]; do
    if ! kill -0 "$(cat "$state/server.pid")" 2>/dev/null; then
        echo "the challenge service exited during startup; its log follows" >&2
        cat "$state/server.log" >&2
        exit 1
    fi
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ]; then
        echo "the challenge service did not report a port within 10 seconds" >&2
        exit 1
    fi
    sleep 0.1
done

port=$(cat "$state/port")
printf '{"connection_info":"nc 127.0.0.1 %s","flags":["%s"]}\n' "$port" "$flag"
