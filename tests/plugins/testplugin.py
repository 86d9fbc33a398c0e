#!/usr/bin/env python3
"""A plugin for the end-to-end tests: well-behaved by default, misbehaving on request.

Registered under several names; it answers as whatever LOOM_PLUGIN_NAME says.

At start (environment, from the manifest's "env"):
  TESTPLUGIN_PIDFILE=path        append "<pid>\n" to path
  TESTPLUGIN_EXIT_AT_START=code  exit at once with that code
  TESTPLUGIN_CRASH_STARTS=n      exit 1 at the first n starts (needs TESTPLUGIN_PIDFILE)
  TESTPLUGIN_RUNLOG=path         append "<taskId> <name> <pid>" to path for every task started

At the handshake (the manifest's "settings"):
  "handshake": "never" | "error" | "exit" | "version2"
                                             do not answer / answer an error / exit 3 /
                                             choose protocol version 2
  "ignorePing": true                         never answer pings
  "pingFile": path                           append "<pid>\n" to path for every ping read
  "handshakeDelayMs": n                      answer the handshake after n ms
  "idempotentTasks": [...]                   declared in the handshake
  "ignoreSigterm": true                      ignore SIGTERM
  "ignoreEof": true                          keep running after stdin closes
  "grandchild": true                         start `sleep 600` holding our stdout/stderr

Per task (config.test, and config.test.byPlugin[<name>] on top of it):
  "action": "ok" (default) | "crash" | "crash-once" | "hang" | "hang-once" | "junk" | "longline" | "log" | "secret"
            | "sleep" | "env" | "leak" | "leak-error" | "whoami" | "wait-file" | "close-stdin"
            | "stop-reading" | "family" | "forkbomb" | "hog"
  "path": for "wait-file": answer as "ok" once that file exists
  "marker": a file path, for "hang-once" and "crash-once": hang (crash) if it does not
            exist (creating it), answer as "ok" after that
  "status", "stdout", "stderr", "result": what "ok" answers
  "code": exit code for "crash"; "bytes": length for "longline"; "ms": for "sleep"
  "honorCancel": for "hang", answer when cancelled (status 2; with "sayCancelled": true,
                 also "cancelled": true, as PROTOCOL.md 4.5 asks)
  "statusByTask": {"INSTALL": 3, ...}: the status "ok" answers for those task names

Escapes and runaways: "family" starts two descendants that leave the plugin's process
group, a grandchild in a session of its own (`setsid`, holding our stdout and stderr) and a
daemon (a double fork, stdio on /dev/null, also `setsid`), each running `sleep 600`, and
answers {"descendants": [pid, pid]}; with "thenCrash": true it writes "cgroup: PATH" (its
cgroup v2) and "descendants: PID PID" on stderr and exits 3 instead. "forkbomb" forks until fork fails or "budget" (40) children
are made, each child forking 2 of its own, all sleeping; it answers {"forked": n, "refused":
true when fork failed with EAGAIN}. "hog" allocates (and touches) memory 8 MiB at a time up
to "capMiB" (512) and answers {"allocatedMiB": n} if nothing stopped it.

"leak" echoes every planted value of the task (each string containing "SECRET-" and each
integer of 13 digits or more, anywhere in it) through every channel a plugin has: log
notifications (message, fields, taskId), progress, output split in two chunks in the
middle of each value, stderr, a stray stdout line, a request and an unknown notification
named after it, a notification with bad params, answers to unknown ids (one 1 MB long),
output for a task that is not running, and its answer (stdout, stderr, hostname, an extra
member). "leak-error" does the same and answers with a JSON-RPC error quoting them.

"close-stdin" and "stop-reading" run on the thread that reads stdin, which reads no more:
"close-stdin" closes stdin (the supervisor's next write fails with EPIPE), answers as "ok"
and waits to be killed; "stop-reading" answers as "ok", then exits 3 as soon as anything
more arrives in stdin, leaving it unread.

Floods and odd input: "stderrLines": n and "unknownAnswers": n flood before any action: n
lines on stderr ("flood line N on stderr"), then n answers to ids the supervisor never used.
Action "fd3-longline" writes a line of "bytes" bytes on the log channel (fd 3), then a log
notification "after the long line" there, then answers. Action "bad-utf8" answers with a
byte that is not UTF-8 inside a string of its result.
"""

import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time

NAME = os.environ.get("LOOM_PLUGIN_NAME", "testplugin")
PID = os.getpid()

if os.environ.get("TESTPLUGIN_PIDFILE"):
    with open(os.environ["TESTPLUGIN_PIDFILE"], "a") as f:
        f.write("%d\n" % PID)
