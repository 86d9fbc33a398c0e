#!/usr/bin/env python3
"""base.py: one plugin that follows every rule of PROTOCOL.md, and the catalogue of
broken plugins `check` must fail: `LOOM_BREAK=<rule id>` (in the manifest's `env`) breaks
exactly that rule and nothing else (tests/tests/conformance.rs).

Either kind: the handshake's `kind` decides. It runs nothing: a provider keeps its
machines, and an automator the nodes it bootstrapped, in a state file under $TMPDIR (the
tests give each case a folder of its own), locked, so that every process of a `check` run
sees them. Each task runs on a thread of its own (not a daemon thread: at end of input the
tasks in hand are cancelled and answered before the process exits), so `ping`, `shutdown`
and `cancel` are read and answered while tasks run. `log` and `progress` go on fd 3 when
LOOM_LOG_FD is 3 and fd 3 is a writable pipe; answers and `output` stay on stdout. Under
LOOM_CHECK=1 it honours the wait task of the check protocol (PROTOCOL.md section 10).
Standard library only.
"""

import fcntl
import json
import os
import secrets
import stat
import sys
import tempfile
import threading

# The catalogue: rule id -> how the plugin breaks it, and what sees it. Each break is a
# few lines beside the code it changes (search for its id). The test reads this table:
# every rule of `check --list-rules` needs an entry.
BREAKS = {
    "P-1-eof-exit": "at end of input before any handshake, keeps running (only the EOF probe on a fresh process without a handshake closes stdin there)",
    "P-1-eof-answers": "at end of input, exits at once, dropping the tasks in flight",
    "P-1-eof-exit-zero": "exits with code 3 at end of input, after answering",
    "P-1-fd3-stdout": "sends an output notification on fd 3 at the start of each wait task (its other output stays on stdout)",
    "P-2-one-line": "writes two log notifications of each task on one stdout line",
    "P-2-utf8": "writes a log notification with a Latin-1 byte (not UTF-8) on stdout for each task",
    "P-2-no-batches": "writes the log notifications of each task on stdout as one JSON array",
    "P-2-line-limit": "writes a 16 MiB + 1 KiB log line on stdout before answering an unknown method (the supervisor ends the process there: the unknown-method probe sees no answer)",
    "P-2-stdout-messages": "prints 'debug: task started' on stdout for each task",
    "P-3-id-copied": "answers an unknown method with the id as a string (only the unknown-method probe sends one)",
    "P-3-answer-once": "answers every ping twice",
    "P-3-no-requests": "sends a request right after the handshake (and ignores its answer)",
    "P-3-unknown-notification": "exits on a notification it does not know",
    "P-3-unknown-members": "refuses (-32602) a handshake whose params hold members it does not know",
    "P-3-unknown-method": "answers unknown methods with the result {}",
    "P-3-parse-error": "exits on a line that is not JSON",
    "P-4.1-handshake": "omits `version` from the handshake result (every handshake fails: later probes cannot run)",
    "P-4.1-tasks-kind": "declares a task of the other kind too (and still refuses it with -32002; every handshake fails)",
    "P-4.1-version-choice": "answers the highest version offered when 1 is among them (2 for [1, 2])",
    "P-4.1-version-none": "answers version 1 whatever is offered (1 for [2])",
    "P-4.1-before-handshake": "runs a task that arrives before the handshake",
    "P-4.1-concurrency": "declares maxConcurrency 4 but runs one task at a time (a lock)",
    "P-4.1-idempotent": "a second run of a task listed in idempotentTasks with the same taskId fails",
    "P-4.2-undeclared-task": "answers status 0 to task names it does not handle",
    "P-4.2-undeclared-code": "answers status 1 (a result, not error -32002) to task names it does not handle",
    "P-4.2-invalid-params": "answers -32603 (not -32602) to task params it cannot read",
    "P-4.2-status-integer": "answers CONFIRM (provider) or START (automator) with the status as a string",
    "P-4.2-result-members": "answers CONFIRM (provider) or START (automator) with `stdout` as a list",
    "P-4.2-answer-limits": "answers CONFIRM (provider) or START (automator) with a result of 100,001 values",
    "P-4.2-credentials-private": "logs config.ssh-auth.password in each task's log notification",
    "P-4.2-credentials-in-result": "puts a copy of its own generated ssh-auth beside `result` in each successful answer",
    "P-4.2-delete-unknown": "DELETE of a machine it does not know: status 1",
    "P-4.2-bootstrap-twice": "a BOOTSTRAP of a node already bootstrapped (in this run's state file): status 1",
    "P-4.2-coopr-action": "reads only Loom's action.script, not Coopr's action.fields.script",
    "P-4.3-ping": "answers ping with the result \"pong\" (answered, so liveness pings still see an answer; not an object)",
    "P-4.3-ping-busy": "answers a ping only once no task is in flight",
    "P-4.4-shutdown": "answers shutdown with the result \"bye\" (answered at once, not an object)",
    "P-4.4-refuse-after-shutdown": "runs tasks that arrive after shutdown",
    "P-4.4-shutdown-in-flight": "answers shutdown only once no task is in flight",
    "P-4.5-cancel-running": "ignores cancel (end of input still cancels what runs)",
    "P-4.5-cancelled-answer": "answers a cancelled task with status 0 and no `cancelled` member",
    "P-4.5-cancel-unknown": "exits on a cancel for a task it does not know",
    "P-5-notifications": "sends each task's log notification with level \"loud\"",
    "P-5.3-output-running": "sends an output notification for each task after answering it",
}
# Not a rule: answers the handshake, then nothing at all (and ignores end of input), for
# the test that `check` reaches every verdict quickly.
HANG_ALL = "hang-all"

