# Sourced by the example's service scripts, which the shell automator runs on each
# machine with the whole task in $LOOM_TASK_JSON. Sets: $here (this folder), $node,
# $cluster, $addr (the machine's address), $app (the service's folder on the machine).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
task() { python3 "$here/task.py" "$@"; }
node=$(task nodeId)
cluster=$(task clusterId)
addr=$(task config.ipaddress)
# Machines of the local provider share this host's files: one folder per node.
app="$here/../apps/$cluster/$node/$service"

# start_server CMD...: runs CMD in the background, logging to $app/server.log.
start_server() {
  stop_server
  nohup "$@" < /dev/null > "$app/server.log" 2>&1 &
  echo $! > "$app/server.pid"
}

# running PID: whether PID is alive (a zombie, waiting for its parent to reap it, is not).
running() {
  [ -r "/proc/$1/stat" ] && ! sed 's/.*) //' "/proc/$1/stat" | grep -q '^Z'
}

# stop_server: stops what start_server started, if it runs.
stop_server() {
  [ -f "$app/server.pid" ] || return 0
  pid=$(cat "$app/server.pid")
  if kill "$pid" 2>/dev/null; then
    i=0
    while running "$pid" && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    echo "stopped pid $pid"
  fi
  rm -f "$app/server.pid"
}

# wait_http URL: waits (10 s at most) until URL answers 200; else shows the log, fails.
wait_http() {
  if ! python3 "$here/task.py" --wait-http "$1"; then
    echo "$1 does not answer; the server's log:" >&2
    cat "$app/server.log" >&2
    exit 1
  fi
  echo "answering at $1"
}

# remove_app: deletes the service's folder, and the node's and cluster's when empty.
remove_app() {
  stop_server
  rm -rf "$app"
  rmdir "$(dirname "$app")" "$(dirname "$(dirname "$app")")" 2>/dev/null || true
  echo "removed $app"
}
