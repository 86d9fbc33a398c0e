#!/usr/bin/env python3
"""Brings up machines with the `local` provider, installs and starts the example web app
(examples/webapp/) on them with the `shell` automator, fetches each page, then tears it
all down. Drives `loom-provisioner run` one phase at a time and carries each node's
results into its next tasks, as Loom's server did.

    cargo build --release --workspace
    PATH="$PWD/target/release:$PATH" python3 examples/local-webapp.py [--nodes 3] [--keep]

Needs openssh-server (sshd, ssh-keygen) on this host. `--keep` leaves the machines up
and prints the tasks that delete them.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def plugins_dir(work):
    """A plugins tree: the bundled local provider and shell automator, with demo settings."""
    top = os.path.dirname(HERE)
    manifests = {
        "providers/local": ("plugins/local/local.json", {"stateDir": os.path.join(work, "machines")}),
        "automators/shell": ("plugins/shell/shell.json",
                             {"scripts": os.path.join(HERE, "webapp"), "workDir": os.path.join(work, "remote")}),
    }
    for folder, (shipped, settings) in manifests.items():
        name = os.path.basename(folder)
        with open(os.path.join(top, shipped)) as f:
            manifest = json.load(f)
        manifest[name]["settings"].update(settings)
        # The shell automator logs in with the keys the local provider (root, when run as
        # root) keeps readable by its own user only: it runs as the same user.
        manifest[name]["user"] = "root"
        os.makedirs(os.path.join(work, "plugins", folder))
        with open(os.path.join(work, "plugins", folder, name + ".json"), "w") as f:
            json.dump(manifest, f, indent=2)
    return os.path.join(work, "plugins")


def phase(plugins, nodes, name, extra=lambda i: {}):
    """Runs task `name` on every node; merges each result into the node's config."""
    tasks = []
    for i, config in enumerate(nodes):
        task_config = dict(config, **extra(i))
        tasks.append({"taskId": "%s-%d" % (name.lower(), i), "jobId": "demo", "clusterId": "demo",
                      "taskName": name, "nodeId": "node-%d" % i, "config": task_config})
    run = subprocess.run(["loom-provisioner", "--log-level", "warn", "run", "--plugins-dir", plugins],
                         input="\n".join(json.dumps(t) for t in tasks), capture_output=True, text=True)
    if run.returncode == 2:
        sys.exit(run.stderr)
    results = {r["taskId"]: r for r in map(json.loads, run.stdout.splitlines())}
    for i, config in enumerate(nodes):
        r = results["%s-%d" % (name.lower(), i)]
        if r["status"] != 0:
            raise RuntimeError("%s on node-%d failed (status %s):\n%s" % (name, i, r["status"], r["stderr"]))
        config.update(r.get("result") or {})
        for key in ("hostname", "ipaddresses"):
            if r.get(key):
                config[key] = r[key]
    print("%-10s ok on %d node(s)" % (name, len(nodes)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="leave the machines running")
    args = parser.parse_args()
    # Not under /tmp: the supervisor refuses plugins in a folder every user can write.
    scratch = os.path.join(os.path.dirname(HERE), "target", "demo")
    os.makedirs(scratch, mode=0o755, exist_ok=True)
    work = tempfile.mkdtemp(prefix="loom-demo-", dir=scratch)
    plugins = plugins_dir(work)
    nodes = [{"hostname": "web-%d.local" % i, "provider": {"name": "local", "providertype": "local"},
              "automators": ["shell"]} for i in range(args.nodes)]
    port = lambda i: 18000 + i
    service = lambda script: lambda i: {"service": {"name": "webapp", "action": {
        "type": "shell", "script": script, "data": str(port(i))}}}
    up = False
    try:
        phase(plugins, nodes, "CREATE")
        up = True
        phase(plugins, nodes, "CONFIRM")
        phase(plugins, nodes, "BOOTSTRAP")
        for step in ("install", "configure", "start"):
            phase(plugins, nodes, step.upper(), service(step + ".sh"))
        for i, node in enumerate(nodes):
            url = "http://%s:%d/" % (node["ipaddress"], port(i))
            page = urllib.request.urlopen(url, timeout=10).read().decode().strip()
            print("%-10s %s -> %s (ssh -i %s -p %s %s@%s)" % ("", url, page, node["ssh-auth"]["identityfile"],
                  node["ssh-auth"]["port"], node["ssh-auth"]["user"], node["ipaddress"]))
        if args.keep:
            print("machines kept; state in %s; delete them with:" % work)
            for i, node in enumerate(nodes):
                print("  echo '%s' | loom-provisioner run --plugins-dir %s" % (json.dumps(
                    {"taskId": "d%d" % i, "taskName": "DELETE", "config": {
                        "providerid": node["providerid"], "provider": node["provider"]}}), plugins))
            up = False
            return
        phase(plugins, nodes, "STOP", service("stop.sh"))
        phase(plugins, nodes, "REMOVE", service("remove.sh"))
    finally:
        if up:
            phase(plugins, nodes, "DELETE")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
