// Attacks on the user backend's "attachments follow the owner" machinery (src/user/
// follower.cpp, fetcher.cpp, the FAULT request): a hostile local user (uid 65534) against a
// victim owner of another uid, and a hostile owner against an attacher. Each test states the
// attack and asserts the secure behaviour; a test that fails shows a hole that is open.

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xpmem.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "user/protocol.hpp"

namespace {

using namespace std::chrono_literals;
namespace wire = xpmem::user::protocol;
constexpr std::size_t kPage = 4096;

constexpr uid_t kVictimUid = 4101;
constexpr uid_t kAttackerUid = 65534;

class FollowAttacks : public xt::BackendTest {
  protected:
    void SetUp() override {
        xt::BackendTest::SetUp();
        if (!user_backend()) GTEST_SKIP() << "these attacks are on the user backend";
    }
};

void be(uid_t uid) {
    if (!xt::running_as_root()) return;
    xt::become(uid, uid);
    prctl(PR_SET_DUMPABLE, 1);
}

struct VictimInfo {
    pid_t pid;
    xpmem_segid_t segid;
};

// Fresh private anonymous memory the process has not touched.
char *fresh(std::size_t pages) {
    void *at =
        mmap(nullptr, pages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHILD_CHECK(at != MAP_FAILED);
    return static_cast<char *>(at);
}

using xt::ask;
using xt::receive;
using xt::send_raw;

int connect_victim(pid_t pid) {
    int fd = -1;
    CHILD_CHECK(xt::eventually([&] { return (fd = xt::connect_user_service(pid)) >= 0; }, 5s));
    return fd;
}

std::uint64_t get_permit(int fd, xpmem_segid_t segid, int flags) {
    auto reply = ask<wire::GetReply>(fd, wire::GetRequest{.segid = segid, .flags = flags});
    if (reply.error != 0)
        xt::fail(__FILE__, __LINE__, "GET failed: errno " + std::to_string(reply.error));
    return reply.permit;
}

// The owner's system call into (read(2) from a pipe) and out of (write(2) to a pipe) the
// page at `page`: "" if both work and carry the bytes, else what went wrong.
std::string syscalls_on(char *page, const char *text) {
    int p[2];
    CHILD_CHECK(pipe(p) == 0);
    std::string problem;
    std::size_t size = std::strlen(text) + 1;
    CHILD_CHECK(write(p[1], text, size) == static_cast<ssize_t>(size));
    errno = 0;
    ssize_t got = read(p[0], page, size);
    if (got != static_cast<ssize_t>(size))
        problem += "read(2) into the page returned " + std::to_string(got) + " errno " +
                   std::to_string(errno) + " (" + strerrordesc_np(errno) + "); ";
    errno = 0;
    ssize_t put = write(p[1], page + kPage / 2, 8);
    if (put != 8)
        problem += "write(2) from the page returned " + std::to_string(put) + " errno " +
                   std::to_string(errno) + " (" + strerrordesc_np(errno) + "); ";
    close(p[0]);
    close(p[1]);
    return problem;
}

}  // namespace

// ---- 1. a peer touching owner memory the owner has no page-table entry for -------------
//
// The owner's converted memory is registered with a userfaultfd in MINOR mode that catches
// user-mode faults only (UFFD_USER_MODE_ONLY, also for root). After the owner drops a page
// (MADV_DONTNEED: the follower punches it from the segment's file), the page is a hole in
// the file. A peer that touches it through its mapping (a load through a READ-ONLY permit
// suffices: shmem allocates on a read fault) or merely asks FAULT for it (the owner
// fallocates it) puts a page into the file's page cache that the owner's page table does
// not map. The owner's next access there is a minor fault: in user mode the follower
// resolves it, but a system call's kernel-mode access (read(2) into the buffer, write(2)
// out of it) is refused by the user-mode-only userfaultfd and fails with EFAULT.
// Expected secure behaviour: nothing a peer does makes the owner's own system calls on its
// own memory fail.

namespace {
enum class Touch { load_through_mapping, forged_fault };

void peer_touches_dropped_page(Touch how) {
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        char *memory = fresh(4);
        for (int page = 0; page < 4; ++page) std::strcpy(memory + page * kPage, "VICTIM");
        xpmem_segid_t segid = xpmem_make(memory, 4 * kPage, XPMEM_PERMIT_MODE, (void *)0644);
        CHILD_CHECK(segid > 0);
        channel.send_a(VictimInfo{getpid(), segid});
        CHILD_CHECK(channel.receive_a<int>() == 1);  // attached: the memory is converted
        // The victim drops a page it is done with (free() in jemalloc or tcmalloc does this).
        CHILD_CHECK(madvise(memory + 2 * kPage, kPage, MADV_DONTNEED) == 0);
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);  // the attacker touched the page
        std::string problem = syscalls_on(memory + 2 * kPage, "RECEIVED");
        if (!problem.empty())
            xt::fail(__FILE__, __LINE__,
                     "after a read-only peer touched the page, the victim's own " + problem);
        CHILD_CHECK(std::strcmp(memory + 2 * kPage, "RECEIVED") == 0);
        channel.send_a(4);  // the attacker keeps its permit (and connection) until now
    });
    auto info = channel.receive_b<VictimInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        int fd = connect_victim(info.pid);
        std::uint64_t permit = get_permit(fd, info.segid, XPMEM_RDONLY);
        std::vector<int> fds;
        auto reply = ask<wire::AttachReply>(
            fd, wire::AttachRequest{.permit = permit, .offset = 0, .size = 4 * kPage}, &fds);
        CHILD_CHECK(reply.error == 0 && reply.piece_count >= 1);
        CHILD_CHECK(reply.pieces[0].fd_index >= 0 && reply.pieces[0].length == 4 * kPage);
        auto *view =
            static_cast<volatile char *>(mmap(nullptr, 4 * kPage, PROT_READ, MAP_SHARED, fds[0],
                                              static_cast<off_t>(reply.pieces[0].file_offset)));
        CHILD_CHECK(view != MAP_FAILED);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        if (how == Touch::load_through_mapping) {
            (void)view[2 * kPage];  // a load: allocates the page in the victim's file
        } else {
            std::vector<int> more;
            reply = ask<wire::AttachReply>(
                fd, wire::FaultRequest{.permit = permit, .offset = 2 * kPage, .size = kPage},
                &more);
            CHILD_CHECK(reply.error == 0);
        }
        channel.send_b(3);
        CHILD_CHECK(channel.receive_b<int>() == 4);
    });
    xt::expect_all_ok({&attacker, &victim});
}
}  // namespace

