#!/bin/sh
# The store: serves one file, /greeting, over HTTP on config.cluster.storePort.
# $1 (the action's data): install, configure, start, stop or remove.
service=store
. "$(dirname "$0")/common.sh"
port=$(task config.cluster.storePort)
case "$1" in
  install)
    mkdir -p "$app/www"
    echo "installed the store in $app"
    ;;
  configure)
    task config.cluster.greeting > "$app/www/greeting"
    echo "greeting: $(cat "$app/www/greeting")"
    ;;
  start)
    start_server python3 -m http.server "$port" --bind "$addr" --directory "$app/www"
    wait_http "http://$addr:$port/greeting"
    ;;
  stop) stop_server ;;
  remove) remove_app ;;
  *) echo "store.sh: unknown action $1" >&2; exit 2 ;;
esac
