#!/usr/bin/env bash
# Installs the built project into a scratch prefix, runs an installed program without
# LD_LIBRARY_PATH (its run path finds the library), then builds and runs a classic C client
# through pkg-config (cray-xpmem and xpmem; shared, and static with --static), a C++ one
# through find_package, and the C client through find_package's static target.
set -euo pipefail
build_dir=$1
source_dir=$(cd "$(dirname "$0")" && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build_dir" --prefix "$prefix" >/dev/null
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig:$prefix/lib/x86_64-linux-gnu/pkgconfig
export LD_LIBRARY_PATH=$prefix/lib:$prefix/lib/x86_64-linux-gnu
for package in cray-xpmem xpmem; do
    # shellcheck disable=SC2046
    cc -std=c99 -Wall -Werror -o "$prefix/classic" "$source_dir/classic_client.c" \
        $(pkg-config --cflags --libs "$package")
    "$prefix/classic"
done
# Statically linked, by the C compiler: the flags pkg-config gives for --static suffice.
# shellcheck disable=SC2046
cc -std=c99 -Wall -Werror -o "$prefix/classic-static" "$source_dir/classic_client.c" \
    $(pkg-config --cflags xpmem) -Wl,-Bstatic $(pkg-config --static --libs xpmem) -Wl,-Bdynamic
if ldd "$prefix/classic-static" | grep -q libxpmem; then
    echo "the static client loads libxpmem.so" >&2
    exit 1
fi
"$prefix/classic-static"
# Installed programs find the installed library by themselves, wherever the prefix is.
if [[ -x $prefix/bin/xpmem-example-c ]]; then
    env -u LD_LIBRARY_PATH "$prefix/bin/xpmem-example-c" | grep -q "hello back from the attacher"
fi
cmake -S "$source_dir/consumer" -B "$prefix/consumer" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$prefix/consumer" >/dev/null
"$prefix/consumer/consumer"
cmake -S "$source_dir/static_c_client" -B "$prefix/static_c_client" \
    -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$prefix/static_c_client" >/dev/null
"$prefix/static_c_client/static_c_client"
