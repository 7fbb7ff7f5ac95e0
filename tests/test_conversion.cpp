// docs/contract.md §5: private memory of every kind becomes attachable in place while a thread
// keeps storing into it, with no store lost; memory that is already shared is handed over
// as it is.

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xpmem.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"

namespace {

using namespace std::chrono_literals;
constexpr std::size_t kPage = 4096;
constexpr std::size_t kPages = 16;
constexpr std::size_t kSlots = kPages * kPage / sizeof(std::uint64_t);

alignas(4096) std::uint64_t bss_region[kSlots];
alignas(4096) std::uint64_t data_region[kSlots] = {1};

class Conversion : public xt::BackendTest {};

// Every slot counts the writer's rounds: a store lost while its page was being converted
// leaves that slot one short for good (a later round cannot make up for it).
void check_region(const volatile std::uint64_t *region, std::uint64_t rounds,
                  std::size_t slots = kSlots) {
    for (std::size_t slot = 0; slot < slots; ++slot) {
        if (region[slot] == rounds) continue;
        xt::fail(__FILE__, __LINE__,
                 "lost store: slot " + std::to_string(slot) + " holds " +
                     std::to_string(region[slot]) + " after " + std::to_string(rounds) + " rounds");
    }
}

struct Writer {
    std::atomic<volatile std::uint64_t *> region{nullptr};
    std::atomic<bool> stop{false};
    std::atomic<bool> verified{false};
    std::atomic<std::uint64_t> rounds{0};

