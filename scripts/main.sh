#!/usr/bin/env bash
# Set-up command 1: installs dependencies, builds, and runs the main job: the example,
# two processes sharing one buffer through XPMEM (C++, then the same in plain C), then the
# quick benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"
build/examples/xpmem-example
build/examples/xpmem-example-c
build/tools/bench/xpmem-bench --quick
