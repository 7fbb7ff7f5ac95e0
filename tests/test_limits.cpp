// What the user backend does not match yet (README, "Limits"): each test pins today's
// behaviour, so a change to it is seen. The kernel backend must show the spec's behaviour.

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xpmem.h>

#include <cstring>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"

namespace {

constexpr std::size_t kPage = 4096;

class Limits : public xt::BackendTest {};

// Spec section 2, "owner changes its memory": after the owner unmaps and maps again, an
// existing attachment must show the owner's current memory. The user backend still shows
// the pages that were there when it was attached.
TEST_P(Limits, OwnerRemapUnderALiveAttachment) {
    xt::Channel channel;
    bool user = user_backend();
    xt::Process owner([&] {
        auto *memory = static_cast<char *>(
            mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        std::strcpy(memory, "old");
        auto segment = xpmem::Segment::make({reinterpret_cast<std::byte *>(memory), kPage});
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(munmap(memory, kPage) == 0);
        CHILD_CHECK(mmap(memory, kPage, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == memory);
        std::strcpy(memory, "new");
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kPage);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        const char *seen = reinterpret_cast<const char *>(view.data());
        CHILD_CHECK(std::strcmp(seen, user ? "old" : "new") == 0);
        channel.send_b(3);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// Spec section 2, holes: memory the owner maps into a hole later must become visible.
// In the user backend the hole stays a hole for attachments made before.
TEST_P(Limits, HoleFilledAfterAttach) {
    xt::Channel channel;
    bool user = user_backend();
    xt::Process owner([&] {
        auto *memory = static_cast<char *>(
            mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        munmap(memory + kPage, kPage);
        auto segment = xpmem::Segment::make({reinterpret_cast<std::byte *>(memory), 2 * kPage});
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(mmap(memory + kPage, kPage, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == memory + kPage);
        std::strcpy(memory + kPage, "filled");
        channel.send_a(2);
        channel.receive_a<int>();
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, 2 * kPage);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        CHILD_CHECK(xt::readable_by_kernel(view.data() + kPage) == !user);
        channel.send_b(3);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// Spec section 5: MADV_DONTNEED must zero the owner's private memory, and attachments show
// the owner's current memory. After the user backend made the memory shareable it is
// shmem, where MADV_DONTNEED drops nothing: both sides keep the old bytes.
TEST_P(Limits, OwnerMadviseDontneed) {
    xt::Channel channel;
    bool user = user_backend();
    xt::Process owner([&] {
        auto *memory = static_cast<char *>(
            mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        std::strcpy(memory, "old");
        auto segment = xpmem::Segment::make({reinterpret_cast<std::byte *>(memory), kPage});
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(madvise(memory, kPage, MADV_DONTNEED) == 0);
        CHILD_CHECK(std::strcmp(memory, user ? "old" : "") == 0);
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kPage);
        CHILD_CHECK(std::strcmp(reinterpret_cast<const char *>(view.data()), "old") == 0);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        CHILD_CHECK(std::strcmp(reinterpret_cast<const char *>(view.data()), user ? "old" : "") ==
                    0);
        channel.send_b(3);
    });
    xt::expect_all_ok({&attacher, &owner});
}

INSTANTIATE_BACKENDS(Limits);

}  // namespace
