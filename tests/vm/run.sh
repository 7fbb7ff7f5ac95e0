#!/usr/bin/env bash
# Checks the module's style with checkpatch, builds xpmem.ko for each tested
# kernel, boots that kernel under QEMU (software emulation) with a tiny initramfs
# holding busybox, the module and the statically linked conformance suite, and
# runs the whole suite there: the kernel backend against the module, and the user
# backend on these older kernels (see init.sh). Fails on any test failure, kernel
# warning, unbalanced counter, crash or hang; keeps the serial log of a failed run
# and prints its relevant part.
#
# The kernels: Debian's 6.1 and 6.12, and a 6.12 debug kernel (KASAN, lockdep, kmemleak,
# DEBUG_VM, ...) from the Debian packages that build.sh makes (see XPMEM_DEBUG_KERNELS).
# There, any kernel report (KASAN, lockdep, WARNING, hung task, ...) and any kmemleak
# suspect after the suite fails the run too.
#
#   tests/vm/run.sh [GTEST_FILTER]
#   XPMEM_VM_KERNELS="6.1 6.12 debug"  the kernels to test, in this order (default: all)
#   XPMEM_DEBUG_KERNELS=DIR the debug kernel's linux-image-* and linux-headers-* .deb files
#                           (default: ../shared/kernels from the repository's root)
#   XPMEM_VM_DEBUG="PROGRAM [ARGS]"  also copy a static PROGRAM into the guest and run it
#                           first (a filter matching no test skips the suite)
#   XPMEM_VM_FUZZ_SECONDS=S run tests/fuzz's xpmem-kernel-fuzz for S seconds after the suite
#                           on every kernel (default 60 for the whole suite, 0 with a
#                           filter); XPMEM_VM_FUZZ_ARGS adds options (--seed N replays a run)
#   XPMEM_VM_BASELINE=DIR   also build the module source in DIR, as /xpmem-baseline.ko in
#                           the guest (for tests/vm/attach_cost.c --compare)
#   XPMEM_VM_WATCHDOG=S     dump blocked tasks and CPU stacks after S seconds (1200; on
#                           the debug kernel, DEBUG_SLOWDOWN (2) times that)
set -euo pipefail
caller=$(pwd)
cd "$(dirname "$0")/../.."
filter=${1:-*}  # both backends: the user backend on these kernels too
work=${XPMEM_VM_WORK:-$(pwd)/build-vm}
mkdir -p "$work"
kernels=${XPMEM_VM_KERNELS:-6.1 6.12 debug}
for kernel in $kernels; do
    [[ $kernel == @(6.1|6.12|debug) ]] ||
        { echo "XPMEM_VM_KERNELS: unknown kernel '$kernel' (known: 6.1 6.12 debug)" >&2; exit 2; }
done
# How much longer than on Debian's kernels the debug kernel may take (QEMU's timeout, the
# guest's watchdog).
DEBUG_SLOWDOWN=2

# The debug kernel's packages, looked for before anything slow runs. Missing, they fail the
# run: they are not skipped.
if [[ " $kernels " == *" debug "* ]]; then
    debug_packages=${XPMEM_DEBUG_KERNELS:-$(pwd)/../shared/kernels}
    debug_packages=$(cd "$caller" && realpath -m -- "$debug_packages")
    debug_image=$(find "$debug_packages" -maxdepth 1 -name 'linux-image-*_amd64.deb' \
        ! -name 'linux-image-*-dbg_*' 2>/dev/null | sort -V | tail -1 || true)
    debug_headers=
    if [[ -n $debug_image ]]; then
        debug_version=$(dpkg-deb -f "$debug_image" Package)
        debug_version=${debug_version#linux-image-}
        debug_headers=$(find "$debug_packages" -maxdepth 1 \
            -name "linux-headers-${debug_version}_*_amd64.deb" | sort -V | tail -1)
    fi
    if [[ -z $debug_headers ]]; then
        cat >&2 <<EOF
FAIL: no debug kernel in $debug_packages
It takes the linux-image-VERSION_*_amd64.deb and linux-headers-VERSION_*_amd64.deb that
build.sh makes, the script kept next to the debug kernel's README (../shared/kernels/build.sh
from the repository's root on the team's machine). Build them once, outside the repository
(about 30 minutes on 2 idle cores):
    build.sh WORKDIR && cp WORKDIR/linux-image-*.deb WORKDIR/linux-headers-*.deb $debug_packages/
or point XPMEM_DEBUG_KERNELS at the folder holding them, or leave the debug kernel out of
this run: XPMEM_VM_KERNELS="6.1 6.12" tests/vm/run.sh
EOF
        exit 1
    fi
fi

scripts/install-deps.sh qemu-system-x86 busybox-static cpio kmod linux-image-amd64 \
    linux-headers-amd64 linux-image-6.12-amd64 linux-headers-6.12-amd64 libc6-dev \
    linux-source-6.12

