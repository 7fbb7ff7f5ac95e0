#!/usr/bin/env bash
# Runs every test program of a build directory (argument 1, default build) as uid 65534,
# each on its own, and fails if any fails. Needs root. The programs run from a
# world-readable copy: the checkout may sit in a directory that uid 65534 cannot enter.
set -euo pipefail
build=${1:-build}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
find "$build/tests" -maxdepth 1 -name "test_*" -type f -executable -exec cp {} "$stage"/ \;
cp -a "$build"/src/libxpmem.so* "$stage"/
chmod -R a+rX "$stage"
# XPMEM_RETRY_ONCE=1 (the sanitizer runs) runs a failed program once more, and says so.
run() {
    (cd "$stage" && setpriv --reuid=65534 --regid=65534 --clear-groups \
        --inh-caps=-all env LD_LIBRARY_PATH="$stage" "$1" --gtest_brief=1)
}
passed=0 failed=0
for test in "$stage"/test_*; do
    if run "$test"; then
        passed=$((passed + 1))
    elif [[ ${XPMEM_RETRY_ONCE:-0} == 1 ]] && echo "unprivileged: $(basename "$test") failed, retrying once" &&
        run "$test"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "unprivileged: $(basename "$test") FAILED"
    fi
done
echo "unprivileged programs ($build): $passed passed, $failed failed"
((failed == 0))
