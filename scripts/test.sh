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
    scripts/run-unprivileged.sh build
fi

cd build
ctest --output-on-failure -j "$(nproc)" --timeout 600
