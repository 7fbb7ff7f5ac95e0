// docs/contract.md §1 and §2: loads and stores through attachments hit the owner's memory,
// both ways at once; read-only permits; large segments; fixed-address, self and repeated
// attachments.

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xpmem.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"

namespace {

using namespace std::chrono_literals;
using xt::anonymous;
constexpr std::size_t kPage = 4096;

class Access : public xt::BackendTest {};

// Spins until `word` holds `value` (seen through shared memory), at most 30 s.
void await(const std::atomic<std::uint64_t> &word, std::uint64_t value) {
    auto deadline = std::chrono::steady_clock::now() + 30s;
    while (word.load(std::memory_order_acquire) != value) {
        CHILD_CHECK(std::chrono::steady_clock::now() < deadline);
        std::this_thread::yield();
    }
}

// Layout of the shared page: slot 0 is the owner's, slots 1..peers the peers'.
struct Board {
    std::atomic<std::uint64_t> slots[64];
};

void coherence_with_peers(int peers) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(kPage);
        auto *board = reinterpret_cast<Board *>(memory.data());
        board->slots[0] = 1;
        auto segment = xpmem::Segment::make(memory, 0600);
        for (int i = 0; i < peers; ++i) channel.send_a(segment.id());
        // Every peer's store shows up in our own memory, and ours in theirs.
        for (int i = 1; i <= peers; ++i) await(board->slots[i], 100 + i);
        board->slots[0].store(2, std::memory_order_release);
        for (int i = 1; i <= peers; ++i) await(board->slots[i], 200 + i);
    });
    std::vector<xt::Process> attachers;
    for (int i = 1; i <= peers; ++i) {
        attachers.emplace_back([&, i] {
            auto segid = channel.receive_b<xpmem::SegmentId>();
            auto permit = xpmem::Permit::get(segid);
            auto attachment = permit.attach(0, kPage);
            auto *board = reinterpret_cast<Board *>(attachment.data());
            CHILD_CHECK(board->slots[0].load() >= 1);
            board->slots[i].store(100 + i, std::memory_order_release);
            await(board->slots[0], 2);
            // Every other peer's first store was seen by the owner before it said 2.
            for (int j = 1; j <= peers; ++j) CHILD_CHECK(board->slots[j].load() >= 100u + j);
            board->slots[i].store(200 + i, std::memory_order_release);
        });
    }
    attachers.push_back(std::move(owner));
    xt::expect_all_ok(attachers);
}

TEST_P(Access, CoherentWithOnePeer) {
    coherence_with_peers(1);
}
TEST_P(Access, CoherentWithThreePeers) {
    coherence_with_peers(3);
}
TEST_P(Access, CoherentWithEightPeers) {
    coherence_with_peers(8);
}

TEST_P(Access, ReadOnlyPermitRefusesStores) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(2 * kPage);
        std::memcpy(memory.data(), "owner", 6);
        auto segment = xpmem::Segment::make(memory, 0644);
        channel.send_a(segment.id());
        channel.receive_a<int>();
    });
    xt::Process reader([&] {
        auto segid = channel.receive_b<xpmem::SegmentId>();
        auto permit = xpmem::Permit::get(segid, xpmem::Access::read_only);
        auto attachment = permit.attach(0, 2 * kPage);
        CHILD_CHECK(std::memcmp(attachment.data(), "owner", 6) == 0);
        // Read-only cannot be turned into writable.
        errno = 0;
        CHILD_CHECK(mprotect(attachment.data(), kPage, PROT_READ | PROT_WRITE) == -1);
        CHILD_CHECK(errno == EACCES);
        *reinterpret_cast<volatile char *>(attachment.data()) = 'x';  // must raise SIGSEGV
        _exit(0);
    });
    xt::Status status = reader.wait();
    EXPECT_EQ(status.signal(), SIGSEGV) << status.describe();
    channel.send_b(1);  // only now may the owner exit: its exit would revoke too
    EXPECT_CHILD_OK(owner);
}