TEST_P(FollowAttacks, ReadOnlyPeerLoadDoesNotBreakTheOwnersSystemCalls) {
    OPEN_HOLE(
        "a peer's load through a read-only descriptor puts a page into the file "
        "that the owner's page table lacks; the owner's system calls on it fail with "
        "EFAULT until it touches the page (minor faults reach the follower from user "
        "mode only)");
    peer_touches_dropped_page(Touch::load_through_mapping);
}
TEST_P(FollowAttacks, ForgedFaultDoesNotBreakTheOwnersSystemCalls) {
    peer_touches_dropped_page(Touch::forged_fault);
}

// Forged FAULT requests on a raw connection reach nothing an ATTACH would not: a permit
// the connection does not hold is ENOENT, offsets or sizes outside the segment are EINVAL
// (also when offset + size wraps), and a read-only permit gets only read-only descriptors,
// not mappable for writing. (Pins a guarantee: passes today.)
TEST_P(FollowAttacks, ForgedFaultsReachNothingAnAttachWouldNot) {
    // As root the victim and the attacker are two uids; as an unprivileged suite, one.
    const bool two_users = xt::running_as_root();
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        char *memory = fresh(4);
        for (int page = 0; page < 4; ++page) std::strcpy(memory + page * kPage, "VICTIM");
        xpmem_segid_t segid = xpmem_make(memory, 4 * kPage, XPMEM_PERMIT_MODE, (void *)0644);
        CHILD_CHECK(segid > 0);
        channel.send_a(VictimInfo{getpid(), segid});
        CHILD_CHECK(channel.receive_a<int>() == 1);
    });
    auto info = channel.receive_b<VictimInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        int fd = connect_victim(info.pid);
        // Mode 0644: read-write is the owner's uid's only.
        auto denied =
            ask<wire::GetReply>(fd, wire::GetRequest{.segid = info.segid, .flags = XPMEM_RDWR});
        CHILD_CHECK(denied.error == (two_users ? EACCES : 0));
        std::uint64_t permit = get_permit(fd, info.segid, XPMEM_RDONLY);
        auto fault = [&](std::uint64_t which, std::uint64_t offset, std::uint64_t size,
                         std::vector<int> *fds) {
            return ask<wire::AttachReply>(
                fd, wire::FaultRequest{.permit = which, .offset = offset, .size = size}, fds);
        };
        CHILD_CHECK(fault(permit + 1, 0, kPage, nullptr).error == ENOENT);
        CHILD_CHECK(fault(0, 0, kPage, nullptr).error == ENOENT);
        CHILD_CHECK(fault(permit, 4 * kPage, kPage, nullptr).error == EINVAL);
        CHILD_CHECK(fault(permit, kPage, 4 * kPage, nullptr).error == EINVAL);
        CHILD_CHECK(fault(permit, kPage, ~std::uint64_t{0} - kPage + 1, nullptr).error == EINVAL);
        CHILD_CHECK(fault(permit, ~std::uint64_t{0} - kPage + 1, 2 * kPage, nullptr).error ==
                    EINVAL);
        std::vector<int> fds;
        auto reply = fault(permit, kPage, 3 * kPage, &fds);
        CHILD_CHECK(reply.error == 0 && !fds.empty());
        for (int received : fds) {
            CHILD_CHECK((fcntl(received, F_GETFL) & O_ACCMODE) == O_RDONLY);
            void *writable =
                mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, received, kPage);
            CHILD_CHECK(writable == MAP_FAILED);
        }
        for (std::uint32_t i = 0; i < reply.piece_count; ++i)
            CHILD_CHECK((reply.pieces[i].flags & wire::kPieceWritable) == 0);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacker, &victim});
}

