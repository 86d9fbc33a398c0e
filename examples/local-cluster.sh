#!/bin/sh
# The main job in one command. Builds loom-provisioner and the two plugins it uses,
# makes sure this host has what the `local` provider needs (sshd: each machine is an
# sshd of its own), and brings up examples/local-cluster.json: three machines on this
# host, a store and two web servers that read from it. Then asks each web server.
#
#   examples/local-cluster.sh          bring the cluster up (run again: resumes, or says it is up)
#   examples/local-cluster.sh down     take it down: stop the services, delete the machines
#   examples/local-cluster.sh status   show it
#
# LOOM_BUILD_PROFILE=debug builds faster (default: release).
set -eu
cd "$(dirname "$0")/.."
profile=${LOOM_BUILD_PROFILE:-release}

missing=""
command -v sshd > /dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
command -v ssh-keygen > /dev/null 2>&1 || missing="$missing openssh-client"
command -v python3 > /dev/null 2>&1 || missing="$missing python3"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1; then
    echo "installing$missing (the local provider's machines are sshd processes; the example's services are Python)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
  else
    echo "this example needs:$missing. Install it first, e.g.:" >&2
    echo "  sudo apt-get install$missing      (Debian, Ubuntu)" >&2
    echo "  sudo dnf install$missing          (Fedora, RHEL)" >&2
    exit 1
  fi
fi
if ! command -v cargo > /dev/null 2>&1; then
  echo "cargo is needed to build loom-provisioner: see https://rustup.rs" >&2
  exit 1
fi

if [ "$profile" = release ]; then flag=--release; else flag=; fi
cargo build $flag --quiet -p loom-supervisor -p loom-plugin-local -p loom-plugin-shell
PATH="$PWD/target/$profile:$PATH"
export PATH

case "${1:-up}" in
  up)
    loom-provisioner cluster up examples/local-cluster.json
    echo
    echo "Asking each service now:"
    loom-provisioner cluster status local-demo --json | python3 -c '
import json, sys, urllib.request
for node in json.load(sys.stdin)["nodes"]:
    for e in node["endpoints"]:
        answer = urllib.request.urlopen(e["url"], timeout=5).read().decode().strip()
        print("  %-34s -> %s" % (e["url"], answer))
'
    echo
    echo "Take it down with: examples/local-cluster.sh down"
    ;;
  down) loom-provisioner cluster down local-demo ;;
  status) loom-provisioner cluster status local-demo ;;
  *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac
