// docs/contract.md §2 "bad input" for the user backend's sockets: a hostile or broken local peer
// (garbage, someone else's permit, descriptors sent to the owner, a forged revoke, a peer
// that dies mid-request) gets an error or a closed connection; the owner keeps serving
// and leaks nothing.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <xpmem.h>

#include <cstring>
#include <string>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"
#include "user/protocol.hpp"

namespace {

namespace protocol = xpmem::user::protocol;
using namespace std::chrono_literals;
constexpr std::size_t kPage = 4096;

class Hostile : public xt::BackendTest {
  protected:
    void SetUp() override {
        xt::BackendTest::SetUp();
        if (!user_backend()) GTEST_SKIP() << "the wire protocol is the user backend's";
    }
};

// A raw connection to the service of `pid`, as any local process can open.
int raw_connect(pid_t pid) {
    int fd = xt::connect_user_service(pid);
    CHILD_CHECK(fd >= 0);
    return fd;
}

// True when the peer closed the connection (within 10 s).
bool closed_by_peer(int fd) {
    timeval timeout{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    char buffer[sizeof(protocol::AttachReply)];
    return recv(fd, buffer, sizeof buffer, 0) == 0;
}

template <class Reply, class Request>
Reply ask(int fd, const Request &request) {
    CHILD_CHECK(send(fd, &request, sizeof request, MSG_NOSIGNAL) == sizeof request);
    Reply reply;
    CHILD_CHECK(recv(fd, &reply, sizeof reply, 0) == sizeof reply);
    return reply;
}

struct OwnerInfo {
    xpmem_segid_t segid;
    pid_t pid;
};

// The owner publishes a page, then checks that a well-behaved attacher still works and
// that it holds no more descriptors than before the hostile peer came.
void owner(xt::Channel &channel) {
    auto *memory = static_cast<char *>(
        mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    std::strcpy(memory, "intact");
    auto segment = xpmem::Segment::make({reinterpret_cast<std::byte *>(memory), 4 * kPage}, 0666);
    auto serve_good_attacher = [&] {
        xt::Process good([&] {
            auto permit = xpmem::Permit::get(segment.id());
            auto view = permit.attach(0, kPage);
            CHILD_CHECK(std::strcmp(reinterpret_cast<char *>(view.data()), "intact") == 0);
        });
        CHILD_CHECK(good.wait().exited_ok());
    };
    serve_good_attacher();  // the first attach sets up the backing: count after it
    // The service notices the good attacher's end asynchronously: wait for the count to
    // settle, then take it as the baseline.
    int fds = xt::count_open_fds();
    while (xt::eventually([&] { return xt::count_open_fds() != fds; }, 200ms))
        fds = xt::count_open_fds();
    channel.send_a(OwnerInfo{segment.id(), getpid()});
    CHILD_CHECK(channel.receive_a<int>() == 1);  // the hostile peer is done
    serve_good_attacher();
    CHILD_CHECK(xt::eventually([&] { return xt::count_open_fds() == fds; }));
    CHILD_CHECK(std::strcmp(memory, "intact") == 0);
}

void run(const std::function<void(OwnerInfo)> &hostile) {
    xt::Channel channel;
    xt::Process victim([&] { owner(channel); });
    xt::Process attacker([&] {
        hostile(channel.receive_b<OwnerInfo>());
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacker, &victim});
}

TEST_P(Hostile, GarbageClosesTheConnection) {
    run([](OwnerInfo info) {
        for (std::size_t size : {std::size_t{1}, std::size_t{7}, sizeof(protocol::Header),
                                 sizeof(protocol::GetRequest) + 1, std::size_t{3000}}) {
            int fd = raw_connect(info.pid);
            std::string junk(size, '\xa5');
            CHILD_CHECK(send(fd, junk.data(), junk.size(), MSG_NOSIGNAL) ==
                        static_cast<ssize_t>(size));
            CHILD_CHECK(closed_by_peer(fd));
            close(fd);
        }
        // Right size, wrong magic; right magic, a reply type sent as a request.
        protocol::GetRequest request{.segid = info.segid, .flags = XPMEM_RDWR};
        request.header.magic = 0xdeadbeef;
        int fd = raw_connect(info.pid);
        send(fd, &request, sizeof request, MSG_NOSIGNAL);
        CHILD_CHECK(closed_by_peer(fd));
        close(fd);
        protocol::RevokeReply wrong{.error = 0};
        fd = raw_connect(info.pid);
        send(fd, &wrong, sizeof wrong, MSG_NOSIGNAL);
        CHILD_CHECK(closed_by_peer(fd));
        close(fd);
    });
}

TEST_P(Hostile, SomeoneElsesGrantIsRefused) {
    run([](OwnerInfo info) {
        int fd = raw_connect(info.pid);
        auto granted = ask<protocol::GetReply>(
            fd, protocol::GetRequest{.segid = info.segid, .flags = XPMEM_RDONLY});
        CHILD_CHECK(granted.error == 0);
        // Grants are per connection: guessing other numbers finds nothing.
        for (std::uint64_t guess :
             {granted.permit + 1, granted.permit + 2, std::uint64_t{0}, ~std::uint64_t{0}}) {
            auto reply = ask<protocol::AttachReply>(
                fd, protocol::AttachRequest{.permit = guess, .offset = 0, .size = kPage});
            CHILD_CHECK(reply.error == ENOENT && reply.piece_count == 0);
        }
        // Out of the segment, misaligned, or wrapping around.
        for (auto [offset, size] : {std::pair<std::uint64_t, std::uint64_t>{0, 8 * kPage},
                                    {kPage, 4 * kPage},
                                    {1, kPage},
                                    {0, 0},
                                    {kPage, ~0ULL}}) {
            auto reply = ask<protocol::AttachReply>(
                fd,
                protocol::AttachRequest{.permit = granted.permit, .offset = offset, .size = size});
            CHILD_CHECK(reply.error == EINVAL);
        }
        // Bad flags in GET.
        auto refused =
            ask<protocol::GetReply>(fd, protocol::GetRequest{.segid = info.segid, .flags = 3});
        CHILD_CHECK(refused.error == EINVAL);
        // Another connection cannot use this connection's permit.
        int other = raw_connect(info.pid);
        auto reply = ask<protocol::AttachReply>(
            other, protocol::AttachRequest{.permit = granted.permit, .offset = 0, .size = kPage});
        CHILD_CHECK(reply.error == ENOENT);
        close(other);
        close(fd);
    });
}

TEST_P(Hostile, DescriptorsSentToTheOwnerAreNotKept) {
    run([](OwnerInfo info) {
        int fd = raw_connect(info.pid);
        protocol::GetRequest request{.segid = info.segid, .flags = XPMEM_RDWR};
        int passed = memfd_create("junk", 0);
        CHILD_CHECK(xt::send_descriptor(fd, passed, std::as_bytes(std::span(&request, 1))) ==
                    sizeof request);
        CHILD_CHECK(closed_by_peer(fd));
        close(fd);
    });
}

TEST_P(Hostile, PeerDyingMidRequest) {
    run([](OwnerInfo info) {
        for (int i = 0; i < 20; ++i) {
            xt::Process quitter([&] {
                int fd = raw_connect(info.pid);
                auto granted = ask<protocol::GetReply>(
                    fd, protocol::GetRequest{.segid = info.segid, .flags = XPMEM_RDWR});
                protocol::AttachRequest request{
                    .permit = granted.permit, .offset = 0, .size = 4 * kPage};
                send(fd, &request, sizeof request, MSG_NOSIGNAL);
                _exit(0);  // gone before the reply
            });
            CHILD_CHECK(quitter.wait().exited_ok());
        }
    });
}

// Only a segment's owner may revoke attachments of it.
TEST_P(Hostile, ForgedRevokeIsRefused) {
    xt::Channel channel;
    xt::Process victim([&] {
        auto *memory = static_cast<char *>(
            mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        std::strcpy(memory, "mine");
        auto segment = xpmem::Segment::make({reinterpret_cast<std::byte *>(memory), kPage});
        channel.send_a(segment.id());
        channel.receive_a<int>();
    });
    xt::Channel forger_channel;
    xt::Process attacher([&] {
        auto segid = channel.receive_b<xpmem_segid_t>();
        auto permit = xpmem::Permit::get(segid);
        auto view = permit.attach(0, kPage);
        forger_channel.send_a(OwnerInfo{segid, getpid()});
        CHILD_CHECK(forger_channel.receive_a<int>() == 1);
        CHILD_CHECK(std::strcmp(reinterpret_cast<char *>(view.data()), "mine") == 0);
        channel.send_b(1);
    });
    xt::Process forger([&] {
        auto info = forger_channel.receive_b<OwnerInfo>();
        int fd = raw_connect(info.pid);
        auto reply = ask<protocol::RevokeReply>(fd, protocol::RevokeRequest{.segid = info.segid});
        CHILD_CHECK(reply.error == EACCES);
        close(fd);
        forger_channel.send_b(1);
    });
    xt::expect_all_ok({&forger, &attacher, &victim});
}

// A read-only permit of a shared object (here a memfd, mode 0777 as memfd_create makes it)
// must not give another user write access: a read-only descriptor of it could be reopened
// through /proc/self/fd with O_RDWR, so such an object is served as a hole. Found by
// xpmem-protocol-fuzz.
TEST_P(Hostile, ReadOnlyGrantOfASharedObjectCannotBeReopenedForWriting) {
    if (!xt::running_as_root()) GTEST_SKIP() << "needs root to act as another user";
    xt::Channel channel;
    xt::Process victim([&] {
        int memfd = memfd_create("shared", MFD_CLOEXEC);
        CHILD_CHECK(ftruncate(memfd, kPage) == 0);
        auto *memory =
            static_cast<char *>(mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0));
        std::strcpy(memory, "intact");
        auto segment = xpmem::Segment::make({reinterpret_cast<std::byte *>(memory), kPage}, 0644);
        channel.send_a(OwnerInfo{segment.id(), getpid()});
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(std::strcmp(memory, "intact") == 0);
    });
    xt::Process attacker([&] {
        auto info = channel.receive_b<OwnerInfo>();
        xt::become(65534, 65534);
        int fd = raw_connect(info.pid);
        auto granted = ask<protocol::GetReply>(
            fd, protocol::GetRequest{.segid = info.segid, .flags = XPMEM_RDONLY});
        CHILD_CHECK(granted.error == 0);
        protocol::AttachRequest request{.permit = granted.permit, .offset = 0, .size = kPage};
        CHILD_CHECK(send(fd, &request, sizeof request, MSG_NOSIGNAL) == sizeof request);
        protocol::AttachReply reply;
        iovec io{&reply, sizeof reply};
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * protocol::kMaxFds)];
        msghdr header{};
        header.msg_iov = &io;
        header.msg_iovlen = 1;
        header.msg_control = control;
        header.msg_controllen = sizeof control;
        CHILD_CHECK(recvmsg(fd, &header, MSG_CMSG_CLOEXEC) == sizeof reply);
        CHILD_CHECK(reply.error == 0);
        for (cmsghdr *cmsg = CMSG_FIRSTHDR(&header); cmsg != nullptr;
             cmsg = CMSG_NXTHDR(&header, cmsg)) {
            for (std::size_t i = 0; i < (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
                int received;
                std::memcpy(&received, CMSG_DATA(cmsg) + i * sizeof(int), sizeof received);
                std::string path = "/proc/self/fd/" + std::to_string(received);
                int reopened = open(path.c_str(), O_RDWR);
                if (reopened >= 0) pwrite(reopened, "broken", 6, 0);
                CHILD_CHECK(reopened < 0);
            }
        }
        close(fd);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacker, &victim});
}

INSTANTIATE_BACKENDS(Hostile);

}  // namespace
