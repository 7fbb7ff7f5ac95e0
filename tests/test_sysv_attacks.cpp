// Attacks on the user backend's SysV shared memory pieces (src/user/range_description.cpp,
// attacher.cpp map_sysv_piece): a hostile owner that answers ATTACH and FAULT with SysV
// pieces of its choice, and a hostile or merely curious attacher of an honest owner that
// has SysV memory in its segment. Each test states the attack and asserts the secure
// behaviour; a test that fails shows a hole that is open.

#include <setjmp.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xpmem.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "harness.hpp"
#include "user/protocol.hpp"

namespace {

using namespace std::chrono_literals;
namespace wire = xpmem::user::protocol;
constexpr std::size_t kPage = 4096;

constexpr uid_t kVictimUid = 4101;
constexpr uid_t kThirdUid = 4103;
constexpr uid_t kAttackerUid = 65534;
constexpr gid_t kSharedGroup = 4100;  // the victim's and the third user's, not the attacker's

class SysvAttacks : public xt::BackendTest {
  protected:
    void SetUp() override {
        xt::BackendTest::SetUp();
        if (!user_backend()) GTEST_SKIP() << "these attacks are on the user backend";
        if (!xt::running_as_root()) GTEST_SKIP() << "needs root to run as several users";
    }
};

void be(uid_t uid, gid_t gid, const std::vector<gid_t> &groups = {}) {
    xt::become(uid, gid, groups);
    prctl(PR_SET_DUMPABLE, 1);
}

// ---- signals on access -------------------------------------------------------------------

sigjmp_buf access_escape;
volatile sig_atomic_t access_signal = 0;

void on_access_signal(int signal) {
    access_signal = signal;
    siglongjmp(access_escape, 1);
}

// Loads (or stores `value` at) `address`: 0 if it worked, else the signal it raised
// (SIGBUS: a hole; SIGSEGV: no mapping or no permission).
int access_at(volatile char *address, bool store, char value = 'X', char *loaded = nullptr) {
    struct sigaction action {};
    action.sa_handler = on_access_signal;
    sigemptyset(&action.sa_mask);
    struct sigaction old_bus {
    }, old_segv{};
    sigaction(SIGBUS, &action, &old_bus);
    sigaction(SIGSEGV, &action, &old_segv);
    access_signal = 0;
    if (sigsetjmp(access_escape, 1) == 0) {
        if (store)
            *address = value;
        else {
            char got = *address;
            if (loaded != nullptr) *loaded = got;
        }
    }
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaction(SIGSEGV, &old_segv, nullptr);
    return access_signal;
}

// ---- the attacher's view of its own address space ----------------------------------------

struct MapLine {
    std::uintptr_t start, end;
    std::string perms, path;
};

std::vector<MapLine> sysv_mappings() {
    std::vector<MapLine> found;
    std::ifstream maps("/proc/self/maps");
    std::string line;
    while (std::getline(maps, line)) {
        if (line.find("/SYSV") == std::string::npos) continue;
        MapLine entry{};
        entry.start = std::stoull(line.substr(0, line.find('-')), nullptr, 16);
        entry.end = std::stoull(line.substr(line.find('-') + 1, line.find(' ')), nullptr, 16);
        entry.perms = line.substr(line.find(' ') + 1, 4);
        entry.path = line.substr(line.find('/'));
        found.push_back(entry);
    }
    return found;
}

std::string describe(const std::vector<MapLine> &lines) {
    std::string text;
    for (const auto &line : lines)
        text += std::to_string(line.start) + "-" + std::to_string(line.end) + " " + line.perms +
                " " + line.path + "; ";
    return text;
}

// shm_nattch of `id`, or -1 if it cannot be read.
long attach_count(int id) {
    struct shmid_ds status {};
    if (shmctl(id, IPC_STAT, &status) < 0) return -1;
    return static_cast<long>(status.shm_nattch);
}

// ---- a hostile owner ----------------------------------------------------------------------

std::uint64_t own_ipc_namespace() {
    struct stat ipc {};
    CHILD_CHECK(stat("/proc/self/ns/ipc", &ipc) == 0);
    return ipc.st_ino;
}

// One SysV piece of `size` bytes of segment `shm_id` from `offset` on, writable, as an
// owner in our IPC namespace describes it.
wire::AttachReply sysv_piece(std::uint64_t size, int shm_id, std::uint64_t offset = 0,
                             std::uint32_t flags = wire::kPieceSysv | wire::kPieceWritable) {
    wire::AttachReply reply{};
    reply.ipc_namespace = own_ipc_namespace();
    reply.piece_count = 1;
    reply.pieces[0] = wire::Piece{size, offset, -1, flags, shm_id, 0};
    return reply;
}

struct OwnerInfo {
    xpmem_segid_t segid;
    int shm_id;  // what `prepare` returned
};

// A process that poses as an owner without the library: binds its service name as
// `listen_uid`, then becomes `serve_uid`, runs `prepare` (which returns a SysV id, or -1)
// and serves GET (permit 1) and ATTACH and FAULT alike with `reply_for(request size, id)`
// until its parent ends it. Sends its segid and the id on `channel` (side a).
xt::Process sysv_owner(xt::Channel &channel, uid_t listen_uid, uid_t serve_uid,
                       std::function<int()> prepare,
                       std::function<wire::AttachReply(std::uint64_t, int)> reply_for) {
    return xt::Process([&channel, listen_uid, serve_uid, prepare, reply_for] {
        if (listen_uid != 0) be(listen_uid, listen_uid);
        int listener = xt::bind_user_service(4343);
        if (serve_uid != listen_uid) be(serve_uid, serve_uid);
        int shm_id = prepare();
        channel.send_a(OwnerInfo{wire::make_segid(1, xt::own_start_time(), getpid()), shm_id});
        xt::serve_user_requests(
            listener, 60s, [&](int connection, std::span<const std::byte> message) {
                wire::Header header;
                std::memcpy(&header, message.data(), sizeof header);
                if (header.type == wire::Type::get) {
                    xt::send_raw(connection, wire::GetReply{.error = 0, .permit = 1});
                } else if (header.type == wire::Type::attach) {
                    wire::AttachRequest request;
                    std::memcpy(&request, message.data(), sizeof request);
                    xt::send_raw(connection, reply_for(request.size, shm_id));
                } else if (header.type == wire::Type::fault) {
                    wire::FaultRequest request;
                    std::memcpy(&request, message.data(), sizeof request);
                    xt::send_raw(connection, reply_for(request.size, shm_id));
                }
            });
        _exit(0);
    });
}

// A SysV segment of `pages` pages made by the calling process with `mode`, its pages
// filled with `text`, marked for removal; the caller keeps it attached. Returns its id.
int make_segment(std::size_t pages, int mode, const char *text, gid_t group = 0) {
    int id = shmget(IPC_PRIVATE, pages * kPage, IPC_CREAT | mode);
    CHILD_CHECK(id >= 0);
    if (group != 0) {
        struct shmid_ds status {};
        CHILD_CHECK(shmctl(id, IPC_STAT, &status) == 0);
        status.shm_perm.gid = group;
        CHILD_CHECK(shmctl(id, IPC_SET, &status) == 0);
    }
    auto *memory = static_cast<char *>(shmat(id, nullptr, 0));
    CHILD_CHECK(memory != reinterpret_cast<char *>(-1));
    for (std::size_t page = 0; page < pages; ++page) std::strcpy(memory + page * kPage, text);
    CHILD_CHECK(shmctl(id, IPC_RMID, nullptr) == 0);
    return id;
}

}  // namespace