BREAK = os.environ.get("LOOM_BREAK", "")
if BREAK and BREAK not in BREAKS and BREAK != HANG_ALL:
    sys.stderr.write("base.py: unknown LOOM_BREAK %r\n" % BREAK)
    sys.exit(2)


def broken(rule):
    """Whether this run breaks `rule` (which must be in BREAKS: a typo fails loudly)."""
    assert rule in BREAKS, rule
    return BREAK == rule


KIND_TASKS = {"provider": ["CREATE", "CONFIRM", "DELETE"],
              "automator": ["BOOTSTRAP", "INSTALL", "CONFIGURE", "INITIALIZE", "START", "STOP", "REMOVE"]}
# A provider's CREATE is keyed by its taskId (a re-run returns the same machine); an
# automator's CONFIGURE changes nothing twice. Neither is a task another rule's probe
# repeats, so P-4.1-idempotent's break shows on its own probe only.
IDEMPOTENT = {"provider": ["CREATE"], "automator": ["CONFIGURE"]}
# The task whose answer the answer-shape breaks spoil: one no other rule's probe judges.
SHAPE_TASK = {"provider": "CONFIRM", "automator": "START"}
HANDSHAKE_MEMBERS = {"protocolVersions", "plugin", "kind", "settings", "logLevel"}
CHECK = os.environ.get("LOOM_CHECK") == "1"

# --- output channels -----------------------------------------------------------------

# The protocol owns stdout: keep a private descriptor for it and point fd 1 and
# sys.stdout at stderr, so that a stray print cannot corrupt the stream.
PROTO_FD = os.dup(1)
os.dup2(2, 1)
sys.stdout = sys.stderr
_write_lock = threading.Lock()


def log_channel():
    """fd 3 when the supervisor offers it: LOOM_LOG_FD=3 and fd 3 a pipe open for writing."""
    if os.environ.get("LOOM_LOG_FD") != "3":
        return None
    try:
        mode, flags = os.fstat(3).st_mode, fcntl.fcntl(3, fcntl.F_GETFL)
    except OSError:
        return None
    writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    return 3 if stat.S_ISFIFO(mode) and writable else None


