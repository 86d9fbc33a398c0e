#!/bin/sh
# The console's browser test: a service script that prints a numbered line every 0.3 s
# for about 6 s, so that its output streams while the test watches.
i=1
while [ "$i" -le 20 ]; do
  echo "tick $i of 20"
  i=$((i + 1))
  sleep 0.3
done
