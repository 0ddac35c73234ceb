#!/usr/bin/env bash
# The load bench's saturation phase with wrk as the client instead of the
# harness's own Rust client: the no-op and zonewise alternate, each serving
# the 10 KB Deployment review over TLS to `wrk -t1 -c25`, and each run prints
# reviews/s and the CPU per request of the server and of wrk. A second
# client shows how much of the ratio belongs to the client sharing the two
# cores. Traffic goes to 127.0.0.1 only; every run stops by itself.
#
#   bash benches/wrk.sh [pairs]       # default 2 pairs; WRK_SECS=14 per run
set -euo pipefail

pairs=${1:-2}
secs=${WRK_SECS:-14}
if ! command -v wrk >/dev/null; then
    echo "wrk is not installed (Debian: apt-get install wrk)" >&2
    exit 2
fi
if ! [[ $pairs =~ ^[1-9][0-9]*$ ]]; then
    echo "pairs must be a whole number of at least 1, not '$pairs'" >&2
    exit 2
fi
if ! [[ $secs =~ ^[0-9]+$ ]] || ((secs < 8)); then
    echo "WRK_SECS must be a whole number of at least 8 (3 s of warm-up, 3 s of margin)" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
cargo build --release --features bench-baseline --quiet
bin=$PWD/target/release/zonewise
tmp=$(mktemp -d)
# The running server and wrk, stopped by the EXIT trap on any failure.
server='' client=''
cleanup() {
    # Either may have exited already; under `set -e` a failed kill would
    # end the trap before the rest of it.
    if [[ -n $server ]]; then kill "$server" 2>/dev/null || true; fi
    if [[ -n $client ]]; then kill "$client" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

cat >"$tmp/post.lua" <<EOF
local f = io.open("$PWD/benches/fixtures/deployment-10k.json", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
EOF

hz=$(getconf CLK_TCK)
# utime + stime of a process, in clock ticks (fields 14 and 15; the command
# name in field 2 has no spaces for either process).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# failed NAME WHAT FILE: stops the script with what went wrong in run NAME
# and the output of the process it concerns (the server's log, wrk's
# report), since that output says why.
failed() {
    echo "$1: $2; its output:" >&2
    cat "$3" >&2
    exit 1
}

# run NAME [serve args]: prints "NAME reviews/s server-µs wrk-µs" and leaves
# the rate in $rps. It runs in this shell, not a subshell, so the EXIT trap
# stops its server and wrk on any failure.
rps=
run() {
    local name=$1 log=$tmp/$1.log report=$tmp/$1.wrk addr='' c0 w0 t0 c1 w1 t1
    shift
    "$bin" serve --listen=127.0.0.1:0 --metrics-listen=127.0.0.1:0 \
        --log-format=json --cluster-cache=off --drain-delay=0s \
        --dev-cert-dir="$tmp/certs" "$@" >/dev/null 2>"$log" &
    server=$!
    for _ in $(seq 300); do
        addr=$(sed -n '/"message":"listening"/s/.*"addr":"\([^"]*\)".*/\1/p' "$log")
        [[ -n $addr ]] && break
        sleep 0.1
    done
    if [[ -z $addr ]]; then
        failed "$name" "the server did not start" "$log"
    fi
    wrk -t1 -c25 -d"${secs}s" -s "$tmp/post.lua" "https://$addr/mutate" >"$report" &
    client=$!
    # CPU is sampled inside the run, away from its start and end. Both
    # processes are read from /proc while they run, so one that already
    # exited (wrk could not connect, the server crashed) is reported here
    # with its own output. Each read is its own statement: in `a=$(x)
    # b=$(y)` only the last substitution's failure would stop the script.
    sleep 3
    c0=$(ticks "$server" 2>/dev/null) || failed "$name" "the server exited during its run" "$log"
    t0=$(date +%s.%N)
    w0=$(ticks "$client" 2>/dev/null) || failed "$name" "wrk failed" "$report"
    sleep $((secs - 6))
    c1=$(ticks "$server" 2>/dev/null) || failed "$name" "the server exited during its run" "$log"
    t1=$(date +%s.%N)
    w1=$(ticks "$client" 2>/dev/null) || failed "$name" "wrk failed" "$report"
    wait "$client" || failed "$name" "wrk failed" "$report"
    client=
    kill "$server"
    wait "$server" || true
    server=
    if grep -q "Non-2xx\|Socket errors" "$report"; then
        failed "$name" "wrk saw errors" "$report"
    fi
    rps=$(awk '/Requests\/sec/ {print $2}' "$report")
    awk -v n="$name" -v r="$rps" -v c="$((c1 - c0))" -v w="$((w1 - w0))" \
        -v t0="$t0" -v t1="$t1" -v hz="$hz" 'BEGIN {
        reqs = r * (t1 - t0)
        printf "%-9s %8.0f reviews/s   server %5.1f µs   wrk %5.1f µs per request\n",
            n, r, c / hz * 1e6 / reqs, w / hz * 1e6 / reqs
    }'
}

results=()
for _ in $(seq "$pairs"); do
    run baseline --noop-baseline
    base=$rps
    run zonewise
    results+=("$(awk -v b="$base" -v z="$rps" 'BEGIN { printf "%.2f", z / b }')")
done
echo "zonewise / no-op under wrk, pair by pair: ${results[*]}"
