"""loom_plugin: write a Loom provisioner plugin in Python (3.8+, standard library only).

One file: copy it beside your plugin, or import it by a path relative to your
executable (a manifest cannot set PYTHONPATH). A whole provider::

    #!/usr/bin/env python3
    import os, sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "../../.."))
    from loom_plugin import Plugin, TaskFailed

    plugin = Plugin("pyfile", "1.0.0", kind="provider", max_concurrency=4,
                    idempotent_tasks=["CONFIRM", "DELETE"])

    @plugin.task("CREATE")
    def create(task, ctx):
        ctx.info("creating %s" % task["config"].get("hostname"))
        return {"providerid": "m-1"}                # result keys: status 0

    @plugin.task("CONFIRM")
    def confirm(task, ctx):
        if task["config"].get("providerid") != "m-1":
            raise TaskFailed("no such machine")     # status 1, the message in stderr
        return {"status": 0, "result": {"ipaddress": "127.0.0.1"}, "hostname": "m-1.local"}

    @plugin.task("DELETE")
    def delete(task, ctx):
        return None                                 # success, no result keys

    plugin.serve()

API
- ``Plugin(name, version, kind, tasks=None, max_concurrency=None, idempotent_tasks=())``:
  ``kind`` is "provider" or "automator"; ``tasks`` the task names it declares (default:
  those with a handler, or every task of its kind when one handler takes all);
  ``max_concurrency`` is declared in the handshake (the manifest's may be lower);
  ``idempotent_tasks`` are tasks safe to run twice.
- ``@plugin.task("CREATE")`` registers a handler for a task name; ``@plugin.task()`` one
  for every declared task without its own. ``@plugin.setup`` registers ``fn(settings)``,
  called at the handshake; raising there refuses it (error -32603 with the message).
- ``plugin.serve()`` speaks the protocol until stdin closes, then exits with code 0.
- A handler ``fn(task, ctx)`` gets the task (the ``task`` params as a dict: ``taskId``,
  ``taskName``, ``config``...) and a ``Context``, runs on a thread of its own (at most
  ``max_concurrency`` at once; more wait for a slot), and returns:
  - ``None``: success, no result keys;
  - a dict with an integer ``"status"``: the answer itself (``status``, ``result``,
    ``stdout``, ``stderr``, ``hostname``, ``ipaddresses``, other members kept);
  - any other dict: result keys of a success (``{"providerid": "m-1"}`` answers
    ``{"status": 0, "result": {"providerid": "m-1"}}``). A result key named ``status``
    needs the full form.
  Raising ``TaskFailed(message, status=1, result=None)`` fails the task with those;
  any other exception fails it with status 1 and the exception's text in ``stderr``
  (the plugin keeps serving). A task answered non-zero after its cancel carries
  ``"cancelled": true``; ``raise Cancelled()`` answers that at once.
- ``Context``: ``task_id``; ``settings`` (the manifest's, from the handshake);
  ``cancelled`` (a ``threading.Event``, set when the supervisor cancels the task or
  stdin closes); ``on_cancel(fn)``; ``log(level, message, **fields)`` and
  ``debug/info/warn/error(message, **fields)``; ``progress(message, percent=None)``;
  ``output(stream, data)`` (``"stdout"``/``"stderr"``, live command output);
  ``run(argv, cwd=None, env=None)``: runs a command in its own process group, streams
  its output, kills the group on cancel, returns ``{"status", "stdout", "stderr"}``
  (the last 64 KiB of each; a signal gives status 128 + its number).

What the SDK does for you: the handshake (error -32001 without protocol 1), ``ping``
and ``shutdown`` answered at once while tasks run, ``cancel`` delivered to the task,
-32004 before the handshake, -32002 for undeclared tasks, -32602 for unreadable task
params, -32003 after ``shutdown``, -32601 for unknown methods; unknown notifications,
unknown members and lines that are not JSON are ignored. On end of stdin it cancels
the tasks in flight, answers them and exits 0. Every message is one write under a
lock, ASCII-escaped JSON. Log lines go to fd 3 when ``LOOM_LOG_FD=3`` names an
inherited, writable pipe (else stdout). ``print()`` is safe: fd 1 and ``sys.stdout``
point at stderr, and commands started by a task get /dev/null as stdin; the protocol
keeps private descriptors. The SDK never logs task contents. Under ``LOOM_CHECK=1``
(``loom-provisioner check`` only), a task whose config holds
``"loom-check": {"waitSecs": N}`` is answered by the SDK (PROTOCOL.md, the check
protocol): it waits N seconds, or answers cancelled at once on ``cancel``.
"""

