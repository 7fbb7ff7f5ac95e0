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
    if [[ $(id -u) -eq 0 ]]; then
        scripts/run-unprivileged.sh "$dir"
    fi
    (cd "$dir" && ctest --output-on-failure -j "$(nproc)" --timeout 600 -E '^(bench|install)\.')
done