if os.environ.get("TESTPLUGIN_CRASH_STARTS"):
    # Crash at start this many times (counted in the pid file), then behave.
    with open(os.environ["TESTPLUGIN_PIDFILE"]) as f:
        if len(f.readlines()) <= int(os.environ["TESTPLUGIN_CRASH_STARTS"]):
            sys.stderr.write("testplugin %s: crashing at start\n" % NAME)
            sys.exit(1)
if os.environ.get("TESTPLUGIN_EXIT_AT_START"):
    sys.stderr.write("testplugin %s: exiting at start as asked\n" % NAME)
    sys.exit(int(os.environ["TESTPLUGIN_EXIT_AT_START"]))

out = sys.stdout
lock = threading.Lock()
cancels = {}
settings = {}
inflight = [0]
# Request ids of the tasks running, each counted in inflight until its answer is written.
running = set()


def send(msg):
    with lock:
        # A task stops counting before its answer goes out: the supervisor may send the next
        # task the moment it reads this answer.
        rid = msg.get("id")
        if rid in running and ("result" in msg or "error" in msg):
            running.discard(rid)
            inflight[0] -= 1
        out.write(json.dumps(msg) + "\n")
        out.flush()


def raw(text):
    with lock:
        out.write(text + "\n")
        out.flush()


def notify(method, params):
    send({"jsonrpc": "2.0", "method": method, "params": params})


def handshake(rid, params):
    global settings
    settings = params.get("settings") or {}
    mode = settings.get("handshake", "answer")
    if settings.get("ignoreSigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if settings.get("grandchild"):
        subprocess.Popen(["sleep", "600"])  # inherits our stdout and stderr
    if mode == "never":
        return
    if mode == "exit":
        sys.stderr.write("testplugin: exiting during the handshake\n")
        sys.stderr.flush()
        os._exit(3)
    if mode == "version2":
        return send({"jsonrpc": "2.0", "id": rid, "result": {"protocolVersion": 2, "name": "testplugin", "version": "0",
                                                              "tasks": ["INSTALL"]}})
    if mode == "error":
        return send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32603, "message": "setup failed: bad settings"}})
    if settings.get("handshakeDelayMs"):
        time.sleep(int(settings["handshakeDelayMs"]) / 1000.0)
    tasks = ["CREATE", "CONFIRM", "DELETE"] if params.get("kind") == "provider" else \
        ["BOOTSTRAP", "INSTALL", "CONFIGURE", "INITIALIZE", "START", "STOP", "REMOVE"]
    send({"jsonrpc": "2.0", "id": rid, "result": {"protocolVersion": 1, "name": "testplugin", "version": "0",
                                                   "tasks": tasks, "maxConcurrency": int(settings.get("maxConcurrency", 8)),
                                                   "idempotentTasks": settings.get("idempotentTasks", [])}})


def run_task(rid, task):
    with lock:
        inflight[0] += 1
        running.add(rid)
        seen = inflight[0]
    try:
        _run_task(rid, task, seen)
    finally:
        with lock:
            if rid in running:
                running.discard(rid)
                inflight[0] -= 1


def test_spec(task):
    """The task's config.test, with config.test.byPlugin[NAME] on top."""
    spec = dict((task.get("config") or {}).get("test") or {})
    spec.update((spec.pop("byPlugin", None) or {}).get(NAME, {}))
    return spec


def stop_reading(rid, task, action):
    """"close-stdin" and "stop-reading", on the thread that reads stdin (see the header)."""
    if action == "close-stdin":
        os.close(0)
    run_task(rid, task)
    if action == "close-stdin":
        while True:
            time.sleep(3600)
    select.select([0], [], [])
    sys.stderr.write("testplugin %s: something came on stdin; exiting without reading it\n" % NAME)
    sys.stderr.flush()
    os._exit(3)