// ---- 1. a hostile owner -------------------------------------------------------------------

// A hostile owner (uid 65534) gives the victim a READ-ONLY permit, then answers ATTACH and
// FAULT with a SysV piece of its own segment flagged kPieceWritable. The segment's mode
// (0666) lets the victim write it by its own IPC permission, so a library that trusted the
// flag would shmat it read-write.
// Expected secure behaviour: the piece is mapped (the owner's bytes show) but read-only:
// "r--s", mprotect(PROT_WRITE) fails and a store raises SIGSEGV.
TEST_P(SysvAttacks, WritableSysvPieceOnAReadOnlyPermitIsMappedReadOnly) {
    xt::Channel channel;
    xt::Process owner = sysv_owner(
        channel, kAttackerUid, kAttackerUid, [] { return make_segment(4, 0666, "OWNER-SYSV"); },
        [](std::uint64_t size, int id) { return sysv_piece(size, id); });
    auto info = channel.receive_b<OwnerInfo>();
    xt::Process victim([&] {
        be(kVictimUid, kVictimUid);
        auto *view = static_cast<char *>(xt::get_and_attach(info.segid, XPMEM_RDONLY, 4 * kPage));
        CHILD_CHECK(view != reinterpret_cast<void *>(-1));
        CHILD_CHECK(access_at(view, false) == 0);
        CHILD_CHECK(std::strcmp(view, "OWNER-SYSV") == 0);  // mapped, not a hole
        auto maps = sysv_mappings();
        CHILD_CHECK(maps.size() == 1);
        if (maps[0].perms != "r--s") xt::fail(__FILE__, __LINE__, "mapped " + describe(maps));
        CHILD_CHECK(mprotect(view, 4 * kPage, PROT_READ | PROT_WRITE) < 0);
        CHILD_CHECK(access_at(view + kPage, true) == SIGSEGV);
        CHILD_CHECK(std::strcmp(view + kPage, "OWNER-SYSV") == 0);
    });
    EXPECT_TRUE(victim.wait(40s).exited_ok());
}

