#!/usr/bin/env bash
# Rebuilds the committed seed corpus, fuzz/seeds/<target>/, from the repository's own
# examples: protocol/PROTOCOL.md's JSON examples and example session, the real Loom tasks
# (protocol/tests/data/, copies of ../shared/loom/tasks/), examples/, dist/config.toml and
# every plugin manifest, plus a few hand-written inputs (in this script) that reach the
# keys the examples leave out. Run it after those files change; commit the result.
# Needs jq.
set -euo pipefail

fuzz="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$fuzz")"
seeds="$fuzz/seeds"
command -v jq >/dev/null || { echo "make-seeds.sh needs jq (apt-get install jq)" >&2; exit 1; }
rm -rf "$seeds"
mkdir -p "$seeds"/{line_codec,message_decode,task_envelope_scrub,manifest,daemon_config,cluster_spec,http_request}

put() { # put TARGET NAME: stdin becomes the seed
    cat >"$seeds/$1/$2"
}
# line_codec seeds start with two bytes: the line limit (0x80 and up: the 16 MiB default)
# and the seed of the chunk cuts.
codec_seed() { # codec_seed NAME LIMIT CUTSEED: the stream on stdin
    { printf "\\x$(printf %02x "$2")\\x$(printf %02x "$3")"; cat; } >"$seeds/line_codec/$1"
}

# --- PROTOCOL.md ---------------------------------------------------------------------
protocol="$root/protocol/PROTOCOL.md"
# The example session: the lines after "> " and "< ".
session="$(sed -n 's/^[<>] //p' "$protocol")"
# The JSON examples, one per ```json block, each made one line.
blocks="$(awk '/^```json/{f=1;b="";next} /^```/{if(f)print b;f=0;next} f{b=b $0 " "}' "$protocol" | jq -c .)"
n=0
while IFS= read -r line; do
    n=$((n + 1))
    printf '%s' "$line" | put message_decode "protocol-session-$n.json"
done <<<"$session"
block() { sed -n "${1}p" <<<"$blocks"; }
wrap() { # wrap KIND METHOD: the JSON on stdin as params (or result) of a message
    case "$1" in
        request) jq -c --arg m "$2" '{jsonrpc:"2.0",id:1,method:$m,params:.}' ;;
        notification) jq -c --arg m "$2" '{jsonrpc:"2.0",method:$m,params:.}' ;;
        response) jq -c '{jsonrpc:"2.0",id:1,result:.}' ;;
    esac
}
block 1 | wrap request handshake | put message_decode protocol-handshake.json
block 2 | wrap response - | put message_decode protocol-handshake-result.json
block 3 | wrap request task | put message_decode protocol-task.json
block 4 | wrap response - | put message_decode protocol-task-result.json
block 5 | wrap notification log | put message_decode protocol-log.json
block 6 | wrap notification progress | put message_decode protocol-progress.json
block 7 | wrap notification output | put message_decode protocol-output.json
jq -cn '{jsonrpc:"2.0",method:"cancel",params:{taskId:"00000001-001-0002"}}' | put message_decode protocol-cancel.json
jq -cn '{jsonrpc:"2.0",id:"s-1",error:{code:-32602,message:"bad params",data:{field:"taskId"}}}' |
    put message_decode error-with-data.json
# A number that serde_json's default reader did not read back exactly.
printf '%s' '{"jsonrpc":"2.0","method":"progress","params":{"taskId":"t","message":"m","percent":4.444444444444444e+81}}' |
    put message_decode float-read-back.json
block 3 | put task_envelope_scrub protocol-task.json
printf '%s\n' "$session" | codec_seed protocol-session-default 128 1
printf '%s\n' "$session" | codec_seed protocol-session-64 64 2
printf '%s' "$session" | codec_seed protocol-session-16-no-final-newline 16 3
printf 'a\r\n\n\nbcdefgh\nij' | codec_seed short-lines-4 4 0
printf 'exact\nlonger-than-five\nfive!\n' | codec_seed limit-5 5 9
printf 'x\n' | codec_seed limit-0 0 0

