// SysV shared memory (shmget/shmat) in a segment: UCX allocates its buffers and FIFOs there
// by default. It is attached like any other shared object: the attacher maps the segment
// itself, so it shares one memory with the owner and every other process that attached it.
// On the user backend the attacher attaches it with its own IPC permission
// (docs/user-backend.md: SysV shared memory).

#include <signal.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

#include <cstring>
#include <span>
#include <string>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"

namespace {

constexpr std::size_t kPage = 4096;
constexpr uid_t kOtherUid = 4201;

class SysV : public xt::BackendTest {};

// A fresh SysV segment of `pages` pages, created with `mode`, attached (at `at` if given),
// and marked for removal at once, as UCX does: it lives while someone has it attached.
std::span<std::byte> sysv_segment(std::size_t pages, int mode = 0600, int *id = nullptr,
                                  void *at = nullptr) {
    int shm = shmget(IPC_PRIVATE, pages * kPage, IPC_CREAT | mode);
    CHILD_CHECK(shm >= 0);
    void *p = shmat(shm, at, at != nullptr ? SHM_REMAP : 0);
    CHILD_CHECK(p != reinterpret_cast<void *>(-1));
    CHILD_CHECK(shmctl(shm, IPC_RMID, nullptr) == 0);
    if (id != nullptr) *id = shm;
    return {static_cast<std::byte *>(p), pages * kPage};
}

void fill(std::span<std::byte> bytes, char seed) {
    for (std::size_t i = 0; i < bytes.size(); ++i)
        bytes[i] = static_cast<std::byte>(seed + static_cast<char>(i % 97));
}

bool filled(std::span<const std::byte> bytes, char seed) {
    for (std::size_t i = 0; i < bytes.size(); ++i)
        if (bytes[i] != static_cast<std::byte>(seed + static_cast<char>(i % 97))) return false;
    return true;
}

}  // namespace

// The attacher reads the owner's bytes and its stores reach the owner, and a third process
// that attached the segment by its id (as UCX's peers do) sees them too: the segment is
// shared as it is, not copied.
TEST_P(SysV, SegmentIsSharedAsItIs) {
    xt::Channel channel, third;
    xt::Process owner([&] {
        int id = -1;
        auto memory = sysv_segment(4, 0600, &id);
        fill(memory, 'a');
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(std::memcmp(memory.data() + 3 * kPage, "from the attacher", 18) == 0);
        third.send_a(id);
        CHILD_CHECK(third.receive_a<int>() == 1);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, 4 * kPage);
        CHILD_CHECK(filled(view.bytes().first(3 * kPage), 'a'));
        std::memcpy(view.data() + 3 * kPage, "from the attacher", 18);
        channel.send_b(1);
    });
    xt::Process reader([&] {
        auto *p = static_cast<char *>(shmat(third.receive_b<int>(), nullptr, SHM_RDONLY));
        CHILD_CHECK(p != reinterpret_cast<void *>(-1));
        CHILD_CHECK(std::memcmp(p + 3 * kPage, "from the attacher", 18) == 0);
        third.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner, &reader});
}

// A segment that spans private memory, two pages of a SysV segment mapped in the middle of
// it, and (after the owner unmapped the first of them) a SysV mapping that starts one page
// into its segment: every page shows what the owner has there.
TEST_P(SysV, PiecesBetweenPrivateMemoryAndAtAnOffset) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = xt::anonymous(6 * kPage);
        fill(memory, 'p');
        auto shared = sysv_segment(3, 0600, nullptr, memory.data() + kPage);
        fill(shared, 's');
        CHILD_CHECK(munmap(shared.data(), kPage) == 0);  // leaves pages 1-2 of the shm
        CHILD_CHECK(mmap(shared.data(), kPage, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == shared.data());
        std::memcpy(shared.data(), "private again", 14);
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(std::memcmp(memory.data() + 2 * kPage, "attacher", 9) == 0);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, 6 * kPage);
        auto bytes = view.bytes();
        // Page 0 private, page 1 private again, pages 2-3 the shm's pages 1-2, 4-5 private.
        CHILD_CHECK(filled(bytes.first(kPage), 'p'));
        CHILD_CHECK(std::memcmp(bytes.data() + kPage, "private again", 14) == 0);
        auto in_shm = bytes.subspan(2 * kPage, 2 * kPage);
        for (std::size_t i = 0; i < in_shm.size(); ++i)
            CHILD_CHECK(in_shm[i] ==
                        static_cast<std::byte>('s' + static_cast<char>((i + kPage) % 97)));
        // Pages 4-5 were private memory the whole time.
        auto tail = bytes.subspan(4 * kPage);
        for (std::size_t i = 0; i < tail.size(); ++i)
            CHILD_CHECK(tail[i] ==
                        static_cast<std::byte>('p' + static_cast<char>((i + 4 * kPage) % 97)));
        std::memcpy(bytes.data() + 2 * kPage, "attacher", 9);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// A read-only permit gives a read-only view of the segment: a store is SIGSEGV.
