#!/bin/sh
# Two daemons on one PostgreSQL, on this host: a throwaway PostgreSQL server (in a
# temporary folder, on a Unix socket), two `loom-provisioner serve` on the example's
# plugins, `cluster up` of examples/local-cluster.json through the first, which is then
# killed with SIGKILL halfway; the second takes the cluster over once the first one's
# lease has run out, finishes it, and takes it down. Everything is stopped at the end.
#
#   examples/fleet.sh
#
# Needs what examples/local-cluster.sh needs (run it once first: it installs it and
# builds the binaries), and PostgreSQL's server binaries (Debian: apt-get install
# postgresql; they are in /usr/lib/postgresql/*/bin). Run as root (the example's plugins
# run as root); the PostgreSQL server runs as `nobody`.
set -eu
cd "$(dirname "$0")/.."
profile=${LOOM_BUILD_PROFILE:-release}
if [ "$profile" = release ]; then flag=--release; else flag=; fi
cargo build $flag --quiet -p loom-supervisor -p loom-plugin-local -p loom-plugin-shell
PATH="$PWD/target/$profile:$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1):$PATH"
export PATH
command -v initdb > /dev/null || { echo "PostgreSQL's initdb is needed: apt-get install postgresql" >&2; exit 1; }

work=$(mktemp -d /tmp/loom-fleet.XXXXXX)
chmod 0755 "$work"
mkdir -m 0755 "$work/pg" && chown nobody "$work/pg"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "$@"; else "$@"; fi; }
pids=""
cleanup() {
  for p in $pids; do kill "$p" 2> /dev/null || true; done
  wait 2> /dev/null || true
  as_pg pg_ctl -D "$work/pg/data" -m fast -w stop > /dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== a PostgreSQL server on $work/pg (a Unix socket, no TCP)"
as_pg initdb -A trust -U loom -D "$work/pg/data" > /dev/null
as_pg pg_ctl -D "$work/pg/data" -o "-k $work/pg -c listen_addresses=''" -l "$work/pg/log" -w start > /dev/null
url="postgresql:///postgres?host=$work/pg&user=loom"

for n in 1 2; do
  mkdir -m 0700 "$work/d$n"
  cat > "$work/d$n/config.toml" << EOF
plugin_dirs = ["$PWD/examples/local-cluster/plugins"]
listen = "127.0.0.1:5506$n"
data_dir = "$work/d$n/data"

[journal]
url = "$url"
name = "d$n"
EOF
  loom-provisioner serve --config "$work/d$n/config.toml" 2> "$work/d$n/log" &
  pids="$pids $!"
  eval "pid$n=$!"
done
api1=http://127.0.0.1:55061 api2=http://127.0.0.1:55062
for api in $api1 $api2; do
  until curl -sf "$api/healthz" > /dev/null; do sleep 0.2; done
done
echo "== two daemons, one fleet:"
curl -s $api2/v1/plugins | python3 -c 'import json,sys; [print("  ", d["name"], "pid", d["pid"], "alive" if d["alive"] else "dead") for d in json.load(sys.stdin)["daemons"]]'

echo "== cluster up through d1"
curl -s -X POST $api1/v1/clusters -H "Content-Type: application/json" --data-binary @examples/local-cluster.json; echo
bootstrapping='import json,sys; t=json.load(sys.stdin).get("tasks") or []; sys.exit(0 if any(x["taskName"]=="BOOTSTRAP" for x in t) else 1)'
until curl -s "$api2/v1/clusters/local-demo?tasks=true" | python3 -c "$bootstrapping"; do sleep 0.1; done
echo "== kill -9 d1 halfway (the machines are made, the services not yet);"
echo "   d2 takes over once d1's lease (12 s) has run out"
kill -9 "$pid1"
curl -s $api2/v1/clusters/local-demo | python3 -c 'import json,sys; print("   state:", json.load(sys.stdin)["state"])'
start=$(date +%s)
until [ "$(curl -s $api2/v1/clusters/local-demo | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')" = active ]; do
  sleep 1
done
echo "   active after $(( $(date +%s) - start )) s, finished by d2:"
grep -h "resuming up" "$work/d2/log" | tail -n 1 | sed 's/^/   /'

echo "== down through d2"
curl -s -X DELETE "$api2/v1/clusters/local-demo?wait=true" | python3 -c 'import json,sys; print("   state:", json.load(sys.stdin)["cluster"]["state"])'
