#!/usr/bin/env python3
"""Helpers for the example's scripts.

    task.py PATH               print a value of the task ($LOOM_TASK_JSON), e.g. config.ipaddress
    task.py --nodes-with SVC   print the address of every node that runs service SVC
    task.py --wait-http URL    wait (10 s at most) until URL answers 200
"""
import json
import os
import sys
import time
import urllib.request


def task():
    with open(os.environ["LOOM_TASK_JSON"]) as f:
        return json.load(f)


def value(path):
    v = task()
    for part in path.split("."):
        v = v[part]
    return v if isinstance(v, str) else json.dumps(v)


def nodes_with(service):
    nodes = task()["config"]["nodes"].values()
    return [n.get("ipaddress", "") for n in nodes if service in n.get("services", [])]


def wait_http(url):
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return True
        except OSError:
            time.sleep(0.1)
    return False


if __name__ == "__main__":
    if sys.argv[1] == "--nodes-with":
        print("\n".join(nodes_with(sys.argv[2])))
    elif sys.argv[1] == "--wait-http":
        sys.exit(0 if wait_http(sys.argv[2]) else 1)
    else:
        print(value(sys.argv[1]))
