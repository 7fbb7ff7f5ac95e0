#!/usr/bin/env bash
# Set-up command 2: installs dependencies, builds with warnings as errors, and runs the
# whole conformance suite: as an unprivileged user (when started as root), then as the
# caller through CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXPMEM_WERROR=ON >/dev/null
cmake --build build -j "$(nproc)"

if [[ $(id -u) -eq 0 ]]; then
    # The unprivileged pass runs from a world-readable copy: the checkout may sit in a
    # directory that uid 65534 cannot enter.
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    find build/tests -maxdepth 1 -name "test_*" -type f -executable -exec cp {} "$stage"/ \;
    cp -a build/src/libxpmem.so* "$stage"/
    chmod -R a+rX "$stage"
    passed=0 failed=0
    for test in "$stage"/test_*; do
        if (cd "$stage" && setpriv --reuid=65534 --regid=65534 --clear-groups \
                --inh-caps=-all env LD_LIBRARY_PATH="$stage" "$test" --gtest_brief=1); then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
            echo "unprivileged: $(basename "$test") FAILED"
        fi
    done
    echo "unprivileged programs: $passed passed, $failed failed"
    ((failed == 0)) || exit 1
fi

cd build
ctest --output-on-failure -j "$(nproc)" --timeout 600