# The debug kernel and its headers, extracted once per package version, outside the
# repository.
if [[ " $kernels " == *" debug "* ]]; then
    debug_root=$work/debug-kernel
    stamp=$(stat -c '%n %s %Y' "$debug_image" "$debug_headers")
    if [[ $(cat "$debug_root/packages" 2>/dev/null) != "$stamp" ]]; then
        rm -rf "$debug_root" && mkdir -p "$debug_root"
        dpkg-deb -x "$debug_image" "$debug_root"
        dpkg-deb -x "$debug_headers" "$debug_root"
        echo "$stamp" >"$debug_root/packages"
    fi
fi

# Kernel coding style, with checkpatch from Debian's kernel source package.
checkpatch=$work/checkpatch/scripts/checkpatch.pl
if [[ ! -x $checkpatch ]]; then
    mkdir -p "$work/checkpatch"
    tar -C "$work/checkpatch" --strip-components=1 -xf /usr/src/linux-source-6.12.tar.xz \
        --wildcards '*/scripts/checkpatch.pl' '*/scripts/spelling.txt' \
        '*/scripts/const_structs.checkpatch'
fi
# From its own directory: in a git tree checkpatch leaves a .checkpatch-camelcase.* cache.
for source in "$PWD"/module/*.c "$PWD"/module/*.h; do
    (cd "$work/checkpatch" && "$checkpatch" --no-tree --quiet -f "$source") ||
        { echo "checkpatch: $source"; exit 1; }
done

# The suite, linked statically: the guest has no libraries.
cmake -S . -B "$work/static" -DXPMEM_STATIC_TESTS=ON -DXPMEM_BUILD_EXAMPLES=OFF -DXPMEM_BUILD_TOOLS=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$work/static" -j "$(nproc)" >/dev/null 2>&1 || cmake --build "$work/static"
cc -static -O2 -Wall -Werror -o "$work/guest_tool" tests/vm/guest_tool.c

# A kernel report's first line on the debug kernel's console (serial log): KASAN, KFENCE,
# lockdep, RCU checks, WARN_ON, oopses, hung tasks, and any other stack dump.
reports='BUG:|WARNING:|Oops|general protection|Call Trace|possible circular locking|possible recursive locking|inconsistent lock state|suspicious RCU usage|INFO: task .* blocked for more than|unreferenced object'

status=0
passed=0
failed=0
for kernel in $kernels; do
    debug=0
    case $kernel in
    6.1 | 6.12)  # the kernels Debian's meta-packages point at
        meta=linux-image-amd64
        [[ $kernel == 6.12 ]] && meta=linux-image-6.12-amd64
        image=$(dpkg-query -W -f='${Depends}' "$meta" | grep -o 'linux-image-[^ ,]*' | head -1)
        version=${image#linux-image-}
        version=${version%-unsigned}
        name=$version
        headers=/usr/src/linux-headers-$version
        vmlinuz=/boot/vmlinuz-$version
        ;;
    debug)
        debug=1
        version=$debug_version
        name=$version-debug
        headers=$debug_root/usr/src/linux-headers-$version
        vmlinuz=$debug_root/boot/vmlinuz-$version
        ;;
    esac
    echo "== $name"
    module=$work/module-$name
    rm -rf "$module" && mkdir -p "$module"
    cp module/*.c module/*.h module/Makefile module/Kbuild "$module"/
    make -s -C "$headers" M="$module" W=1 modules 2>&1 | tee "$module/build.log" |
        grep -v "Skipping BTF" || true
    if grep -qE "warning|error" "$module/build.log"; then
        echo "module build for $name is not clean"
        status=1 failed=$((failed + 1))
        continue
    fi

    initramfs=$work/initramfs-$name
    rm -rf "$initramfs" && mkdir -p "$initramfs"/{bin,tests,proc,sys,dev,tmp}
    cp /bin/busybox "$initramfs/bin/"
    for applet in $(/bin/busybox --list); do
        [[ $applet == busybox ]] || ln -sf busybox "$initramfs/bin/$applet"
    done
    cp "$work/guest_tool" "$initramfs/bin/"
    find "$work/static/tests" -maxdepth 1 -name "test_*" -type f -executable \
        -exec cp {} "$initramfs/tests/" \;
    cp "$module/xpmem.ko" "$initramfs/"
    cp "$work/static/tests/fuzz/xpmem-kernel-fuzz" "$initramfs/bin/"
    cp "$work/static/tests/info/xpmem-info" "$initramfs/bin/"  # for test_info
    fuzz_seconds=60
    [[ $filter == '*' ]] || fuzz_seconds=0
    echo "${XPMEM_VM_FUZZ_SECONDS:-$fuzz_seconds} ${XPMEM_VM_FUZZ_ARGS:-}" >"$initramfs/fuzz"
    if [[ -n ${XPMEM_VM_BASELINE:-} ]]; then
        baseline=$work/baseline-$name
        rm -rf "$baseline" && mkdir -p "$baseline"
        cp "$XPMEM_VM_BASELINE"/* "$baseline"/
        make -s -C "$headers" M="$baseline" modules 2>&1 | grep -v "Skipping BTF" || true
        cp "$baseline/xpmem.ko" "$initramfs/xpmem-baseline.ko"
    fi
    cp tests/vm/init.sh "$initramfs/init"
    if [[ -n ${XPMEM_VM_DEBUG:-} ]]; then  # a program to run first, with its arguments
        read -r debug_program debug_arguments <<<"$XPMEM_VM_DEBUG"
        cp "$debug_program" "$initramfs/debug"
        echo "${debug_arguments:-}" >"$initramfs/debug-arguments"
    fi
    echo "$filter" >"$initramfs/filter"
    if ((debug)); then  # the module's checks: the user backend needs no debug kernel
        [[ $filter == *-* ]] && echo "$filter:*/user" >"$initramfs/filter" ||
            echo "$filter-*/user" >"$initramfs/filter"
    fi
    watchdog=${XPMEM_VM_WATCHDOG:-1200}
    limit=1500
    # Debian's kernels: only errors on the console. The debug kernel: warnings too, so
    # that lockdep's reports reach the serial log even if the guest dies afterwards;
    # every KASAN report, not only the first; room for long reports; a hung-task
    # timeout for a kernel several times slower.
    options="hung_task_timeout_secs=60 quiet"
    if ((debug)); then
        touch "$initramfs/debug-kernel"  # init.sh's extra checks
        watchdog=$((watchdog * DEBUG_SLOWDOWN))
        limit=$((limit * DEBUG_SLOWDOWN))
        options="sysctl.kernel.hung_task_timeout_secs=600 loglevel=5 kasan_multi_shot log_buf_len=8M"
    fi
    echo "$watchdog" >"$initramfs/watchdog"
    # The cache-pattern tests (test_follow) run 10,000 rounds natively; under emulation
    # that alone would take most of an hour.
    echo "${XPMEM_VM_CACHE_ROUNDS:-500}" >"$initramfs/cache-rounds"
    (cd "$initramfs" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs-$name.cpio.gz"

    log=$work/serial-$name.log
    set +e
    # Two NUMA nodes, so that page migration between them can be tested.
    timeout "$limit" qemu-system-x86_64 -accel tcg,thread=single -cpu max,la57=off -smp 2,sockets=2,cores=1 -m 3G \
        -object memory-backend-ram,id=ram0,size=1536M -numa node,nodeid=0,cpus=0,memdev=ram0 \
        -object memory-backend-ram,id=ram1,size=1536M -numa node,nodeid=1,cpus=1,memdev=ram1 \
        -kernel "$vmlinuz" -initrd "$work/initramfs-$name.cpio.gz" \
        -append "console=ttyS0 rdinit=/init oops=panic panic=-1 softlockup_panic=1 hung_task_panic=1 $options" \
        -display none -monitor none -serial "file:$log" -no-reboot \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04
    code=$?
    set -e
    tr -d '\r' <"$log" >"$log.txt"
    # The debug kernel's console holds every report, including those after the guest's
    # own check: any of them fails the run.
    kernel_reports=0
    if ((debug)) && grep -qE "^\[ *[0-9]+\.[0-9]+\].*($reports)" "$log.txt"; then
        kernel_reports=1
    fi
    if [[ $code -eq 33 && $kernel_reports -eq 0 ]]; then
        grep -E "^guest:|tests? from|PASSED|SKIPPED" "$log.txt" | grep -v "^\[ *SKIPPED" | tail -30
        echo "== $name: PASS"
        passed=$((passed + 1))
    else
        echo "== $name: FAIL (QEMU exit $code; 124 is a hang). Serial log: $log.txt"
        grep -E "guest:|FAILED|Failure|check failed|child|Oops|BUG|WARNING|panic|RIP|Call Trace" \
            "$log.txt" | head -80
        if ((kernel_reports)); then
            # Each report from its first line on, up to its end or the next report.
            echo "== $name: kernel reports (complete in $log.txt):"
            awk -v start="^\\\\[ *[0-9]+\\\\.[0-9]+\\\\].*($reports)" '
                $0 ~ start && !inside { inside = 1; lines = 0; kasan = /KASAN|KFENCE/ }
                !inside { next }
                { print }
                ++lines >= 150 { print "[...]"; inside = 0 }
                kasan && /\] =+$/ { inside = 0 }
                !kasan && /---\[ end trace|<\/TASK>$/ { inside = 0 }
            ' "$log.txt" | head -600
        fi
        if grep -q "^guest: kmemleak: [0-9]* suspects" "$log.txt"; then
            echo "== $name: kmemleak's suspects:"
            sed -n '/^guest: kmemleak: [0-9]* suspects/,/^guest: /p' "$log.txt" | head -300
        fi
        status=1 failed=$((failed + 1))
    fi
done
echo "kernels: $passed passed, $failed failed"
exit $status
