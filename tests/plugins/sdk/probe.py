#!/usr/bin/env python3
"""An automator on the Python SDK that misbehaves on request (config.probe), for tests/tests/script_sdks.rs."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "../../../plugin-sdk/python"))
from loom_plugin import Plugin  # noqa: E402

plugin = Plugin("probe", "1.0.0", kind="automator", max_concurrency=4)


@plugin.task()
def probe(task, ctx):
    what = task["config"].get("probe")
    if what == "raise":
        raise RuntimeError("probe failed on purpose")
    if what == "print":
        print("a stray print from a handler")
        os.write(1, b"a stray write on fd 1\n")
        subprocess.run(["echo", "a stray line from a command"], check=True)
        return {"pid": os.getpid()}
    if what == "wait-cancel":
        ctx.cancelled.wait(300)
        return {"status": 7, "result": {"partial": True}, "stderr": "stopped: cancelled=%s" % ctx.cancelled.is_set()}
    if what == "run-cancel":
        return ctx.run(["/bin/sh", "-c", "echo started; sleep 300"])
    ctx.info("a log line from the probe")
    return {"pid": os.getpid()}


plugin.serve()
