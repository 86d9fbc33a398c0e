#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a set time, one after another.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 60 s, every target)
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/, read only) and from
# what earlier runs found (fuzz/corpus/<target>/, where new inputs go; not in git). A
# crash, a failed check, a timeout (over $LOOM_FUZZ_TIMEOUT s for one input, default 10)
# or running out of memory leaves the input in fuzz/artifacts/<target>/ and makes this
# script exit 1 once every target has run; each target's libFuzzer output is in
# fuzz/target/logs/<target>.log. Prints per target: executions, coverage (libFuzzer's
# edges "cov" and features "ft"), corpus size and the outcome.
#
# Works on the stable toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer=...),
# which stable accepts with RUSTC_BOOTSTRAP=1, set here unless the toolchain is nightly.
# $LOOM_FUZZ_SANITIZER picks the sanitizer (default address; "none" makes 2 to 4 times
# the executions and still catches panics and failed checks; switching rebuilds
# everything). Installs cargo-fuzz if missing.
set -uo pipefail

fuzz="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$fuzz")"
cd "$root" || exit 2

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
shift $(($# > 0 ? 1 : 0))
sanitizer="${LOOM_FUZZ_SANITIZER:-address}"
timeout_secs="${LOOM_FUZZ_TIMEOUT:-10}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked; a few minutes)"
    cargo install cargo-fuzz --locked || exit 2
fi
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi

all_targets="$(cargo fuzz list)" || exit 2
if [ $# -gt 0 ]; then
    targets="$*"
    for t in $targets; do
        grep -qx "$t" <<<"$all_targets" || { echo "no fuzz target $t (targets: $(echo $all_targets))" >&2; exit 2; }
    done
else
    targets="$all_targets"
fi

echo "== building (cargo fuzz build --sanitizer $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer" || exit 2

# Run the binaries just built (not `cargo fuzz run`, which would rebuild first): what
# runs is what was built at the start, whatever happens to the sources meanwhile.
bin_dir="$fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
# As cargo-fuzz does for runs under AddressSanitizer.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"
logs="$fuzz/target/logs"
mkdir -p "$logs"
failed=0
summary=()
for t in $targets; do
    mkdir -p "$fuzz/corpus/$t" "$fuzz/artifacts/$t"
    log="$logs/$t.log"
    cmd=("$bin_dir/$t" "-artifact_prefix=fuzz/artifacts/$t/" "-max_total_time=$seconds"
        "-timeout=$timeout_secs" -print_final_stats=1 "fuzz/corpus/$t" "fuzz/seeds/$t")
    echo "== $t for ${seconds} s: ${cmd[*]#"$root/"}"
    "${cmd[@]}" >"$log" 2>&1
    status=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    last="$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1)"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
    corpus="$(find "fuzz/corpus/$t" -type f | wc -l)"
    if [ "$status" -eq 0 ]; then
        outcome="ok"
    else
        failed=1
        artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)"
        outcome="FAILED (exit $status): ${artifact:-see $log}"
        grep -m1 -A3 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" | sed 's/^/    /'
    fi
    line="$(printf '%-20s %8s s %12s execs  cov %6s  ft %7s  corpus %6s  %s' \
        "$t" "$seconds" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$corpus" "$outcome")"
    echo "$line"
    summary+=("$line")
done

echo "== summary (logs in fuzz/target/logs/)"
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
    echo "== a target failed: reproduce with  RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET ARTIFACT  (fuzz/README.md)"
fi
exit "$failed"
