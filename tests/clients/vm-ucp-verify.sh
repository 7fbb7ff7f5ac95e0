#!/usr/bin/env bash
# ucp_verify on the KERNEL backend, in the QEMU guest of tests/vm (the module cannot be
# loaded on the host). The guest's initramfs holds static programs only, so this packs
# ucp_verify with everything it loads (the dynamic loader, glibc, libstdc++, UCX and its
# modules, this libxpmem) into one self-extracting script, which tests/vm/run.sh copies in
# and runs before the suite (XPMEM_VM_DEBUG; the suite is skipped by a filter matching no
# test). Not part of CI: a guest boot per kernel under software emulation.
#
#   tests/clients/vm-ucp-verify.sh BUILD_DIR [ROUNDS]      (XPMEM_VM_KERNELS: as run.sh)
set -euo pipefail
build_dir=$(cd "$1" && pwd)
rounds=${2:-20}
source_dir=$(cd "$(dirname "$0")" && pwd)
cache=${XPMEM_CLIENTS_CACHE:-/var/cache/xpmem-clients}
stage=$(mktemp -d /tmp/xpmem-vm-clients.XXXXXX)
trap 'rm -rf "$stage"' EXIT
cmake --install "$build_dir" --prefix "$stage/prefix" >/dev/null
ucx=$("$source_dir/build-ucx.sh" "$stage/prefix" "$cache")

bundle=$stage/bundle
mkdir -p "$bundle/lib/ucx"
g++ -std=c++20 -O2 -Wall -Wextra -Werror -o "$bundle/ucp_verify" "$source_dir/ucp_verify.cpp" \
    -I"$ucx/include" -L"$ucx/lib" -lucp -lucs
cp -L "$ucx"/lib/ucx/*.so "$ucx"/lib/ucx/*.so.0 "$bundle/lib/ucx/"
export LD_LIBRARY_PATH=$stage/prefix/lib:$ucx/lib
for object in "$bundle/ucp_verify" "$bundle"/lib/ucx/*.so.0; do
    ldd "$object" | awk '/=> \// {print $3} /^\t\/lib64\// {print $1}'
done | sort -u | while read -r library; do
    cp -L "$library" "$bundle/lib/"
done

# The guest runs /debug: this script, then the archive after its last line.
cat >"$stage/run-in-guest.sh" <<'EOF'
#!/bin/sh
dir=/tmp/ucp-bundle
mkdir -p $dir
ip link set lo up  # the out-of-band connection is on loopback
tail -c +$((HEADER + 1)) "$0" | tar -xzf - -C $dir
status=0
for tls in sm self,sysv,xpmem; do
    echo "guest: ucp_verify, kernel backend, UCX_TLS=$tls"
    XPMEM_BACKEND=kernel UCX_TLS=$tls $dir/lib/ld-linux-x86-64.so.2 --library-path $dir/lib \
        $dir/ucp_verify "$@" || status=1
done
exit $status
EOF
tar -czf "$stage/bundle.tar.gz" -C "$bundle" .
header=$(wc -c <"$stage/run-in-guest.sh")
# HEADER becomes the script's own length, padded to its six characters.
sed "s/HEADER/$(printf %6d "$header")/" "$stage/run-in-guest.sh" >"$stage/debug"
[[ $(wc -c <"$stage/debug") -eq $header ]] || {
    echo "vm-ucp-verify.sh: the header changed length" >&2
    exit 1
}
cat "$stage/bundle.tar.gz" >>"$stage/debug"
chmod +x "$stage/debug"
work=${XPMEM_VM_WORK:-$(pwd)/build-vm}
XPMEM_VM_DEBUG="$stage/debug $rounds" XPMEM_VM_WORK=$work "$source_dir/../vm/run.sh" NoSuchTest
# run.sh does not judge the /debug program: every kernel's serial log must show both passes.
failed=0
for log in "$work"/serial-*.log.txt; do
    passes=$(grep -c "ucp_verify: PASS, no wrong byte" "$log" || true)
    echo "vm-ucp-verify: $(basename "$log" .log.txt): $passes of 2 ucp_verify runs passed"
    ((passes == 2)) || failed=1
done
exit "$failed"
