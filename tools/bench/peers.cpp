#include "peers.hpp"

#include <sched.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <new>

namespace bench {

const char *name(Mechanism mechanism) {
    switch (mechanism) {
        case Mechanism::xpmem:
            return "xpmem";
        case Mechanism::cma:
            return "cma";
        case Mechanism::shm_2copy:
            return "shm-2copy";
        case Mechanism::memcpy_local:
            return "memcpy";
    }
    return "?";
}

void Flag::wait_idle_for(std::uint64_t v) const {
    for (int spin = 0; get() < v; ++spin) {
        if (spin < 2000) {
            __builtin_ia32_pause();
        } else {
            timespec pause{0, 200000};
            nanosleep(&pause, nullptr);
        }
    }
}

Shared make_shared_area() {
    std::size_t control_size = (sizeof(Control) + kPage - 1) / kPage * kPage;
    std::size_t total = control_size + kSlots * kChunk + 2 * kLatencyMax;
    void *area = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) die(std::string("mmap shared area: ") + std::strerror(errno));
    auto *bytes = static_cast<std::byte *>(area);
    Shared shared{new (area) Control, {bytes + control_size, kSlots * kChunk}, {}, {}};
    shared.to_sender = {shared.ring.data() + shared.ring.size(), kLatencyMax};
    shared.to_receiver = {shared.to_sender.data() + kLatencyMax, kLatencyMax};
    std::memset(shared.ring.data(), 0, total - control_size);  // populated before timing
    return shared;
}

void pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        die("cannot pin to CPU " + std::to_string(cpu) + ": " + std::strerror(errno));
}

double now_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

std::span<std::byte> populated(std::size_t size) {
    void *memory = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (memory == MAP_FAILED) die("mmap of " + std::to_string(size) + " bytes failed");
    std::memset(memory, 0x5a, size);
    return {static_cast<std::byte *>(memory), size};
}

void die(const std::string &what) {
    std::fprintf(stderr, "xpmem-bench: %s\n", what.c_str());
    std::exit(1);
}

}  // namespace bench