def _run_task(rid, task, seen):
    if os.environ.get("TESTPLUGIN_RUNLOG"):
        with lock, open(os.environ["TESTPLUGIN_RUNLOG"], "a") as f:
            f.write("%s %s %d\n" % (task["taskId"], NAME, PID))
    config = task.get("config") or {}
    spec = test_spec(task)
    action = spec.get("action", "ok")
    task_id = task["taskId"]
    flood(spec)
    if action == "crash":
        sys.stderr.write("testplugin pid=%d: about to crash: boom\n" % PID)
        sys.stderr.flush()
        os._exit(int(spec.get("code", 3)))
    if action == "wait-file":
        while not os.path.exists(spec["path"]):
            time.sleep(0.02)
    if action == "crash-once":
        marker = spec["marker"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            sys.stderr.write("testplugin %s: crashing once as asked\n" % NAME)
            sys.stderr.flush()
            os._exit(int(spec.get("code", 3)))
    if action == "hang-once":
        # Hangs the first time (when the marker file is missing), answers after that.
        marker = spec["marker"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            while True:
                time.sleep(3600)
    if action == "hang":
        event = cancels.setdefault(task_id, threading.Event())
        if spec.get("honorCancel"):
            event.wait()
            answer = {"status": 2, "stderr": "cancelled as asked\n"}
            if spec.get("sayCancelled"):
                answer["cancelled"] = True
            return send({"jsonrpc": "2.0", "id": rid, "result": answer})
        while True:
            time.sleep(3600)
    if action == "junk":
        raw("this is not json, just a stray debug print")
    if action == "longline":
        raw("x" * int(spec.get("bytes", 100000)))
    if action == "fd3-longline":
        os.write(3, b"x" * int(spec.get("bytes", 100000)) + b"\n")
        after = {"jsonrpc": "2.0", "method": "log",
                 "params": {"level": "info", "message": "after the long line", "taskId": task_id}}
        os.write(3, (json.dumps(after) + "\n").encode())
    if action == "bad-utf8":
        with lock:
            out.flush()
            out.buffer.write(b'{"jsonrpc": "2.0", "id": %d, "result": {"status": 0, "stdout": "bad \xff byte"}}\n' % rid)
            out.buffer.flush()
        return
    if action == "sleep":
        time.sleep(int(spec.get("ms", 100)) / 1000.0)
    if action == "log":
        for level in ["debug", "info", "warn", "error"]:
            notify("log", {"level": level, "message": "%s says %s" % (NAME, level), "taskId": task_id,
                           "fields": {"level_seen": level}})
        notify("progress", {"taskId": task_id, "message": "halfway", "percent": 50})
        sys.stderr.write("testplugin %s: a line on stderr\n" % NAME)
        sys.stderr.flush()
    if action == "secret":
        password = (config.get("ssh-auth") or {}).get("password", "")
        notify("log", {"level": "info", "message": "logging in with " + password, "taskId": task_id})
        sys.stderr.write("stderr has the password " + password + "\n")
        sys.stderr.flush()
        raw("junk with the password " + password)
        notify("output", {"taskId": task_id, "stream": "stdout", "data": "output with " + password + "\n"})
    if action == "env":
        spec.setdefault("result", {})["env"] = dict(os.environ)
    if action == "whoami":
        with open("/proc/self/status") as f:
            proc = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        spec.setdefault("result", {})["whoami"] = {
            "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
            "groups": os.getgroups(), "noNewPrivs": proc.get("NoNewPrivs"),
            "home": os.environ.get("HOME"), "user": os.environ.get("USER"), "cwd": os.getcwd(),
            "openFiles": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
            "coreSize": list(resource.getrlimit(resource.RLIMIT_CORE)),
            "cgroup": open("/proc/self/cgroup").read()}
    if action == "family":
        pids = family()
        if spec.get("thenCrash"):
            with open("/proc/self/cgroup") as f:
                v2 = [line[3:].strip() for line in f if line.startswith("0::")]
            sys.stderr.write("cgroup: %s\n" % (v2[0] if v2 else ""))
            sys.stderr.write("descendants: %d %d\n" % tuple(pids))
            sys.stderr.flush()
            os._exit(3)
        spec.setdefault("result", {})["descendants"] = pids
    if action == "forkbomb":
        forked, refused = forkbomb(int(spec.get("budget", 40)))
        spec.setdefault("result", {}).update({"forked": forked, "refused": refused})
    if action == "hog":
        hog = []
        for _ in range(int(spec.get("capMiB", 512)) // 8):
            hog.append(b"x" * (8 << 20))  # filled, so every page is touched
        spec.setdefault("result", {})["allocatedMiB"] = 8 * len(hog)
    status = spec.get("status", 0)
    status = (spec.get("statusByTask") or {}).get(task["taskName"], status)
    extra = {}
    if action in ("leak", "leak-error"):
        everything = leak(task_id, planted(task, []))
        if action == "leak-error":
            return send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32000, "message": "failed with " + everything}})
        spec["stdout"] = "answer stdout " + everything + "\n"
        spec["stderr"] = "answer stderr " + everything + "\n"
        extra = {"hostname": "host-" + everything, "note": "extra member " + everything}
    result = {
        "status": status,
        "result": dict({"handledBy": NAME, "taskName": task["taskName"], "pid": PID, "inflight": seen},
                       **(spec.get("result") or {})),
        "stdout": spec.get("stdout", ""),
        "stderr": spec.get("stderr", ""),
    }
    result.update(extra)
    send({"jsonrpc": "2.0", "id": rid, "result": result})


