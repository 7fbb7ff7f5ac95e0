#!/usr/bin/env bash
# ucx_perftest side by side on the user backend: UCT put_bw, get_bw and put_lat over xpmem
# against cma, and UCP tag_bw and tag_lat with xpmem, cma and posix-only rendezvous, 8 B to
# 64 MiB. For each size the transports run one after the other (interleaved), so that
# they share the machine's state of the moment, and the whole sweep runs
# XPMEM_PERFTEST_REPEATS times (default 3). Prints a Markdown table per test, medians of
# the repeats, with the ratio of xpmem to cma; raw numbers go to the CSV named by
# XPMEM_PERFTEST_CSV (if set).
#
#   tests/clients/perftest.sh BUILD_DIR
#
# Uses the UCX that build-ucx.sh builds (cached); not part of CI: it measures.
set -euo pipefail
build_dir=$(cd "$1" && pwd)
source_dir=$(cd "$(dirname "$0")" && pwd)
cache=${XPMEM_CLIENTS_CACHE:-/var/cache/xpmem-clients}
stage=$(mktemp -d /tmp/xpmem-perftest.XXXXXX)
trap 'rm -rf "$stage"' EXIT
cmake --install "$build_dir" --prefix "$stage/prefix" >/dev/null
ucx=$("$source_dir/build-ucx.sh" "$stage/prefix" "$cache")
export LD_LIBRARY_PATH=$stage/prefix/lib:$ucx/lib XPMEM_BACKEND=user
csv=${XPMEM_PERFTEST_CSV:-$stage/perftest.csv}
repeats=${XPMEM_PERFTEST_REPEATS:-3}
echo "test,transport,size,value" >"$csv"

sizes=(8 256 4096 65536 1048576 4194304 16777216 67108864)
port=$((20000 + RANDOM % 20000))

# Iterations for a message of $1 bytes: about 4 GiB in all, between 50 and 100000.
iterations() {
    local n=$((4294967296 / $1))
    ((n > 100000)) && n=100000
    ((n < 50)) && n=50
    echo "$n"
}

# One ucx_perftest run, server and client on loopback: perftest ENV=VALUE... -- ARGS...;
# prints the client's final figures.
perftest() {
    local env=()
    while [[ $1 != -- ]]; do
        env+=("$1")
        shift
    done
    shift
    local args=("$@")
    port=$((port + 1))
    env "${env[@]}" "$ucx/bin/ucx_perftest" -p "$port" >"$stage/server.log" 2>&1 &
    local server=$!
    sleep 0.3
    local line
    line=$(env "${env[@]}" timeout 300 "$ucx/bin/ucx_perftest" localhost -p "$port" "${args[@]}" \
        -f 2>"$stage/client.log" | tail -1)
    kill "$server" 2>/dev/null || true  # a client that failed leaves it waiting
    wait "$server" || true
    echo "$line"
}

# bandwidth (MB/s, overall) or latency (usec, average) of one run.
figure() {
    local kind=$1 line=$2
    if [[ $kind == bw ]]; then awk '{print $6}' <<<"$line"; else awk '{print $3}' <<<"$line"; fi
}

table() {
    local test=$1 kind=$2
    shift 2
    local names=("$@")
    local unit="MB/s" ratio="xpmem / cma"
    [[ $kind == lat ]] && unit="usec" ratio="cma / xpmem"
    printf '\n%s (%s, median of %s)\n\n| size |' "$test" "$unit" "$repeats"
    printf ' %s |' "${names[@]}"
    printf ' %s |\n|---:|' "$ratio"
    printf -- '---:|%.0s' "${names[@]}"
    printf -- '---:|\n'
    for size in "${sizes[@]}"; do
        printf '| %s |' "$size"
        local xpmem="" cma=""
        for name in "${names[@]}"; do
            local value
            value=$(awk -F, -v t="$test" -v n="$name" -v s="$size" \
                '$1 == t && $2 == n && $3 == s && $4 != "" {print $4}' "$csv" | sort -g |
                awk '{v[NR] = $1} END {if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}')
            printf ' %s |' "${value:--}"
            [[ $name == xpmem ]] && xpmem=$value
            [[ $name == cma ]] && cma=$value
        done
        if [[ -n $xpmem && -n $cma ]]; then
            if [[ $kind == bw ]]; then
                awk -v a="$xpmem" -v b="$cma" 'BEGIN {printf " %.2f |\n", a / b}'
            else
                awk -v a="$xpmem" -v b="$cma" 'BEGIN {printf " %.2f |\n", b / a}'
            fi
        else
            printf ' - |\n'
        fi
    done
}

for ((repeat = 0; repeat < repeats; repeat++)); do
    for size in "${sizes[@]}"; do
        n=$(iterations "$size")
        warmup=$((n / 10 + 1))
        # ucx_perftest's "get" measures get bandwidth here.
        for test in put_bw get_bw put_lat; do
            # xpmem maps the peer's buffer and copies with memcpy (bcopy); cma only has zcopy.
            for tl in xpmem:bcopy cma:zcopy; do
                if [[ $test == put_lat ]] && ((size > 4194304)); then continue; fi
                line=$(perftest UCX_LOG_LEVEL=error -- -t "${test/get_bw/get}" -x "${tl%%:*}" \
                    -d memory -D "${tl#*:}" -s "$size" -n "$n" -w "$warmup")
                kind=bw
                [[ $test == *_lat ]] && kind=lat
                echo "uct_$test,${tl%%:*},$size,$(figure $kind "$line")" >>"$csv"
            done
        done
        for test in tag_bw tag_lat; do
            for tls in xpmem:self,sysv,xpmem cma:self,sysv,cma posix:self,posix; do
                if [[ $test == tag_lat ]] && ((size > 4194304)); then continue; fi
                line=$(perftest UCX_TLS="${tls#*:}" UCX_LOG_LEVEL=error -- -t "$test" -s "$size" \
                    -n "$n" -w "$warmup")
                kind=bw
                [[ $test == *_lat ]] && kind=lat
                echo "ucp_$test,${tls%%:*},$size,$(figure $kind "$line")" >>"$csv"
            done
        done
    done
done

echo "ucx_perftest, user backend, $(nproc) CPUs, UCX $(basename "$ucx"), $(date -u +%F)"
table uct_put_bw bw xpmem cma
table uct_get_bw bw xpmem cma
table uct_put_lat lat xpmem cma
table ucp_tag_bw bw xpmem cma posix
table ucp_tag_lat lat xpmem cma posix
