#!/usr/bin/env bash
# Checks the module's style with checkpatch, builds xpmem.ko for each tested
# kernel, boots that kernel under QEMU (software emulation) with a tiny initramfs
# holding busybox, the module and the statically linked conformance suite, and
# runs the whole suite there: the kernel backend against the module, and the user
# backend on these older kernels (see init.sh). Fails on any test failure, kernel
# warning, unbalanced counter, crash or hang; keeps the serial log of a failed run
# and prints its relevant part.
#
#   tests/vm/run.sh [GTEST_FILTER]
#   XPMEM_VM_DEBUG="PROGRAM [ARGS]"  also copy a static PROGRAM into the guest and run it
#                           first (a filter matching no test skips the suite)
#   XPMEM_VM_WATCHDOG=S     dump blocked tasks and CPU stacks after S seconds (1200)
set -euo pipefail
cd "$(dirname "$0")/../.."
filter=${1:-*}  # both backends: the user backend on these kernels too
work=${XPMEM_VM_WORK:-$(pwd)/build-vm}
mkdir -p "$work"

scripts/install-deps.sh qemu-system-x86 busybox-static cpio kmod linux-image-amd64 \
    linux-headers-amd64 linux-image-6.12-amd64 linux-headers-6.12-amd64 libc6-dev \
    linux-source-6.12

# Kernel coding style, with checkpatch from Debian's kernel source package.
checkpatch=$work/checkpatch/scripts/checkpatch.pl
if [[ ! -x $checkpatch ]]; then
    mkdir -p "$work/checkpatch"
    tar -C "$work/checkpatch" --strip-components=1 -xf /usr/src/linux-source-6.12.tar.xz \
        --wildcards '*/scripts/checkpatch.pl' '*/scripts/spelling.txt' \
        '*/scripts/const_structs.checkpatch'
fi
for source in module/*.c module/*.h; do
    "$checkpatch" --no-tree --quiet -f "$source" || { echo "checkpatch: $source"; exit 1; }
done

# The suite, linked statically: the guest has no libraries.
cmake -S . -B "$work/static" -DXPMEM_STATIC_TESTS=ON -DXPMEM_BUILD_EXAMPLES=OFF -DXPMEM_BUILD_TOOLS=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$work/static" -j "$(nproc)" >/dev/null 2>&1 || cmake --build "$work/static"
cc -static -O2 -Wall -Werror -o "$work/guest_tool" tests/vm/guest_tool.c

status=0
passed=0
failed=0
# The kernels the meta-packages point at: 6.1 (linux-image-amd64) and 6.12.
for meta in linux-image-amd64 linux-image-6.12-amd64; do
    image=$(dpkg-query -W -f='${Depends}' "$meta" | grep -o 'linux-image-[^ ,]*' | head -1)
    version=${image#linux-image-}
    version=${version%-unsigned}
    headers=/usr/src/linux-headers-$version
    echo "== $version"
    module=$work/module-$version
    rm -rf "$module" && mkdir -p "$module"
    cp module/*.c module/*.h module/Makefile module/Kbuild "$module"/
    make -s -C "$headers" M="$module" W=1 modules 2>&1 | tee "$module/build.log" |
        grep -v "Skipping BTF" || true
    if grep -qE "warning|error" "$module/build.log"; then
        echo "module build for $version is not clean"
        status=1 failed=$((failed + 1))
        continue
    fi

    initramfs=$work/initramfs-$version
    rm -rf "$initramfs" && mkdir -p "$initramfs"/{bin,tests,proc,sys,dev,tmp}
    cp /bin/busybox "$initramfs/bin/"
    for applet in $(/bin/busybox --list); do
        [[ $applet == busybox ]] || ln -sf busybox "$initramfs/bin/$applet"
    done
    cp "$work/guest_tool" "$initramfs/bin/"
    find "$work/static/tests" -maxdepth 1 -name "test_*" -type f -executable \
        -exec cp {} "$initramfs/tests/" \;
    cp "$module/xpmem.ko" "$initramfs/"
    cp tests/vm/init.sh "$initramfs/init"
    if [[ -n ${XPMEM_VM_DEBUG:-} ]]; then  # a program to run first, with its arguments
        read -r debug_program debug_arguments <<<"$XPMEM_VM_DEBUG"
        cp "$debug_program" "$initramfs/debug"
        echo "${debug_arguments:-}" >"$initramfs/debug-arguments"
    fi
    echo "$filter" >"$initramfs/filter"
    echo "${XPMEM_VM_WATCHDOG:-1200}" >"$initramfs/watchdog"
    (cd "$initramfs" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs-$version.cpio.gz"

    log=$work/serial-$version.log
    set +e
    # Two NUMA nodes, so that page migration between them can be tested.
    timeout 1500 qemu-system-x86_64 -accel tcg,thread=single -cpu max,la57=off -smp 2,sockets=2,cores=1 -m 3G \
        -object memory-backend-ram,id=ram0,size=1536M -numa node,nodeid=0,cpus=0,memdev=ram0 \
        -object memory-backend-ram,id=ram1,size=1536M -numa node,nodeid=1,cpus=1,memdev=ram1 \
        -kernel "/boot/vmlinuz-$version" -initrd "$work/initramfs-$version.cpio.gz" \
        -append "console=ttyS0 rdinit=/init oops=panic panic=-1 softlockup_panic=1 hung_task_panic=1 hung_task_timeout_secs=60 quiet" \
        -display none -monitor none -serial "file:$log" -no-reboot \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04
    code=$?
    set -e
    tr -d '\r' <"$log" >"$log.txt"
    if [[ $code -eq 33 ]]; then
        grep -E "^guest:|tests? from|PASSED|SKIPPED" "$log.txt" | grep -v "^\[ *SKIPPED" | tail -30
        echo "== $version: PASS"
        passed=$((passed + 1))
    else
        echo "== $version: FAIL (QEMU exit $code; 124 is a hang). Serial log: $log.txt"
        grep -E "guest:|FAILED|Failure|check failed|child|Oops|BUG|WARNING|panic|RIP|Call Trace" \
            "$log.txt" | head -80
        status=1 failed=$((failed + 1))
    fi
done
echo "kernels: $passed passed, $failed failed"
exit $status