// ---- 2. a hostile owner answering FAULT requests ---------------------------------------
//
// Any local user can be an owner: it binds "xpmem-user/<pid>.<key>" itself, hands out a
// segid naming its own pid and start time, and answers the attacher's library however it
// likes. The attacher's holes and followed pieces are watched by ONE fetcher thread per
// process, which resolves faults one at a time by asking the owner.

namespace {

// What a fake owner does with a FAULT request.
enum class OnFault { never_answer, eagain, file_page, empty_file_page };

// A process that poses as an owner without the library: serves GET (permit 1), ATTACH (all
// holes: every page watched) and FAULT (`on_fault`), for `pages` pages, until its parent
// ends it. Sends its segid on `channel` (side a).
xt::Process fake_owner(xt::Channel &channel, std::size_t pages, OnFault on_fault) {
    return xt::Process([&channel, pages, on_fault] {
        be(kAttackerUid);
        int listener = xt::bind_user_service(4242);
        int memfd = memfd_create("fake-owner", MFD_CLOEXEC);
        CHILD_CHECK(memfd >= 0 && ftruncate(memfd, static_cast<off_t>(pages * kPage)) == 0);
        for (std::size_t page = 0; page < pages; ++page)  // every page present in the file
            CHILD_CHECK(pwrite(memfd, "OWNER-DATA", 11, static_cast<off_t>(page * kPage)) == 11);
        int empty = memfd_create("fake-owner-empty", MFD_CLOEXEC);
        CHILD_CHECK(empty >= 0 && ftruncate(empty, static_cast<off_t>(pages * kPage)) == 0);
        channel.send_a(wire::make_segid(1, xt::own_start_time(), getpid()));
        xt::serve_user_requests(
            listener, 60s, [&](int connection, std::span<const std::byte> message) {
                wire::Header header;
                std::memcpy(&header, message.data(), sizeof header);
                if (header.type == wire::Type::get) {
                    send_raw(connection, wire::GetReply{.error = 0, .permit = 1});
                } else if (header.type == wire::Type::attach) {
                    wire::AttachRequest request;
                    std::memcpy(&request, message.data(), sizeof request);
                    wire::AttachReply reply{};
                    reply.error = 0;
                    reply.piece_count = 1;
                    reply.pieces[0] = wire::Piece{request.size, 0, -1, 0, 0, 0};
                    send_raw(connection, reply);
                } else if (header.type == wire::Type::fault) {
                    wire::FaultRequest request;
                    std::memcpy(&request, message.data(), sizeof request);
                    wire::AttachReply reply{};
                    if (on_fault == OnFault::never_answer) return;
                    if (on_fault == OnFault::eagain) {
                        reply.error = EAGAIN;
                        send_raw(connection, reply);
                        return;
                    }
                    reply.piece_count = 1;
                    reply.pieces[0] = wire::Piece{
                        kPage, request.offset, 0, wire::kPieceWritable | wire::kPieceFollowed, 0,
                        0};
                    int descriptor = on_fault == OnFault::empty_file_page ? empty : memfd;
                    CHILD_CHECK(xt::send_descriptor(connection, descriptor,
                                                    std::as_bytes(std::span(&reply, 1))) ==
                                static_cast<ssize_t>(sizeof reply));
                }
            });
    });
}

// A load from `address` in a thread of its own, waited for at most `timeout`: the seconds
// it took, or a negative value if it had not ended by then. A SIGBUS ends the load too.
thread_local sigjmp_buf load_escape;
void on_bus(int) {
    siglongjmp(load_escape, 1);
}

double timed_load(const volatile char *address, std::chrono::milliseconds timeout) {
    struct sigaction action {};
    action.sa_handler = on_bus;
    sigaction(SIGBUS, &action, nullptr);
    auto *finished = new std::atomic<bool>(false);  // leaked if the thread never ends
    auto start = std::chrono::steady_clock::now();
    std::thread([address, finished] {
        if (sigsetjmp(load_escape, 1) == 0) (void)*address;
        finished->store(true);
    }).detach();
    while (!finished->load()) {
        if (std::chrono::steady_clock::now() - start > timeout) return -1;
        std::this_thread::sleep_for(5ms);
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

// A hostile owner answers every FAULT with EAGAIN. The fetcher takes EAGAIN as "try again"
// and wakes the thread, which faults again, for ever: the attacher's thread never gets past
// its load (and its fetcher thread spins on the owner).
// Expected secure behaviour: an owner cannot keep an attacher's thread in a fault longer
// than an owner that does not answer at all could (XPMEM_USER_TIMEOUT_MS): after a bounded
// number of EAGAINs the access ends (SIGBUS).
TEST_P(FollowAttacks, OwnerAnsweringEagainForeverCannotHoldTheAttachersThread) {
    xt::Channel channel;
    xt::Process owner = fake_owner(channel, 4, OnFault::eagain);
    auto segid = channel.receive_b<xpmem_segid_t>();
    xt::Process attacher([&] {
        be(kVictimUid);
        auto *view = static_cast<volatile char *>(xt::get_and_attach(segid, XPMEM_RDWR, 4 * kPage));
        CHILD_CHECK(view != reinterpret_cast<void *>(-1));
        double took = timed_load(view, 20s);
        if (took < 0)
            xt::fail(__FILE__, __LINE__,
                     "a load from the hostile owner's attachment was still waiting after 20 s "
                     "(the owner answers every FAULT with EAGAIN)");
        _exit(0);  // the thread may be stuck: do not run exit handlers
    });
    xt::Status status = attacher.wait(40s);
    EXPECT_TRUE(status.exited_ok()) << status.describe();
}

// Two owners: one (hostile, or merely stopped) never answers FAULT, the other answers at
// once. A thread of the attacher touching the silent owner's attachment occupies the only
// fetcher thread for XPMEM_USER_TIMEOUT_MS (10 s), and a thread touching the honest owner's
// attachment meanwhile waits behind it: one owner stalls the attacher's access to every
// other owner's memory.
// Expected secure behaviour: a fault on one owner's attachment does not wait for another
// owner's reply (here: it ends within 2 s).
TEST_P(FollowAttacks, SilentOwnerDoesNotStallFaultsOnAnotherOwnersAttachment) {
    OPEN_HOLE(
        "one fetcher thread serves the faults on every owner's attachments, and "
        "waits up to XPMEM_USER_TIMEOUT_MS for an owner that does not answer");
    xt::Channel silent_channel, honest_channel;
    xt::Process silent = fake_owner(silent_channel, 4, OnFault::never_answer);
    xt::Process honest = fake_owner(honest_channel, 4, OnFault::file_page);
    auto silent_segid = silent_channel.receive_b<xpmem_segid_t>();
    auto honest_segid = honest_channel.receive_b<xpmem_segid_t>();
    xt::Process attacher([&] {
        be(kVictimUid);
        auto attach = [](xpmem_segid_t segid) {
            auto *view =
                static_cast<volatile char *>(xt::get_and_attach(segid, XPMEM_RDWR, 4 * kPage));
            CHILD_CHECK(view != reinterpret_cast<void *>(-1));
            return view;
        };
        volatile char *stalled = attach(silent_segid);
        volatile char *honest_view = attach(honest_segid);
        // Control: alone, a fault on the honest owner's attachment is served at once.
        double alone = timed_load(honest_view + kPage, 15s);
        CHILD_CHECK(alone >= 0 && alone < 2);
        CHILD_CHECK(std::strcmp(const_cast<char *>(honest_view + kPage), "OWNER-DATA") == 0);
        std::thread([stalled] {
            if (sigsetjmp(load_escape, 1) == 0) (void)*stalled;
        }).detach();
        std::this_thread::sleep_for(300ms);  // the fetcher now waits for the silent owner
        double took = timed_load(honest_view + 2 * kPage, 15s);
        if (took < 0 || took > 2)
            xt::fail(__FILE__, __LINE__,
                     "a fault on the honest owner's attachment took " +
                         (took < 0 ? std::string("more than 15") : std::to_string(took)) +
                         " s while another owner did not answer");
        _exit(0);
    });
    xt::Status status = attacher.wait(40s);
    EXPECT_TRUE(status.exited_ok()) << status.describe();
}

// A hostile owner answers FAULT with a followed, writable piece of a file in which the
// page is absent (the real owner fallocates it first). The attacher maps it and watches it
// for missing faults; the thread's retried load is a missing fault again, and so on for
// ever.
// Expected secure behaviour: as above, the access ends (the page, or SIGBUS) in bounded
// time whatever the owner answers.
TEST_P(FollowAttacks, OwnerAnsweringAnAbsentPageCannotHoldTheAttachersThread) {
    xt::Channel channel;
    xt::Process owner = fake_owner(channel, 4, OnFault::empty_file_page);
    auto segid = channel.receive_b<xpmem_segid_t>();
    xt::Process attacher([&] {
        be(kVictimUid);
        auto *view = static_cast<volatile char *>(xt::get_and_attach(segid, XPMEM_RDWR, 4 * kPage));
        CHILD_CHECK(view != reinterpret_cast<void *>(-1));
        double took = timed_load(view, 20s);
        if (took < 0)
            xt::fail(__FILE__, __LINE__,
                     "a load from the hostile owner's attachment was still waiting after 20 s "
                     "(the owner answers FAULT with a page absent from its file)");
        _exit(0);
    });
    xt::Status status = attacher.wait(40s);
    EXPECT_TRUE(status.exited_ok()) << status.describe();
}

INSTANTIATE_BACKENDS(FollowAttacks);