def family():
    """Starts a setsid grandchild and a double-forked daemon; returns their pids."""
    grandchild = subprocess.Popen(["sleep", "600"], start_new_session=True)  # inherits stdout and stderr
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            daemon = os.fork()
            if daemon == 0:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.execvp("sleep", ["sleep", "600"])
            os.write(write_end, str(daemon).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    daemon = int(os.read(read_end, 32) or b"0")
    os.close(read_end)
    os.waitpid(child, 0)
    return [grandchild.pid, daemon]


def forkbomb(budget):
    """Forks until fork fails or budget children are made; each child forks 2 more. All
    sleep. Bounded, so that a machine without a pids limit survives the test."""
    forked = 0
    for _ in range(budget):
        try:
            pid = os.fork()
        except BlockingIOError:
            return forked, True
        if pid == 0:
            for _ in range(2):
                try:
                    if os.fork() == 0:
                        break
                except OSError:
                    break
            while True:
                time.sleep(3600)
        forked += 1
    return forked, False


def flood(spec):
    """Floods stderr and stdout with mistakes, one write each: as fast as the pipes take it."""
    if spec.get("stderrLines"):
        sys.stderr.write("".join("flood line %d on stderr\n" % i for i in range(int(spec["stderrLines"]))))
        sys.stderr.flush()
    if spec.get("unknownAnswers"):
        raw("\n".join(json.dumps({"jsonrpc": "2.0", "id": 10 ** 12 + i, "result": {"status": 0}})
                       for i in range(int(spec["unknownAnswers"]))))


def planted(value, found):
    """Every string containing "SECRET-" and every integer of 13+ digits in value."""
    if isinstance(value, dict):
        for v in value.values():
            planted(v, found)
    elif isinstance(value, list):
        for v in value:
            planted(v, found)
    elif isinstance(value, str) and "SECRET-" in value:
        found.append(value)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 12:
        found.append(str(value))
    return sorted(set(found))


def leak(task_id, secrets):
    """Says every value in secrets through every channel but the answer; returns them
    joined, for the answer."""
    everything = " ".join(secrets)
    notify("log", {"level": "info", "message": "leaking " + everything, "taskId": task_id,
                   "fields": {"all": secrets, "first": secrets[0] if secrets else ""}})
    notify("progress", {"taskId": task_id, "message": "progress " + everything, "percent": 50})
    for s in secrets:
        half = len(s) // 2
        for stream in ("stdout", "stderr"):
            notify("output", {"taskId": task_id, "stream": stream, "data": "chunk " + s[:half]})
            notify("output", {"taskId": task_id, "stream": stream, "data": s[half:] + " end\n"})
        notify("log", {"level": "warn", "message": "about another task", "taskId": s})
        notify("progress", {"taskId": s, "message": "elsewhere"})
        notify("output", {"taskId": s, "stream": "stdout", "data": "for no running task " + s + "\n"})
        sys.stderr.write("stderr line " + s + "\n")
        raw("junk line " + s)
        send({"jsonrpc": "2.0", "id": "req-" + s, "method": s, "params": {}})
        send({"jsonrpc": "2.0", "method": s, "params": {"x": s}})
        send({"jsonrpc": "2.0", "method": "log", "params": {"level": s}})
        send({"jsonrpc": "2.0", "id": s, "result": {"status": 0, "stdout": s}})
    send({"jsonrpc": "2.0", "id": "x" * (1 << 20) + everything, "result": {"status": 0}})
    sys.stderr.flush()
    return everything


def main():
    for line in sys.stdin:
        msg = json.loads(line)
        method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
        if rid is None:
            if method == "cancel":
                cancels.setdefault(params.get("taskId"), threading.Event()).set()
            continue
        if method == "ping" and settings.get("pingFile"):
            with open(settings["pingFile"], "a") as f:
                f.write("%d\n" % PID)
        if method == "handshake":
            handshake(rid, params)
        elif method == "task" and test_spec(params).get("action") in ("close-stdin", "stop-reading"):
            stop_reading(rid, params, test_spec(params)["action"])
        elif method == "task":
            threading.Thread(target=run_task, args=(rid, params), daemon=True).start()
        elif method == "ping" and settings.get("ignorePing"):
            continue
        elif method in ("ping", "shutdown"):
            send({"jsonrpc": "2.0", "id": rid, "result": {}})
        else:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "unknown"}})
    if settings.get("ignoreEof"):
        while True:
            time.sleep(3600)


main()
