#!/usr/bin/env python3
"""web_server.py ADDRESS PORT STORE_URL HOSTNAME: answers GET / with the store's greeting."""
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADDRESS, PORT, STORE_URL, HOSTNAME = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            greeting = urllib.request.urlopen(STORE_URL, timeout=5).read().decode().strip()
            code, body = 200, "%s, served by %s\n" % (greeting, HOSTNAME)
        except OSError as e:
            code, body = 502, "the store at %s does not answer: %s\n" % (STORE_URL, e)
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer((ADDRESS, PORT), Handler).serve_forever()