// A hostile owner answers with SysV pieces that do not fit its segment (4 pages), or do
// not name one the victim may take: the offset past the end, the length past the end
// (from a valid offset), an offset near 2^64 (offset + length wraps), an unaligned offset,
// a negative id, the id of a segment already destroyed, IPC namespace 0 and another
// namespace's inode. The victim attaches read-write.
// Expected secure behaviour: each is a hole (the touch raises SIGBUS) or the attach fails;
// the victim is left with no mapping of the segment (nothing at a place it does not know
// of) and the segment's attach count is the owner's alone.
TEST_P(SysvAttacks, SysvPiecesThatDoNotFitTheSegmentAreHolesAndLeaveNothingBehind) {
    struct Variant {
        const char *what;
        std::function<wire::AttachReply(std::uint64_t, int)> reply;
    };
    const std::vector<Variant> variants{
        {"offset past the end",
         [](std::uint64_t size, int id) { return sysv_piece(size, id, 8 * kPage); }},
        {"length past the end",
         [](std::uint64_t size, int id) { return sysv_piece(size, id, 2 * kPage); }},
        {"offset + length wraps",
         [](std::uint64_t size, int id) {
             return sysv_piece(size, id, ~std::uint64_t{0} - kPage + 1);
         }},
        {"unaligned offset", [](std::uint64_t size, int id) { return sysv_piece(size, id, 100); }},
        {"negative id", [](std::uint64_t size, int) { return sysv_piece(size, -5); }},
        {"destroyed segment",
         [](std::uint64_t size, int) {
             static int gone = -1;
             if (gone < 0) {
                 gone = shmget(IPC_PRIVATE, 4 * kPage, IPC_CREAT | 0666);
                 shmctl(gone, IPC_RMID, nullptr);
             }
             return sysv_piece(size, gone);
         }},
        {"IPC namespace 0",
         [](std::uint64_t size, int id) {
             auto reply = sysv_piece(size, id);
             reply.ipc_namespace = 0;
             return reply;
         }},
        {"another IPC namespace",
         [](std::uint64_t size, int id) {
             auto reply = sysv_piece(size, id);
             reply.ipc_namespace += 1;
             return reply;
         }},
    };
    for (const Variant &variant : variants) {
        SCOPED_TRACE(variant.what);
        xt::Channel channel;
        xt::Process owner = sysv_owner(
            channel, kAttackerUid, kAttackerUid, [] { return make_segment(4, 0666, "OWNER-SYSV"); },
            variant.reply);
        auto info = channel.receive_b<OwnerInfo>();
        xt::Process victim([&] {
            be(kVictimUid, kVictimUid);
            auto *view = static_cast<char *>(xt::get_and_attach(info.segid, XPMEM_RDWR, 4 * kPage));
            if (view != reinterpret_cast<void *>(-1)) {
                int signal = access_at(view + kPage, true);
                if (signal != SIGBUS)
                    xt::fail(__FILE__, __LINE__,
                             std::string(variant.what) + ": a store raised signal " +
                                 std::to_string(signal) + " (0: it reached memory)");
            }
            auto maps = sysv_mappings();
            if (!maps.empty())
                xt::fail(__FILE__, __LINE__,
                         std::string(variant.what) + ": left mapped: " + describe(maps));
            long count = attach_count(info.shm_id);
            if (count != 1)
                xt::fail(__FILE__, __LINE__,
                         std::string(variant.what) + ": nattch " + std::to_string(count));
        });
        EXPECT_TRUE(victim.wait(40s).exited_ok());
    }
}

