// Where a backend does not match the contract yet (docs/kernel-module.md, "What it does not
// do"; docs/user-backend.md, "Limits"): each test pins today's behaviour, so a change to it
// is seen. (The owner changing its memory under a live attachment is not pinned here:
// test_follow.cpp holds both backends to the contract, docs/contract.md §2.)

#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xpmem.h>

#include <cstring>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"

namespace {

constexpr std::size_t kPage = 4096;

class Limits : public xt::BackendTest {};

// docs/contract.md §2, system calls on attached memory. read(2) into an attachment and write(2)
// from it work in both backends. What pins pages with get_user_pages works in the user
// backend, where an attachment is an ordinary shared mapping; in the kernel backend an
// attachment is a PFN mapping, and those calls fail cleanly with EFAULT
// (docs/kernel-module.md, "What it does not do": why a module cannot offer more for an owner's
// private pages).
TEST_P(Limits, SystemCallsOnAttachedMemory) {
    bool user = user_backend();
    xt::after_owner_change(
        1, [](char *memory) { std::strcpy(memory, "owner"); }, [](char *) {},
        [&](const std::byte *const_view) {
            auto *view = const_cast<char *>(reinterpret_cast<const char *>(const_view));
            int pipe_fds[2];
            CHILD_CHECK(pipe(pipe_fds) == 0);
            // write(2) from the attachment, read(2) into it.
            CHILD_CHECK(write(pipe_fds[1], view, 6) == 6);
            char copy[6];
            CHILD_CHECK(read(pipe_fds[0], copy, 6) == 6 && std::strcmp(copy, "owner") == 0);
            CHILD_CHECK(write(pipe_fds[1], "read(2)", 8) == 8);
            CHILD_CHECK(read(pipe_fds[0], view, 8) == 8 && std::strcmp(view, "read(2)") == 0);

            // get_user_pages: vmsplice, process_vm_readv, a process-shared futex.
            iovec from_view{view, 8};
            errno = 0;
            ssize_t spliced = vmsplice(pipe_fds[1], &from_view, 1, 0);
            CHILD_CHECK(user ? spliced == 8 : spliced == -1 && errno == EFAULT);
            char remote[8];
            iovec local{remote, sizeof remote};
            errno = 0;
            ssize_t copied = process_vm_readv(getpid(), &local, 1, &from_view, 1, 0);
            CHILD_CHECK(user ? copied == 8 : copied == -1 && errno == EFAULT);
            errno = 0;
            long woken = syscall(SYS_futex, view, FUTEX_WAKE, 1, nullptr, nullptr, 0);
            CHILD_CHECK(user ? woken == 0 : woken == -1 && errno == EFAULT);
            close(pipe_fds[0]);
            close(pipe_fds[1]);
        });
}

// Memory pinned by io_uring fixed buffers, attached afterwards. The user backend cannot
// replace pinned private pages with shareable ones without losing what the kernel writes
// through the pin later, so the attach fails with EBUSY and the owner's memory stays as it
// is; the kernel backend attaches it. Either way the owner sees what io_uring wrote.
TEST_P(Limits, PrivateMemoryPinnedByIoUringIsNeverReplaced) {
    bool user = user_backend();
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = xt::anonymous(2 * kPage);
        std::strcpy(reinterpret_cast<char *>(memory.data()), "before");
        xt::PinnedBuffer pin(memory);
        if (pin.error() != 0) {  // io_uring disabled here: nothing to pin
            channel.send_a(xpmem_segid_t{-1});
            return;
        }
        auto segment = xpmem::Segment::make(memory, 0666);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);  // the attacher tried
        pin.read_into("through the pin");
        CHILD_CHECK(std::strcmp(reinterpret_cast<char *>(memory.data()), "through the pin") == 0);
        channel.send_a(xpmem_segid_t{0});
        CHILD_CHECK(channel.receive_a<int>() == 2);
    });
    xt::Process attacher([&] {
        auto segid = channel.receive_b<xpmem_segid_t>();
        if (segid < 0) return;
        xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(apid >= 0);
        xpmem_addr address{apid, 0};
        errno = 0;
        auto *view = static_cast<char *>(xpmem_attach(address, 2 * kPage, nullptr));
        bool refused = view == reinterpret_cast<char *>(-1) && errno == EBUSY;
        channel.send_b(1);  // the owner checks its memory whatever happened here
        channel.receive_b<xpmem_segid_t>();
        if (user) {
            CHILD_CHECK(refused);
        } else {
            CHILD_CHECK(!refused && std::strcmp(view, "through the pin") == 0);
        }
        channel.send_b(2);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// The documented way to both pin and share memory with the user backend: allocate it
// shared (a memfd here), which is handed over as it is and never replaced.
TEST_P(Limits, SharedMemoryPinnedByIoUringAttaches) {
    xt::Channel channel;
    xt::Process owner([&] {
        int fd = memfd_create("pinned", MFD_CLOEXEC);
        CHILD_CHECK(fd >= 0 && ftruncate(fd, 2 * kPage) == 0);
        void *at = mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        CHILD_CHECK(at != MAP_FAILED);
        std::span memory(static_cast<std::byte *>(at), 2 * kPage);
        xt::PinnedBuffer pin(memory);
        if (pin.error() != 0) {
            channel.send_a(xpmem_segid_t{-1});
            return;
        }
        auto segment = xpmem::Segment::make(memory, 0666);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);  // attached
        pin.read_into("through the pin");
        channel.send_a(xpmem_segid_t{0});
        CHILD_CHECK(channel.receive_a<int>() == 2);
    });
    xt::Process attacher([&] {
        auto segid = channel.receive_b<xpmem_segid_t>();
        if (segid < 0) return;
        auto permit = xpmem::Permit::get(segid);
        auto view = permit.attach(0, 2 * kPage);
        channel.send_b(1);
        channel.receive_b<xpmem_segid_t>();
        CHILD_CHECK(std::strcmp(reinterpret_cast<const char *>(view.data()), "through the pin") ==
                    0);
        channel.send_b(2);
    });
    xt::expect_all_ok({&attacher, &owner});
}

INSTANTIATE_BACKENDS(Limits);

}  // namespace
