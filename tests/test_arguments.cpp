// docs/contract.md §1: every argument check, with its errno, and nothing changed by a failure.

#include <sys/mman.h>
#include <unistd.h>
#include <xpmem.h>

#include <cstring>

#include "harness.hpp"

namespace {

using xt::BackendTest;

class Arguments : public BackendTest {};

TEST_P(Arguments, VersionAndInit) {
    xt::Process child([] {
        CHILD_CHECK(xpmem_version() >= 0);
        CHILD_CHECK(xpmem_init() == 0);
        CHILD_CHECK(xpmem_init() == 0);
    });
    EXPECT_CHILD_OK(child);
}

// A call that succeeds leaves errno as it was, whatever failed inside it (the first call's
// /dev/xpmem probe; detach's look at an address in no mapping).
TEST_P(Arguments, SuccessLeavesErrnoAlone) {
    xt::Process child([] {
        errno = EXDEV;
        CHILD_CHECK(xpmem_version() >= 0 && errno == EXDEV);
        void *hole = mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        munmap(hole, 4096);
        CHILD_CHECK(xpmem_detach(hole) == 0 && errno == EXDEV);
    });
    EXPECT_CHILD_OK(child);
}

TEST_P(Arguments, Make) {
    xt::Process child([] {
        auto *buffer = reinterpret_cast<char *>(xt::anonymous(4 * 4096).data());
        void *mode = reinterpret_cast<void *>(0600);
        CHILD_CHECK_ERRNO(xpmem_make(buffer, 4096, 0, mode), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_make(buffer, 4096, 2, mode), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_make(buffer, 4096, XPMEM_PERMIT_MODE, (void *)01000), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_make(buffer, 4096, XPMEM_PERMIT_MODE, (void *)-1), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_make(buffer + 1, 4096, XPMEM_PERMIT_MODE, mode), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_make(buffer, 100, XPMEM_PERMIT_MODE, mode), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_make(buffer, 0, XPMEM_PERMIT_MODE, mode), -1, EINVAL);
        // Beyond user space, and wrapping around.
        CHILD_CHECK_ERRNO(xpmem_make((void *)(1ULL << 60), 4096, XPMEM_PERMIT_MODE, mode), -1,
                          EINVAL);
        CHILD_CHECK_ERRNO(xpmem_make(buffer, SIZE_MAX - 4095, XPMEM_PERMIT_MODE, mode), -1, EINVAL);
        CHILD_CHECK_ERRNO(
            xpmem_make((void *)(1ULL << 60), XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE, mode), -1,
            EINVAL);

        xpmem_segid_t a = xpmem_make(buffer, 4 * 4096, XPMEM_PERMIT_MODE, mode);
        xpmem_segid_t whole = xpmem_make(nullptr, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE, mode);
        xpmem_segid_t any_mode = xpmem_make(buffer, 4096, XPMEM_PERMIT_MODE, (void *)0777);
        CHILD_CHECK(a > 0 && whole > 0 && any_mode > 0);
        CHILD_CHECK(a != whole && whole != any_mode && a != any_mode);
        CHILD_CHECK(xpmem_remove(a) == 0 && xpmem_remove(whole) == 0 &&
                    xpmem_remove(any_mode) == 0);
    });
    EXPECT_CHILD_OK(child);
}

TEST_P(Arguments, Remove) {
    xt::Process child([] {
        void *buffer = xt::anonymous(4096).data();
        CHILD_CHECK_ERRNO(xpmem_remove(0), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_remove(-5), -1, EINVAL);
        xpmem_segid_t segid = xpmem_make(buffer, 4096, XPMEM_PERMIT_MODE, (void *)0600);
        CHILD_CHECK(segid > 0);
        CHILD_CHECK(xpmem_remove(segid) == 0);
        errno = 0;
        CHILD_CHECK(xpmem_remove(segid) == -1 && (errno == EINVAL || errno == ENOENT));
        CHILD_CHECK(xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr) == -1);
    });
    EXPECT_CHILD_OK(child);
}

