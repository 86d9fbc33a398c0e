#!/bin/sh
# A web server that answers each request with the store's greeting; it needs the store.
# $1 (the action's data): install, configure, "start PORT", stop or remove.
service=web
. "$(dirname "$0")/common.sh"
set -- $1
case "$1" in
  install)
    mkdir -p "$app"
    cp "$here/web_server.py" "$app/"
    echo "installed the web server in $app"
    ;;
  configure)
    # config.nodes has every node of the cluster: find the store.
    store=$(python3 "$here/task.py" --nodes-with store | head -n 1)
    echo "http://$store:$(task config.cluster.storePort)/greeting" > "$app/store_url"
    echo "reads from $(cat "$app/store_url")"
    ;;
  start)
    start_server python3 "$app/web_server.py" "$addr" "$2" "$(cat "$app/store_url")" "$(task config.hostname)"
    wait_http "http://$addr:$2/"
    ;;
  stop) stop_server ;;
  remove) remove_app ;;
  *) echo "web.sh: unknown action $1" >&2; exit 2 ;;
esac
