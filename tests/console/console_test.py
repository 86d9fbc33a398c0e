#!/usr/bin/env python3
"""The console in a real browser (headless Chromium through chromedriver).

Run by tests/tests/console.rs against a daemon it started (with a token, the `local`
provider and the `shell` automator):

    console_test.py --url http://127.0.0.1:PORT --token-file FILE \
        --good-spec good.json --bad-spec bad.json --screenshots DIR

Signs in with the token and checks that no later request carries it (Chrome's
performance log) and that the session cookie is HttpOnly; brings a cluster up from the
console (spec pasted, plan shown, applied), watches its timeline grow and a step's
output stream; opens a node and a step; brings up a cluster whose script fails with
HTML in its output and a hostname with HTML in it, and checks both are shown as text and
nothing was injected; restarts a plugin; looks at tasks and health; takes the first
cluster down; takes a screenshot of each page, and one at phone width.

Waits are for conditions, each with a generous bound that only a failure reaches.
Exit status 0 when every check passed; 1 with the failed check, a screenshot
(failure.png) and the browser's console log otherwise; 2 when Chromium or chromedriver
is missing.
"""

import argparse
import http.server
import json
import os
import signal
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from webdriver import Driver, Timeout, find_binary  # noqa: E402

MINUTE = 60


class Check(AssertionError):
    pass


def check(cond, what):
    if not cond:
        raise Check(what)
    print(f"  ok: {what}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--good-spec", required=True)
    ap.add_argument("--bad-spec", required=True)
    ap.add_argument("--screenshots", required=True)
    ap.add_argument("--chromium")
    ap.add_argument("--chromedriver")
    ap.add_argument("--assets", default=ASSETS, help="the console's files, for the layout check's fake daemon")
    args = ap.parse_args()

    chromium = args.chromium or find_binary(["chromium", "chromium-browser", "google-chrome"], ["/usr/lib/chromium/chromium"])
    chromedriver = args.chromedriver or find_binary(["chromedriver"], ["/usr/lib/chromium/chromedriver"])
    if not chromium or not chromedriver:
        print(
            "console_test: Chromium and chromedriver are needed: apt-get install chromium chromium-driver "
            f"(found chromium: {chromium}, chromedriver: {chromedriver})",
            file=sys.stderr,
        )
        return 2
    os.makedirs(args.screenshots, exist_ok=True)
    token = open(args.token_file).read().strip()
    good = json.load(open(args.good_spec))
    bad = json.load(open(args.bad_spec))

    driver = Driver(chromedriver, os.path.join(args.screenshots, "chromedriver.log"))
    session = None
    started = time.monotonic()
    try:
        session = driver.session(chromium, 1280, 900)
        scenario = Scenario(session, args.url.rstrip("/"), token, good, bad, args.screenshots, args.assets)
        scenario.run()
        print(f"console_test: passed in {time.monotonic() - started:.1f} s", flush=True)
        return 0
    except Exception as e:  # noqa: BLE001 - report any failure with its evidence
        print(f"console_test: FAILED after {time.monotonic() - started:.1f} s: {e}", file=sys.stderr, flush=True)
        traceback.print_exc()
        if session is not None:
            try:
                session.screenshot(os.path.join(args.screenshots, "failure.png"))
                print("  url:", session.url, file=sys.stderr)
                main_text = session.js("return document.querySelector('main') ? document.querySelector('main').innerText : ''")
                print("  page text:\n" + str(main_text)[:4000], file=sys.stderr)
                for entry in session.log("browser"):
                    print("  browser:", entry.get("level"), entry.get("message"), file=sys.stderr)
            except Exception as e2:  # noqa: BLE001
                print("  (no evidence: %s)" % e2, file=sys.stderr)
        return 1
    finally:
        # The ticker waits for its release file: never longer than the test.
        release_ticker(good)
        if session is not None:
            session.quit()
        driver.quit()


def ticker_release_path(good):
    """The file the good spec's ticker script waits for (its action's data)."""
    return good["services"]["ticker"]["actions"]["install"]["data"]


def release_ticker(good):
    path = ticker_release_path(good)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("go\n")


