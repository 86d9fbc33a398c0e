#!/usr/bin/env python3
"""pyexample: a Loom automator in Python, standard library only, written from PROTOCOL.md.

It runs each service action's script on this host with `sh -c`, in a work folder
(settings.workDir, default $TMPDIR/loom-pyexample), with the action's data in
$LOOM_ACTION_DATA. Output is streamed live as `output` notifications; the exit code
decides the status. Tasks run on threads, so `ping` and `cancel` are answered while
they run; `cancel` kills the script's process group. The plugin exits when stdin closes.
Under `loom-provisioner check` (LOOM_CHECK=1) it runs the check protocol's wait tasks
(PROTOCOL.md section 10).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading

TASKS = ["BOOTSTRAP", "INSTALL", "CONFIGURE", "INITIALIZE", "START", "STOP", "REMOVE"]
LEVELS = ["trace", "debug", "info", "warn", "error"]

# The protocol owns stdout. Keep a private handle on it and point sys.stdout at stderr,
# so that a stray print() cannot corrupt the stream.
_proto = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
sys.stdout = sys.stderr
_send_lock = threading.Lock()


def send(msg):
    line = json.dumps(msg, separators=(",", ":")) + "\n"
    with _send_lock:
        _proto.write(line)
        _proto.flush()


def answer(rid, result):
    send({"jsonrpc": "2.0", "id": rid, "result": result})


def error(rid, code, message):
    send({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}})


class Plugin:
    def __init__(self):
        self.work_dir = os.path.join(tempfile.gettempdir(), "loom-pyexample")
        self.log_level = "info"
        self.ready = False
        self.shutting_down = False
        self.running = {}  # taskId -> subprocess.Popen or None
        self.cancels = {}  # taskId -> threading.Event, set by cancel
        self.lock = threading.Lock()
        self.threads = []

    def log(self, level, message, task_id=None):
        if LEVELS.index(level) < LEVELS.index(self.log_level):
            return
        params = {"level": level, "message": message}
        if task_id is not None:
            params["taskId"] = task_id
        send({"jsonrpc": "2.0", "method": "log", "params": params})

    def handshake(self, rid, params):
        if 1 not in params.get("protocolVersions", []):
            return error(rid, -32001, "this plugin speaks protocol version 1 only")
        settings = params.get("settings") or {}
        work_dir = settings.get("workDir", self.work_dir)
        if not isinstance(work_dir, str):
            return error(rid, -32603, "setup failed: settings.workDir must be a string")
        self.work_dir = work_dir
        self.log_level = params.get("logLevel", "info")
        self.ready = True
        answer(rid, {"protocolVersion": 1, "name": "pyexample", "version": "1.0.0",
                     "tasks": TASKS, "maxConcurrency": 4})

    def task(self, rid, task):
        if not self.ready:
            return error(rid, -32004, "task before handshake")
        if self.shutting_down:
            return error(rid, -32003, "shutting down")
        if not isinstance(task, dict) or not isinstance(task.get("taskId"), str) \
                or not isinstance(task.get("taskName"), str):
            return error(rid, -32602, "the params are not a task: taskId and taskName must be strings")
        if task["taskName"] not in TASKS:
            return error(rid, -32002, "this plugin does not handle %r" % task["taskName"])
        with self.lock:
            self.running[task["taskId"]] = None
            self.cancels[task["taskId"]] = threading.Event()
        t = threading.Thread(target=self.run_task, args=(rid, task), daemon=True)
        self.threads.append(t)
        t.start()

    def run_task(self, rid, task):
        task_id = task["taskId"]
        try:
            result = self.execute(task)
        except Exception as e:  # a failure of this task only
            result = {"status": 1, "result": {}, "stdout": "", "stderr": "pyexample: %s" % e}
        with self.lock:
            self.running.pop(task_id, None)
            self.cancels.pop(task_id, None)
        answer(rid, result)

    def execute(self, task):
        task_id, name = task["taskId"], task["taskName"]
        wait = (task.get("config") or {}).get("loom-check")
        if os.environ.get("LOOM_CHECK") == "1" and isinstance(wait, dict):
            return self.check_wait(task_id, wait.get("waitSecs"))
        os.makedirs(self.work_dir, exist_ok=True)
        if name == "BOOTSTRAP":
            self.log("info", "work folder %s is ready" % self.work_dir, task_id)
            return {"status": 0, "result": {"pyexample_workdir": self.work_dir}}
        action = ((task.get("config") or {}).get("service") or {}).get("action") or {}
        fields = action.get("fields") or {}
        script = action.get("script") or fields.get("script")
        data = action.get("data") or fields.get("args") or fields.get("data") or ""
        if not script:
            return {"status": 1, "result": {}, "stderr": "%s has no script: set config.service.action.script" % name}
        self.log("info", "%s: running %r" % (name, script), task_id)
        env = dict(os.environ, LOOM_ACTION_DATA=str(data), LOOM_TASK_ID=task_id)
        proc = subprocess.Popen(["sh", "-c", script], cwd=self.work_dir, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        with self.lock:
            cancelled = task_id not in self.running
            self.running[task_id] = proc
        if cancelled:
            os.killpg(proc.pid, signal.SIGKILL)
        captured = {"stdout": [], "stderr": []}
        readers = [threading.Thread(target=self.pump, args=(proc.stdout, "stdout", task_id, captured)),
                   threading.Thread(target=self.pump, args=(proc.stderr, "stderr", task_id, captured))]
        for r in readers:
            r.start()
        code = proc.wait()
        for r in readers:
            r.join()
        out, err = "".join(captured["stdout"]), "".join(captured["stderr"])
        if code < 0:
            return {"status": 1, "result": {"exitcode": code}, "stdout": out, "cancelled": True,
                    "stderr": err + "killed by signal %d (cancelled)\n" % -code}
        return {"status": 0 if code == 0 else 1, "result": {"exitcode": code}, "stdout": out, "stderr": err}

    def check_wait(self, task_id, secs):
        """The check protocol's wait task: nothing but a wait, cut short by cancel."""
        if not isinstance(secs, (int, float)) or not 0 < secs <= 300:
            return {"status": 1, "result": {}, "stderr": "loom-check.waitSecs must be a number of seconds, 0 to 300"}
        with self.lock:
            event = self.cancels.get(task_id) or threading.Event()
        if event.wait(secs):
            return {"status": 1, "result": {}, "cancelled": True, "stderr": "cancelled"}
        return {"status": 0, "result": {}}

    def pump(self, pipe, stream, task_id, captured):
        for raw in iter(pipe.readline, b""):
            text = raw.decode("utf-8", "replace")
            captured[stream].append(text)
            send({"jsonrpc": "2.0", "method": "output", "params": {"taskId": task_id, "stream": stream, "data": text}})
        pipe.close()

    def cancel(self, task_id):
        with self.lock:
            if task_id not in self.running:
                return  # already answered: ignore
            self.cancels[task_id].set()
            proc = self.running.get(task_id)
            if proc is None:
                # Its script has not started yet: removing the entry tells execute() to
                # kill the script as soon as it starts.
                del self.running[task_id]
        if proc is not None and proc.poll() is None:
            self.log("warn", "cancelled: killing %d" % proc.pid, task_id)
            os.killpg(proc.pid, signal.SIGKILL)

    def serve(self):
        for line in sys.stdin.buffer:
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                error(None, -32700, "not JSON")
                continue
            if not isinstance(msg, dict):
                continue
            method, rid, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
            if rid is None:  # a notification
                if method == "cancel" and isinstance(params, dict):
                    self.cancel(params.get("taskId"))
                continue
            if method == "handshake":
                self.handshake(rid, params)
            elif method == "task":
                self.task(rid, params)
            elif method == "ping":
                answer(rid, {})
            elif method == "shutdown":
                self.shutting_down = True
                answer(rid, {})
            else:
                error(rid, -32601, "unknown method %r" % method)
        # stdin closed: cancel what still runs, let it answer, then exit.
        for task_id in list(self.running):
            self.cancel(task_id)
        for t in self.threads:
            t.join()


if __name__ == "__main__":
    Plugin().serve()
