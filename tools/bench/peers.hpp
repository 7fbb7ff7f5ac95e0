// The two benchmark processes and what they share: a control block in a MAP_SHARED page
// made before fork, with one cache line per flag, and the shm-2copy bounce buffers.
#pragma once

#include <sys/types.h>
#include <xpmem.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace bench {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kChunk = 64 << 10;      // shm-2copy pipeline step
constexpr std::size_t kSlots = 4;             // shm-2copy ring depth
constexpr std::size_t kLatencyMax = 1 << 20;  // largest ping-pong message
constexpr std::size_t kMaxRotate = 64;
constexpr std::uint64_t kWindow = 64;  // messages announced at once (as osu_bw)

// What one measurement runs.
enum class Op : int {
    quit,
    bandwidth_signal,  // sender: announce each message (xpmem, cma pull from it)
    bandwidth_2copy,   // sender: copy each message into the bounce ring
    latency,           // sender: the other side of a ping-pong of one mechanism
    pingpong_word,     // sender: answer 8-byte pings written into attachments
};

enum class Mechanism : int { xpmem, cma, shm_2copy, memcpy_local };
constexpr Mechanism kMechanisms[] = {Mechanism::xpmem, Mechanism::cma, Mechanism::shm_2copy,
                                     Mechanism::memcpy_local};
const char *name(Mechanism mechanism);

struct alignas(64) Flag {
    std::atomic<std::uint64_t> value{0};
    void set(std::uint64_t v) { value.store(v, std::memory_order_release); }
    std::uint64_t get() const { return value.load(std::memory_order_acquire); }
    // Spins: both sides are busy while a measurement runs.
    void wait_for(std::uint64_t v) const {
        while (get() < v) __builtin_ia32_pause();
    }
    // Spins briefly, then sleeps between polls: for a process idle between measurements,
    // which must not take its CPU from a measurement running there (the thread baseline).
    void wait_idle_for(std::uint64_t v) const;
};

// Commands go receiver -> sender: the receiver fills the fields, bumps `command`, and
// waits for `done` to reach the same number.
struct Control {
    Flag command, done;
    Flag ready;  // sender -> receiver: messages sent (or pongs)
    Flag taken;  // receiver -> sender: messages received (or pings)
    Flag sent_chunks, received_chunks;
    Op op = Op::quit;
    Mechanism mechanism = Mechanism::xpmem;
    std::size_t size = 0;
    std::uint64_t iterations = 0;
    // Set up once by the sender.
    pid_t sender_pid = 0;
    std::size_t rotate = 1;
    std::uintptr_t sender_buffers[kMaxRotate] = {};
    xpmem_segid_t sender_segment = -1;  // all sender buffers, one segment
    std::uintptr_t sender_base = 0;
    std::uintptr_t attach_buffer = 0;  // the attach-cost range
    xpmem_segid_t attach_segment = -1;
    // Set up once by the receiver.
    std::uintptr_t receiver_buffer = 0;
    xpmem_segid_t receiver_segment = -1;
    Flag setup;  // 1: sender ready, 2: receiver ready
    char error[256] = {};
};

// Shared memory made before fork: the control block and the bounce buffers.
struct Shared {
    Control *control;
    std::span<std::byte> ring;         // kSlots * kChunk, shm-2copy bandwidth
    std::span<std::byte> to_sender;    // kLatencyMax, shm-2copy ping
    std::span<std::byte> to_receiver;  // kLatencyMax, shm-2copy pong
};
Shared make_shared_area();

void pin_to_cpu(int cpu);
double now_seconds();

// Fresh private memory, populated, never freed (the processes are short-lived).
std::span<std::byte> populated(std::size_t size);

[[noreturn]] void die(const std::string &what);

}  // namespace bench
