#!/usr/bin/env bash
# Builds and runs the classic C client through pkg-config (cray-xpmem and xpmem; shared, and
# static with --static), the C++ consumer through CMake's find_package, and the C client
# through find_package's static target, against the library installed in PREFIX. The
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
# Statically linked, by the C compiler: the flags pkg-config gives for --static suffice.
# shellcheck disable=SC2046
cc -std=c99 -Wall -Werror -o "$work/classic-static" "$source_dir/classic_client.c" \
    $(pkg-config --cflags xpmem) -Wl,-Bstatic $(pkg-config --static --libs xpmem) -Wl,-Bdynamic
if ldd "$work/classic-static" | grep -q libxpmem; then
    echo "the static client loads libxpmem.so" >&2
    exit 1
fi
"$work/classic-static"
cmake -S "$source_dir/consumer" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/consumer" >/dev/null
"$work/consumer/consumer"
cmake -S "$source_dir/static_c_client" -B "$work/static_c_client" \
    -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/static_c_client" >/dev/null
"$work/static_c_client/static_c_client"