// A hostile owner piece covering pages 2..5 of its 8-page segment, while the victim's
// attachment is 4 pages. The library shmat()s the whole segment at an address of the
// kernel's choice and keeps the piece.
// Expected secure behaviour: exactly one mapping of the segment remains, the 4 pages of
// the piece inside the attachment; after xpmem_detach none remains and nattch is the
// owner's alone.
TEST_P(SysvAttacks, SysvPieceLeavesNoRestOfTheSegmentMappedInTheAttacher) {
    xt::Channel channel;
    xt::Process owner = sysv_owner(
        channel, kAttackerUid, kAttackerUid, [] { return make_segment(8, 0666, "OWNER-SYSV"); },
        [](std::uint64_t size, int id) { return sysv_piece(size, id, 2 * kPage); });
    auto info = channel.receive_b<OwnerInfo>();
    xt::Process victim([&] {
        be(kVictimUid, kVictimUid);
        auto *view = static_cast<char *>(xt::get_and_attach(info.segid, XPMEM_RDWR, 4 * kPage));
        CHILD_CHECK(view != reinterpret_cast<void *>(-1));
        CHILD_CHECK(std::strcmp(view, "OWNER-SYSV") == 0);
        auto maps = sysv_mappings();
        auto start = reinterpret_cast<std::uintptr_t>(view);
        if (maps.size() != 1 || maps[0].start != start || maps[0].end != start + 4 * kPage)
            xt::fail(__FILE__, __LINE__, "mapped " + describe(maps));
        CHILD_CHECK(attach_count(info.shm_id) == 2);
        CHILD_CHECK(xpmem_detach(view) == 0);
        CHILD_CHECK(sysv_mappings().empty());
        CHILD_CHECK(attach_count(info.shm_id) == 1);
    });
    EXPECT_TRUE(victim.wait(40s).exited_ok());
}

namespace {

long free_huge_pages() {
    std::ifstream meminfo("/proc/meminfo");
    std::string line;
    while (std::getline(meminfo, line))
        if (line.rfind("HugePages_Free:", 0) == 0) return std::stol(line.substr(15));
    return 0;
}

}  // namespace

// A hostile owner answers with a piece of a SHM_HUGETLB segment it created with a size of
// one 4 KiB page: shm_segsz says 4096, but shmat maps a whole 2 MiB huge page. The library
// rounds the size to 4 KiB pages, mremap of a 4 KiB piece out of a hugetlb mapping fails,
// and its clean-up munmap(base, 4096) fails on a hugetlb mapping too.
// Expected secure behaviour: a hole (SIGBUS) or the piece, and no other mapping of the
// segment left in the victim: nattch is the owner's alone.
TEST_P(SysvAttacks, HugetlbSysvPieceLeavesNoMappingBehind) {
    if (free_huge_pages() < 2) GTEST_SKIP() << "no free huge pages (vm.nr_hugepages)";
    xt::Channel channel;
    xt::Process owner = sysv_owner(
        channel, 0, 0,  // SHM_HUGETLB needs CAP_IPC_LOCK or vm.hugetlb_shm_group

        [] {
            int id = shmget(IPC_PRIVATE, kPage, IPC_CREAT | SHM_HUGETLB | 0666);
            CHILD_CHECK(id >= 0);
            auto *memory = static_cast<char *>(shmat(id, nullptr, 0));
            CHILD_CHECK(memory != reinterpret_cast<char *>(-1));
            std::strcpy(memory, "OWNER-HUGE");
            CHILD_CHECK(shmctl(id, IPC_RMID, nullptr) == 0);
            return id;
        },
        [](std::uint64_t, int id) { return sysv_piece(kPage, id); });
    auto info = channel.receive_b<OwnerInfo>();
    xt::Process victim([&] {
        be(kVictimUid, kVictimUid);
        auto *view = static_cast<char *>(xt::get_and_attach(info.segid, XPMEM_RDWR, kPage));
        CHILD_CHECK(view != reinterpret_cast<void *>(-1));
        int signal = access_at(view, false);
        CHILD_CHECK(signal == 0 || signal == SIGBUS);
        CHILD_CHECK(xpmem_detach(view) == 0);
        auto maps = sysv_mappings();
        long count = attach_count(info.shm_id);
        if (!maps.empty() || count != 1)
            xt::fail(
                __FILE__, __LINE__,
                "after detach, nattch " + std::to_string(count) + ", mapped: " + describe(maps));
    });
    EXPECT_TRUE(victim.wait(40s).exited_ok());
}