LOG_FD = log_channel()
LOG = PROTO_FD if LOG_FD is None else LOG_FD  # where log and progress go


def write_line(fd, data):
    """Writes one whole line; a closed pipe (the supervisor is gone) is not our error."""
    with _write_lock:
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:
            pass


def encode(msg):
    return json.dumps(msg, separators=(",", ":")).encode("utf-8")


def send(msg, fd=PROTO_FD):
    write_line(fd, encode(msg) + b"\n")


def answer(rid, result):
    send({"jsonrpc": "2.0", "id": rid, "result": result})


def error(rid, code, message):
    send({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}})


def notify(method, params, fd=PROTO_FD):
    send({"jsonrpc": "2.0", "method": method, "params": params}, fd)


# --- state: machines and bootstrapped nodes, shared by every process of a run ----------

STATE = os.path.join(tempfile.gettempdir(), "loom-conformance-%s.json" % os.environ.get("LOOM_PLUGIN_NAME", "base"))


def with_state(change):
    """Runs change(state) under an exclusive lock and saves what it leaves; returns its value."""
    with open(STATE, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read()
        state = json.loads(text) if text.strip() else {}
        for key in ("machines", "created", "bootstrapped", "ran"):
            state.setdefault(key, {})
        value = change(state)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(state))
        return value


# --- the tasks ---------------------------------------------------------------------------

def cancelled_answer():
    if broken("P-4.5-cancelled-answer"):
        return {"status": 0, "result": {}}
    return {"status": 1, "cancelled": True, "stderr": "cancelled"}


def wait_secs(config):
    """N of a wait task (PROTOCOL.md section 10), None for an ordinary task; ValueError if bad."""
    wait = config.get("loom-check")
    if not CHECK or wait is None:
        return None
    n = wait.get("waitSecs") if isinstance(wait, dict) else None
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not 0 < n <= 300:
        raise ValueError("loom-check.waitSecs must be a number above 0 and at most 300")
    return n


def is_wait(task):
    try:
        return wait_secs(task.get("config") or {}) is not None
    except ValueError:
        return False


def create(task, config):
    def make(state):
        known = state["created"].get(task["taskId"])
        if known in state["machines"]:  # a re-run of this task: the same machine
            return known
        pid = "base-" + secrets.token_hex(4)
        state["machines"][pid] = {"hostname": config.get("hostname", "")}
        state["created"][task["taskId"]] = pid
        return pid
    pid = with_state(make)
    ssh = {"user": "loom", "password": PASSWORD}
    return {"status": 0, "result": {"providerid": pid, "ssh-auth": ssh, "ipaddress": "127.0.0.1"},
            "hostname": config["hostname"] if isinstance(config.get("hostname"), str) else pid, "ipaddresses": {"access_v4": "127.0.0.1", "bind_v4": "127.0.0.1"},
            "_output": "created machine %s\n" % pid}


def confirm(config):
    pid = config.get("providerid")
    if with_state(lambda s: pid in s["machines"]):
        return {"status": 0, "result": {"ipaddress": "127.0.0.1"}, "_output": "machine %s is up\n" % pid}
    return {"status": 1, "stderr": "no machine with providerid %s" % json.dumps(pid)}


def delete(config):
    pid = config.get("providerid")
    known = with_state(lambda s: s["machines"].pop(pid, None) is not None)
    if not known and broken("P-4.2-delete-unknown"):
        return {"status": 1, "stderr": "no machine with providerid %s" % json.dumps(pid)}
    return {"status": 0, "result": {}, "_output": "machine %s is gone\n" % pid}


def bootstrap(task, config):
    node = task.get("nodeId") or config.get("hostname") or "node"
    again = with_state(lambda s: s["bootstrapped"].setdefault(node, task["taskId"]) != task["taskId"])
    if again and broken("P-4.2-bootstrap-twice"):
        return {"status": 1, "stderr": "node %s is already bootstrapped" % json.dumps(node)}
    return {"status": 0, "result": {}, "_output": "node %s is ready\n" % node}


