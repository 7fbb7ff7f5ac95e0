// The API's own operations, one at a time, in one process attaching its own memory:
// make, remove, get, release, and attach and detach of an already-shared range of
// 4 KiB, 2 MiB and 1 GiB. XPMEM_BACKEND selects the backend as for any program.

#include <benchmark/benchmark.h>
#include <sys/mman.h>
#include <xpmem.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void fail(const char *what) {
    std::perror(what);
    std::exit(1);
}

// Populated private memory of `size` bytes, kept for the whole run (one per size).
void *memory(std::size_t size) {
    static std::map<std::size_t, void *> ranges;
    auto &range = ranges[size];
    if (range == nullptr) {
        range = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (range == MAP_FAILED) fail("mmap");
    }
    return range;
}

xpmem_segid_t make(std::size_t size) {
    xpmem_segid_t segid =
        xpmem_make(memory(size), size, XPMEM_PERMIT_MODE, reinterpret_cast<void *>(0600));
    if (segid < 0) fail("xpmem_make");
    return segid;
}

xpmem_apid_t get(xpmem_segid_t segid) {
    xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
    if (apid < 0) fail("xpmem_get");
    return apid;
}

void *attach(xpmem_apid_t apid, std::size_t size) {
    void *view = xpmem_attach({apid, 0}, size, nullptr);
    if (view == reinterpret_cast<void *>(-1)) fail("xpmem_attach");
    return view;
}

// Runs `before`, times `timed`, runs `after`, per iteration.
template <class Before, class Timed, class After>
void time_one(benchmark::State &state, Before before, Timed timed, After after) {
    for (auto _ : state) {
        auto value = before();
        auto start = Clock::now();
        auto result = timed(value);
        auto stop = Clock::now();
        after(result);
        state.SetIterationTime(std::chrono::duration<double>(stop - start).count());
    }
}

void Make(benchmark::State &state) {
    time_one(
        state, [] { return 0; }, [](int) { return make(4096); },
        [](xpmem_segid_t segid) { xpmem_remove(segid); });
}

void Remove(benchmark::State &state) {
    time_one(
        state, [] { return make(4096); }, [](xpmem_segid_t segid) { return xpmem_remove(segid); },
        [](int) {});
}

void Get(benchmark::State &state) {
    xpmem_segid_t segid = make(4096);
    time_one(
        state, [] { return 0; }, [&](int) { return get(segid); },
        [](xpmem_apid_t apid) { xpmem_release(apid); });
    xpmem_remove(segid);
}

void Release(benchmark::State &state) {
    xpmem_segid_t segid = make(4096);
    time_one(
        state, [&] { return get(segid); }, [](xpmem_apid_t apid) { return xpmem_release(apid); },
        [](int) {});
    xpmem_remove(segid);
}

// A segment of `size` bytes with a permit, attached once so that the range is already
// shared when timing starts.
struct SharedRange {
    explicit SharedRange(std::size_t bytes) : size(bytes), segid(make(bytes)), apid(get(segid)) {
        xpmem_detach(attach(apid, size));
    }
    ~SharedRange() {
        xpmem_release(apid);
        xpmem_remove(segid);
    }
    std::size_t size;
    xpmem_segid_t segid;
    xpmem_apid_t apid;
};

void Attach(benchmark::State &state) {
    SharedRange range(static_cast<std::size_t>(state.range(0)));
    time_one(
        state, [] { return 0; }, [&](int) { return attach(range.apid, range.size); },
        [](void *view) { xpmem_detach(view); });
}

void Detach(benchmark::State &state) {
    SharedRange range(static_cast<std::size_t>(state.range(0)));
    time_one(
        state, [&] { return attach(range.apid, range.size); },
        [](void *view) { return xpmem_detach(view); }, [](int) {});
}

BENCHMARK(Make)->UseManualTime();
BENCHMARK(Remove)->UseManualTime();
BENCHMARK(Get)->UseManualTime();
BENCHMARK(Release)->UseManualTime();
BENCHMARK(Attach)->UseManualTime()->Arg(4 << 10)->Arg(2 << 20)->Arg(1 << 30);
BENCHMARK(Detach)->UseManualTime()->Arg(4 << 10)->Arg(2 << 20)->Arg(1 << 30);

}  // namespace

BENCHMARK_MAIN();
