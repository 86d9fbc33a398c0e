#!/usr/bin/env python3
"""The benchmark's Python plugin, for the restart contrast: an automator written from
protocol/PROTOCOL.md with the standard library only, answering every task with status 0."""
import json
import sys

TASKS = ["BOOTSTRAP", "INSTALL", "CONFIGURE", "INITIALIZE", "START", "STOP", "REMOVE"]


def send(msg):
    sys.stdout.write(json.dumps(msg, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main():
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        rid, method = msg.get("id"), msg.get("method")
        if rid is None:
            continue  # a notification (cancel): nothing runs long enough to cancel
        if method == "handshake":
            result = {"protocolVersion": 1, "name": "py-noop", "version": "0", "tasks": TASKS, "maxConcurrency": 64}
        elif method == "task":
            result = {"status": 0, "result": {}, "stdout": "", "stderr": ""}
        else:
            result = {}
        send({"jsonrpc": "2.0", "id": rid, "result": result})


if __name__ == "__main__":
    main()
