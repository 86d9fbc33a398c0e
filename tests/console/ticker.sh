#!/bin/sh
# The console's browser test: a service script that prints a numbered line every 0.3 s,
# so that its output streams while the test watches. After "tick 6 of 30" it keeps
# printing nothing new until the file named by its argument (the action's data) exists,
# which the test creates once it has seen that line in the live box (at most 5 min),
# then prints the rest. Its first line is markup, which the console must show as text.
release="$1"
echo "ticker: <img id=pwn3 src=x> is text"
i=1
while [ "$i" -le 30 ]; do
  echo "tick $i of 30"
  if [ "$i" -eq 6 ]; then
    waited=0
    while [ ! -e "$release" ] && [ "$waited" -lt 1000 ]; do
      sleep 0.3
      waited=$((waited + 1))
    done
  fi
  i=$((i + 1))
  sleep 0.3
done
