#!/bin/sh
# The console's browser test: a service script that prints a numbered line every 0.3 s
# for about 9 s, so that its output streams while the test watches.
i=1
while [ "$i" -le 30 ]; do
  echo "tick $i of 30"
  i=$((i + 1))
  sleep 0.3
done
