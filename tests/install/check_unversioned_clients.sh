#!/usr/bin/env bash
# Programs linked against the classic libxpmem, which has no symbol versions, load and run
# with this one, whose symbols are versioned (src/libxpmem.map). A stand-in for the classic
# library (same soname, same functions, no version script, every call failing) links the
# classic client; the client then runs against the stand-in (and fails: the check would
# notice a run that never reached this library) and against this library (and passes).
# Also checks what this library exports: the C API at XPMEM_0.1, the C++ API at
# XPMEM_CXX_0.1, nothing else.
set -euo pipefail
library_dir=$1
source_dir=$(cd "$(dirname "$0")" && pwd)
include_dir=$source_dir/../../include
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir "$work/classic"
cat >"$work/classic.c" <<'CLASSIC'
#include <errno.h>
#include <xpmem.h>
int xpmem_version(void) { errno = ENODEV; return -1; }
int xpmem_init(void) { errno = ENODEV; return -1; }
xpmem_segid_t xpmem_make(void *v, size_t s, int t, void *p) { errno = ENODEV; return -1; }
int xpmem_remove(xpmem_segid_t s) { errno = ENODEV; return -1; }
xpmem_apid_t xpmem_get(xpmem_segid_t s, int f, int t, void *p) { errno = ENODEV; return -1; }
int xpmem_release(xpmem_apid_t a) { errno = ENODEV; return -1; }
void *xpmem_attach(struct xpmem_addr a, size_t s, void *v) { errno = ENODEV; return (void *)-1; }
int xpmem_detach(void *v) { errno = ENODEV; return -1; }
CLASSIC
cc -shared -fPIC -I"$include_dir" -Wl,-soname,libxpmem.so.0 -o "$work/classic/libxpmem.so.0" \
    "$work/classic.c"
ln -s libxpmem.so.0 "$work/classic/libxpmem.so"
cc -std=c99 -Wall -Werror -I"$include_dir" -o "$work/client" "$source_dir/classic_client.c" \
    -L"$work/classic" -lxpmem

# The client asks for no version of libxpmem's symbols.
if readelf -V -W "$work/client" | grep -q "File: libxpmem"; then
    echo "the client linked against the stand-in requires symbol versions" >&2
    exit 1
fi
if LD_LIBRARY_PATH=$work/classic "$work/client"; then
    echo "the client passed against the stand-in: the check cannot tell the libraries apart" >&2
    exit 1
fi
LD_LIBRARY_PATH=$library_dir "$work/client"

# Every defined dynamic symbol is in one of the two nodes, and each node has what it should.
readelf --dyn-syms -W "$library_dir/libxpmem.so.0" | awk '$7 != "UND" && $8 != "" {print $8}' |
    tail -n +2 | c++filt >"$work/exported"
unexpected=$(grep -Ev '^(XPMEM_0\.1|XPMEM_CXX_0\.1|xpmem_[a-z]+@@XPMEM_0\.1|xpmem::v1::.*@@XPMEM_CXX_0\.1)$' \
    "$work/exported" || true)
if [[ -n $unexpected ]]; then
    printf 'exported outside the version nodes:\n%s\n' "$unexpected" >&2
    exit 1
fi
for call in version init make remove get release attach detach; do
    grep -qx "xpmem_$call@@XPMEM_0.1" "$work/exported"
done
grep -q '^xpmem::v1::Segment::make(.*@@XPMEM_CXX_0.1$' "$work/exported"
echo "unversioned classic client runs with the versioned library; exports as declared"
