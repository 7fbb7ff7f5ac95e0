// Libraries that interpose the memory calls of the whole process do not break the user
// backend. UCX 1.13's memory hooks (libucm) replace mremap with a four-argument function:
// the new address of MREMAP_FIXED is lost and the kernel gets whatever the fifth argument
// register holds. This program defines mremap the same way, which the dynamic linker binds
// libxpmem's calls to; the backend must not depend on it (it makes its own mremap system
// calls). Its own program: the interposition covers everything in it.

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"

namespace {
std::atomic<int> interposed_calls{0};
}

// As libucm's: four arguments, the fifth register passed on as found (here: a fixed wrong
// address, so that a call that needs the real one fails every time, not by chance).
extern "C" void *mremap(void *old_address, std::size_t old_size, std::size_t new_size, int flags,
                        ...) {
    interposed_calls.fetch_add(1, std::memory_order_relaxed);
    return reinterpret_cast<void *>(
        syscall(SYS_mremap, old_address, old_size, new_size, flags, nullptr));
}

namespace {

constexpr std::size_t kPage = 4096;

class InterposedMremap : public xt::BackendTest {};

}  // namespace

// The owner's private memory is converted to be shared (on the user backend) while mremap
// is interposed: the attacher reads the owner's bytes, its stores reach the owner.
TEST_P(InterposedMremap, AttachWorksWithAFourArgumentMremapInThePicture) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = xt::anonymous(64 * kPage);
        for (std::size_t i = 0; i < memory.size(); ++i) memory[i] = static_cast<std::byte>(i % 251);
        // The interposer is in effect: a mremap call from here reaches it.
        void *moved = mremap(memory.data() + 63 * kPage, kPage, kPage, 0);
        CHILD_CHECK(moved == memory.data() + 63 * kPage && interposed_calls.load() == 1);
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(std::memcmp(memory.data(), "from the attacher", 18) == 0);
        CHILD_CHECK(memory[5 * kPage + 7] == static_cast<std::byte>((5 * kPage + 7) % 251));
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, 64 * kPage);
        for (std::size_t i = 0; i < view.bytes().size(); ++i)
            CHILD_CHECK(view.bytes()[i] == static_cast<std::byte>(i % 251));
        std::memcpy(view.data(), "from the attacher", 18);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

INSTANTIATE_BACKENDS(InterposedMremap);
