// docs/contract.md §2: holes raise SIGBUS; remove and owner exit revoke every attachment
// (SIGBUS, no hang); attacher exit frees everything the owner kept for it.

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xpmem.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"
#include "util/sanitizer.hpp"

namespace {

using namespace std::chrono_literals;
using xt::anonymous;
constexpr std::size_t kPage = 4096;

class Revoke : public xt::BackendTest {};

void touch(const std::byte *address) {
    (void)*reinterpret_cast<const volatile char *>(address);
}

TEST_P(Revoke, HoleRaisesSigbus) {
    if (xpmem::util::kSanitizer)
        GTEST_SKIP() << "the sanitizer's runtime maps single pages of its own, which the "
                        "kernel may put into the one-page hole this test makes";
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(3 * kPage);
        CHILD_CHECK(munmap(memory.data() + kPage, kPage) == 0);  // the hole
        memory[0] = std::byte{1};
        memory[2 * kPage] = std::byte{3};
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        channel.receive_a<int>();
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, 3 * kPage);
        CHILD_CHECK(view.bytes()[0] == std::byte{1});
        CHILD_CHECK(view.bytes()[2 * kPage] == std::byte{3});
        touch(view.data() + kPage);  // must raise SIGBUS
    });
    xt::Status status = attacher.wait();
    EXPECT_EQ(status.signal(), SIGBUS) << status.describe();
    channel.send_b(1);  // only now may the owner exit: its exit would revoke too
    EXPECT_CHILD_OK(owner);
}

TEST_P(Revoke, RemoveRaisesSigbusInAttachers) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(2 * kPage);
        std::memcpy(memory.data(), "alive", 6);
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        // A self-attachment is revoked too.
        auto permit = xpmem::Permit::get(segment.id());
        auto own_view = permit.attach(0, kPage);
        segment.remove();
        channel.send_a(2);
        // The owner's memory is its own again and intact.
        CHILD_CHECK(std::memcmp(memory.data(), "alive", 6) == 0);
        memory[kPage] = std::byte{1};
        CHILD_CHECK(!xt::readable_by_kernel(own_view.data()));
        // Attach through an old permit fails.
        CHILD_CHECK(xpmem_attach(xpmem_addr{permit.id(), 0}, kPage, nullptr) ==
                    reinterpret_cast<void *>(-1));
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, 2 * kPage);
        CHILD_CHECK(std::memcmp(view.data(), "alive", 6) == 0);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);  // removed
        touch(view.data());                          // must raise SIGBUS
    });
    xt::Status status = attacher.wait();
    EXPECT_EQ(status.signal(), SIGBUS) << status.describe();
    EXPECT_CHILD_OK(owner);
}

TEST_P(Revoke, OwnerExitRaisesSigbus) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(kPage);
        memory[0] = std::byte{42};
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        channel.receive_a<int>();
        _exit(0);  // without removing anything
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kPage);
        CHILD_CHECK(view.bytes()[0] == std::byte{42});
        channel.send_b(1);
        // Revocation follows the owner's exit within a bounded time.
        auto deadline = std::chrono::steady_clock::now() + 10s;
        while (xt::readable_by_kernel(view.data())) {
            CHILD_CHECK(std::chrono::steady_clock::now() < deadline);
            std::this_thread::sleep_for(1ms);
        }
        touch(view.data());  // must raise SIGBUS
    });
    xt::Status status = attacher.wait();
    EXPECT_EQ(status.signal(), SIGBUS) << status.describe();
    EXPECT_CHILD_OK(owner);
}

int count_mappings() {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    int count = 0;
    while (std::getline(maps, line)) ++count;
    return count;
}

// What each open descriptor of the calling process refers to.
std::map<int, std::string> open_descriptors() {
    std::map<int, std::string> targets;
    for (int fd = 0; fd < 1024; ++fd) {
        char link[256] = {};
        std::string path = "/proc/self/fd/" + std::to_string(fd);
        if (readlink(path.c_str(), link, sizeof link - 1) > 0) targets[fd] = link;
    }
    return targets;
}

int count_sockets() {
    auto targets = open_descriptors();
    return static_cast<int>(std::count_if(targets.begin(), targets.end(), [](const auto &entry) {
        return entry.second.starts_with("socket:");
    }));
}

// Attachers come and go (some release, some just exit); the owner keeps nothing for them.
TEST_P(Revoke, AttacherExitFreesEverything) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(16 * kPage);
        auto segment = xpmem::Segment::make(memory);
        memory[0] = std::byte{0};
        int idle_sockets = count_sockets();  // the service's own, before any attacher came
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 0);  // first round: library warmed up
        // The baseline, once the service has noticed that the first attacher left.
        CHILD_CHECK(xt::eventually([&] { return count_sockets() == idle_sockets; }));
        int fds = xt::count_open_fds();
        int mappings = count_mappings();
        channel.send_a(1);
        CHILD_CHECK(channel.receive_a<int>() == 1);  // 40 more attachers done
        // The service notices the last exit asynchronously.
        CHILD_CHECK(xt::eventually([&] { return xt::count_open_fds() == fds; }));
        // ASan's quarantine keeps freed memory, so its allocator maps fresh regions for
        // every round: the count says nothing there.
        if (!xpmem::util::kAddressSanitizer)
            CHILD_CHECK(xt::eventually([&] { return count_mappings() == mappings; }));
        CHILD_CHECK(memory[0] == std::byte{40});
    });
    auto attach_once = [&](xpmem::SegmentId segid, bool release) {
        xt::Process attacher([&] {
            auto permit = xpmem::Permit::get(segid);
            auto view = permit.attach(0, 16 * kPage);
            auto *counter = reinterpret_cast<unsigned char *>(view.data());
            *counter = static_cast<unsigned char>(*counter + 1);
            if (!release) _exit(0);  // leave the permit and the attachment behind
        });
        xt::Status status = attacher.wait();
        CHILD_CHECK(status.exited_ok());
    };
    xt::Process driver([&] {
        auto segid = channel.receive_b<xpmem::SegmentId>();
        attach_once(segid, true);
        channel.send_b(0);
        CHILD_CHECK(channel.receive_b<int>() == 1);
        for (int i = 1; i < 40; ++i) attach_once(segid, i % 2 == 0);
        channel.send_b(1);
    });
    xt::expect_all_ok({&driver, &owner});
}

// The library's descriptor of /dev/xpmem, or -1.
int device_descriptor() {
    for (const auto &[fd, target] : open_descriptors())
        if (target == "/dev/xpmem") return fd;
    return -1;
}

// docs/contract.md §4: closing a dup()ed descriptor of the device, or a fork child exiting with
// its inherited copy, must not tear the owner's state down (the classic module does).
TEST_P(Revoke, ClosingACopyOfTheDescriptorRevokesNothing) {
    if (user_backend()) GTEST_SKIP() << "the user backend has no device descriptor";
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(kPage);
        std::strcpy(reinterpret_cast<char *>(memory.data()), "still here");
        auto segment = xpmem::Segment::make(memory);
        int device = device_descriptor();
        CHILD_CHECK(device >= 0);
        CHILD_CHECK(close(dup(device)) == 0);
        xt::Process child([] {});  // exits with its copy of the descriptor
        CHILD_CHECK(child.wait().exited_ok());
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kPage);
        CHILD_CHECK(std::strcmp(reinterpret_cast<const char *>(view.data()), "still here") == 0);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

INSTANTIATE_BACKENDS(Revoke);

}  // namespace