TEST_P(SysV, ReadOnlyPermitCannotStore) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = sysv_segment(2);
        fill(memory, 'r');
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        channel.receive_a<int>();
    });
    xt::Process attacher([&] {
        auto permit =
            xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>(), xpmem::Access::read_only);
        auto view = permit.attach(0, 2 * kPage);
        CHILD_CHECK(filled(view.bytes(), 'r'));
        *static_cast<volatile char *>(static_cast<void *>(view.data())) = 'x';
    });
    xt::Status status = attacher.wait();
    channel.send_b(1);
    EXPECT_EQ(status.signal(), SIGSEGV) << status.describe();
    EXPECT_CHILD_OK(owner);
}

// A SysV segment the owner attached read-only stays read-only through a read-write permit.
TEST_P(SysV, OwnersReadOnlyAttachStaysReadOnly) {
    xt::Channel channel;
    xt::Process owner([&] {
        int id = shmget(IPC_PRIVATE, kPage, IPC_CREAT | 0600);
        CHILD_CHECK(id >= 0);
        auto *writable = static_cast<char *>(shmat(id, nullptr, 0));
        std::strcpy(writable, "read only");
        void *p = shmat(id, nullptr, SHM_RDONLY);
        CHILD_CHECK(p != reinterpret_cast<void *>(-1) && shmctl(id, IPC_RMID, nullptr) == 0);
        auto segment = xpmem::Segment::make({static_cast<std::byte *>(p), kPage}, 0600);
        channel.send_a(segment.id());
        channel.receive_a<int>();
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kPage);
        CHILD_CHECK(std::strcmp(reinterpret_cast<char *>(view.data()), "read only") == 0);
        *static_cast<volatile char *>(static_cast<void *>(view.data())) = 'x';
    });
    xt::Status status = attacher.wait();
    channel.send_b(1);
    EXPECT_EQ(status.signal(), SIGSEGV) << status.describe();
    EXPECT_CHILD_OK(owner);
}

// Another user, granted the segment by the owner: with the segment's IPC permission too it
// reads and writes on both backends. Without it, the kernel backend still maps the owner's
// pages; the user backend attaches with the attacher's own permission, so the pages are a
// hole there (SIGBUS), never a way around the segment's mode.
TEST_P(SysV, AnotherUserNeedsTheSegmentsIpcPermissionOnTheUserBackend) {
    if (!xt::running_as_root()) GTEST_SKIP() << "needs root to run as two users";
    for (int mode : {0666, 0600}) {
        xt::Channel channel;
        xt::Process owner([&] {
            xt::become(kOtherUid, kOtherUid);
            auto memory = sysv_segment(1, mode);
            std::strcpy(reinterpret_cast<char *>(memory.data()), "granted");
            auto segment = xpmem::Segment::make(memory, 0666);
            channel.send_a(segment.id());
            channel.receive_a<int>();
        });
        bool reachable = mode == 0666 || !user_backend();
        xt::Process attacher([&] {
            xt::become(65534, 65534);
            auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
            auto view = permit.attach(0, kPage);
            CHILD_CHECK(std::strcmp(reinterpret_cast<char *>(view.data()), "granted") == 0);
            channel.send_b(1);
        });
        xt::Status status = attacher.wait();
        channel.send_b(1);
        if (reachable)
            EXPECT_TRUE(status.exited_ok()) << "mode " << mode << ": " << status.describe();
        else
            EXPECT_EQ(status.signal(), SIGBUS) << "mode " << mode << ": " << status.describe();
        EXPECT_CHILD_OK(owner);
    }
}

INSTANTIATE_BACKENDS(SysV);
