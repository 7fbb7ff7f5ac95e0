// What the user backend does not match yet (README, "Limits"): each test pins today's
// behaviour, so a change to it is seen. The kernel backend must show the spec's behaviour.

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xpmem.h>

#include <cstring>
#include <functional>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"

namespace {

constexpr std::size_t kPage = 4096;

class Limits : public xt::BackendTest {};

// The owner publishes `pages` pages set up by `prepare`; once the attacher has attached
// them, the owner runs `change` on its memory, then the attacher runs `check` on its view.
void after_owner_change(std::size_t pages, const std::function<void(char *)> &prepare,
                        const std::function<void(char *)> &change,
                        const std::function<void(const std::byte *)> &check) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = xt::anonymous(pages * kPage);
        auto *bytes = reinterpret_cast<char *>(memory.data());
        prepare(bytes);
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        change(bytes);
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, pages * kPage);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        check(view.data());
        channel.send_b(3);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// Maps a fresh private page over `at`, replacing what was there.
void remap_page(char *at) {
    CHILD_CHECK(mmap(at, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
                     0) == at);
}

// Spec section 2, "owner changes its memory": after the owner unmaps and maps again, an
// existing attachment must show the owner's current memory. The user backend still shows
// the pages that were there when it was attached.
TEST_P(Limits, OwnerRemapUnderALiveAttachment) {
    bool user = user_backend();
    after_owner_change(
        1, [](char *memory) { std::strcpy(memory, "old"); },
        [](char *memory) {
            CHILD_CHECK(munmap(memory, kPage) == 0);
            remap_page(memory);
            std::strcpy(memory, "new");
        },
        [&](const std::byte *view) {
            CHILD_CHECK(std::strcmp(reinterpret_cast<const char *>(view), user ? "old" : "new") ==
                        0);
        });
}

// Spec section 2, holes: memory the owner maps into a hole later must become visible.
// In the user backend the hole stays a hole for attachments made before.
TEST_P(Limits, HoleFilledAfterAttach) {
    bool user = user_backend();
    after_owner_change(
        2, [](char *memory) { CHILD_CHECK(munmap(memory + kPage, kPage) == 0); },
        [](char *memory) {
            remap_page(memory + kPage);
            std::strcpy(memory + kPage, "filled");
        },
        [&](const std::byte *view) { CHILD_CHECK(xt::readable_by_kernel(view + kPage) == !user); });
}

// Spec section 5: MADV_DONTNEED must zero the owner's private memory, and attachments show
// the owner's current memory. After the user backend made the memory shareable it is
// shmem, where MADV_DONTNEED drops nothing: both sides keep the old bytes.
TEST_P(Limits, OwnerMadviseDontneed) {
    bool user = user_backend();
    after_owner_change(
        1, [](char *memory) { std::strcpy(memory, "old"); },
        [&](char *memory) {
            CHILD_CHECK(madvise(memory, kPage, MADV_DONTNEED) == 0);
            CHILD_CHECK(std::strcmp(memory, user ? "old" : "") == 0);
        },
        [&](const std::byte *view) {
            CHILD_CHECK(std::strcmp(reinterpret_cast<const char *>(view), user ? "old" : "") == 0);
        });
}

INSTANTIATE_BACKENDS(Limits);

}  // namespace
