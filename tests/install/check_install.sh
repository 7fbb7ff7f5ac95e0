#!/usr/bin/env bash
# Installs the built project into a scratch prefix, runs an installed program without
# LD_LIBRARY_PATH (its run path finds the library), then builds and runs the clients of
# check_clients.sh against the installed library.
set -euo pipefail
build_dir=$1
source_dir=$(cd "$(dirname "$0")" && pwd)
prefix=$(mktemp -d)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build_dir" --prefix "$prefix" >/dev/null
# Installed programs find the installed library by themselves, wherever the prefix is.
if [[ -x $prefix/bin/xpmem-example-c ]]; then
    env -u LD_LIBRARY_PATH "$prefix/bin/xpmem-example-c" | grep -q "hello back from the attacher"
fi
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig:$prefix/lib/x86_64-linux-gnu/pkgconfig
export LD_LIBRARY_PATH=$prefix/lib:$prefix/lib/x86_64-linux-gnu
"$source_dir/check_clients.sh" "$prefix"