import codecs
import json
import os
import signal
import stat
import subprocess
import sys
import threading

__all__ = ["Plugin", "Context", "TaskFailed", "Cancelled"]

PROTOCOL_VERSION = 1
KIND_TASKS = {
    "provider": ["CREATE", "CONFIRM", "DELETE"],
    "automator": ["BOOTSTRAP", "INSTALL", "CONFIGURE", "INITIALIZE", "START", "STOP", "REMOVE"],
}
LEVELS = ["trace", "debug", "info", "warn", "error"]
TAIL_BYTES = 64 * 1024
MAX_WAIT_SECS = 300


class TaskFailed(Exception):
    """Fails the task with ``message`` in ``stderr``, ``status`` (never 0) and ``result`` keys."""

    def __init__(self, message, status=1, result=None):
        super().__init__(message)
        self.message = str(message)
        self.status = status if isinstance(status, int) and not isinstance(status, bool) and status != 0 else 1
        self.result = dict(result or {})


class Cancelled(Exception):
    """Raised by a handler that stops because its task was cancelled."""


class _Channel:
    """One output descriptor; whole messages, one write each, never interleaved."""

    def __init__(self, fd):
        self.fd = fd
        self.lock = threading.Lock()
        self.broken = False

    def send(self, msg):
        # ensure_ascii: the line is valid UTF-8 whatever the strings hold (lone surrogates too).
        data = (json.dumps(msg, separators=(",", ":"), ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")
        with self.lock:
            if self.broken:
                return
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError:
                # The supervisor is gone (EPIPE): nobody reads; stdin's end will follow.
                self.broken = True


def _take_stdio():
    """Private descriptors for the protocol; fd 0 becomes /dev/null and fd 1 stderr."""
    proto_in = os.dup(0)  # os.dup: not inherited by programs the plugin starts
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    sys.stdin = open(os.devnull)
    return proto_in, proto_out


def _take_log_fd():
    """The log channel (fd 3) when LOOM_LOG_FD names it and it is an inherited, writable
    pipe: a private duplicate, and fd 3 closed so that commands do not hold it. Else None
    (logs share stdout); a descriptor that is not the channel is left alone."""
    value = os.environ.get("LOOM_LOG_FD")
    if value is None:
        return None
    if value != "3":
        sys.stderr.write("loom_plugin: LOOM_LOG_FD does not name fd 3; log lines go to stdout\n")
        return None
    import fcntl

    try:
        if fcntl.fcntl(3, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
            why = "which this process opened (close-on-exec is set)"
        elif not stat.S_ISFIFO(os.fstat(3).st_mode):
            why = "which is not a pipe"
        elif fcntl.fcntl(3, fcntl.F_GETFL) & os.O_ACCMODE not in (os.O_WRONLY, os.O_RDWR):
            why = "which is not open for writing"
        else:
            fd = os.dup(3)
            os.close(3)
            return fd
    except OSError:
        why = "which is not open"
    sys.stderr.write("loom_plugin: LOOM_LOG_FD names fd 3, %s; log lines go to stdout\n" % why)
    return None


class Context:
    """What a handler can do besides computing its result; see the module's doc."""

    def __init__(self, plugin, task_id):
        self._plugin = plugin
        self._callbacks = []
        self._lock = threading.Lock()
        self._done = False
        self.task_id = task_id
        self.settings = plugin.settings
        self.cancelled = threading.Event()

    def on_cancel(self, fn):
        """Calls ``fn()`` when the task is cancelled (at once if it already is)."""
        with self._lock:
            if not self.cancelled.is_set():
                self._callbacks.append(fn)
                return
        fn()

    def _cancel(self):
        with self._lock:
            if self.cancelled.is_set():
                return
            self.cancelled.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception as e:  # a callback's failure must not stop the reader
                sys.stderr.write("loom_plugin: a cancel callback of task %s failed: %s\n" % (self.task_id, e))

    def log(self, level, message, **fields):
        level = level if level in LEVELS else "info"
        if LEVELS.index(level) < LEVELS.index(self._plugin.log_level):
            return
        params = {"level": level, "message": str(message), "taskId": self.task_id}
        if fields:
            params["fields"] = fields
        self._plugin._log({"jsonrpc": "2.0", "method": "log", "params": params})

    def debug(self, message, **fields):
        self.log("debug", message, **fields)

    def info(self, message, **fields):
        self.log("info", message, **fields)

    def warn(self, message, **fields):
        self.log("warn", message, **fields)

    def error(self, message, **fields):
        self.log("error", message, **fields)

    def progress(self, message, percent=None):
        params = {"taskId": self.task_id, "message": str(message)}
        if percent is not None:
            params["percent"] = max(0, min(100, percent))
        self._plugin._log({"jsonrpc": "2.0", "method": "progress", "params": params})

    def output(self, stream, data):
        """Streams command output; dropped once the task has answered (the protocol
        ignores output for a task that is not running)."""
        if stream not in ("stdout", "stderr"):
            raise ValueError("stream must be 'stdout' or 'stderr'")
        with self._lock:
            if self._done:
                return
            self._plugin._out.send({"jsonrpc": "2.0", "method": "output",
                                    "params": {"taskId": self.task_id, "stream": stream, "data": str(data)}})

    def _finish(self):
        with self._lock:
            self._done = True

    def run(self, argv, cwd=None, env=None):
        """Runs ``argv`` (stdin /dev/null) in a process group of its own, streaming its
        output; on cancel the group is killed. Returns ``{"status", "stdout", "stderr"}``."""
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        gone = threading.Lock()  # held while the group may be signalled
        state = {"exited": False}

        def kill():
            with gone:
                if not state["exited"]:
                    os.killpg(proc.pid, signal.SIGKILL)

        tails = {"stdout": _Tail(), "stderr": _Tail()}
        pumps = [threading.Thread(target=self._pump, args=(proc.stdout, "stdout", tails["stdout"])),
                 threading.Thread(target=self._pump, args=(proc.stderr, "stderr", tails["stderr"]))]
        for p in pumps:
            p.start()
        self.on_cancel(kill)
        # Wait for the exit without reaping it, then for the output pipes to close: the
        # unreaped leader keeps its pid (the group's id) from reuse meanwhile, so a cancel
        # can still kill what the command left in its group holding the pipes.
        while True:
            try:
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                break
            except ChildProcessError:
                break
            except InterruptedError:
                continue
        for p in pumps:
            p.join()
        with gone:
            state["exited"] = True
        code = proc.wait()
        return {"status": code if code >= 0 else 128 - code, "stdout": tails["stdout"].text(),
                "stderr": tails["stderr"].text()}

    def _pump(self, pipe, stream, tail):
        # Incremental: a character split between two reads is decoded whole.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        for chunk in iter(lambda: pipe.read1(65536), b""):
            text = decoder.decode(chunk)
            if text:
                tail.add(text)
                self.output(stream, text)
        text = decoder.decode(b"", final=True)
        if text:
            tail.add(text)
            self.output(stream, text)
        pipe.close()


class _Tail:
    """The last TAIL_BYTES (about) of a stream's text."""

    def __init__(self):
        self.parts, self.size = [], 0

    def add(self, text):
        self.parts.append(text)
        self.size += len(text)
        while self.size > TAIL_BYTES and len(self.parts) > 1:
            self.size -= len(self.parts.pop(0))

    def text(self):
        return "".join(self.parts)[-TAIL_BYTES:]


class Plugin:
    """A plugin's identity, its handlers, and the protocol loop; see the module's doc."""

    def __init__(self, name, version, kind, tasks=None, max_concurrency=None, idempotent_tasks=()):
        if kind not in KIND_TASKS:
            raise ValueError("kind must be 'provider' or 'automator'")
        for t in list(tasks or []) + list(idempotent_tasks):
            if t not in KIND_TASKS[kind]:
                raise ValueError("%s is not a %s task" % (t, kind))
        if max_concurrency is not None and (not isinstance(max_concurrency, int) or max_concurrency < 1):
            raise ValueError("max_concurrency must be an integer of at least 1")
        self.name, self.version, self.kind = str(name), str(version), kind
        self._tasks = list(tasks) if tasks else None
        self.max_concurrency = max_concurrency
        self.idempotent_tasks = list(idempotent_tasks)
        self.settings = {}
        self.log_level = "info"
        self._handlers = {}
        self._default = None
        self._setup = None
        self._ready = False
        self._shutting_down = False
        self._slots = threading.Condition()
        self._active = 0
        self._running = {}  # taskId -> [Context]
        self._threads = []
        self._out = self._logs = None

    def task(self, name=None):
        """Decorator: ``fn(task, ctx)`` handles task ``name`` (every task when None)."""
        if callable(name):  # used bare, as @plugin.task
            self._default = name
            return name
        if name is not None and name not in KIND_TASKS[self.kind]:
            raise ValueError("%s is not a %s task" % (name, self.kind))

        def register(fn):
            if name is None:
                self._default = fn
            else:
                self._handlers[name] = fn
            return fn
        return register

    def setup(self, fn):
        """Decorator: ``fn(settings)`` runs at the handshake."""
        self._setup = fn
        return fn

    def declared(self):
        if self._tasks is not None:
            return self._tasks
        if self._default is not None:
            return list(KIND_TASKS[self.kind])
        return [t for t in KIND_TASKS[self.kind] if t in self._handlers]

    # -- output

    def _answer(self, rid, result):
        self._out.send({"jsonrpc": "2.0", "id": rid, "result": result})

    def _error(self, rid, code, message):
        self._out.send({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}})

    def _log(self, msg):
        (self._logs or self._out).send(msg)

    # -- the loop

    def serve(self):
        """Serves until stdin closes, then exits the process with code 0."""
        log_fd = _take_log_fd()  # first: fd 3 is only the channel if it came through exec
        proto_in, proto_out = _take_stdio()
        self._out = _Channel(proto_out)
        self._logs = _Channel(log_fd) if log_fd is not None else None
        with os.fdopen(proto_in, "rb", buffering=65536) as stdin:
            for line in stdin:
                self._handle_line(line)
        # End of stdin: the supervisor is done. Cancel what runs, let it answer, exit.
        self._cancel_all()
        for t in list(self._threads):
            t.join()
        sys.stderr.flush()
        # The tasks are answered; threads a handler left behind must not keep the process.
        os._exit(0)

    def _handle_line(self, line):
        if not line.strip():
            return
        try:
            msg = json.loads(line)
        except ValueError:  # includes invalid UTF-8
            sys.stderr.write("loom_plugin: skipped a line on stdin that is not JSON\n")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("method"), str):
            return
        method, params = msg["method"], msg.get("params")
        if "id" not in msg:
            if method == "cancel" and isinstance(params, dict):
                self._cancel(params.get("taskId"))
            return  # other notifications: ignored
        rid = msg["id"]
        if method == "handshake":
            self._handshake(rid, params)
        elif method == "task":
            self._start(rid, params)
        elif method == "ping":
            self._answer(rid, {})
        elif method == "shutdown":
            self._shutting_down = True
            self._answer(rid, {})
        else:
            self._error(rid, -32601, "unknown method %s" % json.dumps(method[:100]))

    def _handshake(self, rid, params):
        if self._shutting_down:
            return self._error(rid, -32003, "shutting down")
        if not isinstance(params, dict) or not isinstance(params.get("protocolVersions"), list):
            return self._error(rid, -32602, "handshake params need a protocolVersions list")
        if PROTOCOL_VERSION not in params["protocolVersions"]:
            return self._error(rid, -32001, "this plugin speaks protocol version 1 only")
        settings = params.get("settings")
        settings = settings if isinstance(settings, dict) else {}
        if not self._ready and self._setup is not None:
            try:
                self._setup(settings)
            except Exception as e:
                return self._error(rid, -32603, "setup failed: %s" % _describe(e))
        if not self._ready:
            self.settings = settings
        level = params.get("logLevel")
        self.log_level = level if level in LEVELS else "info"
        self._ready = True
        result = {"protocolVersion": PROTOCOL_VERSION, "name": self.name, "version": self.version,
                  "tasks": self.declared()}
        if self.max_concurrency is not None:
            result["maxConcurrency"] = self.max_concurrency
        if self.idempotent_tasks:
            result["idempotentTasks"] = self.idempotent_tasks
        self._answer(rid, result)

    def _start(self, rid, task):
        if not self._ready:
            return self._error(rid, -32004, "task before the handshake")
        if self._shutting_down:
            return self._error(rid, -32003, "shutting down: no new tasks")
        if (not isinstance(task, dict) or not isinstance(task.get("taskId"), str)
                or not isinstance(task.get("taskName"), str)
                or not isinstance(task.get("config", {}), dict)):
            return self._error(rid, -32602, "task params need taskId and taskName strings and a config object")
        name = task["taskName"]
        if name not in self.declared():
            known = name if name in KIND_TASKS["provider"] + KIND_TASKS["automator"] else "this task name"
            return self._error(rid, -32002, "this plugin does not handle %s" % known)
        ctx = Context(self, task["taskId"])
        with self._slots:
            self._running.setdefault(ctx.task_id, []).append(ctx)
        thread = threading.Thread(target=self._run, args=(rid, task, ctx), name="task " + ctx.task_id[:64])
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _run(self, rid, task, ctx):
        got_slot = self._acquire(ctx)
        try:
            result = self._execute(task, ctx) if got_slot else _cancelled_result()
        finally:
            if got_slot:
                self._release()
            with self._slots:
                contexts = self._running.get(ctx.task_id, [])
                if ctx in contexts:
                    contexts.remove(ctx)
                if not contexts:
                    self._running.pop(ctx.task_id, None)
        ctx._finish()
        try:
            self._answer(rid, result)
        except (TypeError, ValueError) as e:  # not JSON: a result the handler made
            self._answer(rid, {"status": 1, "result": {}, "stderr": "the task's result is not JSON: %s" % e})

    def _acquire(self, ctx):
        """Waits for a slot (max_concurrency); False when the task was cancelled first."""
        with self._slots:
            while self.max_concurrency is not None and self._active >= self.max_concurrency:
                if ctx.cancelled.is_set():
                    return False
                self._slots.wait()
            self._active += 1
            return True

    def _release(self):
        with self._slots:
            self._active -= 1
            self._slots.notify_all()

    def _execute(self, task, ctx):
        wait = _check_wait(task)
        if wait is not None:
            return wait if isinstance(wait, dict) else _wait_task(wait, ctx)
        handler = self._handlers.get(task["taskName"], self._default)
        try:
            if handler is None:
                raise TaskFailed("this plugin has no handler for %s" % task["taskName"])
            result = _normalise(handler(task, ctx))
        except Cancelled:
            return _cancelled_result()
        except TaskFailed as e:
            result = {"status": e.status, "result": e.result, "stderr": e.message}
        except Exception as e:  # a failure of this task only
            result = {"status": 1, "result": {}, "stderr": _describe(e)}
        if ctx.cancelled.is_set() and result.get("status") != 0:
            result["cancelled"] = True
        return result

    def _cancel(self, task_id):
        with self._slots:
            contexts = list(self._running.get(task_id, [])) if isinstance(task_id, str) else []
        for ctx in contexts:  # unknown ids: nothing to do
            ctx._cancel()
        with self._slots:
            self._slots.notify_all()  # a task waiting for a slot gives up

    def _cancel_all(self):
        with self._slots:
            ids = list(self._running)
        for task_id in ids:
            self._cancel(task_id)


def _describe(e):
    text = str(e)
    return text if text else type(e).__name__


def _cancelled_result():
    return {"status": 1, "result": {}, "cancelled": True, "stderr": "cancelled"}


def _normalise(value):
    """A handler's return value as an answer (see the module's doc)."""
    if value is None:
        return {"status": 0, "result": {}}
    if not isinstance(value, dict):
        raise TaskFailed("the handler returned a %s; return a dict or None" % type(value).__name__)
    if "status" not in value:
        return {"status": 0, "result": dict(value)}
    status = value["status"]
    if not isinstance(status, int) or isinstance(status, bool):
        raise TaskFailed("the handler's status is not an integer")
    answer = dict(value)
    answer.setdefault("result", {})
    for key, kind in (("result", dict), ("stdout", str), ("stderr", str), ("hostname", str)):
        if key in answer and not isinstance(answer[key], kind):
            raise TaskFailed("the handler's %s is not a %s" % (key, "string" if kind is str else "dict"))
    return answer


def _check_wait(task):
    """Under LOOM_CHECK=1, a task with config["loom-check"]: the seconds to wait, or a
    failed answer when the key is malformed. None otherwise."""
    if os.environ.get("LOOM_CHECK") != "1":
        return None
    config = task.get("config") or {}
    if "loom-check" not in config:
        return None
    spec = config["loom-check"]
    secs = spec.get("waitSecs") if isinstance(spec, dict) else None
    if isinstance(secs, bool) or not isinstance(secs, (int, float)) or not 0 < secs <= MAX_WAIT_SECS:
        return {"status": 1, "result": {}, "stderr": "loom-check.waitSecs must be a number above 0, at most 300"}
    return float(secs)


def _wait_task(secs, ctx):
    if ctx.cancelled.wait(secs):
        return _cancelled_result()
    return {"status": 0, "result": {}}
