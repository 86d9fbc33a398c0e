"""A small W3C WebDriver client (standard library only) for Chromium's chromedriver.

The protocol is JSON over HTTP: a session, elements found by CSS selector, clicks, keys,
scripts, screenshots, cookies and Chrome's performance log. That is all the console's
browser test needs, so it needs no package from PyPI (and nothing is ever downloaded:
the browser and the driver are Debian's, `chromium` and `chromium-driver`).
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class WebDriverError(Exception):
    """An error answer of the driver: `error` is its code ("no such element", ...)."""

    def __init__(self, error, message):
        super().__init__(f"{error}: {message}")
        self.error = error


class Timeout(AssertionError):
    pass


def find_binary(names, extra=()):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    for path in extra:
        if os.access(path, os.X_OK):
            return path
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    """chromedriver started on a free port; `session()` opens a browser."""

    def __init__(self, chromedriver, log_path):
        self.port = free_port()
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [chromedriver, f"--port={self.port}", "--allowed-ips=127.0.0.1"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        # A loaded machine (a CI run alongside) can take long to start it.
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.request("GET", "/status").get("ready"):
                    break
            except (OSError, WebDriverError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromedriver did not start (see {log_path})")
            time.sleep(0.1)

    def request(self, method, path, body=None, timeout=120):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json; charset=utf-8"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                answer = json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            answer = json.loads(e.read() or b"{}")
            value = answer.get("value") or {}
            raise WebDriverError(value.get("error", str(e.code)), value.get("message", "")) from None
        return answer.get("value")

    def session(self, chromium, width, height, args=()):
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            "--disable-gpu",
                            "--no-sandbox",
                            "--disable-dev-shm-usage",
                            "--no-first-run",
                            "--no-default-browser-check",
                            "--disable-extensions",
                            "--hide-scrollbars",
                            "--force-device-scale-factor=1",
                            f"--window-size={width},{height}",
                            *args,
                        ],
                    },
                    "goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"},
                    "unhandledPromptBehavior": "ignore",
                }
            }
        }
        value = self.request("POST", "/session", caps)
        return Session(self, value["sessionId"])

    def quit(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Element:
    def __init__(self, session, ref):
        self.s = session
        self.ref = ref

    def _path(self, tail=""):
        return f"/element/{self.ref}{tail}"

    def click(self):
        # Into the middle of the view first: clicked at the top, it could be under the
        # page's sticky header, which would take the click.
        self.s.js("arguments[0].scrollIntoView({block: 'center', inline: 'nearest'})", self)
        self.s.call("POST", self._path("/click"), {})

    def send_keys(self, text):
        self.s.call("POST", self._path("/value"), {"text": text})

    def clear(self):
        self.s.call("POST", self._path("/clear"), {})

    @property
    def text(self):
        return self.s.call("GET", self._path("/text"))

    def attribute(self, name):
        return self.s.call("GET", self._path(f"/attribute/{name}"))

    def prop(self, name):
        return self.s.call("GET", self._path(f"/property/{name}"))

    def enabled(self):
        return self.s.call("GET", self._path("/enabled"))

    def displayed(self):
        return self.s.call("GET", self._path("/displayed"))

    def find(self, css):
        return Element(self.s, self.s.call("POST", self._path("/element"), {"using": "css selector", "value": css})[ELEMENT])

    def find_all(self, css):
        found = self.s.call("POST", self._path("/elements"), {"using": "css selector", "value": css})
        return [Element(self.s, e[ELEMENT]) for e in found]

    def screenshot(self, path):
        png = base64.b64decode(self.s.call("GET", self._path("/screenshot")))
        with open(path, "wb") as f:
            f.write(png)


class Session:
    def __init__(self, driver, sid):
        self.d = driver
        self.sid = sid

    def call(self, method, path, body=None):
        return self.d.request(method, f"/session/{self.sid}{path}", body)

    def get(self, url):
        self.call("POST", "/url", {"url": url})

    @property
    def url(self):
        return self.call("GET", "/url")

    def find(self, css):
        return Element(self, self.call("POST", "/element", {"using": "css selector", "value": css})[ELEMENT])

    def find_all(self, css):
        return [Element(self, e[ELEMENT]) for e in self.call("POST", "/elements", {"using": "css selector", "value": css})]

    def js(self, script, *args):
        """Runs `script` (a function body; `arguments` are `args`) and returns its value."""
        wire = [{ELEMENT: a.ref} if isinstance(a, Element) else a for a in args]
        value = self.call("POST", "/execute/sync", {"script": script, "args": wire})
        if isinstance(value, dict) and ELEMENT in value:
            return Element(self, value[ELEMENT])
        return value

    def screenshot(self, path):
        png = base64.b64decode(self.call("GET", "/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        return len(png)

    def set_window(self, width, height):
        self.call("POST", "/window/rect", {"width": width, "height": height})

    def cookies(self):
        return self.call("GET", "/cookie")

    def log(self, kind):
        """Chrome's log `kind` ("performance", "browser") since the last read."""
        return self.call("POST", "/se/log", {"type": kind})

    def quit(self):
        try:
            self.call("DELETE", "")
        except (OSError, WebDriverError):
            pass

    def wait(self, what, condition, timeout=60, interval=0.2):
        """Calls `condition()` until it returns something true (returned) or `timeout`
        seconds pass (then Timeout, naming `what`). WebDriver errors (an element not there
        yet, or replaced while read) count as not yet."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                value = condition()
                if value:
                    return value
            except WebDriverError as e:
                last = e
            if time.monotonic() > deadline:
                raise Timeout(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last})" if last else ""))
            time.sleep(interval)

    def click(self, css, timeout=60, pick=None):
        """Clicks the first element matching `css` (or the one `pick(elements)` returns),
        again while the click fails because the page re-rendered it (a stale element) or
        something covers it for now."""

        def attempt():
            found = self.find_all(css)
            if not found:
                return None
            target = pick(found) if pick else found[0]
            if target is None:
                return None
            target.click()
            return True

        return self.wait(f"a click on {css!r}", attempt, timeout)

    def wait_for(self, css, timeout=60, what=None):
        """The first element matching `css` once there is one."""
        return self.wait(what or f"an element {css!r}", lambda: (self.find_all(css) or [None])[0], timeout)

    def wait_text(self, css, needle, timeout=60):
        """The first element matching `css` whose text contains `needle`."""

        def found():
            for el in self.find_all(css):
                if needle in el.text:
                    return el
            return None

        return self.wait(f"{needle!r} in the text of {css!r}", found, timeout)