class Scenario:
    def __init__(self, s, url, token, good, bad, shots, assets):
        self.s = s
        self.assets = assets
        self.url = url
        self.token = token
        self.good = good
        self.bad = bad
        self.shots = shots
        self.csp_violations = []
        # <html data-csp-violations> of each page the test left (the console counts them).
        self.csp_counts = {}

    def shot(self, name):
        # Without the passing notices ("up started ..."), which would cover a corner.
        self.s.js("const n = document.getElementById('notices'); if (n) n.hidden = true")
        size = self.s.screenshot(os.path.join(self.shots, name))
        self.s.js("const n = document.getElementById('notices'); if (n) n.hidden = false")
        print(f"  screenshot {name} ({size} bytes)", flush=True)

    def go(self, hash_route):
        self.s.js("location.hash = arguments[0]", hash_route)

    def run(self):
        self.sign_in()
        scripts = self.s.js("return document.scripts.length")
        self.bring_up(self.good, "02-plan.png")
        self.watch_cluster(self.good["name"])
        self.open_node_and_step()
        self.bring_up(self.bad, None)
        self.failed_step_and_planted_text(self.bad["name"], scripts)
        self.go("#/clusters")
        self.s.wait_for(f'tr[data-cluster="{self.bad["name"]}"]', MINUTE)
        self.s.wait_text("table.clusters", "failed", MINUTE)
        self.shot("03-clusters.png")
        self.tasks()
        self.plugins()
        self.health()
        self.phone(self.good["name"])
        self.take_down(self.good["name"])
        self.no_token_after_sign_in()
        self.log_out()
        self.csp_counts["the daemon's console"] = self.csp_count()
        self.large_cluster_layout()
        # Last: every page above, the daemon's and the fake daemon's.
        self.no_csp_violations()

    # -- steps

    def sign_in(self):
        print("sign in", flush=True)
        self.s.get(self.url + "/")
        field = self.s.wait_for("#token", MINUTE, "the login form")
        check(self.s.js("return document.cookie") == "", "no cookie before signing in")
        self.shot("01-login.png")
        # The log up to now is dropped: from here on, requests are checked.
        self.s.log("performance")
        field.send_keys(self.token)
        self.s.find("#login").click()
        self.s.wait_for("details#up", MINUTE, "the clusters page after signing in")
        check(self.s.find("#logout").displayed(), "a Log out button is shown (the daemon has a token)")
        cookies = self.s.cookies()
        check(cookies and all(c.get("httpOnly") for c in cookies), f"every cookie is HttpOnly ({[c.get('name') for c in cookies]})")
        check(all(str(c.get("sameSite", "")).lower() == "strict" for c in cookies), "every cookie is SameSite=Strict")
        check(self.s.js("return document.cookie") == "", "the page's script cannot read the session cookie")
        stored = self.s.js(
            "const all = []; for (const st of [localStorage, sessionStorage]) for (let i = 0; i < st.length; i++)"
            " all.push(st.key(i) + '=' + st.getItem(st.key(i))); return all.join('\\n')"
        )
        check(self.token not in stored, "the token is not in localStorage or sessionStorage")
        self.requests = self.performance_requests()

    def performance_requests(self):
        """Requests the page sent since the last read of the log: (url, headers, body)."""
        out = []
        for entry in self.s.log("performance"):
            msg = json.loads(entry["message"])["message"]
            method = msg.get("method")
            params = msg.get("params", {})
            if method == "Network.requestWillBeSent":
                req = params.get("request", {})
                out.append((req.get("url", ""), req.get("headers", {}), req.get("postData", "") or "", req.get("method"), params.get("type")))
            elif method == "Network.requestWillBeSentExtraInfo":
                # The headers as sent on the wire, cookies included.
                out.append(("(extra info)", params.get("headers", {}), "", None, None))
            elif method == "Log.entryAdded" and "Content Security Policy" in str(params):
                self.csp_violations.append(params)
        return out

    def no_token_after_sign_in(self):
        print("no request carries the token", flush=True)
        self.requests += self.performance_requests()
        exchange = [r for r in self.requests if r[0].endswith("/v1/session") and r[3] == "POST"]
        check(len(exchange) == 1, "the token was sent once, in the body of POST /v1/session")
        api = [r for r in self.requests if "/v1/" in r[0]]
        check(len(api) > 20, f"the log holds the page's API requests ({len(api)})")
        fetches = 0
        for url, headers, body, method, kind in self.requests:
            names = {k.lower() for k in headers}
            check_quiet("authorization" not in names, f"no Authorization header: {url}")
            check_quiet(self.token not in url, f"the token is not in a URL: {url}")
            check_quiet(all(self.token not in str(v) for v in headers.values()), f"the token is not in a header of {url}")
            if not (url.endswith("/v1/session") and method == "POST"):
                check_quiet(self.token not in body, f"the token is not in the body of {method} {url}")
            # Every request of the page's script (fetch), GET too; not the EventSource, which
            # cannot send headers.
            if kind in ("Fetch", "XHR"):
                fetches += 1
                check_quiet(headers.get("X-Loom-CSRF") == "1", f"{method} {url} ({kind}) sends X-Loom-CSRF: 1")
        check(fetches > 20, f"each of the page's {fetches} fetch requests, GET or not, sends X-Loom-CSRF: 1")
        with_cookie = [r for r in self.requests if r[0] == "(extra info)" and any(k.lower() == "cookie" for k in r[1])]
        check(len(with_cookie) > 10, f"requests after signing in carry the session cookie ({len(with_cookie)})")
        check(True, f"none of {len(self.requests)} logged requests carries the token after the sign-in exchange")

    def bring_up(self, spec, screenshot):
        name = spec["name"]
        print(f"bring up {name} from the console", flush=True)
        self.go("#/clusters?up=1")
        area = self.s.wait_for("details#up[open] #spec", MINUTE, "the spec form")
        self.s.js("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))", area, json.dumps(spec, indent=2))
        self.s.find("#show-plan").click()
        answer = self.s.wait_for(".plan-out .plan, .plan-out .error", MINUTE, "the plan (or an error)")
        if "error" in (answer.attribute("class") or "").split():
            raise Check(f"the plan of {name} could not be made: {answer.text}")
        plan = answer
        check("checks passed" in plan.text, f"the plan of {name} passes its checks")
        check(f"on {name}" in plan.text, "the plan names the cluster")
        apply = self.s.wait(f"Apply enabled for {name}", lambda: self.s.find("#apply").enabled() and self.s.find("#apply"), MINUTE)
        if screenshot:
            self.shot(screenshot)
        apply.click()
        self.s.wait(f"the page of cluster {name}", lambda: self.s.url.endswith("#/clusters/" + name), MINUTE)

    def watch_cluster(self, name):
        print(f"watch {name}'s timeline", flush=True)
        self.s.wait_for(".gantt .bar", 2 * MINUTE, "a first bar on the timeline")
        first = self.bars()
        # New bars, or running ones done: the ticker step alone runs for 9 s.
        later = self.s.wait(
            "the timeline to advance",
            lambda: (lambda now: now if len(now) > len(first) or self.done(now) > self.done(first) else None)(self.bars()),
            2 * MINUTE,
        )
        check(True, f"the timeline advanced from {len(first)} bars ({self.done(first)} done) to {len(later)} ({self.done(later)} done)")
        # The ticker step prints a line every 0.3 s and waits after the 6th for the test's
        # release: it streams while it runs. The live text and the running bar are read
        # in one snapshot of the page.
        snap = self.s.wait(
            "tick 3 of 30 in the live box",
            lambda: (lambda v: v if "tick 3 of 30" in v["text"] else None)(self.live_snapshot()),
            2 * MINUTE,
        )
        check(True, "the running step's output streams into its live box")
        check(snap["running"] > 0, f"its bar on the timeline is running ({snap['running']} running bar(s))")
        check("<img id=pwn3 src=x>" in snap["text"] and not snap["pwn3"], "markup in the live stream is shown as text (no #pwn3)")
        self.s.wait_text(".running pre.live-output", "tick 6 of 30", MINUTE)
        check(True, "the live box keeps growing")
        self.shot("04-cluster-live.png")
        release_ticker(self.good)
        self.s.wait_text(".cluster-head .badge", "active", 3 * MINUTE)
        check(not self.s.find_all(".gantt .bar-running"), "no bar runs once the cluster is active")
        nodes = sum(g["count"] for g in self.good["nodeGroups"])
        check(len(self.s.find_all(".gantt-row")) == nodes, f"one timeline row per node ({nodes})")
        self.shot("04-cluster.png")

    def live_snapshot(self):
        return self.s.js(
            "const p = [...document.querySelectorAll('.running pre.live-output')];"
            " return {text: p.map((x) => x.textContent).join('\\n'),"
            " running: document.querySelectorAll('.gantt .bar-running').length,"
            " pwn3: !!document.getElementById('pwn3')}"
        )

    def bars(self):
        """The timeline's bars: task id -> status."""
        return self.s.js(
            "const out = {}; for (const b of document.querySelectorAll('.gantt .bar')) out[b.dataset.taskId] = b.dataset.status; return out"
        )

    @staticmethod
    def done(bars):
        return sum(1 for status in bars.values() if status != "running")

    def open_node_and_step(self):
        print("open a node and a step", flush=True)
        hostname = self.s.find(".node-link").text
        self.s.click(".node-link")
        self.s.wait_text("#detail h2", f"Node {hostname}", MINUTE)
        check(len(self.s.find_all("#detail table tbody tr")) >= 4, "the node shows its steps")
        # The widest bar: a step of a few milliseconds is a sliver the next one may cover.
        self.s.click(
            '.gantt .bar[data-status="ok"]',
            pick=lambda bars: self.s.js(
                "return [...document.querySelectorAll('.gantt .bar[data-status=\"ok\"]')]"
                ".sort((a, b) => b.getBoundingClientRect().width - a.getBoundingClientRect().width)[0]"
            ),
        )
        self.s.wait_text("#detail h2", "Step ", MINUTE)
        check(self.s.find_all("#detail .attempt"), "the step shows its attempt")
        check([b for b in self.s.find_all(".gantt .bar") if "ticker" in b.text], "the ticker step has a bar")
        self.s.click(".gantt .bar", pick=lambda bars: next((b for b in bars if "ticker" in b.text), None))
        out = self.s.wait_text("#detail pre.output", "tick 30 of 30", MINUTE)
        check(out.displayed(), "its stdout tail is shown")

    def failed_step_and_planted_text(self, name, scripts):
        print(f"{name}: a failed step, HTML shown as text", flush=True)
        self.s.wait_text(".cluster-head", "failed", 3 * MINUTE)
        bars = self.s.find_all(".gantt .bar-failed")
        check(bars, "the failed step has a red bar")
        check(self.s.find_all(".gantt .bar-retried"), "its earlier attempts are marked retried")
        self.s.click(".gantt .bar-failed")
        stderr = self.s.wait_text("#detail pre.stderr", "planted error", MINUTE)
        check("planted error: <img id=pwn2 src=x><b>not bold</b>" in stderr.text, "the failed step's stderr tail is shown, HTML as text")
        stdout = self.s.wait_text("#detail pre.stdout", "planted output", MINUTE)
        check("<script>window.pwned = 1</script><img id=pwn src=x>" in stdout.text, "its stdout tail, HTML as text")
        host = self.bad["nodeGroups"][0]["hostname"].replace("{n}", "1")
        self.s.wait_text(".node-link", host, MINUTE)
        check(any(host == e.text for e in self.s.find_all(".gantt-label")), "the planted hostname is shown as text on the timeline")
        self.s.click(".node-link")
        self.s.wait_text("#detail h2", f"Node {host}", MINUTE)
        self.s.click(".gantt .bar-failed")
        self.s.wait_text("#detail pre.stderr", "planted error", MINUTE)
        self.s.js("document.querySelector('.timeline-box').scrollIntoView({block: 'start'})")
        self.shot("05-failed-step.png")
        injected = self.s.js(
            "return {scripts: document.scripts.length, pwn: !!document.getElementById('pwn'),"
            " pwn2: !!document.getElementById('pwn2'), imgs: document.querySelectorAll('img').length,"
            " bold: document.querySelectorAll('main b').length, pwned: typeof window.pwned}"
        )
        check(injected["scripts"] == scripts, f"no script element was added ({injected['scripts']})")
        check(not injected["pwn"] and not injected["pwn2"] and injected["imgs"] == 0, "no planted <img> is in the DOM")
        check(injected["bold"] == 0 and injected["pwned"] == "undefined", "no planted markup ran or rendered")

    def tasks(self):
        print("tasks", flush=True)
        self.go("#/tasks")
        self.s.wait("the task list", lambda: self.s.find_all("table.tasks tbody tr") or self.s.find_all("main .error"), MINUTE)
        check(self.s.find_all("table.tasks tbody tr"), "the task list shows tasks")
        task_id = self.s.find("table.tasks tbody tr th a").text
        self.shot("06-tasks.png")
        self.s.click("table.tasks tbody tr th a", pick=lambda links: next((a for a in links if a.text == task_id), None))
        self.s.wait_text("main h1", f"Task {task_id}", MINUTE)
        self.s.wait_for("main dl.facts", MINUTE, "the task's facts")
        check("Submitted" in self.s.find("main dl.facts").text, "the task page shows its timings")

    def plugins(self):
        print("plugins", flush=True)
        self.go("#/plugins")
        card = 'section.plugin[data-plugin="shell"]'
        self.s.wait_for(card + " table", MINUTE, "the shell plugin's card")
        before = self.plugin_state("shell")
        self.s.click(f"{card} button.restart")
        ok = self.s.wait("the restart dialog", lambda: self.s.find("#dialog-ok").enabled() and self.s.find("#dialog-ok"), MINUTE)
        ok.click()
        # A restart asked for starts a new process and is counted apart from crashes.
        restarted = self.s.wait(
            "a new shell process after the restart",
            lambda: (lambda now: now if now["pids"] and now["pids"] != before["pids"] and now["phases"] == ["ready"] else None)(
                self.plugin_state("shell")
            ),
            2 * MINUTE,
        )
        check(True, f"the shell plugin was restarted: pid {before['pids']} -> {restarted['pids']}")
        counted = self.s.wait(
            "the shell plugin's count of restarts asked for to change",
            lambda: (lambda now: now if now["requested"] != before["requested"] else None)(self.plugin_state("shell")),
            2 * MINUTE,
        )
        check(int(counted["requested"]) == int(before["requested"]) + 1, f"restarts asked for went from {before['requested']} to {counted['requested']}")
        # A crash (the test kills the process) is restarted by the supervisor and counted.
        pid = int(restarted["pids"][0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0")[0].decode(errors="replace")
        check(os.path.basename(argv0) == "loom-plugin-shell", f"pid {pid} is the shell plugin ({argv0})")
        os.kill(pid, signal.SIGKILL)
        after = self.s.wait(
            "the shell plugin's restart count to change after a crash",
            lambda: (lambda now: now if now["restarts"] != restarted["restarts"] else None)(self.plugin_state("shell")),
            2 * MINUTE,
        )
        check(int(after["restarts"]) == int(restarted["restarts"]) + 1, f"restarts went from {restarted['restarts']} to {after['restarts']}")
        self.s.wait_text(f"{card} td.wrap", "pid", MINUTE)
        check(True, "the crash's last error is shown")
        self.s.wait("the shell plugin ready again", lambda: self.plugin_state("shell")["phases"] == ["ready"], 2 * MINUTE)
        self.shot("07-plugins.png")

    def plugin_state(self, name):
        return self.s.js(
            "const c = document.querySelector(`section.plugin[data-plugin=\"${arguments[0]}\"]`);"
            " if (!c) return null;"
            " return {restarts: c.querySelector('.restarts').textContent,"
            " requested: c.querySelector('.requested-restarts').textContent,"
            " pids: [...c.querySelectorAll('tbody tr td:nth-child(2)')].map((td) => td.textContent).filter((p) => p !== '—'),"
            " phases: [...c.querySelectorAll('tbody tr td:nth-child(3)')].map((td) => td.textContent)}",
            name,
        )

    def health(self):
        print("health", flush=True)
        self.go("#/health")
        self.s.wait("the health page", lambda: len(self.s.find_all("svg.chart")) == 3 or self.s.find_all("main .error"), MINUTE)
        check(len(self.s.find_all("svg.chart")) == 3, "three charts")
        check(len(self.s.find_all("svg.chart rect")) > 0, "the charts have bars (tasks ran in the last hour)")
        facts = self.s.find("main dl.facts").text
        check("Version" in facts and "Uptime" in facts and "Journal" in facts, "version, uptime and journal are shown")
        self.shot("08-health.png")

    def phone(self, name):
        print("phone width", flush=True)
        self.s.set_window(390, 844)
        self.go("#/clusters/" + name)
        self.s.wait_for(".gantt .bar", MINUTE)
        width = self.s.js("return document.documentElement.scrollWidth")
        check(width <= 400, f"the page does not scroll sideways at phone width ({width} px)")
        self.shot("09-phone.png")
        self.s.set_window(1280, 900)

    def take_down(self, name):
        print(f"take {name} down", flush=True)
        self.go("#/clusters/" + name)
        self.s.click("#take-down", pick=lambda found: found[0] if found[0].enabled() else None)
        ok = self.s.wait("the plan of down", lambda: self.s.find("#dialog-ok").enabled() and self.s.find("#dialog-ok"), MINUTE)
        check("checks passed" in self.s.find("#dialog-body").text, "the confirmation shows the plan of down")
        ok.click()
        self.s.wait_text(".cluster-head .badge", "terminated", 3 * MINUTE)
        check(True, f"{name} is terminated")

    def large_cluster_layout(self):
        """200 nodes and a 64 KiB output tail (from a fake daemon serving the same files)
        neither widen the page nor make it endless: boxes scroll inside."""
        print("200 nodes and a 64 KiB output tail", flush=True)
        fake = FakeDaemon(self.assets)
        try:
            for width, height in [(1280, 900), (390, 844)]:
                self.s.set_window(width, height)
                self.s.get(fake.url + "/#/clusters/big")
                self.s.wait("200 timeline rows", lambda: len(self.s.find_all(".gantt-row")) == 200, MINUTE)
                check(len(self.s.find_all(".node-table tbody tr")) == 200, f"200 node rows at {width} px")
                self.s.click('.gantt .bar[data-task-id="big-node-7.INSTALL.app.j1a1"]')
                pre = self.s.wait_text("#detail pre.stdout", "line 399", MINUTE)
                box = self.s.js(
                    "const p = arguments[0], g = document.querySelector('.gantt-scroll');"
                    " return {page: document.documentElement.scrollWidth, view: window.innerWidth,"
                    " text: p.textContent.length, h: p.clientHeight, sh: p.scrollHeight, pw: p.getBoundingClientRect().width,"
                    " gantt: g.clientHeight, vh: window.innerHeight}",
                    pre,
                )
                check(box["page"] <= box["view"], f"no sideways scroll at {width} px ({box['page']} <= {box['view']})")
                check(box["text"] >= 64 * 1024 - 16, f"the whole 64 KiB tail is there ({box['text']} characters)")
                check(box["h"] < 450 and box["sh"] > 10 * box["h"], f"the tail scrolls inside its box ({box['h']} of {box['sh']} px)")
                check(box["pw"] <= box["view"], "the output box fits the width")
                check(box["gantt"] <= 0.75 * box["vh"], f"the timeline scrolls inside its box ({box['gantt']} px)")
                self.shot(f"10-200-nodes-{width}.png")
                self.csp_counts[f"the 200-node page at {width} px"] = self.csp_count()
            check(not self.s.find_all("#pwn"), "nothing injected")
            self.live_box_stays_bounded(fake)
        finally:
            self.s.set_window(1280, 900)
            fake.stop()

    def log_out(self):
        print("log out", flush=True)
        self.s.click("#logout")
        self.s.wait_for("#token", MINUTE, "the login form after logging out")
        check(not self.s.find("#logout").displayed(), "the login form is back, without a Log out button")
        check(not self.s.js("return document.getElementById('dialog').open"), "no dialog is left open")

    def csp_count(self):
        """The page's count of Content-Security-Policy violations (console.js keeps it)."""
        count = self.s.js("return document.documentElement.dataset.cspViolations")
        if count is None:
            raise Check("the page does not count CSP violations (no <html data-csp-violations>): console.js did not run")
        return int(count), self.s.js("return document.documentElement.dataset.cspLast || ''")

    def live_box_stays_bounded(self, fake):
        """A running step that writes only stdout, far more than 64 KiB of it: its live box
        keeps the last 64 KiB (and says what the daemon dropped)."""
        print("a live box under 160 KiB of output", flush=True)
        self.s.get(fake.url + "/#/clusters/live")
        self.s.wait_for(".running pre.live-output", MINUTE, "the running step's live box")
        self.s.wait("the live events", lambda: self.s.js("return document.getElementById('live').textContent") == "live", MINUTE)
        fake.send_output.set()
        done = self.s.wait_text(".running pre.live-output", "the last piece", MINUTE)
        box = self.s.js(
            "const p = arguments[0]; return {text: p.textContent.length, spans: p.childNodes.length,"
            " head: p.textContent.slice(0, 40), tail: p.textContent.slice(-200)}",
            done,
        )
        total = fake.live_output_chars
        check(total > 2 * 64 * 1024, f"the fake daemon sent {total} characters of stdout")
        check(box["text"] <= 64 * 1024, f"the live box holds at most 64 KiB ({box['text']} characters in {box['spans']} spans)")
        check(box["text"] >= 60 * 1024, f"and close to all of the last 64 KiB ({box['text']})")
        check("5000 bytes dropped" in box["tail"], "what the daemon dropped is marked in the box")
        self.csp_counts["the fake live page"] = self.csp_count()

    def no_csp_violations(self):
        print("no Content-Security-Policy violation", flush=True)
        self.performance_requests()  # the rest of Chrome's log, for its CSP entries
        logs = [e for e in self.s.log("browser") if "Content Security Policy" in str(e.get("message"))]
        check(not logs and not self.csp_violations, f"no Content-Security-Policy violation in Chrome's logs ({logs or self.csp_violations})")
        for page, (count, last) in self.csp_counts.items():
            check(count == 0, f"no securitypolicyviolation event on {page} ({count}{': ' + last if last else ''})")


ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "supervisor", "src", "daemon", "console", "assets")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def big_cluster():
    """A cluster of 200 nodes, each with six steps, one of them with a 64 KiB stdout tail
    of long unbroken lines, and hostnames longer than the page is wide on a phone."""
    nodes, tasks = [], []
    t0 = 1_700_000_000_000
    long_line = "x" * 300
    tail = "".join(f"line {i} {long_line}\n" for i in range(400))[-64 * 1024 :]
    for n in range(200):
        node = f"big-node-{n}"
        nodes.append(
            {"id": node, "group": "app", "hostname": f"{node}.a-rather-long-domain-name-for-a-host.example.internal",
             "address": f"10.0.{n // 250}.{n % 250}", "providerid": f"i-{n:017x}", "services": ["app"], "endpoints": []}
        )
        start = t0 + n * 50
        for k, (name, service) in enumerate(
            [("CREATE", None), ("CONFIRM", None), ("BOOTSTRAP", None), ("INSTALL", "app"), ("CONFIGURE", "app"), ("START", "app")]
        ):
            step = f"{name} {node}" + (f" {service}" if service else "")
            task_id = f"{node}.{name}" + (f".{service}" if service else "") + ".j1a1"
            tasks.append(
                {"taskId": task_id, "jobId": "big.j1", "step": step, "taskName": name, "attempt": 1, "state": "done",
                 "status": 1 if (n % 37 == 5 and name == "START") else 0,
                 "stdout": tail if (node == "big-node-7" and name == "INSTALL") else "ok\n", "stderr": "", "sends": 1,
                 "startedAt": "2023-11-14T22:13:20Z", "finishedAt": "2023-11-14T22:13:21Z",
                 "startedMs": start + k * 1000, "finishedMs": start + k * 1000 + 900}
            )
    return {"name": "big", "state": "active", "interrupted": False, "busy": False, "createdAt": "2023-11-14T22:13:20Z",
            "updatedAt": "2023-11-14T22:20:00Z", "lastJob": "big.j1", "nodes": nodes, "stepsDone": 1200,
            "stepsFailed": 0, "tasks": tasks}


LIVE_TASK = "live-node-1.INSTALL.app.j1a1"


def live_cluster():
    """One node whose INSTALL runs (its output comes from the fake /v1/events)."""
    now = int(time.time() * 1000)
    return {"name": "live", "state": "creating", "interrupted": False, "busy": True, "createdAt": "2023-11-14T22:13:20Z",
            "updatedAt": "2023-11-14T22:20:00Z", "lastJob": "live.j1", "stepsDone": 0, "stepsFailed": 0,
            "nodes": [{"id": "live-node-1", "group": "app", "hostname": "live-node-1.example.internal", "address": "10.1.0.1",
                       "providerid": "i-1", "services": ["app"], "endpoints": []}],
            "tasks": [{"taskId": LIVE_TASK, "jobId": "live.j1", "step": "INSTALL live-node-1 app", "taskName": "INSTALL",
                       "attempt": 1, "state": "running", "sends": 1, "startedAt": "2023-11-14T22:13:20Z", "startedMs": now - 5000}]}


class FakeDaemon:
    """The console's files from the checkout and just enough of the API (no token) to
    show one big cluster."""

    def __init__(self, assets):
        cluster = json.dumps(big_cluster()).encode()
        live = json.dumps(live_cluster()).encode()
        # The events /v1/events sends once the test sets send_output: 160 pieces of 1 KiB
        # of stdout for the running step, then one after dropped pieces.
        self.send_output = send = threading.Event()
        self.stopping = stopping = threading.Event()
        pieces = [("stdout", f"piece {i:03d} " + "y" * 1000 + "\n", {}) for i in range(160)]
        pieces.append(("stdout", "the last piece\n", {"dropped": 3, "droppedBytes": 5000}))
        self.live_output_chars = sum(len(d) for _, d, _ in pieces)
        events = b"".join(
            b"id: fake-%d\nevent: step.output\ndata: %s\n\n"
            % (n + 1, json.dumps({"cluster": "live", "jobId": "live.j1", "taskId": LIVE_TASK, "stream": st, "data": d, **extra}).encode())
            for n, (st, d, extra) in enumerate(pieces)
        )
        files = {"/": ("index.html", "text/html"), "/console.css": ("console.css", "text/css"), "/console.js": ("console.js", "text/javascript")}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                if path in files:
                    name, ctype = files[path]
                    with open(os.path.join(assets, name), "rb") as f:
                        self.answer(200, f.read(), ctype)
                elif path == "/v1/session":
                    self.answer(200, b'{"authenticated": true, "tokenRequired": false}')
                elif path == "/v1/clusters/big":
                    self.answer(200, cluster)
                elif path == "/v1/clusters/live":
                    self.answer(200, live)
                elif path == "/v1/events":
                    self.events()
                elif path == "/v1/clusters":
                    self.answer(200, b'{"clusters": []}')
                else:
                    self.answer(404, b'{"error": "not in the fake daemon"}')

            def events(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                sent = False
                try:
                    self.wfile.write(b": hello\n\n")
                    self.wfile.flush()
                    while not stopping.is_set():
                        if send.is_set() and not sent:
                            self.wfile.write(events)
                            sent = True
                        else:
                            self.wfile.write(b": keepalive\n\n")
                        self.wfile.flush()
                        stopping.wait(0.3)
                except OSError:
                    pass

            def answer(self, code, body, ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Security-Policy", CSP)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def check_quiet(cond, what):
    if not cond:
        raise Check(what)


if __name__ == "__main__":
    sys.exit(main())
