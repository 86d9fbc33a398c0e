#!/usr/bin/env bash
# Runs README.md's daemon walk-through as written: the blocks marked
# `<!-- walk-through: install -->`, `serve` and `use`, in order, as root, with their `sudo`,
# in a sandbox: a mount namespace in which /etc, /usr/local and /var/lib are copies on
# write (overlays) of this machine's, thrown away at the end. Nothing is installed on the
# machine itself. Then it checks what the commands did through the daemon's API: the
# machine made and deleted, the cluster up and down, the tasks counted, no machine left.
#
#   tests/readme/walkthrough.sh        (root; .ci/run runs it after the tests)
#
# The `cargo build` lines run first, outside the sandbox (the checkout may be under
# /var/lib, and the build's writes belong to the checkout, not to the sandbox).
set -euo pipefail
cd "$(dirname "$0")/../.."
checkout=$PWD
say() { echo "walkthrough: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || { say "needs root (the README's commands use sudo; the sandbox is a mount namespace)"; exit 2; }
for tool in unshare curl python3 sudo useradd; do
  command -v "$tool" >/dev/null || { say "needs $tool"; exit 2; }
done

# The fenced block after the line `<!-- walk-through: NAME -->`, with its `\` line
# continuations joined.
block() {
  awk -v want="<!-- walk-through: $1 -->" '
    $0 == want { found = 1; next }
    found && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }
  ' README.md | sed -e ':a' -e '/\\$/N; s/\\\n//; ta'
}

if [ -z "${LOOM_WALKTHROUGH_SCRATCH:-}" ]; then
  for name in install serve use; do
    [ -n "$(block "$name")" ] || fail "README.md has no block marked <!-- walk-through: $name -->"
  done
  if curl -s -o /dev/null --max-time 5 http://127.0.0.1:55056/healthz; then
    fail "something already answers on 127.0.0.1:55056, the port the README's daemon uses"
  fi
  block install | grep '^cargo ' | while read -r line; do
    say "\$ $line"
    bash -c "$line"
  done
  scratch=$(mktemp -d /var/tmp/loom-walkthrough.XXXXXX)
  trap 'rm -rf "$scratch"' EXIT
  LOOM_WALKTHROUGH_SCRATCH=$scratch unshare --mount --propagation private "$0"
  exit 0
fi

# In the sandbox.
scratch=$LOOM_WALKTHROUGH_SCRATCH
for dir in /etc /usr/local /var/lib; do
  name=$(echo "$dir" | tr / _)
  mkdir -p "$scratch/upper$name" "$scratch/work$name"
  mount -t overlay overlay -o "lowerdir=$dir,upperdir=$scratch/upper$name,workdir=$scratch/work$name" "$dir"
done
log=$scratch/serve.log
serve_pid=
# The sshd processes of the machines `local` made in the sandbox (their folders are in the
# overlay's upper layer; their command lines name them). Other sshd processes on this host
# are not ours to judge or kill.
machines_running() {
  # Every entry: a deleted machine's folder is a whiteout there, and still names it.
  local entry
  for entry in "$scratch"/upper_var_lib/loom-local/*; do
    [ -e "$entry" ] || continue
    pgrep -f "sshd.*/loom-local/$(basename "$entry")/" || true
  done
}
cleanup() {
  if [ -n "$serve_pid" ] && kill -0 "$serve_pid" 2>/dev/null; then
    kill -TERM "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  # Machines a failed run left behind.
  for pid in $(machines_running); do
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

run_lines() { # run_lines NAME: each command of the block, echoed, in one shell
  local script
  script=$(block "$1")
  say "running the README's '$1' block"
  (cd "$checkout" && bash -euo pipefail -x -c "$script") || fail "the README's '$1' block failed (above)"
}

# install: everything but the build, which ran outside.
script=$(block install | grep -v '^cargo ')
(cd "$checkout" && bash -euo pipefail -x -c "$script") || fail "the README's 'install' block failed (above)"

# serve: the lines before the last, then the last (the daemon, in the foreground in the
# README) in the background, until /healthz answers.
serve=$(block serve)
(cd "$checkout" && bash -euo pipefail -x -c "$(echo "$serve" | sed '$d')") || fail "the README's 'serve' block failed"
last=$(echo "$serve" | tail -n 1)
say "\$ $last &"
(cd "$checkout" && exec bash -c "exec $last") >"$log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 240); do
  curl -sf -o /dev/null --max-time 5 http://127.0.0.1:55056/healthz && break
  kill -0 "$serve_pid" 2>/dev/null || { cat "$log" >&2; fail "serve exited"; }
  sleep 0.5
done
curl -sf -o /dev/null --max-time 5 http://127.0.0.1:55056/healthz || { cat "$log" >&2; fail "serve did not answer /healthz"; }

# use: the README's requests, as written.
run_lines use

# What they did, asked of the daemon.
api() { curl -sf --max-time 30 "http://127.0.0.1:55056$1"; }
check() { # check WHAT PYTHON-EXPRESSION-ON-v JSON
  python3 -c 'import json, sys
v = json.loads(sys.argv[3])
sys.exit(0 if eval(sys.argv[2]) else 1)' "$1" "$2" "$3" || { cat "$log" >&2; fail "$1: $3"; }
}
check "t1 (CREATE) succeeded" 'v["state"] == "done" and v["result"]["status"] == 0' "$(api /v1/tasks/t1)"
check "t2 (DELETE) succeeded" 'v["state"] == "done" and v["result"]["status"] == 0' "$(api /v1/tasks/t2)"
check "the cluster came up and went" 'v["state"] == "terminated" and not v["busy"]' "$(api /v1/clusters/local-demo)"
metrics=$(api /metrics)
grep -q '^loom_cluster_operations_total{operation="up",outcome="success"} 1$' <<<"$metrics" || fail "cluster up not counted: $metrics"
grep -q '^loom_cluster_operations_total{operation="down",outcome="success"} 1$' <<<"$metrics" || fail "cluster down not counted: $metrics"
grep -q '^loom_tasks_total{plugin="shell",task="START",outcome="success"} 3$' <<<"$metrics" || fail "the cluster's tasks not counted: $metrics"

kill -TERM "$serve_pid"
wait "$serve_pid" || { cat "$log" >&2; fail "serve did not stop cleanly on SIGTERM"; }
serve_pid=
ls "$scratch"/upper_var_lib/loom-local/ >/dev/null 2>&1 || fail "no machine folders under /var/lib/loom-local: did local run?"
left=$(machines_running)
[ -z "$left" ] || fail "machines left running (sshd pids $(echo $left))"
say "ok: README's install, serve and use blocks ran as written"
