#!/usr/bin/env python3
"""pyshell: a Loom automator that runs each service action's script on this host with /bin/sh.

- The action, in Loom's form `{"type", "script", "data"}` (data passed as one argument, $1)
  or Coopr's `{"type", "fields": {"script", "args"}}` (args: shell words, or a list).
- `script` names a file in the scripts folder (settings.scripts, relative to this folder;
  default `scripts/`) or an absolute path, run with /bin/sh; anything else is shell text
  run with `/bin/sh -c`.
- Scripts run in the work folder (settings.workDir, default $TMPDIR/loom-<name>), which
  BOOTSTRAP makes (running it again changes nothing), with $LOOM_TASK_ID set. Their output
  is streamed as it comes; their exit code is the task's status. A cancel kills the
  script's process group.
"""
import os
import shlex
import sys
import tempfile

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(HERE, "../../.."))
from loom_plugin import Plugin, TaskFailed  # noqa: E402

NAME = os.environ.get("LOOM_PLUGIN_NAME", "pyshell")
plugin = Plugin("pyshell", "1.0.0", kind="automator", max_concurrency=4, idempotent_tasks=["BOOTSTRAP"])


def work_dir(ctx):
    work = ctx.settings.get("workDir") or os.path.join(tempfile.gettempdir(), "loom-" + NAME)
    if not isinstance(work, str):
        raise TaskFailed("settings.workDir must be a string")
    os.makedirs(work, exist_ok=True)
    return work


@plugin.task("BOOTSTRAP")
def bootstrap(task, ctx):
    work = work_dir(ctx)
    ctx.info("work folder %s is ready" % work)
    return {"pyshell_workdir": work}


def command(task):
    """The argv that runs the task's action, and what to call it in the log."""
    action = ((task.get("config") or {}).get("service") or {}).get("action") or {}
    fields = action.get("fields") if isinstance(action.get("fields"), dict) else {}
    if isinstance(action.get("script"), str) and action["script"]:
        script, data = action["script"], action.get("data")
        args = [] if data is None or data == "" else [data if isinstance(data, str) else str(data)]
    elif isinstance(fields.get("script"), str) and fields["script"]:
        script, words = fields["script"], fields.get("args") or []
        try:
            args = shlex.split(words) if isinstance(words, str) else [str(w) for w in words]
        except ValueError as e:
            raise TaskFailed("%s: fields.args are not shell words: %s" % (task["taskName"], e))
    else:
        raise TaskFailed("%s: the action has no script (service.action.script or .fields.script)" % task["taskName"])
    path = script if os.path.isabs(script) else os.path.join(HERE, plugin.settings.get("scripts") or "scripts", script)
    if os.path.isfile(path):
        return ["/bin/sh", path] + args, "script " + os.path.basename(path)
    return ["/bin/sh", "-c", script, NAME] + args, "shell text"


@plugin.task()
def action(task, ctx):
    argv, what = command(task)
    ctx.info("%s: running %s" % (task["taskName"], what))
    env = dict(os.environ, LOOM_TASK_ID=task["taskId"])
    run = ctx.run(argv, cwd=work_dir(ctx), env=env)
    if run["status"] != 0 and ctx.cancelled.is_set():
        run["stderr"] += "cancelled: the script was killed\n"
    return dict(run, result={})


if __name__ == "__main__":
    plugin.serve()