    // Increments every slot once per round until told to stop.
    void run(volatile std::uint64_t *into) {
        std::uint64_t round = 0;
        while (!stop.load(std::memory_order_relaxed)) {
            for (std::size_t slot = 0; slot < kSlots; ++slot) into[slot] = into[slot] + 1;
            ++round;
        }
        rounds = round;
    }
};

enum class Region { heap_brk, heap_mmap, bss, data, main_stack, thread_stack };

// The owner: a writer thread stores into `region` while an attacher attaches it in four
// steps (each converting a part); then both check every slot.
void owner_with_writer(Region kind, xt::Channel &channel) {
    Writer writer;
    alignas(4096) volatile std::uint64_t main_stack_region[kSlots] = {};
    std::thread thread;
    if (kind == Region::thread_stack) {
        thread = std::thread([&] {
            alignas(4096) volatile std::uint64_t own_stack_region[kSlots] = {};
            writer.region = own_stack_region;
            writer.run(own_stack_region);
            while (!writer.verified.load()) std::this_thread::sleep_for(1ms);
        });
        while (writer.region.load() == nullptr) std::this_thread::yield();
    } else {
        volatile std::uint64_t *region = nullptr;
        switch (kind) {
            case Region::heap_brk: {
                void *p = nullptr;
                CHILD_CHECK(posix_memalign(&p, kPage, kPages * kPage) == 0);
                std::memset(p, 0, kPages * kPage);
                region = static_cast<std::uint64_t *>(p);
                break;
            }
            case Region::heap_mmap:
                region = static_cast<std::uint64_t *>(std::aligned_alloc(kPage, 64 * kPage));
                std::memset(const_cast<std::uint64_t *>(region), 0, kPages * kPage);
                break;
            case Region::bss:
                region = bss_region;
                break;
            case Region::data:
                region = data_region;
                data_region[0] = 0;  // initialised to 1 only to live in .data
                break;
            default:
                region = main_stack_region;
                break;
        }
        writer.region = region;
        thread = std::thread([&, region] {
            writer.run(region);
            while (!writer.verified.load()) std::this_thread::sleep_for(1ms);
        });
    }
    volatile std::uint64_t *region = writer.region.load();
    auto segment = xpmem::Segment::make_whole_address_space(0600);
    channel.send_a(segment.id());
    channel.send_a(reinterpret_cast<std::uintptr_t>(region));
    CHILD_CHECK(channel.receive_a<int>() == 1);  // all four parts attached
    std::this_thread::sleep_for(20ms);
    writer.stop = true;
    while (writer.rounds.load() == 0) std::this_thread::yield();
    std::uint64_t rounds = writer.rounds.load();
    check_region(region, rounds);
    channel.send_a(rounds);
    CHILD_CHECK(channel.receive_a<int>() == 2);  // the attacher saw the same
    writer.verified = true;
    thread.join();
}

void attacher_of_writer(xt::Channel &channel) {
    auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
    auto address = channel.receive_b<std::uintptr_t>();
    std::vector<xpmem::Attachment> parts;
    for (std::size_t part = 0; part < 4; ++part) {
        constexpr std::size_t kPart = kPages / 4 * kPage;
        parts.push_back(permit.attach(static_cast<off_t>(address + part * kPart), kPart));
    }
    channel.send_b(1);
    auto rounds = channel.receive_b<std::uint64_t>();
    for (auto &part : parts)
        check_region(part.as<volatile std::uint64_t>().data(), rounds, kSlots / 4);
    channel.send_b(2);
}

void writer_test(Region kind) {
    xt::Channel channel;
    xt::Process owner([&] { owner_with_writer(kind, channel); });
    xt::Process attacher([&] { attacher_of_writer(channel); });
    xt::expect_all_ok({&attacher, &owner});
}

TEST_P(Conversion, BrkHeapUnderConcurrentStores) {
    writer_test(Region::heap_brk);
}
TEST_P(Conversion, MmapHeapUnderConcurrentStores) {
    writer_test(Region::heap_mmap);
}
TEST_P(Conversion, BssUnderConcurrentStores) {
    writer_test(Region::bss);
}
TEST_P(Conversion, DataUnderConcurrentStores) {
    writer_test(Region::data);
}
TEST_P(Conversion, MainStackUnderConcurrentStores) {
    writer_test(Region::main_stack);
}
TEST_P(Conversion, ThreadStackUnderConcurrentStores) {
    writer_test(Region::thread_stack);
}

// The kernel writes to a thread's rseq area (in its TLS block) whenever the thread
// returns to user space after being preempted. Converting those pages must not get the
// owner killed, even unprivileged, where write-protection only stops user-mode writes.
TEST_P(Conversion, TlsOfBusyThreadsSurvives) {
    constexpr int kThreads = 4;
    xt::Channel channel;
    xt::Process owner([&] {
        std::atomic<bool> stop{false};
        std::atomic<int> ready{0};
        std::array<std::uintptr_t, kThreads + 1> thread_pointers{};
        thread_pointers[0] = reinterpret_cast<std::uintptr_t>(__builtin_thread_pointer());
        std::vector<std::thread> threads;
        for (int i = 1; i <= kThreads; ++i)
            threads.emplace_back([&, i] {
                thread_local std::uint64_t counter = 0;
                thread_pointers[i] = reinterpret_cast<std::uintptr_t>(__builtin_thread_pointer());
                ++ready;
                while (!stop) {
                    ++counter;
                    sched_yield();  // returns to user space often, with rseq updates
                }
                CHILD_CHECK(counter > 0);
            });
        while (ready < kThreads) std::this_thread::yield();
        auto segment = xpmem::Segment::make_whole_address_space(0600);
        channel.send_a(segment.id());
        channel.send_a(thread_pointers);
        CHILD_CHECK(channel.receive_a<int>() == 1);
        stop = true;
        for (auto &thread : threads) thread.join();
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto thread_pointers = channel.receive_b<std::array<std::uintptr_t, kThreads + 1>>();
        std::vector<xpmem::Attachment> views;
        for (std::uintptr_t pointer : thread_pointers) {
            std::uintptr_t page = pointer & ~(kPage - 1);
            views.push_back(permit.attach(static_cast<off_t>(page - 2 * kPage), 4 * kPage));
        }
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// Open MPI attaches 8 MiB-aligned windows of the whole address space around a buffer: the
// window sweeps over whatever else is mapped there (program text, .data, heap, libraries).
// Everything in it must keep working in the owner, and the buffer must be shared.
void aligned_window_test(bool heap) {
    constexpr std::uintptr_t kWindow = 8 << 20;
    xt::Channel channel;
    xt::Process owner([&] {
        auto *buffer = heap ? static_cast<char *>(std::malloc(3 * kPage))
                            : reinterpret_cast<char *>(bss_region);
        std::strcpy(buffer, "window");
        auto segment = xpmem::Segment::make_whole_address_space(0600);
        channel.send_a(segment.id());
        channel.send_a(reinterpret_cast<std::uintptr_t>(buffer));
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(std::strcmp(buffer, "wINDOW") == 0);
        // The owner still allocates, formats and prints normally.
        std::string text = std::to_string(getpid());
        std::vector<std::string> many(1000, text);
        CHILD_CHECK(many.back() == text);
        if (heap) std::free(buffer);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto buffer = channel.receive_b<std::uintptr_t>();
        std::uintptr_t start = buffer & ~(kWindow - 1);
        auto view = permit.attach(static_cast<off_t>(start), kWindow);
        char *seen = reinterpret_cast<char *>(view.data() + (buffer - start));
        CHILD_CHECK(std::strcmp(seen, "window") == 0);
        std::memcpy(seen + 1, "INDOW", 5);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

TEST_P(Conversion, AlignedWindowAroundHeapBuffer) {
    aligned_window_test(true);
}
TEST_P(Conversion, AlignedWindowAroundBssBuffer) {
    aligned_window_test(false);
}

// A MAP_SHARED anonymous mapping (shared with the owner's children, say) can be reached
// only through /proc/self/map_files, which needs privilege; otherwise it is a hole.
TEST_P(Conversion, SharedAnonymousMapping) {
    bool reachable = xt::running_as_root() || !user_backend();
    xt::Channel channel;
    xt::Process owner([&] {
        void *p = mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        std::strcpy(static_cast<char *>(p), "shared anon");
        auto segment = xpmem::Segment::make({static_cast<std::byte *>(p), kPage});
        channel.send_a(segment.id());
        channel.receive_a<int>();
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kPage);
        CHILD_CHECK(xt::readable_by_kernel(view.data()) == reachable);
        if (reachable)
            CHILD_CHECK(std::strcmp(reinterpret_cast<char *>(view.data()), "shared anon") == 0);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// Which object backs `address` in the calling process, as /proc/self/maps names it.
std::string mapped_path(const void *address) {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    auto target = reinterpret_cast<std::uintptr_t>(address);
    while (std::getline(maps, line)) {
        std::uintptr_t start = std::stoull(line.substr(0, line.find('-')), nullptr, 16);
        std::uintptr_t end = std::stoull(line.substr(line.find('-') + 1), nullptr, 16);
        if (target < start || target >= end) continue;
        auto slash = line.find('/');
        return slash == std::string::npos ? "" : line.substr(slash);
    }
    return "(unmapped)";
}

// Shared memory is handed over as it is: no copy, and the owner's mapping is unchanged.
void shared_object_test(const std::function<std::span<std::byte>()> &map_it) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = map_it();
        std::string before = mapped_path(memory.data());
        std::memcpy(memory.data(), "shared", 7);
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(std::memcmp(memory.data() + kPage, "reply", 6) == 0);
        CHILD_CHECK(mapped_path(memory.data()) == before);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, 2 * kPage);
        CHILD_CHECK(std::memcmp(view.data(), "shared", 7) == 0);
        std::memcpy(view.data() + kPage, "reply", 6);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

std::span<std::byte> map_shared(int fd) {
    CHILD_CHECK(fd >= 0 && ftruncate(fd, 2 * kPage) == 0);
    void *p = mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHILD_CHECK(p != MAP_FAILED);
    return {static_cast<std::byte *>(p), 2 * kPage};
}

TEST_P(Conversion, MemfdHandedOverAsIs) {
    shared_object_test([] { return map_shared(memfd_create("test", MFD_CLOEXEC)); });
}

TEST_P(Conversion, PosixShmHandedOverAsIs) {
    shared_object_test([] {
        std::string name = "/xpmem-test-" + std::to_string(getpid());
        int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
        shm_unlink(name.c_str());  // the mapping and descriptor keep it alive
        return map_shared(fd);
    });
}

TEST_P(Conversion, SharedFileHandedOverAsIs) {
    shared_object_test([] {
        char path[] = "/tmp/xpmem-test-XXXXXX";
        int fd = mkstemp(path);
        auto memory = map_shared(fd);
        close(fd);  // only the mapping remains: the library reopens it by path
        return memory;
    });
}

// A file mapped read-only is attached read-only, even through a read-write permit.
TEST_P(Conversion, ReadOnlyFileMappingStaysReadOnly) {
    char path[] = "/tmp/xpmem-ro-XXXXXX";
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, "file contents", 14, 0), 14);
    ASSERT_EQ(ftruncate(fd, kPage), 0);
    close(fd);
    xt::Channel channel;
    xt::Process owner([&] {
        int file = open(path, O_RDONLY);
        void *p = mmap(nullptr, kPage, PROT_READ, MAP_PRIVATE, file, 0);
        CHILD_CHECK(p != MAP_FAILED);
        auto segment = xpmem::Segment::make({static_cast<std::byte *>(p), kPage});
        channel.send_a(segment.id());
        channel.receive_a<int>();
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kPage);
        CHILD_CHECK(std::memcmp(view.data(), "file contents", 14) == 0);
        *reinterpret_cast<volatile char *>(view.data()) = 'X';  // must raise SIGSEGV
    });
    xt::Status status = attacher.wait();
    EXPECT_EQ(status.signal(), SIGSEGV) << status.describe();
    channel.send_b(1);  // only now may the owner exit: its exit would revoke too
    EXPECT_CHILD_OK(owner);
    unlink(path);
}

INSTANTIATE_BACKENDS(Conversion);

}  // namespace
