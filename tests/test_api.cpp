// Backend selection (XPMEM_BACKEND, xpmem_version) and the C++ API's ownership rules.

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xpmem.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"

namespace {

constexpr std::size_t kPage = 4096;

bool kernel_device_answers() {
    auto backends = xt::available_backends();
    return std::find(backends.begin(), backends.end(), "kernel") != backends.end();
}

// Runs `body` in a child with XPMEM_BACKEND set to `choice` (unset if null) and stderr
// captured; returns what it printed there.
std::string with_backend(const char *choice, const std::function<void()> &body) {
    char path[] = "/tmp/xpmem-stderr-XXXXXX";
    int captured = mkstemp(path);
    unlink(path);
    xt::Process child([&] {
        if (choice != nullptr)
            setenv("XPMEM_BACKEND", choice, 1);
        else
            unsetenv("XPMEM_BACKEND");
        dup2(captured, STDERR_FILENO);
        body();
    });
    xt::Status status = child.wait();
    EXPECT_TRUE(status.exited_ok()) << status.describe();
    std::string text(4096, '\0');
    text.resize(static_cast<std::size_t>(
        std::max<ssize_t>(0, pread(captured, text.data(), text.size(), 0))));
    close(captured);
    return text;
}

TEST(Selection, UserBackendOnRequest) {
    with_backend("user", [] {
        int version = xpmem_version();
        CHILD_CHECK(version == (XPMEM_USER_BACKEND_FLAG | XPMEM_USER_BACKEND_VERSION));
        CHILD_CHECK(xpmem::backend_name() == "user");
    });
}

TEST(Selection, DefaultIsKernelWhenTheDeviceAnswersElseUser) {
    bool kernel = kernel_device_answers();
    with_backend(nullptr, [&] {
        CHILD_CHECK(xpmem_version() >= 0);
        CHILD_CHECK(xpmem::backend_name() == (kernel ? "kernel" : "user"));
    });
}

TEST(Selection, ForcedKernelWithoutDeviceFailsLoudly) {
    if (kernel_device_answers()) GTEST_SKIP() << "/dev/xpmem answers here";
    std::string said = with_backend("kernel", [] {
        CHILD_CHECK_ERRNO(xpmem_version(), -1, ENOENT);
        CHILD_CHECK_ERRNO(xpmem_init(), -1, ENOENT);
        void *memory =
            mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHILD_CHECK_ERRNO(xpmem_make(memory, kPage, XPMEM_PERMIT_MODE, (void *)0600), -1, ENOENT);
    });
    EXPECT_NE(said.find("XPMEM_BACKEND=kernel"), std::string::npos) << said;
    EXPECT_NE(said.find("/dev/xpmem"), std::string::npos) << said;
}

TEST(Selection, UnknownBackendIsRefused) {
    std::string said =
        with_backend("bogus", [] { CHILD_CHECK_ERRNO(xpmem_version(), -1, EINVAL); });
    EXPECT_NE(said.find("bogus"), std::string::npos) << said;
}

class CxxApi : public xt::BackendTest {};

TEST_P(CxxApi, OwnershipAndErrors) {
    xt::Process child([] {
        auto *memory = static_cast<std::byte *>(
            mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        // Failures carry the errno the C API would set.
        try {
            xpmem::Segment::make({memory + 1, kPage});
            CHILD_CHECK(!"misaligned make succeeded");
        } catch (const std::system_error &error) {
            CHILD_CHECK(error.code() == std::errc::invalid_argument);
        }
        xpmem::Segment segment = xpmem::Segment::make({memory, 2 * kPage});
        xpmem::SegmentId id = segment.id();
        xpmem::Segment moved = std::move(segment);
        CHILD_CHECK(!segment && moved.id() == id);  // NOLINT(bugprone-use-after-move)
        {
            xpmem::Permit permit = xpmem::Permit::get(id, xpmem::Access::read_write);
            xpmem::Attachment view = permit.attach(0, 2 * kPage);
            auto words = view.as<std::uint64_t>();
            CHILD_CHECK(words.size() == 2 * kPage / sizeof(std::uint64_t));
            words[1] = 42;
            CHILD_CHECK(reinterpret_cast<std::uint64_t *>(memory)[1] == 42);
            xpmem::Attachment other = std::move(view);
            CHILD_CHECK(!view && other.data() != nullptr);  // NOLINT(bugprone-use-after-move)
            void *address = other.data();
            other.detach();
            unsigned char resident;
            CHILD_CHECK(mincore(address, kPage, &resident) == -1);  // gone
        }                                                           // the permit is released here
        moved.remove();
        CHILD_CHECK(!moved);
        try {
            xpmem::Permit::get(id);
            CHILD_CHECK(!"get of a removed segment succeeded");
        } catch (const std::system_error &error) {
            CHILD_CHECK(error.code().value() == ENOENT || error.code().value() == EINVAL);
        }
    });
    EXPECT_CHILD_OK(child);
}

INSTANTIATE_BACKENDS(CxxApi);

}  // namespace
