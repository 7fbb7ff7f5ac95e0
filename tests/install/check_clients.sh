#!/usr/bin/env bash
# Builds and runs the classic C client through pkg-config (cray-xpmem and xpmem) and the
# C++ consumer through CMake's find_package against the library installed in PREFIX. The
# caller's environment decides where pkg-config and the loader look (check_install.sh
# points them at a scratch prefix; the Debian packages' check uses the system's defaults).
#
#   tests/install/check_clients.sh PREFIX
set -euo pipefail
prefix=$1
source_dir=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for package in cray-xpmem xpmem; do
    # shellcheck disable=SC2046
    cc -std=c99 -Wall -Werror -o "$work/classic" "$source_dir/classic_client.c" \
        $(pkg-config --cflags --libs "$package")
    "$work/classic"
done
cmake -S "$source_dir/consumer" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/consumer" >/dev/null
"$work/consumer/consumer"
