#!/bin/sh
# The test guest's /init: load the module, run the conformance suite (both backends) as root
# and as uid 65534, then the kernel checks, and report to the host through isa-debug-exit
# (16: pass, 17: fail). A crash, panic or hang never reaches the report: the host's
# timeout and QEMU's exit status tell those apart.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# A hang shows its stacks before the host's timeout: every blocked task, every CPU.
(sleep "$(cat /watchdog)"; echo w >/proc/sysrq-trigger; for i in 1 2 3; do echo l >/proc/sysrq-trigger; sleep 1; done) &
echo "guest: kernel $(uname -r)"

debug_kernel=0
fail() {
    echo "guest: FAIL: $*"
    # The debug kernel's console already shows its warnings (and the host prints them).
    [ $debug_kernel = 1 ] || dmesg | tail -40
    /bin/guest_tool exit 17
}

# The debug kernel (run.sh's debug-kernel file): lockdep must be on, no report yet, and
# kmemleak scans only by hand; suspects from the boot do not count.
kmemleak=/sys/kernel/debug/kmemleak
reports='BUG:|WARNING:|Oops|general protection|Call Trace|possible circular locking|possible recursive locking|inconsistent lock state|suspicious RCU usage|INFO: task .* blocked for more than|unreferenced object'
if [ -e /debug-kernel ]; then
    debug_kernel=1
    echo "guest: debug kernel, hung-task timeout $(cat /proc/sys/kernel/hung_task_timeout_secs) s, panic $(cat /proc/sys/kernel/hung_task_panic)"
    [ -w $kmemleak ] || fail "the debug kernel has no $kmemleak"
    grep -q "debug_locks: *1$" /proc/lockdep_stats || fail "lockdep is off before insmod"
    dmesg | grep -E "$reports" | sed 's/^/guest: dmesg: /' | grep . && fail "kernel reports before insmod"
    echo scan=off >$kmemleak
    sleep 6  # kmemleak reports only objects older than 5 s
    echo scan >$kmemleak
    echo clear >$kmemleak
    echo "guest: kmemleak: boot suspects cleared, $(grep -c "unreferenced object" $kmemleak) left"
fi

insmod /xpmem.ko || fail "insmod"
[ -c /dev/xpmem ] || fail "no /dev/xpmem"
counters=/sys/kernel/debug/xpmem/counters

# On the debug kernel every test's name goes to the console too, between the kernel's
# reports: the serial log tells which test triggered which report.
brief=1
[ $debug_kernel = 1 ] && brief=0
# Unloads the module: nothing may keep it (the last references drop asynchronously).
unload() {
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        rmmod xpmem 2>/dev/null && return 0
        sleep 1
    done
    echo "guest: rmmod failed, module refcount $(cat /sys/module/xpmem/refcnt)"
    return 1
}

run_suite() {  # $1: label, rest: command prefix
    label=$1
    shift
    for test in /tests/test_*; do
        [ $debug_kernel = 1 ] && echo "guest: $label: $(basename "$test")"
        if ! "$@" "$test" --gtest_brief=$brief --gtest_filter="$FILTER"; then
            echo "guest: $label: $(basename "$test") failed"
            failed=1
        fi
    done
}

failed=0
FILTER=$(cat /filter)
XPMEM_TEST_CACHE_ROUNDS=$(cat /cache-rounds)
export XPMEM_TEST_CACHE_ROUNDS
export XPMEM_INFO_TOOL=/bin/xpmem-info  # test_info's tool (run.sh copies it)
# shellcheck disable=SC2046 # the arguments are words
[ -x /debug ] && { timeout 900 /debug $(cat /debug-arguments); echo "guest: debug exit $?"; }
cd /tmp
run_suite root env
chmod 1777 /tmp
run_suite uid65534 /bin/guest_tool run-as 65534 /bin/env
# The fuzzer (tests/fuzz): several processes as root and uid 65534, random operations and
# invariants checked throughout; its seed is in its output.
read -r fuzz_seconds fuzz_arguments </fuzz
if [ "$fuzz_seconds" -gt 0 ]; then
    echo "guest: fuzzing for $fuzz_seconds s"
    # shellcheck disable=SC2086 # the arguments are words
    if ! /bin/xpmem-kernel-fuzz --seconds "$fuzz_seconds" $fuzz_arguments; then
        echo "guest: fuzzer failed"
        failed=1
    fi
fi
if [ $debug_kernel = 1 ]; then
    # The kernel's checks even after failed tests: a test can fail because of a
    # kernel bug that they report. kmemleak only once the module's objects are freed
    # (its counters are zero): then what it finds unreferenced in two scans (of
    # objects older than 5 s) is a leak. Scanned with the module loaded, so that the
    # backtraces name its functions.
    problems=
    [ "$failed" = 0 ] || problems=" conformance-suite"
    sleep 1
    echo "guest: counters after the suite:"
    cat $counters
    if grep -v " 0$" $counters; then
        problems="$problems unbalanced-counters"
        echo "guest: kmemleak not checked: the module still holds objects"
    else
        sleep 6
        echo scan >$kmemleak
        sleep 6
        echo scan >$kmemleak
        cat $kmemleak >/tmp/kmemleak
        if grep -q "unreferenced object" /tmp/kmemleak; then
            echo "guest: kmemleak: $(grep -c "unreferenced object" /tmp/kmemleak) suspects:"
            cat /tmp/kmemleak
            problems="$problems kmemleak"
        fi
    fi
    unload || problems="$problems rmmod"
    if dmesg | grep -E "$reports" | sed 's/^/guest: dmesg: /' | grep .; then
        problems="$problems kernel-reports"
    fi
    # Off after a lockdep report, but also after a KASAN report or anything else
    # that taints the kernel with lockdep's "now unreliable".
    grep -q "debug_locks: *1$" /proc/lockdep_stats || problems="$problems lockdep-off"
    [ -z "$problems" ] || fail "debug kernel:$problems"
    echo "guest: PASS"
    /bin/guest_tool exit 16
fi
[ "$failed" = 0 ] || fail "conformance suite"

sleep 1
echo "guest: counters after the suite:"
cat $counters
grep -v " 0$" $counters && fail "unbalanced counters"
dmesg | grep -E "Oops|BUG|WARNING|lockdep|Call Trace|general protection" && fail "kernel log"
unload || fail "rmmod"
echo "guest: PASS"
/bin/guest_tool exit 16
