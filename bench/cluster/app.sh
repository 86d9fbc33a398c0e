#!/bin/sh
# The work of the cluster benchmark, the same under Loom's shell automator and under
# ansible-playbook: `app.sh install|configure|start NODE ROOT`. It installs a small
# "application" into ROOT/NODE, writes its configuration, and starts it (a process that
# serves nothing and exits after ten minutes, or when the machine is deleted).
set -eu
action=$1 node=$2 root=$3
app="$root/$node"
case $action in
  install)
    mkdir -p "$app/bin" "$app/etc" "$app/log"
    cp /bin/sleep "$app/bin/app"
    sha256sum "$app/bin/app" > "$app/bin/app.sha256"
    ;;
  configure)
    printf 'node=%s\nport=%s\nworkers=4\n' "$node" "$((18000 + ${node##*-}))" > "$app/etc/app.conf"
    grep -q "^node=$node$" "$app/etc/app.conf"
    ;;
  start)
    sha256sum -c --quiet "$app/bin/app.sha256"
    nohup "$app/bin/app" 600 < /dev/null > "$app/log/app.log" 2>&1 &
    echo $! > "$app/app.pid"
    kill -0 "$(cat "$app/app.pid")"
    ;;
  *)
    echo "usage: app.sh install|configure|start NODE ROOT" >&2
    exit 64
    ;;
esac