def action(name, config):
    """A service action, in Loom's form {script, data} or Coopr's {fields: {script, args}}."""
    service = config.get("service") if isinstance(config.get("service"), dict) else {}
    act = service.get("action") if isinstance(service.get("action"), dict) else {}
    fields = act.get("fields") if isinstance(act.get("fields"), dict) else {}
    script = act.get("script")
    if not script and not broken("P-4.2-coopr-action"):
        script = fields.get("script")
    if not isinstance(script, str) or not script:
        return {"status": 1, "stderr": "%s: no script in config.service.action (script, or fields.script)" % name}
    # The data (Loom) or args (Coopr) may hold anything, credentials included: never shown.
    return {"status": 0, "result": {}, "_output": "%s would run %s\n" % (name, script)}


def execute(task, kind, stop):
    """The answer to one task. `stop` is set by a cancel (or by end of input)."""
    name, config = task["taskName"], task.get("config") or {}
    n = wait_secs(config)
    if n is not None:
        return cancelled_answer() if stop.wait(n) else {"status": 0, "result": {}}
    if name == "CREATE":
        return create(task, config)
    if name == "CONFIRM":
        return confirm(config)
    if name == "DELETE":
        return delete(config)
    if name == "BOOTSTRAP":
        return bootstrap(task, config)
    return action(name, config)


def spoil(result):
    """The answer-shape breaks, on SHAPE_TASK's answer only."""
    if broken("P-4.2-status-integer"):
        result["status"] = str(result["status"])
    if broken("P-4.2-result-members"):
        result["stdout"] = ["a"]
    if broken("P-4.2-answer-limits"):
        # Past the 100,000 values an answer may hold, yet shallow: any JSON parser reads it.
        result["result"] = {"values": [0] * 100001}


PASSWORD = "base-" + secrets.token_hex(8)  # the generated machines' password


