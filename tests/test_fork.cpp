// docs/contract.md §2, fork: a child inherits no attachment and no segment, can use the
// library afresh, and the owner's memory keeps copy-on-write semantics for its children.

#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xpmem.h>

#include <cstring>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"
#include "util/sanitizer.hpp"

namespace {

constexpr std::size_t kPage = 4096;
using xt::anonymous;

class Fork : public xt::BackendTest {};

TEST_P(Fork, ChildInheritsNoAttachment) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(kPage);
        memory[0] = std::byte{5};
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        channel.receive_a<int>();
    });
    xt::Process attacher([&] {
        auto segid = channel.receive_b<xpmem::SegmentId>();
        auto permit = xpmem::Permit::get(segid);
        auto view = permit.attach(0, kPage);
        CHILD_CHECK(view.bytes()[0] == std::byte{5});
        // The child starts afresh: the range is simply absent, the library works.
        xt::Process child([&] {
            unsigned char resident;
            errno = 0;
            CHILD_CHECK(mincore(view.data(), kPage, &resident) == -1 && errno == ENOMEM);
            auto own_permit = xpmem::Permit::get(segid);
            auto own_view = own_permit.attach(0, kPage);
            CHILD_CHECK(own_view.bytes()[0] == std::byte{5});
            CHILD_CHECK_ERRNO(xpmem_release(permit.id()), -1, EINVAL);
        });
        CHILD_CHECK(child.wait().exited_ok());
        xt::Process toucher([&] { (void)*reinterpret_cast<volatile char *>(view.data()); });
        CHILD_CHECK(toucher.wait().signal() == SIGSEGV);
        CHILD_CHECK(view.bytes()[0] == std::byte{5});  // the parent keeps its attachment
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

TEST_P(Fork, ChildInheritsNoSegment) {
    xt::Process owner([&] {
        auto memory = anonymous(kPage);
        auto segment = xpmem::Segment::make(memory);
        xt::Process child([&] {
            CHILD_CHECK_ERRNO(xpmem_remove(segment.id()), -1, EACCES);
            auto own = xpmem::Segment::make(memory);
            CHILD_CHECK(own.id() != segment.id());
            // The parent still serves its segment to the child.
            auto permit = xpmem::Permit::get(segment.id());
            auto view = permit.attach(0, kPage);
            view.bytes()[0] = std::byte{8};
            segment.release();  // the parent's: not ours to remove
        });
        CHILD_CHECK(child.wait().exited_ok());
        CHILD_CHECK(memory[0] == std::byte{8});
    });
    EXPECT_CHILD_OK(owner);
}

// After the owner's memory was attached (made shareable in the user backend), a child
// forked by the owner still gets a private copy.
TEST_P(Fork, OwnerMemoryStaysCopyOnWrite) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(4 * kPage);
        std::memcpy(memory.data(), "parent", 7);
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);  // attached
        xt::Channel family;
        xt::Process child([&] {
            CHILD_CHECK(std::memcmp(memory.data(), "parent", 7) == 0);
            std::memcpy(memory.data(), "child!", 7);
            family.send_b(1);
            CHILD_CHECK(family.receive_b<int>() == 2);
            CHILD_CHECK(std::memcmp(memory.data(), "child!", 7) == 0);
        });
        CHILD_CHECK(family.receive_a<int>() == 1);
        CHILD_CHECK(std::memcmp(memory.data(), "parent", 7) == 0);
        std::memcpy(memory.data() + kPage, "after", 6);
        family.send_a(2);
        CHILD_CHECK(child.wait().exited_ok());
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, 4 * kPage);
        for (std::size_t page = 0; page < 4; ++page)  // mapped before the owner forks
            CHILD_CHECK(xt::readable_by_kernel(view.data() + page * kPage));
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        CHILD_CHECK(std::memcmp(view.data(), "parent", 7) == 0);
        CHILD_CHECK(std::memcmp(view.data() + kPage, "after", 6) == 0);
        channel.send_b(3);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// A child made by a raw fork system call runs no pthread_atfork handler and starts with its
// parent's library state. The library notices the new pid at the child's first call and
// drops the parent's backend (docs/contract.md §2, fork); the module would also answer the
// parent's descriptor with XPMEM_ERRNO_NOPROC.
TEST_P(Fork, RawForkChildRecoversFromNoproc) {
    // The sanitizer's allocator has one lock for all threads, and a raw fork runs no fork
    // handler to release it: the child of a parent whose service thread was allocating
    // inherits it held and hangs in its first allocation (seen under ASan).
    if (user_backend() && xpmem::util::kSanitizer)
        GTEST_SKIP() << "a raw fork of a multithreaded process under a sanitizer can inherit "
                        "the sanitizer allocator's lock held";
    xt::Process parent([&] {
        CHILD_CHECK(xpmem_version() > 0);  // the library is set up in the parent
        auto memory = anonymous(kPage);
        pid_t child = static_cast<pid_t>(syscall(SYS_fork));
        CHILD_CHECK(child >= 0);
        if (child == 0) {
            xpmem_segid_t own =
                xpmem_make(memory.data(), kPage, XPMEM_PERMIT_MODE, reinterpret_cast<void *>(0600));
            _exit(own > 0 && xpmem_remove(own) == 0 ? 0 : 1);
        }
        int status = 0;
        CHILD_CHECK(waitpid(child, &status, 0) == child);
        CHILD_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        auto segment = xpmem::Segment::make(memory);  // the parent's state is untouched
    });
    EXPECT_CHILD_OK(parent);
}

// Until a raw fork child calls into the library, the user backend has not copied the
// owner's converted memory back into private memory: the child shares it with its parent
// (docs/user-backend.md, limits). Its first call does the copy; from then on its stores are
// its own. The kernel backend never shares the owner's memory with a child.
TEST_P(Fork, RawForkChildSharesConvertedMemoryUntilItsFirstCall) {
    if (user_backend() && xpmem::util::kSanitizer)
        GTEST_SKIP() << "a raw fork of a multithreaded process under a sanitizer can inherit "
                        "the sanitizer allocator's lock held";
    bool user = user_backend();
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(kPage);
        std::memcpy(memory.data(), "parent", 7);
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);  // attached: converted
        xt::Channel family;
        pid_t child = static_cast<pid_t>(syscall(SYS_fork));
        CHILD_CHECK(child >= 0);
        if (child == 0) {
            std::memcpy(memory.data(), "first", 6);  // before any call into the library
            family.send_b(1);
            if (family.receive_b<int>() != 2) _exit(1);
            if (xpmem_version() <= 0) _exit(2);  // the first call
            std::memcpy(memory.data(), "later", 6);
            family.send_b(3);
            _exit(0);
        }
        CHILD_CHECK(family.receive_a<int>() == 1);
        const char *seen = reinterpret_cast<const char *>(memory.data());
        if (std::strcmp(seen, user ? "first" : "parent") != 0)
            xt::fail(__FILE__, __LINE__, std::string("after the child's first store: ") + seen);
        family.send_a(2);
        CHILD_CHECK(family.receive_a<int>() == 3);
        if (std::strcmp(seen, user ? "first" : "parent") != 0)
            xt::fail(__FILE__, __LINE__, std::string("after the child's later store: ") + seen);
        int status = 0;
        CHILD_CHECK(waitpid(child, &status, 0) == child);
        CHILD_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        channel.send_a(2);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kPage);
        CHILD_CHECK(std::memcmp(view.data(), "parent", 7) == 0);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
    });
    xt::expect_all_ok({&attacher, &owner});
}

INSTANTIATE_BACKENDS(Fork);

}  // namespace
