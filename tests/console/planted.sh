#!/bin/sh
# The console's browser test: a service script whose output is HTML that must be shown
# as text. It prints markup to stdout and stderr, then fails (status 1); every attempt
# fails the same way.
echo "planted output: <script>window.pwned = 1</script><img id=pwn src=x>"
echo "planted error: <img id=pwn2 src=x><b>not bold</b>" >&2
exit 1