// A hostile owner (uid 65534) answers with a SysV piece of a THIRD user's segment (uid
// 4103, mode 0660, group 4100: the victim's group, not the owner's), which the owner may
// not read or write itself: the victim's stores would land in the third user's memory, the
// owner using the victim as its deputy. The owner listens as `listen_uid`, then serves as
// uid 65534.
// Expected secure behaviour: the victim's attachment is a hole (SIGBUS); its store does not
// reach the third user's segment.
static void third_users_segment_attack(uid_t listen_uid) {
    xt::Channel third_channel;
    xt::Process third([&] {
        be(kThirdUid, kSharedGroup);
        int id = make_segment(1, 0660, "THIRD-USER", kSharedGroup);
        third_channel.send_a(id);
        CHILD_CHECK(third_channel.receive_a<int>() == 1);
        auto *memory = static_cast<char *>(shmat(id, nullptr, SHM_RDONLY));
        CHILD_CHECK(memory != reinterpret_cast<char *>(-1));
        if (std::strcmp(memory, "THIRD-USER") != 0)
            xt::fail(__FILE__, __LINE__,
                     std::string("the third user's segment now holds \"") + memory + "\"");
    });
    const int third_id = third_channel.receive_b<int>();
    xt::Channel channel;
    xt::Process owner = sysv_owner(
        channel, listen_uid, kAttackerUid,
        [third_id] {
            // The owner itself may not touch the third user's segment.
            CHILD_CHECK(shmat(third_id, nullptr, SHM_RDONLY) == reinterpret_cast<void *>(-1));
            return third_id;
        },
        [](std::uint64_t, int id) { return sysv_piece(kPage, id); });
    auto info = channel.receive_b<OwnerInfo>();
    xt::Process victim([&] {
        be(kVictimUid, kVictimUid, {kSharedGroup});
        auto *view = static_cast<char *>(xt::get_and_attach(info.segid, XPMEM_RDWR, kPage));
        CHILD_CHECK(view != reinterpret_cast<void *>(-1));
        int signal = access_at(view, true, 'V');
        if (signal != SIGBUS)
            xt::fail(__FILE__, __LINE__,
                     "the victim's store into the attachment raised signal " +
                         std::to_string(signal) + " (0: it went to the third user's segment)");
    });
    EXPECT_TRUE(victim.wait(40s).exited_ok());
    third_channel.send_b(1);
    EXPECT_TRUE(third.wait(20s).exited_ok());
}

TEST_P(SysvAttacks, ForgedSysvPieceCannotAimTheAttachersStoresAtAThirdUsersSegment) {
    third_users_segment_attack(kAttackerUid);
}

// The same from an owner that listened as root and dropped to uid 65534 afterwards (a
// daemon that sets up its segments, then drops privileges; or a process of the library
// forked from a root parent after the service started). SO_PEERCRED gives the credentials
// the owner had when it called listen(2): its socket still says uid 0, and an attacher that
// trusted root owners with any segment would take the third user's.
// Expected secure behaviour: as above.
TEST_P(SysvAttacks, OwnerThatDroppedRootCannotAimTheAttachersStoresAtAThirdUsersSegment) {
    third_users_segment_attack(0);
}

// ---- 2. an attacher of an honest owner with SysV memory in its segment --------------------