TEST_P(Access, GigabyteSegment) {
    constexpr std::size_t kSize = std::size_t{1} << 30;
    constexpr std::size_t kStride = 1 << 20;
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(kSize);
        for (std::size_t at = 0; at < kSize; at += kStride) memory[at] = std::byte{0x5a};
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        for (std::size_t at = kPage; at < kSize; at += kStride)
            CHILD_CHECK(memory[at] == std::byte{0xa5});
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto attachment = permit.attach(0, kSize);
        auto bytes = attachment.bytes();
        for (std::size_t at = 0; at < kSize; at += kStride) {
            CHILD_CHECK(bytes[at] == std::byte{0x5a});
            bytes[at + kPage] = std::byte{0xa5};
        }
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

TEST_P(Access, FixedAddressAndSelfAttach) {
    xt::Process process([&] {
        auto memory = anonymous(4 * kPage);
        auto segment = xpmem::Segment::make(memory);
        auto permit = xpmem::Permit::get(segment.id());
        // Self attach: a second view of our own pages.
        auto view = permit.attach(0, 4 * kPage);
        CHILD_CHECK(view.data() != memory.data());
        memory[10] = std::byte{7};
        CHILD_CHECK(view.bytes()[10] == std::byte{7});
        view.bytes()[kPage] = std::byte{9};
        CHILD_CHECK(memory[kPage] == std::byte{9});

        // Fixed address: replaces what was there, like MAP_FIXED.
        auto target = anonymous(2 * kPage);
        auto fixed = permit.attach(kPage, 2 * kPage, target.data());
        CHILD_CHECK(fixed.data() == target.data());
        CHILD_CHECK(fixed.bytes()[0] == std::byte{9});
        // ... but never over an existing attachment.
        errno = 0;
        CHILD_CHECK(xpmem_attach(xpmem_addr{permit.id(), 0}, kPage, view.data() + kPage) ==
                    reinterpret_cast<void *>(-1));
        CHILD_CHECK(errno == EINVAL);
        CHILD_CHECK(view.bytes()[kPage] == std::byte{9});
    });
    EXPECT_CHILD_OK(process);
}

TEST_P(Access, ManyAttachmentsOfOneRange) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(8 * kPage);
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(memory[5 * kPage] == std::byte{99});
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        std::vector<xpmem::Attachment> views;
        for (int i = 0; i < 100; ++i) views.push_back(permit.attach(4 * kPage, 4 * kPage));
        views[37].bytes()[kPage] = std::byte{99};
        for (auto &view : views) CHILD_CHECK(view.bytes()[kPage] == std::byte{99});
        views.clear();  // detaches all
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// Releasing a permit detaches everything attached through it.
TEST_P(Access, ReleaseDetachesEverything) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto segment = xpmem::Segment::make(anonymous(4 * kPage));
        channel.send_a(segment.id());
        channel.receive_a<int>();
    });
    xt::Process attacher([&] {
        auto segid = channel.receive_b<xpmem::SegmentId>();
        xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(apid > 0);
        void *first = xpmem_attach(xpmem_addr{apid, 0}, 4 * kPage, nullptr);
        void *second = xpmem_attach(xpmem_addr{apid, kPage}, kPage, nullptr);
        CHILD_CHECK(first != reinterpret_cast<void *>(-1));
        CHILD_CHECK(second != reinterpret_cast<void *>(-1));
        static_cast<char *>(first)[kPage] = 1;
        CHILD_CHECK(static_cast<char *>(second)[0] == 1);
        CHILD_CHECK(xpmem_release(apid) == 0);
        unsigned char resident[4];
        for (void *gone : {first, second}) {
            errno = 0;
            CHILD_CHECK(mincore(gone, kPage, resident) == -1 && errno == ENOMEM);
            CHILD_CHECK(xpmem_detach(gone) == 0);
        }
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// Unmapping or write-protecting part of an attachment affects that part only; detaching
// through any remaining address removes the rest. Nothing kills the process.
TEST_P(Access, PartialUnmapAndMprotectOfAnAttachment) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(4 * kPage);
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(memory[0] == std::byte{1} && memory[2 * kPage] == std::byte{3});
    });
    xt::Process attacher([&] {
        auto segid = channel.receive_b<xpmem::SegmentId>();
        xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        auto *view =
            static_cast<std::byte *>(xpmem_attach(xpmem_addr{apid, 0}, 4 * kPage, nullptr));
        CHILD_CHECK(view != reinterpret_cast<void *>(-1));
        CHILD_CHECK(munmap(view + kPage, kPage) == 0);
        CHILD_CHECK(mprotect(view + 3 * kPage, kPage, PROT_READ) == 0);
        view[0] = std::byte{1};
        view[2 * kPage] = std::byte{3};
        CHILD_CHECK(view[3 * kPage] == std::byte{0});
        CHILD_CHECK(!xt::readable_by_kernel(view + kPage));
        CHILD_CHECK(xpmem_detach(view + 2 * kPage) == 0);
        unsigned char resident;
        for (std::size_t page : {0, 2, 3}) {
            errno = 0;
            CHILD_CHECK(mincore(view + page * kPage, kPage, &resident) == -1 && errno == ENOMEM);
        }
        CHILD_CHECK(xpmem_release(apid) == 0);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// A range of many mappings and holes takes several replies from the owner (each carries
// at most 64 pieces); every page lands where it belongs.
TEST_P(Access, ManyPiecesInOneAttachment) {
    constexpr std::size_t kPages = 301;
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(kPages * kPage);
        for (std::size_t page = 0; page < kPages; ++page) {
            if (page % 2 == 1)
                CHILD_CHECK(munmap(memory.data() + page * kPage, kPage) == 0);
            else
                std::memcpy(memory.data() + page * kPage, &page, sizeof page);
        }
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        channel.receive_a<int>();
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kPages * kPage);
        for (std::size_t page = 0; page < kPages; ++page) {
            const std::byte *at = view.data() + page * kPage;
            CHILD_CHECK(xt::readable_by_kernel(at) == (page % 2 == 0));
            if (page % 2 == 0) CHILD_CHECK(*reinterpret_cast<const std::size_t *>(at) == page);
        }
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// Every call is thread-safe: threads of one attacher get, attach, detach and release
// concurrently while threads of the owner make and remove segments of their own.
TEST_P(Access, ConcurrentCallers) {
    constexpr int kThreads = 4;
    constexpr int kRounds = 50;
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(64 * kPage);
        for (std::size_t page = 0; page < 64; ++page) memory[page * kPage] = std::byte{1};
        auto segment = xpmem::Segment::make(memory, 0600);
        channel.send_a(segment.id());
        std::vector<std::thread> threads;
        for (int t = 0; t < kThreads; ++t)
            threads.emplace_back([&] {
                for (int round = 0; round < kRounds; ++round) {
                    auto extra = xpmem::Segment::make(memory.subspan(0, kPage));
                    extra.remove();
                }
            });
        for (auto &thread : threads) thread.join();
        CHILD_CHECK(channel.receive_a<int>() == 1);
    });
    xt::Process attacher([&] {
        auto segid = channel.receive_b<xpmem::SegmentId>();
        std::vector<std::thread> threads;
        std::atomic<int> failures{0};
        for (int t = 0; t < kThreads; ++t)
            threads.emplace_back([&, t] {
                try {
                    for (int round = 0; round < kRounds; ++round) {
                        auto permit = xpmem::Permit::get(segid);
                        auto offset = static_cast<off_t>((t * 16 + round % 16) * kPage);
                        auto view = permit.attach(offset, kPage);
                        if (view.bytes()[0] != std::byte{1}) ++failures;
                    }
                } catch (const std::exception &) {
                    ++failures;
                }
            });
        for (auto &thread : threads) thread.join();
        CHILD_CHECK(failures == 0);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// A process-shared mutex in the owner's memory synchronises owner and attacher. Only the
// user backend promises this for private memory (docs/contract.md §2, system calls row).
TEST_P(Access, ProcessSharedMutexInAnAttachment) {
    if (!user_backend()) GTEST_SKIP() << "futexes over private pages meet only in the user backend";
    constexpr int kRounds = 20000;
    struct Shared {
        pthread_mutex_t mutex;
        std::uint64_t counter;
    };
    xt::Channel channel;
    auto contend = [](Shared *shared) {
        for (int i = 0; i < kRounds; ++i) {
            CHILD_CHECK(pthread_mutex_lock(&shared->mutex) == 0);
            std::uint64_t seen = shared->counter;
            if (i % 64 == 0) sched_yield();  // invite the other side in while we hold it
            shared->counter = seen + 1;
            CHILD_CHECK(pthread_mutex_unlock(&shared->mutex) == 0);
        }
    };
    xt::Process owner([&] {
        auto memory = anonymous(kPage);
        auto *shared = reinterpret_cast<Shared *>(memory.data());
        pthread_mutexattr_t attributes;
        pthread_mutexattr_init(&attributes);
        pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
        CHILD_CHECK(pthread_mutex_init(&shared->mutex, &attributes) == 0);
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);  // attached: contend
        contend(shared);
        CHILD_CHECK(channel.receive_a<int>() == 2);
        CHILD_CHECK(shared->counter == 2 * kRounds);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kPage);
        channel.send_b(1);
        contend(reinterpret_cast<Shared *>(view.data()));
        channel.send_b(2);
    });
    xt::expect_all_ok({&attacher, &owner});
}

INSTANTIATE_BACKENDS(Access);

}  // namespace
