// Stress: attachers fault on a segment while the owner unmaps, remaps and moves the same
// range and removes and remakes the segment, for a bounded time. Nothing may crash, hang or
// show a value the owner never wrote; with the kernel backend the module's counters must be
// back to zero afterwards (the fixture checks them) and the VM harness checks the kernel log.

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xpmem.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <new>
#include <thread>
#include <vector>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"

namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kPages = 64;
constexpr std::size_t kSize = kPages * kPage;
constexpr int kAttachers = 3;
constexpr auto kDuration = std::chrono::seconds(4);

// Shared by every process of the test (a MAP_SHARED page made before forking).
struct Board {
    std::atomic<xpmem_segid_t> segid{0};  // 0 while there is no segment
    std::atomic<std::uint64_t> generation{0};
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> pages_read{0};
    std::atomic<std::uint64_t> sigbus{0};
    std::atomic<std::uint64_t> attaches{0};
};
static_assert(std::atomic<xpmem_segid_t>::is_always_lock_free);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

class Stress : public xt::BackendTest {};

// The owner's remapping thread: each round maps fresh memory (or moves the pages away, or
// drops them) and stamps every page with a new generation number. Without `remap`, it only
// stamps.
void churn(Board &board, char *range, bool remap) {
    auto *scratch =
        static_cast<char *>(mmap(nullptr, kSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    CHILD_CHECK(scratch != MAP_FAILED);
    for (unsigned round = 0; !board.stop.load(); ++round) {
        std::uint64_t generation = board.generation.fetch_add(1) + 1;
        switch (remap ? round % 3 : 3) {
            case 0:  // fresh memory in one step (munmap first would let any other
                     // thread's mmap take the range in between)
                CHILD_CHECK(mmap(range, kSize, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == range);
                break;
            case 1:  // move the pages away; the range is left mapped, empty
                CHILD_CHECK(mremap(range, kSize, kSize,
                                   MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
                                   scratch) == scratch);
                break;
            case 2:  // drop the pages
                CHILD_CHECK(madvise(range, kSize, MADV_DONTNEED) == 0);
                break;
            default:
                break;
        }
        for (std::size_t page = 0; page < kPages; ++page)
            *reinterpret_cast<volatile std::uint64_t *>(range + page * kPage) = generation;
        // Attaching must not undo the owner's own stores.
        for (std::size_t page = 0; page < kPages; ++page)
            CHILD_CHECK(*reinterpret_cast<volatile std::uint64_t *>(range + page * kPage) ==
                        generation);
    }
}

sigjmp_buf touch_failed;

void on_sigbus(int) {
    siglongjmp(touch_failed, 1);
}

// Reads word 0 of every page of `view` with plain loads; a page that raises SIGBUS (a hole
// or a removed segment) is counted and skipped. Every value must be one the owner wrote.
void read_pages(Board &board, const char *view) {
    for (std::size_t page = 0; page < kPages; ++page) {
        if (sigsetjmp(touch_failed, 1) != 0) {
            board.sigbus.fetch_add(1);
            continue;
        }
        std::uint64_t value =
            *reinterpret_cast<const volatile std::uint64_t *>(view + page * kPage);
        CHILD_CHECK(value <= board.generation.load());
        board.pages_read.fetch_add(1);
    }
}

void attach_and_read(Board &board) {
    struct sigaction action {};
    action.sa_handler = on_sigbus;
    CHILD_CHECK(sigaction(SIGBUS, &action, nullptr) == 0);
    while (!board.stop.load()) {
        xpmem_segid_t segid = board.segid.load();
        if (segid == 0) continue;
        // The segment may be removed at any moment: get and attach may then fail.
        xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        if (apid < 0) {
            CHILD_CHECK(errno == ENOENT || errno == EINVAL);
            continue;
        }
        xpmem_addr address{apid, 0};
        void *view = xpmem_attach(address, kSize, nullptr);
        if (view == reinterpret_cast<void *>(-1)) {
            CHILD_CHECK(errno == ENOENT || errno == EINVAL);
        } else {
            board.attaches.fetch_add(1);
            for (int pass = 0; pass < 4; ++pass) read_pages(board, static_cast<char *>(view));
            CHILD_CHECK(xpmem_detach(view) == 0);
        }
        CHILD_CHECK(xpmem_release(apid) == 0);
    }
}

TEST_P(Stress, AttachersFaultWhileTheOwnerRemapsAndRemoves) {
    void *shared =
        mmap(nullptr, sizeof(Board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(shared, MAP_FAILED);
    auto *board = new (shared) Board;
    // With the user backend the owner only rewrites its memory (docs/user-backend.md,
    // limits): a store can still be lost when the owner maps over memory in the instant a
    // conversion moves its copy there, and mremap(MREMAP_DONTUNMAP) fails on converted
    // memory (shmem).
    bool remap = !user_backend();

    std::vector<xt::Process> processes;
    processes.emplace_back([&] {
        auto memory = xt::anonymous(kSize);
        auto *range = reinterpret_cast<char *>(memory.data());
        std::thread remapper(churn, std::ref(*board), range, remap);
        // This thread makes and removes the segment over the churning range.
        while (!board->stop.load()) {
            xpmem_segid_t segid =
                xpmem_make(range, kSize, XPMEM_PERMIT_MODE, reinterpret_cast<void *>(0666));
            CHILD_CHECK(segid > 0);
            std::uint64_t read_before = board->pages_read.load();
            board->segid.store(segid);
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            // On a slow kernel (the debug kernel in emulation) an attach can take longer
            // than that: keep the segment until an attacher read a page of it, at most 1 s.
            auto until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
            while (board->pages_read.load() == read_before && !board->stop.load() &&
                   std::chrono::steady_clock::now() < until)
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            board->segid.store(0);
            CHILD_CHECK(xpmem_remove(segid) == 0);
        }
        remapper.join();
    });
    for (int i = 0; i < kAttachers; ++i) processes.emplace_back([&] { attach_and_read(*board); });
    std::this_thread::sleep_for(kDuration);
    board->stop.store(true);
    xt::expect_all_ok(processes);

    std::printf("stress: %llu attaches, %llu pages read, %llu SIGBUS, %llu owner rounds\n",
                static_cast<unsigned long long>(board->attaches.load()),
                static_cast<unsigned long long>(board->pages_read.load()),
                static_cast<unsigned long long>(board->sigbus.load()),
                static_cast<unsigned long long>(board->generation.load()));
    EXPECT_GT(board->pages_read.load(), 0U) << "no attacher ever read a page";
    munmap(shared, sizeof(Board));
}

INSTANTIATE_BACKENDS(Stress);

}  // namespace