TEST_P(Arguments, Get) {
    xt::Process child([] {
        void *buffer = xt::anonymous(4096).data();
        xpmem_segid_t segid = xpmem_make(buffer, 4096, XPMEM_PERMIT_MODE, (void *)0600);
        CHILD_CHECK(segid > 0);
        CHILD_CHECK_ERRNO(xpmem_get(0, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_get(-1, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_get(segid, 0, XPMEM_PERMIT_MODE, nullptr), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_get(segid, XPMEM_RDONLY | XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr),
                          -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_get(segid, 4, XPMEM_PERMIT_MODE, nullptr), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_get(segid, XPMEM_RDWR, 0, nullptr), -1, EINVAL);
        // A segid nobody made.
        errno = 0;
        xpmem_segid_t bogus = segid ^ (xpmem_segid_t{0x1234} << 32);
        CHILD_CHECK(xpmem_get(bogus, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr) == -1);
        CHILD_CHECK(errno == ENOENT || errno == EINVAL);
        // permit_value is ignored: clients pass 0, 0600 or 0666.
        for (void *value : {(void *)0, (void *)0600, (void *)0666}) {
            xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, value);
            CHILD_CHECK(apid > 0);
            CHILD_CHECK(xpmem_release(apid) == 0);
        }
        CHILD_CHECK(xpmem_remove(segid) == 0);
    });
    EXPECT_CHILD_OK(child);
}

TEST_P(Arguments, ReleaseAttachDetach) {
    xt::Process child([] {
        auto *buffer = reinterpret_cast<char *>(xt::anonymous(4 * 4096).data());
        xpmem_segid_t segid = xpmem_make(buffer, 4 * 4096, XPMEM_PERMIT_MODE, (void *)0600);
        xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(segid > 0 && apid > 0);
        void *failed = reinterpret_cast<void *>(-1);

        CHILD_CHECK_ERRNO(xpmem_release(0), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_release(apid + (xpmem_apid_t{1} << 32)), -1, EINVAL);

        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{0, 0}, 4096, nullptr), failed, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 1}, 4096, nullptr), failed, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, -4096}, 4096, nullptr), failed, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 0}, 0, nullptr), failed, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 0}, 5 * 4096, nullptr), failed, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 4 * 4096}, 4096, nullptr), failed, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 3 * 4096}, 2 * 4096, nullptr), failed,
                          EINVAL);
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 0}, 4096, buffer + 8), failed, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 0}, 4096, (void *)(1ULL << 60)), failed,
                          EINVAL);

        // Size rounds up to pages.
        auto *attached = static_cast<char *>(xpmem_attach(xpmem_addr{apid, 4096}, 100, nullptr));
        CHILD_CHECK(attached != failed);
        buffer[4096 + 4095] = 'x';
        CHILD_CHECK(attached[4095] == 'x');

        // Detach: an address in no mapping is fine; a mapping that is not an attachment is
        // EINVAL; any address inside an attachment removes all of it.
        void *hole = mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        munmap(hole, 4096);
        CHILD_CHECK(xpmem_detach(hole) == 0);
        CHILD_CHECK_ERRNO(xpmem_detach(buffer), -1, EINVAL);
        CHILD_CHECK(xpmem_detach(attached + 123) == 0);
        CHILD_CHECK(xpmem_detach(attached) == 0);  // already gone: no mapping there now

        CHILD_CHECK(xpmem_release(apid) == 0);
        CHILD_CHECK_ERRNO(xpmem_release(apid), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 0}, 4096, nullptr), failed, EINVAL);
        CHILD_CHECK(xpmem_remove(segid) == 0);
        buffer[0] = 'y';  // the owner's memory is untouched by all of the above
        CHILD_CHECK(buffer[4096 + 4095] == 'x');
    });
    EXPECT_CHILD_OK(child);
}

// A refused attach at a fixed address changes nothing there (docs/contract.md §2, bad
// input): the application's memory stays mapped with its contents.
TEST_P(Arguments, RefusedFixedAttachLeavesTheRangeAsItWas) {
    xt::Process child([] {
        auto *buffer = reinterpret_cast<char *>(xt::anonymous(4 * 4096).data());
        xpmem_segid_t segid = xpmem_make(buffer, 4 * 4096, XPMEM_PERMIT_MODE, (void *)0600);
        xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(segid > 0 && apid > 0);
        auto *kept = reinterpret_cast<char *>(xt::anonymous(5 * 4096).data());
        std::memset(kept, 'k', 5 * 4096);
        void *failed = reinterpret_cast<void *>(-1);

        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 0}, 5 * 4096, kept), failed, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 4 * 4096}, 4096, kept), failed, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 3 * 4096}, 2 * 4096, kept), failed,
                          EINVAL);
        CHILD_CHECK(xpmem_release(apid) == 0);
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 0}, 4096, kept), failed, EINVAL);
        apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(apid > 0 && xpmem_remove(segid) == 0);
        CHILD_CHECK(xpmem_attach(xpmem_addr{apid, 0}, 4096, kept) == failed);

        for (std::size_t i = 0; i < 5 * 4096; ++i) CHILD_CHECK(kept[i] == 'k');
        kept[0] = 'w';  // still the application's writable memory
        CHILD_CHECK(kept[0] == 'w');
    });
    EXPECT_CHILD_OK(child);
}

// An apid belongs to the process that got it.
TEST_P(Arguments, PermitBelongsToItsHolder) {
    xt::Channel channel;
    xt::Process owner([&] {
        void *buffer = xt::anonymous(4096).data();
        xpmem_segid_t segid = xpmem_make(buffer, 4096, XPMEM_PERMIT_MODE, (void *)0666);
        xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(apid > 0);
        channel.send_a(segid);
        channel.send_a(apid);
        CHILD_CHECK(channel.receive_a<int>() == 1);
    });
    xt::Process other([&] {
        auto segid = channel.receive_b<xpmem_segid_t>();
        auto apid = channel.receive_b<xpmem_apid_t>();
        CHILD_CHECK_ERRNO(xpmem_attach(xpmem_addr{apid, 0}, 4096, nullptr),
                          reinterpret_cast<void *>(-1), EINVAL);
        CHILD_CHECK_ERRNO(xpmem_release(apid), -1, EINVAL);
        CHILD_CHECK_ERRNO(xpmem_remove(segid), -1, EACCES);
        channel.send_b(1);
    });
    xt::expect_all_ok({&other, &owner});
}

INSTANTIATE_BACKENDS(Arguments);

}  // namespace
