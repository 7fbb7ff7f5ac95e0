#!/usr/bin/env bash
# Builds Debian's UCX source against an installed libxpmem, as a site would
# (`--with-xpmem=PREFIX`), and prints the UCX install prefix on stdout.
#
#   build-ucx.sh XPMEM_PREFIX [CACHE_DIR]
#
# The build is cached in CACHE_DIR (default /var/cache/xpmem-clients) under a key made of
# UCX's Debian version, this library's ABI (soname and a hash of the installed header and
# version script) and this script, so a machine builds it once per UCX release, ABI change
# and change of recipe. UCX
# loads libxpmem.so.0 at run time, so a cached build runs on whatever library
# LD_LIBRARY_PATH finds first. Only what the tests need is built: shared-memory
# transports, tools and perftest; no verbs, CUDA, ROCm, KNEM, Java, Go or docs.
set -euo pipefail
xpmem_prefix=$(cd "$1" && pwd)
cache=${2:-/var/cache/xpmem-clients}
source_dir=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$cache"
chmod a+rx "$cache"

# Debian's source packages, through an apt configuration of our own so the machine's
# sources stay as they are: the deb entries of the machine, turned into deb-src.
apt_dir=$cache/apt
apt_options=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_dir/parts"
    -o "Dir::State::Lists=$apt_dir/lists" -o "APT::Sandbox::User=root")
mkdir -p "$apt_dir/parts" "$apt_dir/lists/partial"
cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    sed 's/^Types:.*/Types: deb-src/' >"$apt_dir/parts/debian-src.sources"
if [[ -f /etc/apt/sources.list ]]; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >"$apt_dir/parts/debian-src.list"
fi
if ! compgen -G "$apt_dir/lists/*Sources*" >/dev/null; then
    apt-get "${apt_options[@]}" update -qq >&2
fi
ucx_version=$(apt-get "${apt_options[@]}" source --print-uris ucx 2>/dev/null |
    sed -n "s/^'[^']*' ucx_\([^ ]*\)\.dsc .*/\1/p")
if [[ -z $ucx_version ]]; then
    echo "build-ucx.sh: Debian's source of UCX was not found" >&2
    exit 1
fi

abi_hash=$(cat "$xpmem_prefix/include/xpmem.h" "$source_dir/../../src/libxpmem.map" |
    sha256sum | cut -c1-12)
recipe_hash=$(sha256sum "$0" | cut -c1-8)  # this script: how UCX is configured
key=ucx-$ucx_version-libxpmem0-$abi_hash-$recipe_hash
ucx_prefix=$cache/$key
if [[ -x $ucx_prefix/bin/ucx_info && -f $ucx_prefix/lib/ucx/libuct_xpmem.so ]]; then
    echo "$ucx_prefix"
    exit 0
fi

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
(
    cd "$work"
    apt-get "${apt_options[@]}" source --download-only -qq "ucx=$ucx_version"
    dpkg-source -x --no-check ./ucx_*.dsc src
    cd src
    ./autogen.sh
    ./configure --prefix="$ucx_prefix" --with-xpmem="$xpmem_prefix" --enable-cma --enable-mt \
        --disable-static \
        --disable-numa --disable-doxygen-doc --disable-examples --without-java --without-go \
        --without-verbs --without-rdmacm --without-cuda --without-rocm --without-knem \
        --without-gdrcopy --without-ugni --without-fuse3 --without-mpi
    if ! grep -q '^XPMEM_LIBS = .*-lxpmem' src/uct/sm/mm/xpmem/Makefile; then
        echo "build-ucx.sh: UCX's configure did not find libxpmem in $xpmem_prefix" >&2
        exit 1
    fi
    make -j "$(nproc)"
    make install
) >"$work.log" 2>&1 || {
    tail -40 "$work.log" >&2
    exit 1
}
mv "$work.log" "$ucx_prefix/build.log"
chmod -R a+rX "$ucx_prefix"  # other users run it too, whatever the umask
echo "$ucx_prefix"