// An honest owner (uid 4101) publishes pages 2..5 of an 8-page SysV segment it made with
// mode 0666 (so the attacher's IPC permission is read-write) under mode 0644: read-write
// for its own uid only. A hostile attacher (uid 65534) asks, on a raw connection, for a
// read-only permit and ATTACHes.
// Expected secure behaviour: the piece is a SysV piece of exactly the published range
// (offset 2 pages, 4 pages long) and is not flagged writable.
TEST_P(SysvAttacks, ReadOnlyPermitGetsNoWritableSysvPiece) {
    xt::Channel channel;
    xt::Process owner([&] {
        be(kVictimUid, kVictimUid);
        int id = make_segment(8, 0666, "OWNER-SYSV");
        auto *memory = static_cast<char *>(shmat(id, nullptr, 0));
        CHILD_CHECK(memory != reinterpret_cast<char *>(-1));
        xpmem_segid_t segid =
            xpmem_make(memory + 2 * kPage, 4 * kPage, XPMEM_PERMIT_MODE, (void *)0644);
        CHILD_CHECK(segid > 0);
        channel.send_a(std::pair<pid_t, xpmem_segid_t>{getpid(), segid});
        channel.send_a(id);
        CHILD_CHECK(channel.receive_a<int>() == 1);
    });
    auto [pid, segid] = channel.receive_b<std::pair<pid_t, xpmem_segid_t>>();
    const int id = channel.receive_b<int>();
    xt::Process attacker([&, pid = pid, segid = segid] {
        be(kAttackerUid, kAttackerUid);
        int fd = -1;
        CHILD_CHECK(xt::eventually([&] { return (fd = xt::connect_user_service(pid)) >= 0; }));
        auto denied =
            xt::ask<wire::GetReply>(fd, wire::GetRequest{.segid = segid, .flags = XPMEM_RDWR});
        CHILD_CHECK(denied.error == EACCES);
        auto granted =
            xt::ask<wire::GetReply>(fd, wire::GetRequest{.segid = segid, .flags = XPMEM_RDONLY});
        CHILD_CHECK(granted.error == 0);
        std::vector<int> fds;
        auto reply = xt::ask<wire::AttachReply>(
            fd, wire::AttachRequest{.permit = granted.permit, .offset = 0, .size = 4 * kPage},
            &fds);
        CHILD_CHECK(reply.error == 0 && reply.piece_count == 1 && fds.empty());
        const wire::Piece &piece = reply.pieces[0];
        CHILD_CHECK((piece.flags & wire::kPieceSysv) != 0);
        CHILD_CHECK((piece.flags & wire::kPieceWritable) == 0);
        CHILD_CHECK(piece.shm_id == id && piece.file_offset == 2 * kPage &&
                    piece.length == 4 * kPage);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacker, &owner});
}

