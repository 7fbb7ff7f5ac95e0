#!/usr/bin/env bash
# The conformance suite under sanitizers: ASan+UBSan (build-asan/), then TSan
# (build-tsan/). For each: builds with warnings as errors, runs every test program as an
# unprivileged user (when started as root), then the suite as the caller through CTest.
# Not run: the xpmem-bench --quick check (a benchmark; under a sanitizer it would time the
# sanitizer) and the install check (it links uninstrumented clients, which an instrumented
# libxpmem cannot serve: the sanitizer runtime must be loaded first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
for build in asan:address,undefined tsan:thread; do
    dir=build-${build%%:*}
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXPMEM_WERROR=ON \
        -DXPMEM_SANITIZE="${build#*:}" >/dev/null
    cmake --build "$dir" -j "$(nproc)"
    # GCC 12's ASan allocator is not fork-safe: a fork child of a process whose other
    # thread is inside the allocator can inherit its lock held and hang (LLVM's runtime
    # locks it around fork since release 17). The suite forks from multithreaded owners
    # all the time, so a program or test that fails is run once more; the log says so.
    if [[ $(id -u) -eq 0 ]]; then
        XPMEM_RETRY_ONCE=1 scripts/run-unprivileged.sh "$dir"
    fi
    (cd "$dir" && ctest --output-on-failure -j "$(nproc)" --timeout 600 --repeat until-pass:2 \
        -E '^(bench|install)\.')
done
