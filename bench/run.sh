#!/bin/sh
# The whole benchmark in one command: builds what it measures (release), then runs
# loom-bench, which measures everything in one run (the peers from ../shared/peers and
# the cluster against ansible-playbook included; it installs ansible-core from PyPI into
# /tmp/loom-bench-ansible if ansible-playbook is missing; the fleet on a throwaway
# PostgreSQL server, when PostgreSQL is installed) and writes BENCHMARKS.md and
# bench/latency.svg. Takes about 20 minutes.
#
#   bench/run.sh            the full run; writes the report and the chart
#   bench/run.sh --quick    the smoke run CI does (under a minute); writes nothing
#   bench/run.sh --only latency,flood    some sections only; writes nothing
set -eu
cd "$(dirname "$0")/.."
# The same selection as dist/deb/build.sh: one set of features, so that the package
# build after this one (in .ci/run) finds everything built.
cargo build --release --quiet --workspace --bins
if [ $# -gt 0 ]; then
  exec target/release/loom-bench "$@"
fi
exec target/release/loom-bench --out BENCHMARKS.md --chart bench/latency.svg