// An honest owner's range is a hole when the attacher attaches (PROT_NONE), and a SysV
// segment of the owner when the attacher touches it: the piece is mapped at fault time, by
// mremap, which carries the flags of the shmat()ed mapping, not the attachment's
// MADV_DONTFORK. The attacher then forks.
// Expected secure behaviour: the attacher's child inherits no attachment
// (docs/user-backend.md: a fork child inherits no attachment): a load there raises SIGSEGV
// in the child.
namespace {

// The attacher's fork child after a piece was mapped at fault time: SysV (`sysv`), or the
// owner's private memory converted to a file piece.
void fork_after_fault(bool sysv) {
    xt::Channel channel;
    xt::Process owner([&] {
        be(kVictimUid, kVictimUid);
        void *range = mmap(nullptr, 2 * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHILD_CHECK(range != MAP_FAILED);
        xpmem_segid_t segid = xpmem_make(range, 2 * kPage, XPMEM_PERMIT_MODE, (void *)0666);
        CHILD_CHECK(segid > 0);
        channel.send_a(segid);
        CHILD_CHECK(channel.receive_a<int>() == 1);  // attached: the range was a hole
        if (sysv) {
            int id = shmget(IPC_PRIVATE, 2 * kPage, IPC_CREAT | 0666);
            CHILD_CHECK(id >= 0);
            CHILD_CHECK(shmat(id, range, SHM_REMAP) == range);
            CHILD_CHECK(shmctl(id, IPC_RMID, nullptr) == 0);
        } else {
            CHILD_CHECK(mprotect(range, 2 * kPage, PROT_READ | PROT_WRITE) == 0);
        }
        std::strcpy(static_cast<char *>(range), "OWNER-SYSV");
        channel.send_a(1);
        CHILD_CHECK(channel.receive_a<int>() == 1);
    });
    auto segid = channel.receive_b<xpmem_segid_t>();
    xt::Process attacher([&] {
        be(kAttackerUid, kAttackerUid);
        auto *view = static_cast<char *>(xt::get_and_attach(segid, XPMEM_RDWR, 2 * kPage));
        CHILD_CHECK(view != reinterpret_cast<void *>(-1));
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 1);
        char loaded = 0;
        CHILD_CHECK(access_at(view, false, 0, &loaded) == 0);  // fetched: the SysV piece
        CHILD_CHECK(std::strcmp(view, "OWNER-SYSV") == 0);
        CHILD_CHECK(sysv_mappings().size() == (sysv ? 1u : 0u));
        pid_t child = fork();
        if (child == 0) {
            // The raw child: no harness, only an exit status.
            int signal = access_at(view, false);
            _exit(signal == SIGSEGV ? 0 : 10 + signal);
        }
        int status = 0;
        CHILD_CHECK(waitpid(child, &status, 0) == child);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            xt::fail(__FILE__, __LINE__,
                     "the fork child's load from the attachment did not raise SIGSEGV "
                     "(exit " +
                         std::to_string(WEXITSTATUS(status)) +
                         ": 10 = it read the owner's memory through the inherited piece)");
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

}  // namespace

TEST_P(SysvAttacks, ForkChildInheritsNoSysvPieceMappedAtFault) {
    fork_after_fault(true);
}

// The same with the owner's private memory (made readable by mprotect after the attach):
// the piece mapped at fault time is a file piece (mmap MAP_FIXED), which does not carry
// MADV_DONTFORK either. Not part of the SysV change: shows whether the fault path leaks to
// fork children for every piece.
TEST_P(SysvAttacks, ForkChildInheritsNoFilePieceMappedAtFault) {
    fork_after_fault(false);
}

// An honest owner with SysV memory in its segment removes the segment while an attacher
// holds an attachment of it (mapped by shmat in the attacher).
// Expected secure behaviour: the attachment raises SIGBUS afterwards (the attachment is
// revoked; the attacher may still shmat the segment by its own IPC permission, but not
// through the library's attachment), and no mapping of the segment is left in the
// attacher.
TEST_P(SysvAttacks, RemovedSegmentLeavesNoSysvMappingInTheAttacher) {
    xt::Channel channel;
    xt::Process owner([&] {
        be(kVictimUid, kVictimUid);
        int id = make_segment(4, 0666, "OWNER-SYSV");
        auto *memory = static_cast<char *>(shmat(id, nullptr, 0));
        CHILD_CHECK(memory != reinterpret_cast<char *>(-1));
        xpmem_segid_t segid = xpmem_make(memory, 4 * kPage, XPMEM_PERMIT_MODE, (void *)0666);
        CHILD_CHECK(segid > 0);
        channel.send_a(segid);
        channel.send_a(id);
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(xpmem_remove(segid) == 0);
        channel.send_a(1);
        CHILD_CHECK(channel.receive_a<int>() == 1);
    });
    auto segid = channel.receive_b<xpmem_segid_t>();
    const int id = channel.receive_b<int>();
    xt::Process attacher([&] {
        be(kAttackerUid, kAttackerUid);
        auto *view = static_cast<char *>(xt::get_and_attach(segid, XPMEM_RDWR, 4 * kPage));
        CHILD_CHECK(view != reinterpret_cast<void *>(-1));
        CHILD_CHECK(std::strcmp(view, "OWNER-SYSV") == 0);
        CHILD_CHECK(attach_count(id) == 3);  // owner twice (make_segment's, ours), attacher
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 1);
        CHILD_CHECK(xt::eventually([&] { return access_at(view, false) == SIGBUS; }, 10s));
        auto maps = sysv_mappings();
        if (!maps.empty()) xt::fail(__FILE__, __LINE__, "left mapped: " + describe(maps));
        CHILD_CHECK(attach_count(id) == 2);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

INSTANTIATE_BACKENDS(SysvAttacks);
