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

fail() {
    echo "guest: FAIL: $*"
    dmesg | tail -40
    /bin/guest_tool exit 17
}

insmod /xpmem.ko || fail "insmod"
[ -c /dev/xpmem ] || fail "no /dev/xpmem"
counters=/sys/kernel/debug/xpmem/counters

run_suite() {  # $1: label, rest: command prefix
    label=$1
    shift
    for test in /tests/test_*; do
        if ! "$@" "$test" --gtest_brief=1 --gtest_filter="$FILTER"; then
            echo "guest: $label: $(basename "$test") failed"
            failed=1
        fi
    done
}

failed=0
FILTER=$(cat /filter)
# shellcheck disable=SC2046 # the arguments are words
[ -x /debug ] && { timeout 900 /debug $(cat /debug-arguments); echo "guest: debug exit $?"; }
cd /tmp
run_suite root env
chmod 1777 /tmp
run_suite uid65534 /bin/guest_tool run-as 65534 /bin/env
[ "$failed" = 0 ] || fail "conformance suite"

sleep 1
echo "guest: counters after the suite:"
cat $counters
grep -v " 0$" $counters && fail "unbalanced counters"
dmesg | grep -E "Oops|BUG|WARNING|lockdep|Call Trace|general protection" && fail "kernel log"
rmmod xpmem 2>/dev/null
echo "guest: PASS"
/bin/guest_tool exit 16
