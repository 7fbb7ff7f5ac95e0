#!/usr/bin/env bash
# A packager's build of the library alone (-DXPMEM_BUILD_TESTS=OFF, tools and examples
# off) needs nothing but a compiler and threads: it configures with every other package
# the project can use (GoogleTest, Google Benchmark, fmt, nlohmann-json, cxxopts) made
# unfindable.
set -euo pipefail
source_dir=$(cd "$(dirname "$0")/../.." && pwd)
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
disabled=()
for package in GTest benchmark fmt nlohmann_json cxxopts; do
    disabled+=("-DCMAKE_DISABLE_FIND_PACKAGE_$package=ON")
done
cmake -S "$source_dir" -B "$build" -DXPMEM_BUILD_TESTS=OFF -DXPMEM_BUILD_TOOLS=OFF \
    -DXPMEM_BUILD_EXAMPLES=OFF --no-warn-unused-cli "${disabled[@]}" >/dev/null
echo "library-only configure: ok"