# --- the real Loom tasks ----------------------------------------------------------------
for f in "$root"/protocol/tests/data/*.json; do
    name="loom-$(basename "$f")"
    cp "$f" "$seeds/task_envelope_scrub/$name"
    jq -c . "$f" | wrap request task | put message_decode "$name"
    # The task, then a 0xFF byte and what a careless plugin might log: the task's own
    # credential values in a sentence.
    { cat "$f"; printf '\xff'; jq -r '[.. | objects | to_entries[] | select(.key | test("pass|key|secret|token|credential"; "i")) | .value | strings] | "login failed for " + join(" / ") + " (retrying)"' "$f"; } \
        >"$seeds/task_envelope_scrub/$name-with-log"
done
jq -c . "$root"/protocol/tests/data/*.json | codec_seed loom-tasks-default 128 5

# --- examples/tasks ----------------------------------------------------------------------
n=0
while IFS= read -r line; do
    n=$((n + 1))
    printf '%s' "$line" | put task_envelope_scrub "demo-task-$n.json"
    printf '%s' "$line" | wrap request task | put message_decode "demo-task-$n.json"
done <"$root/examples/tasks/demo.jsonl"
codec_seed demo-tasks-100 100 7 <"$root/examples/tasks/demo.jsonl"
# Credentials in every shape the envelope reads: nested, in arrays, under routing fields.
put task_envelope_scrub credentials-everywhere.json <<'EOF'
{"taskId":"t-1","taskName":"CREATE","config":{"provider":{"providertype":"ec2","name":"aws","provisioner":{"api_key":"AKIA-KEY-1","secret_access_key":"s3cr3t/KEY+2"}},"ssh-auth":{"user":"root","password":"hunter2"},"service":{"action":{"type":"shell","script":"x.sh","token":"tok-3"}},"automators":["shell","chef"],"extra":{"tokens":["tok-4","tok-5"],"PassPhrase":"p-6"}}}
EOF
# Credentials where the envelope reads a name (an automator, providertype, action.type).
put task_envelope_scrub credentials-in-names.json <<'EOF'
{"taskId":"t-3","taskName":"BOOTSTRAP","config":{"automators":["shell",{"password":"pw-one"}],"provider":{"providertype":{"api_key":"key-two"},"name":"aws"},"service":{"action":{"type":[{"token":"tok-three"}]}}}}
EOF
printf '{"taskId":"t-2","taskName":"START","config":{"password":"pw-ab"}}\xffpw-ab[redacted]pw-a pw-ab' |
    put task_envelope_scrub overlapping-mask.bin

# --- manifests -----------------------------------------------------------------------------
find "$root/plugins" "$root/examples" "$root/tests/fixtures" -name '*.json' -path '*/*/*' |
    while IFS= read -r f; do
        jq -e 'type == "object" and (to_entries | all(.value | type == "object" and (has("executable") or has("classname"))))' "$f" >/dev/null 2>&1 || continue
        cp "$f" "$seeds/manifest/$(realpath --relative-to="$root" "$f" | tr / -)"
    done
# Every key, with the scratch folder's own executable (see fuzz_targets/manifest.rs).
put manifest every-key.json <<'EOF'
{"every-key": {"executable": "plugin", "args": ["-c", "x"], "env": {"API_TOKEN": "hunter2", "A": "1"}, "instances": 3,
  "maxConcurrency": 8, "timeouts": {"default": 60, "INSTALL": 0.5, "CREATE": 5},
  "handshakeTimeoutSecs": 2, "settings": {"k": "v", "nested": {"password": "pw"}}, "shutdownGraceSecs": 1,
  "cancelGraceSecs": 0.25, "pingIntervalSecs": 0, "pingTimeoutSecs": 3, "queueCapacity": 7, "maxLineBytes": 4096,
  "restart": {"maxRestarts": 2, "withinSecs": 10, "backoffInitialMs": 5, "backoffMaxMs": 50, "coolDownSecs": 1},
  "limits": {"memoryMax": "512M", "pidsMax": 64, "cpuWeight": 50, "openFiles": 256, "coreSize": 0, "memorymax": 1},
  "keepDescendants": false, "queueTimeoutSecs": 30, "retryOnCrash": 2, "description": "all keys", "maxconcurrency": 1},
 "ruby": {"classname": "MyProvider", "maxConcurrency": 2}}
EOF

# --- daemon configuration ------------------------------------------------------------------
cp "$root/dist/config.toml" "$seeds/daemon_config/dist-config.toml"
# Off loopback with the scratch folder's token file (see fuzz_targets/daemon_config.rs).
put daemon_config token-off-loopback.toml <<'EOF'
plugin_dirs = ["plugins", "/opt/plugins"]
listen = "http://0.0.0.0:55056/"
data_dir = "data"
token_file = "token"
max_body_bytes = 1024
retention_hours = 0.5
drain_grace_secs = 3
[log]
format = "json"
level = "warn,loom::plugin=debug"
[defaults]
task_timeout_secs = 60
ping_interval_secs = 0
queue_capacity = 5
[defaults.restart]
max_restarts = 2
backoff_initial_ms = 10
EOF
put daemon_config unix-socket.toml <<'EOF'
plugin_dirs = ["p"]
listen = "unix:run/api.sock"
data_dir = "/var/lib/loom"
EOF

# --- cluster specs -------------------------------------------------------------------------
cp "$root/examples/local-cluster.json" "$seeds/cluster_spec/local-cluster.json"
# The same cluster as TOML, and a Coopr-style one (action fields, a required service).
put cluster_spec local-cluster.toml <<'EOF'
name = "local-demo"
pluginDirs = ["local-cluster/plugins"]
provider = { name = "local", fields = {} }
config = { greeting = "Hello from a Loom cluster", storePort = 18100 }

[[nodeGroups]]
name = "store"
count = 1
hostname = "store-{n}.local-demo"
services = ["store"]

[[nodeGroups]]
name = "web"
count = 2
hostname = "web-{n}.local-demo"
services = ["web"]

[services.store]
endpoint = "http://{ipaddress}:18100/greeting"
[services.store.actions]
install = { type = "shell", script = "store.sh", data = "install" }
start = { type = "shell", script = "store.sh", data = "start" }
stop = { type = "shell", script = "store.sh", data = "stop" }

[services.web]
requires = ["store"]
endpoint = "http://{ipaddress}:{n+18100}/"
[services.web.actions]
install = { type = "shell", script = "web.sh", data = "install" }
start = { type = "shell", script = "web.sh", data = "start {n+18100}" }
remove = { type = "shell", script = "web.sh", data = "remove" }
EOF
put cluster_spec coopr-fields.json <<'EOF'
{"name": "demo", "provider": {"name": "ec2", "fields": {"api_password": "hunter2", "region": "eu-west-1"}},
 "config": {"greeting": "hi"}, "parallel": 4, "attempts": 2,
 "nodeGroups": [{"name": "store", "services": ["store"], "flavor": "small", "image": "debian-12", "config": {"disk": 20}},
                {"name": "web", "count": 2, "hostname": "web-{n}.{cluster}.local", "services": ["web"]}],
 "services": {"store": {"actions": {"install": {"type": "shell", "script": "store.sh", "data": "install"},
                                    "start": {"type": "shell", "script": "store.sh", "data": "start"}}},
              "web": {"requires": ["store"], "endpoint": "http://{ipaddress}:{n+18080}/",
                      "actions": {"start": {"type": "shell", "fields": {"script": "web.sh", "args": "{n+18080}"}},
                                  "stop": {"type": "shell", "fields": {"script": "web.sh", "args": "stop"}}}}}}
EOF

# Keys with a line break and a terminal escape, in a requires cycle.
put cluster_spec odd-keys.json <<'EOF'
{"name": "odd", "provider": {"name": "local"}, "bad\nkey": 1, "nodeGroups": [{"name": "a", "services": ["x\u001b[2J"]}],
 "services": {"x\u001b[2J": {"requires": ["y"], "actions": {"start": {"type": "t", "script": "s"}}},
              "y": {"requires": ["x\u001b[2J"], "actions": {"start": {"type": "t", "script": "s"}}}}}
EOF

# --- HTTP requests (the http_request target's token is fuzz-token-0123456789abcdef) -----
auth='Authorization: Bearer fuzz-token-0123456789abcdef'
request() { # request NAME METHOD PATH [BODY]: one request, with the token
    local body="${4-}"
    printf '%s %s HTTP/1.1\r\nHost: loom\r\n%s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
        "$2" "$3" "$auth" "${#body}" "$body" | put http_request "$1"
}
start_task="$(jq -c . "$root/protocol/tests/data/start-hbase-regionserver.json")"
request submit POST /v1/tasks "$start_task"
request submit-wait POST '/v1/tasks?wait=true' '{"taskId":"t1","taskName":"START","config":{"service":{"action":{"type":"shell"}}}}'
request get-task GET /v1/tasks/00000001-002-071
request get-task-encoded GET /v1/tasks/a%3Ab%40c
request plugins GET /v1/plugins
request restart POST /v1/plugins/shell/restart
request metrics GET /metrics
request cluster-up POST '/v1/clusters?wait=true' "$(jq -c . "$root/examples/local-cluster.json")"
request cluster-get GET '/v1/clusters/local-demo?tasks=true'
request cluster-down DELETE '/v1/clusters/local-demo?force=true'
request cluster-reconfigure POST '/v1/clusters/local-demo/reconfigure?restart=true'
request dup-keys POST /v1/tasks '{"taskId":"a","taskName":"START","taskId":"b"}'
printf 'GET /healthz HTTP/1.1\r\nHost: loom\r\n\r\n' | put http_request healthz
printf 'GET /v1/plugins HTTP/1.1\r\nHost: loom\r\nauthorization: bearer fuzz-token-0123456789abcdef\r\n\r\nGET /healthz HTTP/1.1\r\nHost: loom\r\n\r\n' |
    put http_request pipelined
printf 'POST /v1/tasks HTTP/1.1\r\nHost: loom\r\n%s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"tas\r\n0\r\n\r\n' "$auth" |
    put http_request chunked
printf 'POST /v1/tasks HTTP/1.1\r\nHost: loom\r\n%s\r\nContent-Length: 999999999\r\n\r\n{}' "$auth" | put http_request too-large
printf 'GET /v1/plugins HTTP/1.1\r\nHost: loom\r\nAuthorization: Basic eDp5\r\n\r\n' | put http_request wrong-scheme
# HTTP/1.0 is answered in HTTP/1.0 (the target's first finding was its own check).
printf 'POST /v1/tasks HTTP/1.0\r\nHost: loom\r\nAuthorization: Bearer fuzz-toke\r\n\r\n' | put http_request http-1.0

# A name with DEL quoted in a problem (a hostname clash): the target's second finding.
put cluster_spec del-in-a-group-name.json <<'EOF2'
{"name": "d", "provider": {"name": "local"}, "nodeGroups": [{"name": "w\u007fb", "count": 2, "hostname": "web.local", "services": ["s"]}],
 "services": {"s": {"actions": {"start": {"type": "t", "script": "s"}}}}}
EOF2

for t in "$seeds"/*/; do
    echo "$(basename "$t"): $(find "$t" -type f | wc -l) seeds"
done
