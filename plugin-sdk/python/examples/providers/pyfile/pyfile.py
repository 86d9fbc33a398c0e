#!/usr/bin/env python3
"""pyfile: a Loom provider whose machines are files in $TMPDIR/loom-<name>-machines."""
import contextlib, os, re, sys, tempfile, uuid
sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "../../.."))
from loom_plugin import Plugin, TaskFailed

plugin = Plugin("pyfile", "1.0.0", kind="provider", max_concurrency=4, idempotent_tasks=["CONFIRM", "DELETE"])
MACHINES = os.path.join(tempfile.gettempdir(), "loom-%s-machines" % os.environ.get("LOOM_PLUGIN_NAME", "pyfile"))

def machine(task):  # the file of the task's machine; None for an id this plugin never made
    pid = str(task["config"].get("providerid"))
    return os.path.join(MACHINES, pid) if re.fullmatch("pyfile-[0-9a-f]{12}", pid) else None

@plugin.task("CREATE")
def create(task, ctx):
    os.makedirs(MACHINES, exist_ok=True)
    pid = "pyfile-" + uuid.uuid4().hex[:12]
    with open(os.path.join(MACHINES, pid), "x") as f:
        f.write(task["config"].get("hostname", pid))
    ctx.info("created " + pid)
    return {"providerid": pid}

@plugin.task("CONFIRM")
def confirm(task, ctx):
    if not machine(task) or not os.path.exists(machine(task)):
        raise TaskFailed("no machine %s" % task["config"].get("providerid"))
    return {"status": 0, "result": {"ipaddress": "127.0.0.1"}, "hostname": open(machine(task)).read()}

@plugin.task("DELETE")
def delete(task, ctx):  # unknown or already gone: success all the same
    with contextlib.suppress(FileNotFoundError, TypeError):
        os.remove(machine(task))

plugin.serve()