class Plugin:
    def __init__(self):
        self.kind = None  # set by the handshake
        self.shutting_down = False
        self.running = {}  # taskId -> threading.Event (set: cancel)
        self.threads = []
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)  # notified when a task ends
        self.serial = threading.Lock()  # P-4.1-concurrency

    # --- requests ---

    def handshake(self, rid, params):
        if broken("P-3-unknown-members") and set(params) - HANDSHAKE_MEMBERS:
            return error(rid, -32602, "unknown handshake members")
        offered = params.get("protocolVersions")
        kind = params.get("kind")
        if not isinstance(offered, list) or kind not in KIND_TASKS:
            return error(rid, -32602, "handshake params need protocolVersions (a list) and kind")
        version = 1
        if 1 not in offered and not broken("P-4.1-version-none"):
            return error(rid, -32001, "this plugin speaks protocol version 1 only")
        if broken("P-4.1-version-choice") and 1 in offered:
            version = max(v for v in offered if isinstance(v, int))
        self.kind = kind
        tasks = list(KIND_TASKS[kind])
        if broken("P-4.1-tasks-kind"):
            tasks.append("INSTALL" if kind == "provider" else "CREATE")
        result = {"protocolVersion": version, "name": "base", "version": "1.0.0", "tasks": tasks,
                  "maxConcurrency": 4, "idempotentTasks": IDEMPOTENT[kind]}
        if broken("P-4.1-handshake"):
            del result["version"]
        answer(rid, result)
        if broken("P-3-no-requests"):
            send({"jsonrpc": "2.0", "id": "base-1", "method": "loom.base/hello", "params": {}})

    def task(self, rid, params):
        if self.shutting_down and not broken("P-4.4-refuse-after-shutdown"):
            return error(rid, -32003, "shutting down: no new tasks")
        readable = (isinstance(params, dict) and isinstance(params.get("taskId"), str)
                    and isinstance(params.get("taskName"), str) and isinstance(params.get("config", {}), dict))
        if not readable:
            code = -32603 if broken("P-4.2-invalid-params") else -32602
            return error(rid, code, "task params need taskId and taskName (strings) and config (an object)")
        # Before the handshake (P-4.1-before-handshake's break) the task's name gives the kind.
        kind = self.kind or ("provider" if params["taskName"] in KIND_TASKS["provider"] else "automator")
        if params["taskName"] not in KIND_TASKS[kind]:
            if broken("P-4.2-undeclared-task"):
                return answer(rid, {"status": 0, "result": {}})
            if broken("P-4.2-undeclared-code"):
                return answer(rid, {"status": 1, "stderr": "not a task of this plugin"})
            return error(rid, -32002, "this %s does not handle %s" % (kind, params["taskName"]))
        stop = threading.Event()
        with self.lock:
            self.running[params["taskId"]] = stop
        t = threading.Thread(target=self.run_task, args=(rid, params, kind, stop))
        self.threads.append(t)
        t.start()

    def run_task(self, rid, task, kind, stop):
        task_id, name = task["taskId"], task["taskName"]
        with self.serial if broken("P-4.1-concurrency") else NoLock():
            self.announce(task)
            if broken("P-1-fd3-stdout") and LOG_FD is not None and is_wait(task):
                # At the start of a wait task, long before its answer: read from another
                # pipe than the answer, it cannot arrive after it and look like output for
                # a task already answered (P-5.3-output-running).
                notify("output", {"taskId": task_id, "stream": "stdout", "data": "waiting\n"}, LOG_FD)
            try:
                result = self.idempotent_rerun(task, kind) or execute(task, kind, stop)
            except Exception as e:  # a failure of this task only
                result = {"status": 1, "stderr": "base.py: %s" % e}
        output = result.pop("_output", None)
        if output:
            # Output belongs to a running task, on stdout, before its answer.
            notify("output", {"taskId": task_id, "stream": "stdout", "data": output})
        if name == SHAPE_TASK[kind]:
            spoil(result)
        if broken("P-4.2-credentials-in-result") and result.get("status") == 0:
            result["ssh-auth"] = {"user": "loom", "password": PASSWORD}
        with self.lock:
            self.running.pop(task_id, None)
            self.idle.notify_all()
        answer(rid, result)
        if output and broken("P-5.3-output-running"):
            notify("output", {"taskId": task_id, "stream": "stdout", "data": "after the answer\n"})

    def idempotent_rerun(self, task, kind):
        """P-4.1-idempotent's break: a listed task run again under the same taskId fails."""
        if not broken("P-4.1-idempotent") or task["taskName"] not in IDEMPOTENT[kind]:
            return None
        def mark(state):
            seen = task["taskId"] in state["ran"]
            state["ran"][task["taskId"]] = True
            return seen
        if with_state(mark):
            return {"status": 1, "stderr": "task %s already ran" % task["taskId"]}
        return None

    def announce(self, task):
        """The task's log and progress notifications (one of them broken on request)."""
        task_id, name = task["taskId"], task["taskName"]
        entry = {"level": "info", "message": "running %s" % name, "taskId": task_id}
        ssh = (task.get("config") or {}).get("ssh-auth")
        if broken("P-4.2-credentials-private") and isinstance(ssh, dict):
            entry["message"] += " with password %s" % ssh.get("password")
        if broken("P-5-notifications"):
            entry["level"] = "loud"
        msg = {"jsonrpc": "2.0", "method": "log", "params": entry}
        if broken("P-2-one-line"):
            write_line(PROTO_FD, encode(msg) + encode(msg) + b"\n")
        elif broken("P-2-no-batches"):
            write_line(PROTO_FD, encode([msg, msg]) + b"\n")
        elif broken("P-2-utf8"):
            write_line(PROTO_FD, encode(msg).replace(b"running", b"caf\xe9 running") + b"\n")
        else:
            send(msg, LOG)
        if broken("P-2-stdout-messages"):
            write_line(PROTO_FD, b"debug: task started\n")
        notify("progress", {"taskId": task_id, "message": "%s started" % name, "percent": 10}, LOG)

    def ping(self, rid):
        if broken("P-4.3-ping-busy"):
            with self.lock:
                self.idle.wait_for(lambda: not self.running)
        answer(rid, "pong" if broken("P-4.3-ping") else {})
        if broken("P-3-answer-once"):
            answer(rid, {})

    def shutdown(self, rid):
        self.shutting_down = True
        if broken("P-4.4-shutdown-in-flight"):
            with self.lock:
                self.idle.wait_for(lambda: not self.running)
        answer(rid, "bye" if broken("P-4.4-shutdown") else {})

    def unknown_method(self, rid, method):
        if broken("P-2-line-limit"):
            send({"jsonrpc": "2.0", "method": "log",
                  "params": {"level": "info", "message": "x" * (16 * 1024 * 1024 + 1024)}})
        if broken("P-3-unknown-method"):
            return answer(rid, {})
        error(str(rid) if broken("P-3-id-copied") else rid, -32601, "unknown method %s" % json.dumps(method))

    def cancel(self, params):
        task_id = params.get("taskId") if isinstance(params, dict) else None
        with self.lock:
            stop = self.running.get(task_id)
        if stop is None:
            if broken("P-4.5-cancel-unknown"):
                os._exit(0)
            return  # a task that already answered, or never came: ignored
        if not broken("P-4.5-cancel-running"):
            stop.set()

    # --- the loop ---

    def dispatch(self, msg):
        method, params = msg.get("method"), msg.get("params", {})
        if not isinstance(method, str):
            return  # an answer (to P-3-no-requests' request): nothing to do
        if "id" not in msg:
            if method == "cancel":
                self.cancel(params)
            elif broken("P-3-unknown-notification"):
                os._exit(0)
            return  # other notifications are ignored
        rid = msg["id"]
        if BREAK == HANG_ALL and self.kind is not None:
            return
        if method == "handshake":
            return self.handshake(rid, params if isinstance(params, dict) else {})
        if self.kind is None and not (method == "task" and broken("P-4.1-before-handshake")):
            return None if BREAK == HANG_ALL else error(rid, -32004, "%s before the handshake" % method)
        if method == "task":
            return self.task(rid, params)
        if method == "ping":
            # Answered from a thread of its own when it may have to wait for tasks.
            if broken("P-4.3-ping-busy"):
                return threading.Thread(target=self.ping, args=(rid,)).start()
            return self.ping(rid)
        if method == "shutdown":
            if broken("P-4.4-shutdown-in-flight"):
                self.shutting_down = True
                return threading.Thread(target=self.shutdown, args=(rid,)).start()
            return self.shutdown(rid)
        self.unknown_method(rid, method)

    def serve(self):
        for line in sys.stdin.buffer:
            try:
                msg = json.loads(line)
            except ValueError:  # not JSON (or not UTF-8): skipped
                if broken("P-3-parse-error"):
                    os._exit(0)
                sys.stderr.write("base.py: skipped a line that is not JSON\n")
                continue
            if isinstance(msg, dict):
                self.dispatch(msg)
        self.end_of_input()

    def end_of_input(self):
        """Cancels what still runs, lets every task answer, then exits 0."""
        if BREAK == HANG_ALL or (broken("P-1-eof-exit") and self.kind is None):
            threading.Event().wait()  # keeps running, reading nothing
        if broken("P-1-eof-answers"):
            os._exit(0)
        with self.lock:
            stops = list(self.running.values())
        for stop in stops:
            stop.set()
        for t in self.threads:
            t.join()
        sys.exit(3 if broken("P-1-eof-exit-zero") else 0)


class NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    Plugin().serve()
