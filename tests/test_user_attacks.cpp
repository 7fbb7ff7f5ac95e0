// Attacks on the user backend by a hostile local user: a process of uid 65534 against a
// victim of another uid that uses the library. Each test is written as an attacker would
// write it (raw protocol messages, kept descriptors, /proc, exec, pid games) and asserts
// the secure behaviour. Holes still open are kept here, skipped with "OPEN HOLE: ..."
// unless XPMEM_RUN_OPEN_HOLES=1.
//
// The wire format is spelled out here rather than taken from user/protocol.hpp: an
// attacker reimplements it, and the same file then also runs against older versions.

#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xpmem.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"
#include "user/protocol.hpp"
#include "util/sanitizer.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
constexpr std::size_t kPage = 4096;

constexpr uid_t kVictimUid = 4101;   // the victim and its partners
constexpr uid_t kPartnerUid = 4102;  // a legitimate attacher of another uid
constexpr uid_t kAttackerUid = 65534;

// ---- the wire format, as an attacker writes it ------------------------------------

namespace wire {
constexpr std::uint32_t kMagic = 0x58504d31;
enum Type : std::uint32_t {
    get = 1,
    get_reply,
    attach,
    attach_reply,
    release,
    revoke,
    revoke_reply,
    hello,
    hello_reply,
};
struct Header {
    std::uint32_t magic;
    std::uint32_t type;
};
struct Get {
    Header header{kMagic, get};
    std::int64_t segid;
    std::int32_t flags;
    std::uint32_t key = 0;  // where the owner sends REVOKE (older versions: reserved)
};
struct GetReply {
    Header header;
    std::int32_t error;
    std::int32_t reserved;
    std::uint64_t permit;
};
struct Attach {
    Header header{kMagic, attach};
    std::uint64_t permit;
    std::uint64_t offset;
    std::uint64_t size;
};
struct Piece {
    std::uint64_t length;
    std::uint64_t file_offset;
    std::int32_t fd_index;
    std::uint32_t flags;  // bit 0: writable, bit 2: SysV segment shm_id
    std::int32_t shm_id;
    std::uint32_t reserved;
};
struct AttachReply {
    Header header;
    std::int32_t error;
    std::uint32_t piece_count;
    std::uint64_t ipc_namespace;
    Piece pieces[64];
};
struct Release {
    Header header{kMagic, release};
    std::uint64_t permit;
};
struct Revoke {
    Header header{kMagic, revoke};
    std::int64_t segid;
};
struct RevokeReply {
    Header header;
    std::int32_t error;
    std::int32_t reserved;
};
struct Hello {
    Header header{kMagic, hello};
    std::uint64_t nonce;
};
struct HelloReply {
    Header header{kMagic, hello_reply};
    std::uint64_t proof;
};
static_assert(sizeof(Get) == sizeof(xpmem::user::protocol::GetRequest));
static_assert(sizeof(AttachReply) == sizeof(xpmem::user::protocol::AttachReply));
static_assert(sizeof(Attach) == sizeof(xpmem::user::protocol::AttachRequest));

// The owner's answer to a HELLO (splitmix64 of nonce ^ secret * golden ratio).
constexpr std::uint64_t kGolden = 0x9e3779b97f4a7c15ULL;
constexpr std::uint64_t kMix1 = 0xbf58476d1ce4e5b9ULL;
constexpr std::uint64_t kMix2 = 0x94d049bb133111ebULL;
std::uint64_t proof_of_secret(std::uint32_t secret, std::uint64_t nonce) {
    std::uint64_t z = nonce ^ (std::uint64_t{secret} * kGolden);
    for (int round = 0; round < 2; ++round) {
        z = (z ^ (z >> 30)) * kMix1;
        z = (z ^ (z >> 27)) * kMix2;
        z ^= z >> 31;
    }
    return z;
}
std::uint64_t inverse(std::uint64_t odd) {  // modulo 2^64, by Newton's iteration
    std::uint64_t x = odd;
    for (int i = 0; i < 6; ++i) x *= 2 - odd * x;
    return x;
}
std::uint64_t unshift(std::uint64_t y, unsigned shift) {  // inverts y = x ^ (x >> shift)
    std::uint64_t x = y;
    for (unsigned i = 0; i < 64 / shift + 1; ++i) x = y ^ (x >> shift);
    return x;
}
// Every step of the proof is a bijection: one answer gives the secret back.
std::optional<std::uint32_t> secret_from_proof(std::uint64_t nonce, std::uint64_t proof) {
    std::uint64_t z = proof;
    for (int round = 0; round < 2; ++round) {
        z = unshift(z, 31) * inverse(kMix2);
        z = unshift(z, 27) * inverse(kMix1);
        z = unshift(z, 30);
    }
    std::uint64_t secret = (z ^ nonce) * inverse(kGolden);
    if (secret >> 32 != 0 || proof_of_secret(static_cast<std::uint32_t>(secret), nonce) != proof)
        return std::nullopt;
    return static_cast<std::uint32_t>(secret);
}
}  // namespace wire

// ---- helpers ------------------------------------------------------------------------

#define REQUIRE_ROOT(why)                                                  \
    do {                                                                   \
        if (!xt::running_as_root()) GTEST_SKIP() << "needs root: " << why; \
    } while (0)

// Takes `uid` (and the same gid) when the suite runs as root; unprivileged, every role
// runs as the suite's own uid. A process started by its user is dumpable: stay so.
void be(uid_t uid) {
    if (!xt::running_as_root()) return;
    xt::become(uid, uid);
    prctl(PR_SET_DUMPABLE, 1);
}

// Failures collected by a child and reported together.
struct Findings {
    std::vector<std::string> items;
    void check(bool ok, const std::string &what) {
        if (!ok) items.push_back(what);
    }
    void report(const char *file, int line) const {
        if (items.empty()) return;
        std::string all;
        for (const std::string &item : items) all += "\n    - " + item;
        xt::fail(file, line, all);
    }
};
#define REPORT(findings) (findings).report(__FILE__, __LINE__)

std::string hex(std::uint64_t value) {
    std::ostringstream out;
    out << "0x" << std::hex << value;
    return out.str();
}

char *anon(std::size_t pages) {
    return reinterpret_cast<char *>(xt::anonymous(pages * kPage).data());
}

// Reads `size` bytes at `address` through the kernel: false where it faults.
bool kernel_read(const void *address, void *out, std::size_t size) {
    int p[2];
    if (pipe(p) < 0) return false;
    bool ok = write(p[1], address, size) == static_cast<ssize_t>(size) &&
              read(p[0], out, size) == static_cast<ssize_t>(size);
    close(p[0]);
    close(p[1]);
    return ok;
}
// Writes `text` at `address` through the kernel: false where it faults.
bool kernel_write(void *address, const char *text) {
    int p[2];
    if (pipe(p) < 0) return false;
    std::size_t size = std::strlen(text) + 1;
    bool ok = write(p[1], text, size) == static_cast<ssize_t>(size) &&
              read(p[0], address, size) == static_cast<ssize_t>(size);
    close(p[0]);
    close(p[1]);
    return ok;
}
bool page_contains(const void *page, const char *needle) {
    char copy[kPage];
    if (!kernel_read(page, copy, kPage)) return false;
    return memmem(copy, kPage, needle, std::strlen(needle)) != nullptr;
}

// The abstract names the service of `pid` listens on, as /proc/net/unix lists them:
// "xpmem-user/<pid>" (older versions) or "xpmem-user/<pid>.<key>".
std::vector<std::string> service_names(pid_t pid) {
    std::ifstream table("/proc/net/unix");
    std::string line, exact = "@xpmem-user/" + std::to_string(pid);
    std::vector<std::string> names;
    while (std::getline(table, line)) {
        std::size_t at = line.rfind(' ');
        if (at == std::string::npos) continue;
        std::string name = line.substr(at + 1);
        if (name == exact || name.rfind(exact + ".", 0) == 0) names.push_back(name.substr(1));
    }
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    return names;
}

socklen_t abstract_address(const std::string &name, sockaddr_un &address) {
    address = {};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path + 1, name.data(), name.size());
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
}

int connect_name(const std::string &name, int flags = 0) {
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | flags, 0);
    sockaddr_un address;
    socklen_t length = abstract_address(name, address);
    if (connect(fd, reinterpret_cast<sockaddr *>(&address), length) == 0) return fd;
    int error = errno;
    close(fd);
    errno = error;
    return -1;
}

// A listening socket bound to the abstract `name`, or -1.
int bind_name(const std::string &name, int backlog) {
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    sockaddr_un address;
    socklen_t length = abstract_address(name, address);
    if (bind(fd, reinterpret_cast<sockaddr *>(&address), length) < 0 || listen(fd, backlog) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

// A raw connection to the service of `pid`, without HELLO.
int raw_connect(pid_t pid) {
    for (const std::string &name : service_names(pid))
        if (int fd = connect_name(name); fd >= 0) return fd;
    xt::fail(__FILE__, __LINE__, "no service of pid " + std::to_string(pid) + " to connect to");
}

using xt::ask;
using xt::receive;
using xt::send_raw;

// /proc/<pid>/status "Uid:" effective uid, or -1.
long effective_uid(pid_t pid) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("Uid:", 0) != 0) continue;
        std::istringstream fields(line.substr(4));
        long real = -1, effective = -1;
        fields >> real >> effective;
        return effective;
    }
    return -1;
}

char process_state(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    std::size_t at = text.rfind(')');
    return at == std::string::npos || at + 2 >= text.size() ? '?' : text[at + 2];
}

bool stop_and_wait(pid_t pid) {
    return kill(pid, SIGSTOP) == 0 && xt::eventually([&] { return process_state(pid) == 'T'; });
}

// Dead (a zombie not reaped yet, or gone).
bool gone(pid_t pid) {
    char state = process_state(pid);
    return state == 'Z' || state == 'X' || state == '?';
}

// CPU ticks (user + system) of every thread of `pid`.
long cpu_ticks(pid_t pid) {
    long total = 0;
    std::string dir = "/proc/" + std::to_string(pid) + "/task";
    std::error_code error;
    for (const auto &task : std::filesystem::directory_iterator(dir, error)) {
        std::ifstream stat(task.path() / "stat");
        std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
        std::size_t at = text.rfind(')');
        if (at == std::string::npos) continue;
        std::istringstream fields(text.substr(at + 2));
        std::string field;
        long utime = 0, stime = 0;
        for (int i = 3; i <= 15 && fields >> field; ++i) {
            if (i == 14) utime = std::stol(field);
            if (i == 15) stime = std::stol(field);
        }
        total += utime + stime;
    }
    return total;
}

long rss_kb() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return -1;
}
long heap_in_use() {
    struct mallinfo2 info = mallinfo2();
    return static_cast<long>(info.uordblks + info.hblkhd);
}

void raise_fd_limit(rlim_t want) {
    rlimit limit{};
    getrlimit(RLIMIT_NOFILE, &limit);
    if (xt::running_as_root() && limit.rlim_max < want) limit.rlim_max = want;
    limit.rlim_cur = std::min(want, limit.rlim_max);
    setrlimit(RLIMIT_NOFILE, &limit);
}
rlim_t fd_limit() {
    rlimit limit{};
    getrlimit(RLIMIT_NOFILE, &limit);
    return limit.rlim_cur;
}
// Linux's default soft limit for a process whose user did not raise it.
void default_fd_limit() {
    rlimit limit{};
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = std::min<rlim_t>(limit.rlim_cur, 1024);
    setrlimit(RLIMIT_NOFILE, &limit);
}

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// A child made with clone3 at a chosen pid (root only); -1 with errno otherwise.
struct CloneArgs {
    std::uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        set_tid_size;
};
pid_t fork_at_pid(pid_t want) {
    std::fflush(nullptr);
    pid_t tid = want;
    CloneArgs args{};
    args.exit_signal = SIGCHLD;
    args.set_tid = reinterpret_cast<std::uintptr_t>(&tid);
    args.set_tid_size = 1;
    return static_cast<pid_t>(syscall(SYS_clone3, &args, sizeof args));
}

struct Reaper {
    pid_t pid;
    ~Reaper() {
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
    }
};

// A temporary directory the test removes; `mode` applied after creation.
struct TempDir {
    std::string path;
    explicit TempDir(mode_t mode) {
        char name[] = "/tmp/xpmem-attack-XXXXXX";
        CHILD_CHECK(mkdtemp(name) != nullptr);
        path = name;
        chmod(path.c_str(), mode);
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
};

// Descriptors: what an attacker can learn and do with each.
std::vector<std::string> scan_for(int fd, const std::vector<std::string> &markers,
                                  std::uint64_t &scanned) {
    std::vector<std::string> found;
    struct stat status {};
    if (fstat(fd, &status) < 0) return found;
    auto size = static_cast<off_t>(status.st_size);
    for (off_t data = lseek(fd, 0, SEEK_DATA);
         data >= 0 && data < size && scanned < (1ULL << 30);) {
        off_t hole = std::min(lseek(fd, data, SEEK_HOLE), size);
        if (hole <= data) break;
        auto length = static_cast<std::size_t>(hole - data);
        void *view = mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, data);
        if (view != MAP_FAILED) {
            for (const std::string &marker : markers)
                if (memmem(view, length, marker.data(), marker.size()) != nullptr)
                    found.push_back(marker + " at file offset " +
                                    hex(static_cast<std::uint64_t>(data)));
            munmap(view, length);
        }
        scanned += length;
        data = lseek(fd, hole, SEEK_DATA);
    }
    return found;
}

class UserAttacks : public xt::BackendTest {
  protected:
    void SetUp() override {
        xt::BackendTest::SetUp();
        if (!user_backend()) GTEST_SKIP() << "these attacks are on the user backend";
    }
};

struct VictimInfo {
    pid_t pid;
    xpmem_segid_t segid;
};

// ---- 1. a permit for one page reaches nothing else ---------------------------------

alignas(4096) const char kRodata[2 * kPage] = "RODATA-MARK: the victim's read-only data";

struct OnePageInfo {
    pid_t pid;
    xpmem_segid_t one_page;   // 0666, one page of a private mapping
    xpmem_segid_t secret;     // 0600, converted for the victim's own partner
    xpmem_segid_t read_only;  // 0666, a PROT_READ page then a writable page
    xpmem_segid_t rodata;     // 0666, two pages of .rodata
    std::uintptr_t one_page_address;
};

TEST_P(UserAttacks, OnePagePermitReachesNothingElse) {
    REQUIRE_ROOT("the attacker must be another uid than the victim (0600, fchmod)");
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        char *region = anon(8);
        for (int i = 0; i < 8; ++i) std::snprintf(region + i * kPage, 32, "PRIVATE-R%d", i);
        std::strcpy(region + 3 * kPage, "PUBLIC-A");
        char *secret = anon(4);
        for (int i = 0; i < 4; ++i) std::snprintf(secret + i * kPage, 32, "SECRET-0600-%d", i);
        auto *heap = static_cast<char *>(std::malloc(64));
        std::strcpy(heap, "HEAP-SECRET-of-the-victim");
        char *guarded = anon(2);
        std::strcpy(guarded, "RO-PAGE");
        std::strcpy(guarded + kPage, "RW-PAGE");
        CHILD_CHECK(mprotect(guarded, kPage, PROT_READ) == 0);
        auto mode = [](long m) { return reinterpret_cast<void *>(m); };
        OnePageInfo info{
            getpid(),
            xpmem_make(region + 3 * kPage, kPage, XPMEM_PERMIT_MODE, mode(0666)),
            xpmem_make(secret, 4 * kPage, XPMEM_PERMIT_MODE, mode(0600)),
            xpmem_make(guarded, 2 * kPage, XPMEM_PERMIT_MODE, mode(0666)),
            xpmem_make(const_cast<char *>(kRodata), 2 * kPage, XPMEM_PERMIT_MODE, mode(0666)),
            reinterpret_cast<std::uintptr_t>(region + 3 * kPage)};
        CHILD_CHECK(info.one_page > 0 && info.secret > 0 && info.read_only > 0 && info.rodata > 0);
        // The victim's own partner (its uid) attaches the secret segment: it is converted.
        xt::Process partner([&] {
            auto permit = xpmem::Permit::get(info.secret);
            auto view = permit.attach(0, 4 * kPage);
            CHILD_CHECK(std::strcmp(reinterpret_cast<char *>(view.data()), "SECRET-0600-0") == 0);
        });
        CHILD_CHECK(partner.wait().exited_ok());
        channel.send_a(info);
        CHILD_CHECK(channel.receive_a<int>() == 1);
        // Nothing outside what the attacker was given changed.
        Findings findings;
        for (int i = 0; i < 8; ++i) {
            char expect[32];
            std::snprintf(expect, sizeof expect, "PRIVATE-R%d", i);
            if (i != 3)
                findings.check(std::strcmp(region + i * kPage, expect) == 0,
                               std::string("private page changed: ") + expect);
        }
        for (int i = 0; i < 4; ++i) {
            char expect[32];
            std::snprintf(expect, sizeof expect, "SECRET-0600-%d", i);
            findings.check(std::strcmp(secret + i * kPage, expect) == 0,
                           std::string("0600 segment's page changed: ") + expect);
        }
        findings.check(std::strcmp(heap, "HEAP-SECRET-of-the-victim") == 0, "heap changed");
        findings.check(std::strcmp(guarded, "RO-PAGE") == 0,
                       "the victim's PROT_READ page was written: " + std::string(guarded, 8));
        findings.check(std::strncmp(kRodata, "RODATA-MARK", 11) == 0,
                       "the victim's .rodata was written");
        REPORT(findings);
    });
    xt::Process attacker([&] {
        auto info = channel.receive_b<OnePageInfo>();
        be(kAttackerUid);
        Findings findings;
        int fd = raw_connect(info.pid);  // no HELLO
        auto read_permit =
            ask<wire::GetReply>(fd, wire::Get{.segid = info.one_page, .flags = XPMEM_RDONLY});
        auto write_permit =
            ask<wire::GetReply>(fd, wire::Get{.segid = info.one_page, .flags = XPMEM_RDWR});
        CHILD_CHECK(read_permit.error == 0 && write_permit.error == 0);
        auto refused =
            ask<wire::GetReply>(fd, wire::Get{.segid = info.secret, .flags = XPMEM_RDONLY});
        findings.check(refused.error == EACCES,
                       "GET of the 0600 segment: error " + std::to_string(refused.error));
        std::vector<int> ro_fds, rw_fds;
        auto ro = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = read_permit.permit, .offset = 0, .size = kPage}, &ro_fds);
        auto rw = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = write_permit.permit, .offset = 0, .size = kPage}, &rw_fds);
        CHILD_CHECK(ro.error == 0 && rw.error == 0 && !ro_fds.empty() && !rw_fds.empty());
        for (const wire::AttachReply *reply : {&ro, &rw})
            for (std::uint32_t i = 0; i < reply->piece_count; ++i)
                findings.check(reply->pieces[i].file_offset + reply->pieces[i].length <= kPage,
                               "piece at file offset " + hex(reply->pieces[i].file_offset) +
                                   " for a one-page segment at " + hex(info.one_page_address) +
                                   " (the offset tells the victim's address)");
        const std::vector<std::string> markers{"SECRET-0600", "HEAP-SECRET", "PRIVATE-R", "RO-PAGE",
                                               "RODATA-MARK"};
        std::uint64_t scanned = 0;
        std::vector<int> all = ro_fds;
        all.insert(all.end(), rw_fds.begin(), rw_fds.end());
        for (int received : all) {
            struct stat status {};
            CHILD_CHECK(fstat(received, &status) == 0);
            findings.check(static_cast<std::uint64_t>(status.st_size) <= kPage,
                           "a descriptor for a one-page segment has size " +
                               hex(static_cast<std::uint64_t>(status.st_size)));
            for (const std::string &found : scan_for(received, markers, scanned))
                findings.check(false, "read through a one-page permit: " + found);
            findings.check(fchmod(received, 0666) < 0, "fchmod of a received descriptor worked");
            findings.check(ftruncate(received, 0) < 0, "ftruncate to 0 worked");
            findings.check(ftruncate(received, 1 << 20) < 0, "ftruncate to 1 MiB worked");
            for (int seal :
                 {F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE, F_SEAL_FUTURE_WRITE})
                findings.check(fcntl(received, F_ADD_SEALS, seal) < 0,
                               "F_ADD_SEALS " + std::to_string(seal) + " worked");
        }
        for (int received : ro_fds) {
            std::string path = "/proc/self/fd/" + std::to_string(received);
            int reopened = open(path.c_str(), O_RDWR);
            findings.check(reopened < 0, "a read-only permit's descriptor reopened O_RDWR");
            void *w = mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, received,
                           static_cast<off_t>(ro.pieces[0].file_offset));
            findings.check(w == MAP_FAILED, "PROT_WRITE mapping of a read-only permit");
            void *r = mmap(nullptr, kPage, PROT_READ, MAP_SHARED, received,
                           static_cast<off_t>(ro.pieces[0].file_offset));
            CHILD_CHECK(r != MAP_FAILED);
            findings.check(mprotect(r, kPage, PROT_READ | PROT_WRITE) < 0,
                           "mprotect to writable of a read-only permit");
            findings.check(
                fallocate(received, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, kPage) < 0,
                "PUNCH_HOLE through a read-only permit");
            // Growing the mapping must not reach past the segment.
            void *grown = mremap(r, kPage, 4 * kPage, MREMAP_MAYMOVE);
            if (grown != MAP_FAILED) {
                for (int i = 1; i < 4; ++i) {
                    char *page = static_cast<char *>(grown) + i * kPage;
                    findings.check(
                        !xt::readable_by_kernel(page),
                        "mremap grew a one-page mapping onto readable page " + std::to_string(i));
                    for (const std::string &marker : markers)
                        findings.check(!page_contains(page, marker.c_str()),
                                       "mremap'ed page " + std::to_string(i) + " shows " + marker);
                }
            }
        }
        // A read-write permit may zero its own page, nothing else (the victim checks).
        for (int received : rw_fds) {
            struct stat status {};
            fstat(received, &status);
            fallocate(received, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, status.st_size);
        }
        // A read-write permit over read-only memory never writes it.
        for (auto [segid, pages, marker] : {std::tuple{info.read_only, 2UL, "RO-PAGE"},
                                            std::tuple{info.rodata, 2UL, "RODATA-MARK"}}) {
            auto permit = ask<wire::GetReply>(fd, wire::Get{.segid = segid, .flags = XPMEM_RDWR});
            CHILD_CHECK(permit.error == 0);
            std::vector<int> fds;
            auto reply = ask<wire::AttachReply>(
                fd, wire::Attach{.permit = permit.permit, .offset = 0, .size = pages * kPage}, &fds);
            CHILD_CHECK(reply.error == 0 && reply.piece_count > 0);
            findings.check((reply.pieces[0].flags & 1) == 0,
                           std::string("the piece over the victim's read-only ") + marker +
                               " page says writable");
            std::vector<int> candidates = fds;
            for (int received : fds) {
                std::string path = "/proc/self/fd/" + std::to_string(received);
                int reopened = open(path.c_str(), O_RDWR | O_CLOEXEC);
                if (reopened >= 0) candidates.push_back(reopened);
            }
            for (int received : candidates) {
                struct stat status {};
                fstat(received, &status);
                for (off_t offset = 0; offset < status.st_size && offset < (64 << 20);
                     offset += kPage) {
                    void *w =
                        mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, received, offset);
                    if (w == MAP_FAILED) continue;
                    if (page_contains(w, marker)) {
                        kernel_write(w, "PWNED");
                        findings.check(false,
                                       std::string("writable mapping of the victim's read-only ") +
                                           marker + " page at file offset " +
                                           hex(static_cast<std::uint64_t>(offset)));
                    }
                    munmap(w, kPage);
                }
            }
        }
        channel.send_b(1);
        REPORT(findings);
    });
    xt::expect_all_ok({&attacker, &victim});
}

// A segment over memory the victim already shares (its own memfd) hands out that object.
// A read-write permit must not let the attacker resize or seal the victim's object: the
// victim would die of SIGBUS touching its own memory, or could no longer grow it.
TEST_P(UserAttacks, ReadWritePermitCannotTruncateOrSealTheVictimsObject) {
    REQUIRE_ROOT("needs two uids: the owner's own uid gets its objects as they are");
    REQUIRE_ROOT("the attacker must be another uid than the victim (0600, fchmod)");
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        int object = memfd_create("victim-shm", MFD_ALLOW_SEALING);
        CHILD_CHECK(object >= 0 && ftruncate(object, 2 * kPage) == 0);
        auto *memory = static_cast<char *>(
            mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, object, 0));
        CHILD_CHECK(memory != MAP_FAILED);
        std::strcpy(memory, "SHARED-OBJ");
        xpmem_segid_t segid = xpmem_make(memory, 2 * kPage, XPMEM_PERMIT_MODE, (void *)0666);
        CHILD_CHECK(segid > 0);
        channel.send_a(VictimInfo{getpid(), segid});
        CHILD_CHECK(channel.receive_a<int>() == 1);  // the attacker tried its worst
        Findings findings;
        findings.check(xt::readable_by_kernel(memory) && xt::readable_by_kernel(memory + kPage),
                       "the victim's own memory faults now: the attacker truncated its memfd");
        int grown = ftruncate(object, 4 * kPage);
        int error = errno;
        findings.check(grown == 0,
                       std::string("the victim cannot grow its own memfd: ") + strerror(error));
        REPORT(findings);
    });
    xt::Process attacker([&] {
        auto info = channel.receive_b<VictimInfo>();
        be(kAttackerUid);
        int fd = raw_connect(info.pid);
        auto permit = ask<wire::GetReply>(fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDWR});
        CHILD_CHECK(permit.error == 0);
        std::vector<int> fds;
        auto reply = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = permit.permit, .offset = 0, .size = 2 * kPage}, &fds);
        CHILD_CHECK(reply.error == 0);
        Findings findings;
        for (int received : fds) {
            findings.check(ftruncate(received, 0) < 0,
                           "a read-write permit truncated the victim's memfd to 0");
            findings.check(
                fcntl(received, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0,
                "a read-write permit sealed the victim's memfd (F_SEAL_GROW|SHRINK|SEAL)");
            findings.check(fchmod(received, 0666) < 0, "fchmod of the victim's memfd worked");
        }
        channel.send_b(1);
        REPORT(findings);
    });
    xt::expect_all_ok({&attacker, &victim});
}

// The same object, grown by the victim after the attach: a read-only permit's descriptor
// must not read what now lies beyond the segment.
TEST_P(UserAttacks, ReadOnlyPermitDoesNotReachTheObjectsLaterGrowth) {
    REQUIRE_ROOT("needs two uids: the owner's own uid gets its objects as they are");
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        int object = memfd_create("victim-shm", 0);
        CHILD_CHECK(object >= 0 && ftruncate(object, 2 * kPage) == 0);
        auto *memory = static_cast<char *>(
            mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, object, 0));
        CHILD_CHECK(memory != MAP_FAILED);
        std::strcpy(memory, "SHARED-OBJ");
        xpmem_segid_t segid = xpmem_make(memory, 2 * kPage, XPMEM_PERMIT_MODE, (void *)0644);
        CHILD_CHECK(segid > 0);
        channel.send_a(VictimInfo{getpid(), segid});
        CHILD_CHECK(channel.receive_a<int>() == 1);
        const char later[] = "GROWN-SECRET: written beyond the segment";
        CHILD_CHECK(ftruncate(object, 4 * kPage) == 0);
        CHILD_CHECK(pwrite(object, later, sizeof later, 3 * kPage) == sizeof later);
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
    });
    xt::Process attacker([&] {
        auto info = channel.receive_b<VictimInfo>();
        be(kAttackerUid);
        int fd = raw_connect(info.pid);
        auto permit = ask<wire::GetReply>(fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDONLY});
        CHILD_CHECK(permit.error == 0);
        std::vector<int> fds;
        auto reply = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = permit.permit, .offset = 0, .size = 2 * kPage}, &fds);
        CHILD_CHECK(reply.error == 0);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        Findings findings;
        for (int received : fds) {
            char page[kPage] = {};
            ssize_t got = pread(received, page, kPage, 3 * kPage);
            findings.check(got <= 0 || memmem(page, kPage, "GROWN-SECRET", 12) == nullptr,
                           "a kept read-only descriptor reads what the victim wrote beyond the "
                           "segment after the attach (file offset 3 pages)");
        }
        channel.send_b(3);
        REPORT(findings);
    });
    xt::expect_all_ok({&attacker, &victim});
}

// ---- 2. credentials are those of connect time --------------------------------------

TEST_P(UserAttacks, SetuidExecAfterConnectGainsNothing) {
    REQUIRE_ROOT("makes a setuid-root program and a victim of another uid");
    TempDir dir(0755);
    struct statvfs fs {};
    if (statvfs(dir.path.c_str(), &fs) == 0 && (fs.f_flag & ST_NOSUID) != 0)
        GTEST_SKIP() << dir.path << " is mounted nosuid";
    // The small blocking program: a setuid-root copy of sleep.
    std::string blocker = dir.path + "/blocker";
    std::filesystem::copy_file("/bin/sleep", blocker);
    ASSERT_EQ(chown(blocker.c_str(), 0, 0), 0);
    ASSERT_EQ(chmod(blocker.c_str(), 04755), 0);
    xt::Channel channel, result;
    xt::Process victim([&] {
        be(kVictimUid);
        char *memory = anon(1);
        std::strcpy(memory, "TOP-SECRET");
        xpmem_segid_t segid = xpmem_make(memory, kPage, XPMEM_PERMIT_MODE, (void *)0600);
        CHILD_CHECK(segid > 0);
        channel.send_a(VictimInfo{getpid(), segid});
        channel.receive_a<int>();
    });
    xt::Process attacker([&] {
        auto info = channel.receive_b<VictimInfo>();
        be(kAttackerUid);
        int fd = raw_connect(info.pid);
        CHILD_CHECK(fcntl(fd, F_SETFD, 0) == 0);  // kept across exec
        pid_t self = getpid();
        if (fork() == 0) {
            // Once the parent runs as euid 0, ask on its connection.
            if (!xt::eventually([&] { return effective_uid(self) == 0; })) {
                result.send_b(-1);
                _exit(1);
            }
            auto reply =
                ask<wire::GetReply>(fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDONLY});
            int outcome = reply.error;
            if (reply.error == 0) {
                std::vector<int> fds;
                auto attached = ask<wire::AttachReply>(
                    fd, wire::Attach{.permit = reply.permit, .offset = 0, .size = kPage}, &fds);
                char page[kPage] = {};
                if (attached.error == 0 && !fds.empty() &&
                    pread(fds[0], page, kPage, static_cast<off_t>(attached.pieces[0].file_offset)) >
                        0 &&
                    std::strcmp(page, "TOP-SECRET") == 0)
                    outcome = -2;  // read the 0600 segment
            }
            result.send_b(outcome);
            _exit(0);
        }
        execl(blocker.c_str(), "blocker", "60", static_cast<char *>(nullptr));
        _exit(127);
    });
    int outcome = result.receive_a<int>();
    EXPECT_EQ(outcome, EACCES) << (outcome == -2
                                       ? "GET granted and the 0600 segment read (TOP-SECRET)"
                                   : outcome == 0  ? "GET granted"
                                   : outcome == -1 ? "the exec never took euid 0"
                                                   : "GET failed with another error");
    channel.send_b(1);
    EXPECT_CHILD_OK(victim);
}

// ---- 3. pinned pages ----------------------------------------------------------------

// An attacher with a read-only permit must not make the victim lose what its io_uring
// writes through a pin: the user backend refuses to convert pinned memory (EBUSY).
TEST_P(UserAttacks, IoUringFixedBufferSurvivesAttach) {
    xt::Channel channel, to_attacher;
    xt::Process victim([&] {
        be(kVictimUid);
        char *buffer = anon(2);
        std::memset(buffer, 'a', 2 * kPage);
        xt::PinnedBuffer pin({reinterpret_cast<std::byte *>(buffer), 2 * kPage});
        if (pin.error() != 0) {
            channel.send_a(VictimInfo{-pin.error(), 0});
            return;
        }
        xpmem_segid_t segid = xpmem_make(buffer, 2 * kPage, XPMEM_PERMIT_MODE, (void *)0666);
        CHILD_CHECK(segid > 0);
        to_attacher.send_a(VictimInfo{getpid(), segid});
        CHILD_CHECK(to_attacher.receive_a<int>() == 1);  // the attacher tried
        pin.read_into("FROM-IO-URING");
        bool seen = std::strcmp(buffer, "FROM-IO-URING") == 0;
        to_attacher.send_a(2);
        int attacher_refused = to_attacher.receive_a<int>();
        channel.send_a(VictimInfo{seen ? 1 : 0, attacher_refused});
    });
    xt::Process attacher([&] {
        auto info = to_attacher.receive_b<VictimInfo>();
        be(kAttackerUid);
        xpmem_apid_t apid = xpmem_get(info.segid, XPMEM_RDONLY, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(apid >= 0);
        errno = 0;
        void *view = xpmem_attach(xpmem_addr{apid, 0}, 2 * kPage, nullptr);
        int refused = view == reinterpret_cast<void *>(-1) && errno == EBUSY ? 1 : 0;
        to_attacher.send_b(1);
        CHILD_CHECK(to_attacher.receive_b<int>() == 2);
        to_attacher.send_b(refused);
    });
    auto outcome = channel.receive_b<VictimInfo>();
    if (outcome.pid < 0) GTEST_SKIP() << "io_uring unavailable: " << strerror(-outcome.pid);
    EXPECT_EQ(outcome.pid, 1) << "the victim does not see the data its io_uring READ_FIXED "
                                 "wrote into its own registered buffer after an attach";
    EXPECT_EQ(outcome.segid, 1) << "the attach of pinned memory was not refused with EBUSY";
    xt::expect_all_ok({&attacher, &victim});
}

// ---- 4. pid reuse -------------------------------------------------------------------

struct SpyReport {
    std::uint32_t secret;
    int have_secret;
    char names[2048];
};

// The impostor: binds `names`, answers every request, hands out its own memory.
[[noreturn]] void impostor(const SpyReport &spy, pid_t pid, xt::Channel &ready) {
    be(kAttackerUid);
    std::vector<pollfd> polled;
    std::istringstream names(spy.names);
    std::string name;
    std::vector<std::string> all{"xpmem-user/" + std::to_string(pid)};
    while (std::getline(names, name))
        if (!name.empty()) all.push_back(name);
    for (const std::string &each : all)
        if (int fd = bind_name(each, 64); fd >= 0) polled.push_back({fd, POLLIN, 0});
    std::size_t listeners = polled.size();
    int memory = memfd_create("impostor", 0);
    CHILD_CHECK(memory >= 0 && ftruncate(memory, 64 << 20) == 0);
    const char mark[] = "IMPOSTOR";
    for (off_t at = 0; at < (64 << 20); at += kPage) pwrite(memory, mark, sizeof mark, at);
    ready.send_b(static_cast<int>(listeners));
    for (;;) {
        if (poll(polled.data(), polled.size(), -1) < 0) continue;
        for (std::size_t i = 0; i < polled.size(); ++i) {
            if (polled[i].revents == 0) continue;
            if (i < listeners) {
                int connection = accept4(polled[i].fd, nullptr, nullptr, SOCK_CLOEXEC);
                if (connection >= 0) polled.push_back({connection, POLLIN, 0});
                continue;
            }
            alignas(8) char buffer[2048];
            ssize_t got = recv(polled[i].fd, buffer, sizeof buffer, 0);
            if (got <= 0) {
                close(polled[i].fd);
                polled[i].fd = -1;
                continue;
            }
            wire::Header header;
            std::memcpy(&header, buffer, sizeof header);
            int fd = polled[i].fd;
            if (header.type == wire::hello) {
                wire::Hello hello;
                std::memcpy(&hello, buffer, sizeof hello);
                wire::HelloReply reply{.proof = spy.have_secret
                                                    ? wire::proof_of_secret(spy.secret, hello.nonce)
                                                    : hello.nonce ^ 0x5555};
                send(fd, &reply, sizeof reply, MSG_NOSIGNAL);
            } else if (header.type == wire::get) {
                wire::GetReply reply{{wire::kMagic, wire::get_reply}, 0, 0, 7};
                send(fd, &reply, sizeof reply, MSG_NOSIGNAL);
            } else if (header.type == wire::attach) {
                wire::Attach request;
                std::memcpy(&request, buffer, sizeof request);
                wire::AttachReply reply{};
                reply.header = {wire::kMagic, wire::attach_reply};
                reply.piece_count = 1;
                reply.pieces[0] = {std::min<std::uint64_t>(request.size, 32 << 20), 0, 0, 1, 0, 0};
                xt::send_descriptor(fd, memory, std::as_bytes(std::span(&reply, 1)));
            } else if (header.type == wire::revoke) {
                wire::RevokeReply reply{{wire::kMagic, wire::revoke_reply}, 0, 0};
                send(fd, &reply, sizeof reply, MSG_NOSIGNAL);
            }
        }
        std::erase_if(polled, [](const pollfd &p) { return p.fd < 0; });
    }
}

// 0: get failed, 1: attach failed, 2: mapped the impostor's memory, 3: mapped other memory.
void pid_reuse(bool ask_hello_first) {
    xt::Channel channel, spy_channel, partner_channel, ready;
    xt::Process victim([&] {
        be(kVictimUid);
        char *memory = anon(1);
        std::strcpy(memory, "GENUINE");
        xpmem_segid_t segid = xpmem_make(memory, kPage, XPMEM_PERMIT_MODE, (void *)0600);
        CHILD_CHECK(segid > 0);
        channel.send_a(VictimInfo{getpid(), segid});
        CHILD_CHECK(channel.receive_a<int>() == 1);  // exit when told
    });
    auto info = channel.receive_b<VictimInfo>();
    xt::Process spy([&] {
        be(kAttackerUid);
        SpyReport report{};
        std::string joined;
        for (const std::string &name : service_names(info.pid)) joined += name + "\n";
        std::strncpy(report.names, joined.c_str(), sizeof report.names - 1);
        if (ask_hello_first) {
            // Any local process may ask the victim to prove its secret, and the proof
            // gives the secret back.
            int fd = raw_connect(info.pid);
            wire::Hello hello{.nonce = 0x0123456789abcdefULL};
            send_raw(fd, hello);
            wire::HelloReply reply{};
            if (receive(fd, &reply, sizeof reply, nullptr, 2s) == sizeof reply) {
                if (auto secret = wire::secret_from_proof(hello.nonce, reply.proof)) {
                    report.secret = *secret;
                    report.have_secret = 1;
                }
            }
            close(fd);
        }
        spy_channel.send_b(report);
    });
    auto report = spy_channel.receive_a<SpyReport>();
    EXPECT_CHILD_OK(spy);
    xt::Process partner([&] {
        be(kVictimUid);
        auto segid = partner_channel.receive_b<xpmem_segid_t>();
        xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        if (apid < 0) {
            partner_channel.send_b(0);
            return;
        }
        auto *view = static_cast<char *>(xpmem_attach(xpmem_addr{apid, 0}, kPage, nullptr));
        if (view == reinterpret_cast<void *>(-1)) {
            partner_channel.send_b(1);
            return;
        }
        char copy[16] = {};
        kernel_read(view, copy, 9);
        partner_channel.send_b(std::strcmp(copy, "IMPOSTOR") == 0 ? 2 : 3);
    });
    channel.send_b(1);
    ASSERT_TRUE(victim.wait().exited_ok());
    pid_t child = fork_at_pid(info.pid);
    if (child == 0) impostor(report, info.pid, ready);
    Reaper reap{child};
    if (child < 0) GTEST_SKIP() << "cannot take pid " << info.pid << " again: " << strerror(errno);
    int bound = ready.receive_a<int>();
    ASSERT_GT(bound, 0) << "the impostor bound none of the victim's names";
    partner_channel.send_a(info.segid);
    int outcome = partner_channel.receive_a<int>();
    EXPECT_LE(outcome, 1) << (outcome == 2 ? "the partner mapped the impostor's memory"
                                           : "the partner mapped some memory")
                          << " for the dead victim's segid (impostor "
                          << (report.have_secret ? "answered HELLO with the secret it got from "
                                                   "the victim's own HELLO answer"
                                                 : "did not know the secret")
                          << ")";
    EXPECT_CHILD_OK(partner);
}

TEST_P(UserAttacks, PidReuseImpostorIsNotTrusted) {
    REQUIRE_ROOT("takes a dead victim's pid with clone3(set_tid)");
    pid_reuse(false);
}

TEST_P(UserAttacks, PidReuseImpostorThatAskedHelloIsNotTrusted) {
    REQUIRE_ROOT("takes a dead victim's pid with clone3(set_tid)");
    pid_reuse(true);
}

// ---- 5. squatting --------------------------------------------------------------------

TEST_P(UserAttacks, SquattedNamesDoNotKeepTheVictimFromServing) {
    xt::Channel channel, go, squatted;
    xt::Process victim([&] {
        be(kVictimUid);
        CHILD_CHECK(go.receive_b<int>() == 1);  // before the first xpmem call
        char *memory = anon(1);
        std::strcpy(memory, "ALIVE");
        xpmem_segid_t segid = xpmem_make(memory, kPage, XPMEM_PERMIT_MODE, (void *)0666);
        channel.send_a(segid);
        channel.receive_a<int>();
    });
    pid_t target = victim.pid();
    xt::Process squatter([&] {
        raise_fd_limit(8192);
        be(kAttackerUid);
        int count = static_cast<int>(std::min<rlim_t>(3000, fd_limit() - 64));
        int bound = 0;
        std::string prefix = "xpmem-user/" + std::to_string(target);
        if (bind_name(prefix, 0) >= 0) ++bound;
        for (int k = 0; k < count; ++k)
            if (bind_name(prefix + "." + std::to_string(k), 0) >= 0) ++bound;
        squatted.send_b(bound);
        squatted.receive_b<int>();
    });
    int bound = squatted.receive_a<int>();
    std::printf("squatter bound %d names of pid %d\n", bound, target);
    go.send_a(1);
    auto segid = channel.receive_b<xpmem_segid_t>();
    ASSERT_GT(segid, 0) << "the victim's library did not start: xpmem_make failed";
    xt::Process partner([&] {
        be(kPartnerUid);
        auto start = Clock::now();
        xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDONLY, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(apid > 0);
        auto *view = static_cast<char *>(xpmem_attach(xpmem_addr{apid, 0}, kPage, nullptr));
        CHILD_CHECK(view != reinterpret_cast<void *>(-1) && std::strcmp(view, "ALIVE") == 0);
        std::printf("get + attach past %d squatted names: %.3f s\n", bound, seconds_since(start));
        CHILD_CHECK(seconds_since(start) < 5);
    });
    EXPECT_CHILD_OK(partner);
    squatted.send_a(1);
    channel.send_b(1);
    xt::expect_all_ok({&squatter, &victim});
}

// ---- 6. connection flood ------------------------------------------------------------

TEST_P(UserAttacks, ConnectionFloodLeavesTheVictimServing) {
    REQUIRE_ROOT("the flood comes from another uid than the legitimate attacher");
    constexpr int kConnections = 4200;
    xt::Channel channel, flood;
    xt::Process victim([&] {
        default_fd_limit();
        be(kVictimUid);
        char *memory = anon(1);
        std::strcpy(memory, "SERVED");
        xpmem_segid_t segid = xpmem_make(memory, kPage, XPMEM_PERMIT_MODE, (void *)0666);
        channel.send_a(VictimInfo{getpid(), segid});
        CHILD_CHECK(channel.receive_a<int>() == 1);  // flooded
        Findings findings;
        int used = xt::count_open_fds();
        std::printf("victim: %d descriptors open under the flood (limit %lu)\n", used,
                    static_cast<unsigned long>(fd_limit()));
        findings.check(used <= static_cast<int>(fd_limit() / 4) + 32,
                       "the flood holds " + std::to_string(used) + " of the victim's " +
                           std::to_string(fd_limit()) + " descriptors");
        std::vector<int> opened;
        for (int i = 0; i < 64; ++i) {
            int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                findings.check(false,
                               std::string("the application's open() failed: ") + strerror(errno));
                break;
            }
            opened.push_back(fd);
        }
        for (int fd : opened) close(fd);
        channel.send_a(VictimInfo{0, 0});
        channel.receive_a<int>();
        REPORT(findings);
    });
    auto info = channel.receive_b<VictimInfo>();
    xt::Process attacker([&] {
        raise_fd_limit(kConnections + 256);
        be(kAttackerUid);
        std::vector<std::string> names = service_names(info.pid);
        CHILD_CHECK(!names.empty());
        std::vector<int> held;
        auto deadline = Clock::now() + 20s;
        while (held.size() < kConnections && Clock::now() < deadline) {
            int fd = connect_name(names[0], SOCK_NONBLOCK);
            if (fd >= 0)
                held.push_back(fd);
            else if (errno == EAGAIN)
                std::this_thread::sleep_for(1ms);
            else
                xt::fail(__FILE__, __LINE__, std::string("connect: ") + strerror(errno));
        }
        std::printf("attacker: %zu idle connections\n", held.size());
        flood.send_b(static_cast<int>(held.size()));
        flood.receive_b<int>();
    });
    int connections = flood.receive_a<int>();
    EXPECT_EQ(connections, kConnections);
    // The service settles, then must not spin.
    long before = cpu_ticks(info.pid);
    std::this_thread::sleep_for(1s);
    long spent = cpu_ticks(info.pid) - before;
    std::printf("victim CPU over 1 s under the flood: %ld ticks\n", spent);
    EXPECT_LT(spent, sysconf(_SC_CLK_TCK) / 5) << "the victim's service spins under the flood";
    xt::Process partner([&] {
        be(kPartnerUid);
        Findings findings;
        auto start = Clock::now();
        int fd = -1;
        std::vector<std::string> names = service_names(info.pid);
        if (!names.empty()) {
            int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
            timeval timeout{5, 0};
            setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
            sockaddr_un address;
            socklen_t length = abstract_address(names[0], address);
            fd = connect(s, reinterpret_cast<sockaddr *>(&address), length) == 0 ? s : -1;
        }
        findings.check(fd >= 0 && seconds_since(start) < 2,
                       "a blocking connect took " + std::to_string(seconds_since(start)) + " s");
        start = Clock::now();
        xpmem_apid_t apid = xpmem_get(info.segid, XPMEM_RDONLY, XPMEM_PERMIT_MODE, nullptr);
        auto *view = apid > 0
                         ? static_cast<char *>(xpmem_attach(xpmem_addr{apid, 0}, kPage, nullptr))
                         : reinterpret_cast<char *>(-1);
        double took = seconds_since(start);
        std::printf("legitimate get + attach under the flood: %.3f s\n", took);
        findings.check(apid > 0, std::string("xpmem_get under the flood: ") + strerror(errno));
        findings.check(view != reinterpret_cast<char *>(-1) && std::strcmp(view, "SERVED") == 0,
                       "xpmem_attach under the flood");
        findings.check(took < 3, "get + attach took " + std::to_string(took) + " s");
        REPORT(findings);
    });
    EXPECT_CHILD_OK(partner);
    channel.send_b(1);
    channel.receive_b<VictimInfo>();
    channel.send_b(1);
    flood.send_a(1);
    xt::expect_all_ok({&attacker, &victim});
}

// ---- 7. unresponsive attachers do not hold up remove ---------------------------------

TEST_P(UserAttacks, UnresponsiveAttachersDoNotBlockRemove) {
    xt::Channel channel, attached, control, done;
    constexpr std::uint32_t kKey = 0x5eed;
    xt::Process victim([&] {
        be(kVictimUid);
        char *memory = anon(1);
        std::strcpy(memory, "REMOVE-ME");
        xpmem_segid_t segid = xpmem_make(memory, kPage, XPMEM_PERMIT_MODE, (void *)0666);
        for (int i = 0; i < 3; ++i) channel.send_a(VictimInfo{getpid(), segid});
        CHILD_CHECK(control.receive_b<int>() == 2);  // all attached, one stopped
        auto start = Clock::now();
        int result = xpmem_remove(segid);
        double took = seconds_since(start);
        std::printf("xpmem_remove with three unresponsive attachers: %.3f s\n", took);
        CHILD_CHECK(result == 0);
        if (took >= 3)
            xt::fail(__FILE__, __LINE__, "xpmem_remove took " + std::to_string(took) + " s");
    });
    // One attaches through the library, then is stopped.
    xt::Process stopped([&] {
        auto info = channel.receive_b<VictimInfo>();
        be(kAttackerUid);
        auto permit = xpmem::Permit::get(info.segid);
        auto view = permit.attach(0, kPage);
        attached.send_b(1);
        done.receive_b<int>();
    });
    // Two speak raw and name (with the key in GET) a socket of theirs that never answers:
    // one with a full accept queue, one that never accepts.
    auto raw_attacher = [&](bool full_queue) {
        auto info = channel.receive_b<VictimInfo>();
        be(kAttackerUid);
        std::string prefix = "xpmem-user/" + std::to_string(getpid());
        for (const std::string &name : {prefix, prefix + "." + std::to_string(kKey)}) {
            int listener = bind_name(name, full_queue ? 0 : 128);
            CHILD_CHECK(listener >= 0);
            while (full_queue && connect_name(name, SOCK_NONBLOCK) >= 0) {
            }
        }
        int fd = raw_connect(info.pid);
        auto permit = ask<wire::GetReply>(
            fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDWR, .key = kKey});
        CHILD_CHECK(permit.error == 0);
        std::vector<int> fds;
        auto reply = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = permit.permit, .offset = 0, .size = kPage}, &fds);
        CHILD_CHECK(reply.error == 0);
        attached.send_b(1);
        done.receive_b<int>();
    };
    xt::Process full([&] { raw_attacher(true); });
    xt::Process deaf([&] { raw_attacher(false); });
    for (int i = 0; i < 3; ++i) ASSERT_EQ(attached.receive_a<int>(), 1);
    ASSERT_TRUE(stop_and_wait(stopped.pid()));
    control.send_a(2);
    xt::Status status = victim.wait();
    EXPECT_TRUE(status.exited_ok()) << status.describe();
    kill(stopped.pid(), SIGCONT);
    for (int i = 0; i < 3; ++i) done.send_a(1);
    xt::expect_all_ok({&stopped, &full, &deaf});
}

// ---- 8. a stopped owner --------------------------------------------------------------

// The owner publishes a page and waits to be killed.
xt::Process patient_owner(xt::Channel &channel) {
    return xt::Process([&channel] {
        be(kVictimUid);
        char *memory = anon(1);
        std::strcpy(memory, "OWNER");
        xpmem_segid_t segid = xpmem_make(memory, kPage, XPMEM_PERMIT_MODE, (void *)0666);
        channel.send_a(VictimInfo{getpid(), segid});
        for (;;) pause();
    });
}

bool attach_reads_owner(xpmem_apid_t apid) {
    auto *view = static_cast<char *>(xpmem_attach(xpmem_addr{apid, 0}, kPage, nullptr));
    return view != reinterpret_cast<void *>(-1) && std::strcmp(view, "OWNER") == 0;
}

// Runs `body` as the attacker with XPMEM_USER_TIMEOUT_MS=1000; `step` drives the owner.
void with_stopped_owner(const std::function<void(VictimInfo, xt::Channel &)> &body) {
    xt::Channel channel, steps;
    xt::Process owner = patient_owner(channel);
    auto info = channel.receive_b<VictimInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        setenv("XPMEM_USER_TIMEOUT_MS", "1000", 1);
        body(info, steps);
    });
    // Steps: the attacker asks 1 = stop the owner, 2 = continue it, 0 = done.
    for (;;) {
        int what = steps.receive_a<int>();
        if (what == 0) break;
        if (what == 1) {
            EXPECT_TRUE(stop_and_wait(info.pid));
        }
        if (what == 2) kill(info.pid, SIGCONT);
        steps.send_a(what);
    }
    EXPECT_CHILD_OK(attacker);
}

void step(xt::Channel &steps, int what) {
    steps.send_b(what);
    CHILD_CHECK(steps.receive_b<int>() == what);
}

TEST_P(UserAttacks, StoppedOwnerAttachTimesOut) {
    with_stopped_owner([](VictimInfo info, xt::Channel &steps) {
        Findings findings;
        xpmem_apid_t apid = xpmem_get(info.segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(apid > 0 && attach_reads_owner(apid));
        step(steps, 1);
        auto start = Clock::now();
        errno = 0;
        void *view = xpmem_attach(xpmem_addr{apid, 0}, kPage, nullptr);
        int error = errno;
        double took = seconds_since(start);
        std::printf("attach to a stopped owner: %s after %.3f s\n", strerror(error), took);
        findings.check(view == reinterpret_cast<void *>(-1) && error == ETIMEDOUT,
                       std::string("attach to a stopped owner: ") + strerror(error));
        findings.check(took < 2.5, "attach to a stopped owner took " + std::to_string(took) + " s");
        step(steps, 2);
        xpmem_apid_t again = xpmem_get(info.segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        findings.check(again > 0 && attach_reads_owner(again),
                       std::string("get + attach after SIGCONT: ") + strerror(errno));
        steps.send_b(0);
        REPORT(findings);
    });
}

// An owner that holds back its answer to a fixed attach cannot make that attach land over
// an attachment another thread made at the same address meanwhile: the late attach fails,
// and the other thread's attachment keeps showing its own segment.
TEST_P(UserAttacks, SlowOwnerCannotClobberAFixedAttachMadeMeanwhile) {
    with_stopped_owner([](VictimInfo info, xt::Channel &steps) {
        setenv("XPMEM_USER_TIMEOUT_MS", "20000", 1);  // the late reply must still come
        Findings findings;
        xpmem_apid_t slow = xpmem_get(info.segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(slow > 0 && attach_reads_owner(slow));
        auto *mine = reinterpret_cast<char *>(xt::anonymous(kPage).data());
        std::strcpy(mine, "MINE");
        xpmem_segid_t own = xpmem_make(mine, kPage, XPMEM_PERMIT_MODE, (void *)0600);
        xpmem_apid_t fast = xpmem_get(own, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(own > 0 && fast > 0);
        void *at = mmap(nullptr, kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHILD_CHECK(at != MAP_FAILED);

        step(steps, 1);  // the owner stops
        void *late = nullptr;
        std::thread slow_attach([&] { late = xpmem_attach(xpmem_addr{slow, 0}, kPage, at); });
        std::this_thread::sleep_for(std::chrono::milliseconds(300));  // its request is out
        void *made = xpmem_attach(xpmem_addr{fast, 0}, kPage, at);
        findings.check(made == at, std::string("the fixed attach meanwhile: ") + strerror(errno));
        step(steps, 2);  // the owner answers the first attach now
        slow_attach.join();
        findings.check(late == reinterpret_cast<void *>(-1),
                       "the late fixed attach landed over the attachment made meanwhile");
        findings.check(std::strcmp(static_cast<char *>(at), "MINE") == 0,
                       "the attachment made meanwhile no longer shows its segment");
        steps.send_b(0);
        REPORT(findings);
    });
}

TEST_P(UserAttacks, StoppedOwnerGetTimesOut) {
    with_stopped_owner([](VictimInfo info, xt::Channel &steps) {
        Findings findings;
        step(steps, 1);
        auto start = Clock::now();
        errno = 0;
        xpmem_apid_t apid = xpmem_get(info.segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        int error = errno;
        double took = seconds_since(start);
        std::printf("get from a stopped owner: %s after %.3f s\n", strerror(error), took);
        findings.check(apid == -1 && error == ETIMEDOUT,
                       std::string("get from a stopped owner: ") +
                           (apid > 0 ? "granted" : strerror(error)) + " (not ETIMEDOUT)");
        findings.check(took < 2.5, "get from a stopped owner took " + std::to_string(took) + " s");
        step(steps, 2);
        xpmem_apid_t again = xpmem_get(info.segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        findings.check(again > 0 && attach_reads_owner(again),
                       std::string("get + attach after SIGCONT: ") + strerror(errno));
        steps.send_b(0);
        REPORT(findings);
    });
}

TEST_P(UserAttacks, PermitStillWorksAfterAnOwnerTimeout) {
    with_stopped_owner([](VictimInfo info, xt::Channel &steps) {
        xpmem_apid_t apid = xpmem_get(info.segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(apid > 0 && attach_reads_owner(apid));
        step(steps, 1);
        CHILD_CHECK(xpmem_attach(xpmem_addr{apid, 0}, kPage, nullptr) ==
                    reinterpret_cast<void *>(-1));
        step(steps, 2);
        errno = 0;
        bool works = attach_reads_owner(apid);
        int error = errno;
        steps.send_b(0);
        if (!works)
            xt::fail(__FILE__, __LINE__,
                     std::string("after SIGCONT, xpmem_attach with the permit taken before the "
                                 "timeout fails: ") +
                         strerror(error));
    });
}

// ---- 9. tables do not grow without bound ---------------------------------------------

// The victim measures itself: RSS and heap in use, after the flood and after the
// attacker hung up.
struct Growth {
    long rss_kb;
    long heap_bytes;
};

void measure_victim(xt::Channel &channel, const char *what) {
    long rss = rss_kb(), heap = heap_in_use();
    CHILD_CHECK(channel.receive_a<int>() == 1);  // flood done
    Growth grown{rss_kb() - rss, heap_in_use() - heap};
    std::printf("victim after %s: RSS +%ld KiB, heap +%ld KiB\n", what, grown.rss_kb,
                grown.heap_bytes / 1024);
    channel.send_a(grown);
    CHILD_CHECK(channel.receive_a<int>() == 2);  // hung up
    bool released = xt::eventually([&] { return heap_in_use() - heap < 256 * 1024; }, 5s);
    std::printf("victim after hang-up: heap +%ld KiB\n", (heap_in_use() - heap) / 1024);
    channel.send_a(Growth{rss_kb() - rss, released ? 0 : heap_in_use() - heap});
}

void expect_bounded(xt::Channel &channel, const char *what) {
    auto grown = channel.receive_b<Growth>();
    Findings findings;
    // A sanitizer's shadow memory grows with every allocation: RSS says nothing there; the
    // heap's own count (mallinfo2) still does.
    findings.check(
        xpmem::util::kSanitizer || grown.rss_kb < 4096,
        std::string(what) + " grew the victim's RSS by " + std::to_string(grown.rss_kb) + " KiB");
    findings.check(grown.heap_bytes < (4L << 20),
                   std::string(what) + " grew the victim's heap by " +
                       std::to_string(grown.heap_bytes / 1024) + " KiB");
    REPORT(findings);
}

void expect_released(xt::Channel &channel) {
    auto after = channel.receive_b<Growth>();
    if (after.heap_bytes != 0)
        xt::fail(__FILE__, __LINE__,
                 "after the attacker hung up the victim still holds " +
                     std::to_string(after.heap_bytes / 1024) + " KiB more heap");
}

TEST_P(UserAttacks, ForgedRevokesDoNotGrowTheAttachersService) {
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        char *memory = anon(1);  // any call starts the service
        CHILD_CHECK(xpmem_make(memory, kPage, XPMEM_PERMIT_MODE, (void *)0600) > 0);
        channel.send_a(getpid());
        measure_victim(channel, "200k forged REVOKEs");
    });
    pid_t pid = channel.receive_b<pid_t>();
    xt::Process forger([&] {
        be(kAttackerUid);
        int fd = raw_connect(pid);
        // Segids naming the forger as their owner pass the check "only the owner revokes".
        constexpr int kBatch = 64;
        int answered = 0;
        for (std::uint64_t n = 0; n < 200000; n += kBatch) {
            for (int i = 0; i < kBatch; ++i)
                send_raw(fd, wire::Revoke{
                                 .segid = static_cast<std::int64_t>(
                                     ((n + i + 1) << 32) | static_cast<std::uint32_t>(getpid()))});
            for (int i = 0; i < kBatch; ++i) {
                wire::RevokeReply reply{};
                if (receive(fd, &reply, sizeof reply, nullptr) == sizeof reply) ++answered;
            }
        }
        std::printf("forger: %d REVOKEs answered\n", answered);
        channel.send_b(1);
        expect_bounded(channel, "200k forged REVOKEs");
        close(fd);
        channel.send_b(2);
        expect_released(channel);
    });
    xt::expect_all_ok({&forger, &victim});
}

TEST_P(UserAttacks, RepeatedGetsAreBoundedPerConnection) {
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        char *memory = anon(1);
        xpmem_segid_t segid = xpmem_make(memory, kPage, XPMEM_PERMIT_MODE, (void *)0666);
        channel.send_a(VictimInfo{getpid(), segid});
        measure_victim(channel, "200k GETs on one connection");
    });
    auto info = channel.receive_b<VictimInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        int fd = raw_connect(info.pid);
        constexpr int kBatch = 64;
        int granted = 0, nospace = 0, other = 0;
        for (int n = 0; n < 200000; n += kBatch) {
            for (int i = 0; i < kBatch; ++i)
                send_raw(fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDONLY});
            for (int i = 0; i < kBatch; ++i) {
                wire::GetReply reply{};
                CHILD_CHECK(receive(fd, &reply, sizeof reply, nullptr) == sizeof reply);
                (reply.error == 0 ? granted : reply.error == ENOSPC ? nospace : other)++;
            }
        }
        std::printf("attacker: %d granted, %d ENOSPC, %d other\n", granted, nospace, other);
        CHILD_CHECK(nospace > 0 && granted + nospace == 200000);
        channel.send_b(1);
        expect_bounded(channel, "200k GETs on one connection");
        close(fd);
        channel.send_b(2);
        expect_released(channel);
    });
    xt::expect_all_ok({&attacker, &victim});
}

TEST_P(UserAttacks, GetsSpreadOverConnectionsAreBounded) {
    xt::Channel channel;
    xt::Process victim([&] {
        default_fd_limit();
        be(kVictimUid);
        char *memory = anon(1);
        xpmem_segid_t segid = xpmem_make(memory, kPage, XPMEM_PERMIT_MODE, (void *)0666);
        channel.send_a(VictimInfo{getpid(), segid});
        measure_victim(channel, "200k GETs spread over connections");
    });
    auto info = channel.receive_b<VictimInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        std::vector<int> live;
        for (int i = 0; i < 300; ++i) {
            int fd = raw_connect(info.pid);
            wire::Get get{.segid = info.segid, .flags = XPMEM_RDONLY};
            wire::GetReply reply{};
            if (send(fd, &get, sizeof get, MSG_NOSIGNAL) == sizeof get &&
                receive(fd, &reply, sizeof reply, nullptr, 2s) == sizeof reply && reply.error == 0)
                live.push_back(fd);
            else
                close(fd);
        }
        CHILD_CHECK(!live.empty());
        constexpr int kBatch = 64;
        int granted = static_cast<int>(live.size()), refused = 0;
        for (std::size_t n = 0; granted + refused < 200000; ++n) {
            int fd = live[n % live.size()];
            for (int i = 0; i < kBatch; ++i)
                send_raw(fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDONLY});
            for (int i = 0; i < kBatch; ++i) {
                wire::GetReply reply{};
                CHILD_CHECK(receive(fd, &reply, sizeof reply, nullptr) == sizeof reply);
                (reply.error == 0 ? granted : refused)++;
            }
        }
        std::printf("attacker: %zu connections kept, %d permits, %d refused\n", live.size(), granted,
                    refused);
        channel.send_b(1);
        expect_bounded(channel, "200k GETs spread over connections");
        for (int fd : live) close(fd);
        channel.send_b(2);
        expect_released(channel);
    });
    xt::expect_all_ok({&attacker, &victim});
}

// ---- 10. revocation without the attacher's cooperation --------------------------------

enum class Event { remove, release, exit };

void uncooperative(Event event) {
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        char *memory = anon(4);
        std::strcpy(memory, "BEFORE");
        xpmem_segid_t segid = xpmem_make(memory, 4 * kPage, XPMEM_PERMIT_MODE, (void *)0666);
        channel.send_a(VictimInfo{getpid(), segid});
        CHILD_CHECK(channel.receive_a<int>() == 1);  // attached (and released, if so)
        if (event == Event::remove) CHILD_CHECK(xpmem_remove(segid) == 0);
        std::strcpy(memory, "SECRET-LATER");
        if (event == Event::exit) return;
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
        if (std::strcmp(memory, "SECRET-LATER") != 0)
            xt::fail(__FILE__, __LINE__,
                     std::string("the attacker's store reached the victim's memory after ") +
                         (event == Event::remove ? "xpmem_remove" : "its release") + ": " + memory);
    });
    auto info = channel.receive_b<VictimInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        int fd = raw_connect(info.pid);
        auto permit = ask<wire::GetReply>(fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDWR});
        CHILD_CHECK(permit.error == 0);
        std::vector<int> fds;
        auto reply = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = permit.permit, .offset = 0, .size = 4 * kPage}, &fds);
        CHILD_CHECK(reply.error == 0 && reply.pieces[0].fd_index >= 0);
        const wire::Piece &piece = reply.pieces[0];
        auto *mine =
            static_cast<char *>(mmap(nullptr, piece.length, PROT_READ | PROT_WRITE, MAP_SHARED,
                                     fds[piece.fd_index], static_cast<off_t>(piece.file_offset)));
        CHILD_CHECK(mine != MAP_FAILED && std::strcmp(mine, "BEFORE") == 0);
        if (event == Event::release) {
            send_raw(fd, wire::Release{.permit = permit.permit});
            // Requests are served in order: a reply to a later GET means it was released.
            ask<wire::GetReply>(fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDONLY});
        }
        channel.send_b(1);
        if (event == Event::exit) {
            CHILD_CHECK(xt::eventually([&] { return gone(info.pid); }));
        } else {
            CHILD_CHECK(channel.receive_b<int>() == 2);
        }
        Findings findings;
        const char *what = event == Event::remove    ? "xpmem_remove"
                           : event == Event::release ? "releasing its permit"
                                                     : "the victim's exit";
        findings.check(
            !page_contains(mine, "SECRET-LATER"),
            std::string("after ") + what + ", the kept mapping reads the victim's memory");
        auto *fresh =
            static_cast<char *>(mmap(nullptr, piece.length, PROT_READ, MAP_SHARED,
                                     fds[piece.fd_index], static_cast<off_t>(piece.file_offset)));
        findings.check(
            fresh == MAP_FAILED || !page_contains(fresh, "SECRET-LATER"),
            std::string("after ") + what + ", a kept descriptor maps the victim's memory");
        // A store through the kept mapping lands in a page of the emptied file: the victim
        // checks that it never sees it.
        if (event != Event::exit) kernel_write(mine, "PWNED");
        if (event != Event::exit) channel.send_b(3);
        REPORT(findings);
    });
    if (event == Event::exit) {
        xt::Status status = victim.wait();
        EXPECT_TRUE(status.exited_ok()) << status.describe();
        EXPECT_CHILD_OK(attacker);
    } else {
        xt::expect_all_ok({&attacker, &victim});
    }
}

TEST_P(UserAttacks, KeptDescriptorsDieWithRemove) {
    uncooperative(Event::remove);
}
TEST_P(UserAttacks, KeptDescriptorsDieWithRelease) {
    uncooperative(Event::release);
}
TEST_P(UserAttacks, KeptDescriptorsDieWithTheVictim) {
    OPEN_HOLE(
        "after the victim exits, a kept descriptor or mapping still reads what the victim's "
        "memory held at its exit: a process that is gone cannot take its memory back, and the "
        "library cannot empty the files during exit while other threads may still use them");
    uncooperative(Event::exit);
}

// ---- 11. minor items -----------------------------------------------------------------

// The victim maps a file that lies in a directory the attacker can write into: the
// attacker swaps (renameat2 RENAME_EXCHANGE, in a loop) the file's directory with one of
// its own holding a FIFO of the same name, while asking to attach. The path the victim's
// service read from /proc/self/maps then names the FIFO half the time; opening it must
// not block the service.
TEST_P(UserAttacks, FifoAtAMappedPathDoesNotBlockTheService) {
    TempDir dir(0777);
    std::string real = dir.path + "/sub", swap = dir.path + "/swap";
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        CHILD_CHECK(mkdir(real.c_str(), 0755) == 0);
        int fd = open((real + "/data").c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        CHILD_CHECK(fd >= 0 && ftruncate(fd, 2 * kPage) == 0);
        CHILD_CHECK(pwrite(fd, "FILEDATA", 9, 0) == 9);
        void *file = mmap(nullptr, 2 * kPage, PROT_READ, MAP_SHARED, fd, 0);
        CHILD_CHECK(file != MAP_FAILED);
        close(fd);
        char *other = anon(1);
        std::strcpy(other, "OTHER");
        xpmem_segid_t file_segid = xpmem_make(file, 2 * kPage, XPMEM_PERMIT_MODE, (void *)0666);
        xpmem_segid_t other_segid = xpmem_make(other, kPage, XPMEM_PERMIT_MODE, (void *)0666);
        channel.send_a(VictimInfo{getpid(), file_segid});
        channel.send_a(other_segid);
        channel.receive_a<int>();
    });
    auto info = channel.receive_b<VictimInfo>();
    auto other = channel.receive_b<xpmem_segid_t>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        CHILD_CHECK(mkdir(swap.c_str(), 0777) == 0 && mkfifo((swap + "/data").c_str(), 0666) == 0);
        std::atomic<bool> flipping{true};
        std::thread flipper([&] {
            while (flipping.load())
                syscall(SYS_renameat2, AT_FDCWD, real.c_str(), AT_FDCWD, swap.c_str(),
                        RENAME_EXCHANGE);
        });
        int fd = raw_connect(info.pid);
        auto permit = ask<wire::GetReply>(fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDONLY});
        CHILD_CHECK(permit.error == 0);
        int attempts = 0;
        bool stuck = false;
        while (!stuck && attempts < 200) {
            ++attempts;
            send_raw(fd, wire::Attach{.permit = permit.permit, .offset = 0, .size = 2 * kPage});
            wire::AttachReply reply{};
            stuck = receive(fd, &reply, sizeof reply, nullptr, 300ms) < 0;
        }
        flipping = false;
        flipper.join();
        std::printf("attacker: %d attach requests, service %s\n", attempts,
                    stuck ? "stopped answering" : "kept answering");
        // Someone else now needs the victim's service.
        xt::Process partner([&] {
            be(kPartnerUid);
            setenv("XPMEM_USER_TIMEOUT_MS", "3000", 1);
            auto start = Clock::now();
            xpmem_apid_t apid = xpmem_get(other, XPMEM_RDONLY, XPMEM_PERMIT_MODE, nullptr);
            auto *view =
                apid > 0 ? static_cast<char *>(xpmem_attach(xpmem_addr{apid, 0}, kPage, nullptr))
                         : reinterpret_cast<char *>(-1);
            bool ok = view != reinterpret_cast<char *>(-1) && std::strcmp(view, "OTHER") == 0;
            if (!ok || seconds_since(start) > 3)
                xt::fail(__FILE__, __LINE__,
                         "the victim's service is stuck opening the FIFO the attacker put at "
                         "its mapped file's path (another attacher got nothing in " +
                             std::to_string(seconds_since(start)) + " s)");
        });
        xt::Status status = partner.wait(std::chrono::seconds(15));
        // Let a blocked open() go, so that the victim can end.
        for (const std::string &path : {real + "/data", swap + "/data"})
            if (int writer = open(path.c_str(), O_WRONLY | O_NONBLOCK); writer >= 0) close(writer);
        CHILD_CHECK(status.exited_ok());
    });
    EXPECT_CHILD_OK(attacker);
    channel.send_b(1);
    EXPECT_CHILD_OK(victim);
}

// Mappings of segment files in this process.
int attachment_mappings() {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    int count = 0;
    while (std::getline(maps, line))
        if (line.find("/memfd:") != std::string::npos &&
            line.find("xpmem-hole") == std::string::npos)
            ++count;
    return count;
}

TEST_P(UserAttacks, ReleaseRacingAttachLeaksNoAttachment) {
    xt::Channel channel;
    xt::Process owner = patient_owner(channel);
    auto info = channel.receive_b<VictimInfo>();
    xt::Process attacher([&] {
        be(kAttackerUid);
        int leaked = 0, attached_after_release = 0;
        for (int round = 0; round < 200; ++round) {
            xpmem_apid_t apid = xpmem_get(info.segid, XPMEM_RDONLY, XPMEM_PERMIT_MODE, nullptr);
            CHILD_CHECK(apid > 0);
            std::atomic<bool> go{false};
            void *view = nullptr;
            std::thread racer([&] {
                while (!go.load()) {
                }
                view = xpmem_attach(xpmem_addr{apid, 0}, kPage, nullptr);
            });
            go = true;
            if (round % 2 == 1) std::this_thread::yield();
            CHILD_CHECK(xpmem_release(apid) == 0);
            racer.join();
            if (view != reinterpret_cast<void *>(-1) && xt::readable_by_kernel(view))
                ++attached_after_release;
            leaked += attachment_mappings();
        }
        if (leaked != 0 || attached_after_release != 0)
            xt::fail(__FILE__, __LINE__,
                     std::to_string(leaked) + " attachment mappings left and " +
                         std::to_string(attached_after_release) +
                         " readable attachments returned for released permits over 200 races");
    });
    EXPECT_CHILD_OK(attacher);
}

// Two owners with the same pid number in two pid namespaces (one network namespace) each
// serve their own attachers.
TEST_P(UserAttacks, SamePidInTwoPidNamespaces) {
    REQUIRE_ROOT("unshare(CLONE_NEWPID)");
    xt::Channel ready, go;
    auto in_namespace = [&](int which) {
        return xt::Process([&, which] {
            CHILD_CHECK(unshare(CLONE_NEWPID) == 0);
            xt::Process owner([&, which] {  // pid 1 of the new namespace
                be(kVictimUid);
                char *memory = anon(1);
                std::snprintf(memory, 32, "NAMESPACE-%d", which);
                xpmem_segid_t segid = xpmem_make(memory, kPage, XPMEM_PERMIT_MODE, (void *)0666);
                CHILD_CHECK(segid > 0);
                ready.send_b(getpid());
                CHILD_CHECK(go.receive_b<int>() == 1);
                xt::Process attacher([&] {
                    be(kAttackerUid);
                    xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDONLY, XPMEM_PERMIT_MODE, nullptr);
                    CHILD_CHECK(apid > 0);
                    auto *view =
                        static_cast<char *>(xpmem_attach(xpmem_addr{apid, 0}, kPage, nullptr));
                    CHILD_CHECK(view != reinterpret_cast<void *>(-1));
                    char expect[32];
                    std::snprintf(expect, sizeof expect, "NAMESPACE-%d", which);
                    if (std::strcmp(view, expect) != 0)
                        xt::fail(__FILE__, __LINE__,
                                 std::string("namespace ") + std::to_string(which) +
                                     "'s attacher reads " + view);
                });
                CHILD_CHECK(attacher.wait().exited_ok());
            });
            CHILD_CHECK(owner.wait().exited_ok());
        });
    };
    xt::Process first = in_namespace(1);
    xt::Process second = in_namespace(2);
    pid_t a = ready.receive_a<pid_t>(), b = ready.receive_a<pid_t>();
    EXPECT_EQ(a, 1);
    EXPECT_EQ(b, 1);
    go.send_a(1);
    go.send_a(1);
    xt::expect_all_ok({&first, &second});
}

// ---- more: what an attacker of the new design tries -----------------------------------

// The victim later makes a page of a writable segment read-only (as RELRO does): a
// descriptor the attacker kept from an earlier attach must not write it.
TEST_P(UserAttacks, KeptDescriptorDoesNotWriteAPageMadeReadOnlyLater) {
    OPEN_HOLE(
        "a read-write descriptor handed out while a page was writable keeps writing it after the "
        "victim mprotects it PROT_READ (later attach replies say read-only, the kept descriptor is "
        "still O_RDWR)");
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        char *memory = anon(2);
        std::strcpy(memory, "CONFIG");
        xpmem_segid_t segid = xpmem_make(memory, 2 * kPage, XPMEM_PERMIT_MODE, (void *)0666);
        channel.send_a(VictimInfo{getpid(), segid});
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(mprotect(memory, kPage, PROT_READ) == 0);
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
        if (std::strcmp(memory, "CONFIG") != 0)
            xt::fail(__FILE__, __LINE__,
                     std::string("the victim's page, read-only since, now reads ") + memory);
    });
    auto info = channel.receive_b<VictimInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        int fd = raw_connect(info.pid);
        auto permit = ask<wire::GetReply>(fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDWR});
        std::vector<int> fds;
        auto reply = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = permit.permit, .offset = 0, .size = 2 * kPage}, &fds);
        CHILD_CHECK(reply.error == 0 && reply.pieces[0].fd_index >= 0);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        // Attach again: the new reply must describe the page read-only.
        std::vector<int> again;
        auto second = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = permit.permit, .offset = 0, .size = kPage}, &again);
        CHILD_CHECK(second.error == 0 && (second.pieces[0].flags & 1) == 0);
        auto *w = static_cast<char *>(mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED,
                                           fds[reply.pieces[0].fd_index],
                                           static_cast<off_t>(reply.pieces[0].file_offset)));
        if (w != MAP_FAILED) kernel_write(w, "PWNED");
        channel.send_b(3);
    });
    xt::expect_all_ok({&attacker, &victim});
}

// ---- review of the per-segment files (branch review) ---------------------------------

// Maps piece `index` of `reply` from `fds`, with `prot`; null when it is a hole or fails.
char *map_piece(const wire::AttachReply &reply, const std::vector<int> &fds, std::uint32_t index,
                int prot) {
    if (index >= reply.piece_count || reply.pieces[index].fd_index < 0) return nullptr;
    const wire::Piece &piece = reply.pieces[index];
    void *at = mmap(nullptr, piece.length, prot, MAP_SHARED, fds[piece.fd_index],
                    static_cast<off_t>(piece.file_offset));
    return at == MAP_FAILED ? nullptr : static_cast<char *>(at);
}

struct NestedInfo {
    pid_t pid;
    xpmem_segid_t big;    // the whole region
    xpmem_segid_t small;  // one page inside it, 0666
};

// The victim publishes its region read-only to everyone (0644) and one page of it
// read-write (0666). The attacker attaches the small segment read-write (its file is
// made), then the big one read-only (the small segment's file lies inside the big one:
// it is handed out again, under the big permit). The victim removes the small segment:
// the attacker's right to write that page is gone, only reading is left. The attacker's
// read-write descriptor of the small segment's file must not write the victim's page.
TEST_P(UserAttacks, RemovedSegmentIsNotWritableThroughAContainingReadOnlyGrant) {
    REQUIRE_ROOT("the attacker must be another uid than the victim (0644 vs 0666)");
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        char *region = anon(4);
        std::strcpy(region + kPage, "SMALL");
        NestedInfo info{getpid(), xpmem_make(region, 4 * kPage, XPMEM_PERMIT_MODE, (void *)0644),
                        xpmem_make(region + kPage, kPage, XPMEM_PERMIT_MODE, (void *)0666)};
        CHILD_CHECK(info.big > 0 && info.small > 0);
        channel.send_a(info);
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(xpmem_remove(info.small) == 0);
        std::strcpy(region + kPage, "AFTER-REMOVE");
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
        if (std::strcmp(region + kPage, "AFTER-REMOVE") != 0)
            xt::fail(__FILE__, __LINE__,
                     std::string("after xpmem_remove of the 0666 segment, the attacker (read-only "
                                 "on what is left) wrote the victim's page: ") +
                         (region + kPage));
    });
    auto info = channel.receive_b<NestedInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        int fd = raw_connect(info.pid);
        auto small = ask<wire::GetReply>(fd, wire::Get{.segid = info.small, .flags = XPMEM_RDWR});
        auto big = ask<wire::GetReply>(fd, wire::Get{.segid = info.big, .flags = XPMEM_RDONLY});
        CHILD_CHECK(small.error == 0 && big.error == 0);
        std::vector<int> small_fds, big_fds;
        auto first = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = small.permit, .offset = 0, .size = kPage}, &small_fds);
        CHILD_CHECK(first.error == 0);
        char *mine = map_piece(first, small_fds, 0, PROT_READ | PROT_WRITE);
        CHILD_CHECK(mine != nullptr && std::strcmp(mine, "SMALL") == 0);
        auto second = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = big.permit, .offset = 0, .size = 4 * kPage}, &big_fds);
        CHILD_CHECK(second.error == 0);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        kernel_write(mine, "PWNED-AFTER-REMOVE");
        channel.send_b(3);
    });
    xt::expect_all_ok({&attacker, &victim});
}

// The victim shares a page with everyone (0666) and its whole region with its own partner
// only (0600). The attacker attaches the public page first; the partner then attaches the
// whole region, which hands out the public page's file again under the partner's permit.
// The victim removes the public segment and writes a secret into that page: the attacker,
// who has no right to anything left, must not read it through the descriptor it kept.
TEST_P(UserAttacks, RemovedSegmentIsNotReadableWhileAPartnerHoldsAContainingSegment) {
    REQUIRE_ROOT("the attacker must be another uid than the victim (0600)");
    xt::Channel channel, partner_steps;
    xt::Process victim([&] {
        be(kVictimUid);
        char *region = anon(4);
        std::strcpy(region + kPage, "PUBLIC");
        NestedInfo info{getpid(), xpmem_make(region, 4 * kPage, XPMEM_PERMIT_MODE, (void *)0600),
                        xpmem_make(region + kPage, kPage, XPMEM_PERMIT_MODE, (void *)0666)};
        CHILD_CHECK(info.big > 0 && info.small > 0);
        channel.send_a(info);
        CHILD_CHECK(channel.receive_a<int>() == 1);  // the attacker attached the page
        xt::Process partner([&] {
            xpmem_apid_t apid = xpmem_get(info.big, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
            CHILD_CHECK(apid > 0);
            auto *view = static_cast<char *>(xpmem_attach(xpmem_addr{apid, 0}, 4 * kPage, nullptr));
            CHILD_CHECK(view != reinterpret_cast<void *>(-1));
            // Page 1 went out under the attacker's permit of the small segment first: in
            // the partner's attachment of the containing one it is a hole
            // (docs/user-backend.md, limits: segments that overlap). The partner's permit
            // must not keep it alive.
            partner_steps.send_b(1);
            partner_steps.receive_b<int>();  // keeps its attachment until the end
        });
        CHILD_CHECK(partner_steps.receive_a<int>() == 1);
        CHILD_CHECK(xpmem_remove(info.small) == 0);
        std::strcpy(region + kPage, "SECRET-AFTER-REMOVE");
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
        partner_steps.send_a(0);
        CHILD_CHECK(partner.wait().exited_ok());
    });
    auto info = channel.receive_b<NestedInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        int fd = raw_connect(info.pid);
        auto permit = ask<wire::GetReply>(fd, wire::Get{.segid = info.small, .flags = XPMEM_RDONLY});
        CHILD_CHECK(permit.error == 0);
        std::vector<int> fds;
        auto reply = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = permit.permit, .offset = 0, .size = kPage}, &fds);
        CHILD_CHECK(reply.error == 0);
        char *mine = map_piece(reply, fds, 0, PROT_READ);
        CHILD_CHECK(mine != nullptr && std::strcmp(mine, "PUBLIC") == 0);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        Findings findings;
        findings.check(!page_contains(mine, "SECRET-AFTER-REMOVE"),
                       "after xpmem_remove, the kept mapping reads the victim's live page: " +
                           std::string(mine));
        char *fresh = map_piece(reply, fds, 0, PROT_READ);
        findings.check(fresh == nullptr || !page_contains(fresh, "SECRET-AFTER-REMOVE"),
                       "after xpmem_remove, the kept descriptor maps the victim's live page");
        channel.send_b(3);
        REPORT(findings);
    });
    xt::expect_all_ok({&attacker, &victim});
}

// The victim moves memory it had shared (mremap, as realloc does for large blocks) and
// maps fresh memory where it was. The segment's file still holds the moved memory. An
// attacher that attaches the segment again makes the victim convert the fresh memory into
// that same file at the same offsets: the moved memory must not be punched nor aliased.
TEST_P(UserAttacks, AttachAfterTheOwnerMovedItsMemoryDoesNotCorruptTheMovedMemory) {
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        char *memory = anon(4);
        std::strcpy(memory, "MOVED-BUFFER");
        xpmem_segid_t segid = xpmem_make(memory, 4 * kPage, XPMEM_PERMIT_MODE, (void *)0644);
        channel.send_a(VictimInfo{getpid(), segid});
        CHILD_CHECK(channel.receive_a<int>() == 1);  // attached once: converted
        auto *elsewhere = static_cast<char *>(
            mmap(nullptr, 4 * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        CHILD_CHECK(mremap(memory, 4 * kPage, 4 * kPage, MREMAP_MAYMOVE | MREMAP_FIXED,
                           elsewhere) == elsewhere);
        CHILD_CHECK(mmap(memory, 4 * kPage, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == memory);
        std::strcpy(memory, "FRESH-BUFFER");
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);  // attached again
        Findings findings;
        findings.check(std::strcmp(elsewhere, "MOVED-BUFFER") == 0,
                       "the victim's moved buffer now reads \"" + std::string(elsewhere) + "\"");
        std::strcpy(memory, "STORE-TO-FRESH");
        findings.check(std::strcmp(elsewhere, "STORE-TO-FRESH") != 0,
                       "a store to the victim's fresh buffer shows in its moved buffer");
        REPORT(findings);
    });
    auto info = channel.receive_b<VictimInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        int fd = raw_connect(info.pid);
        auto permit = ask<wire::GetReply>(fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDONLY});
        CHILD_CHECK(permit.error == 0);
        std::vector<int> fds;
        auto reply = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = permit.permit, .offset = 0, .size = 4 * kPage}, &fds);
        CHILD_CHECK(reply.error == 0);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        std::vector<int> again;
        reply = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = permit.permit, .offset = 0, .size = 4 * kPage}, &again);
        CHILD_CHECK(reply.error == 0);
        channel.send_b(3);
    });
    xt::expect_all_ok({&attacker, &victim});
}

// RssAnon + RssShmem of the calling process, in KiB.
long private_and_shmem_kb() {
    std::ifstream status("/proc/self/status");
    std::string line;
    long total = 0;
    while (std::getline(status, line))
        if (line.rfind("RssAnon:", 0) == 0 || line.rfind("RssShmem:", 0) == 0)
            total += std::stol(line.substr(line.find(':') + 1));
    return total;
}

// The victim maps a large sparse file read-only and privately (a database or model file)
// and publishes it read-only. Attaching it should cost the victim nothing: the file's
// pages are not the victim's memory. A read-only attacker that attaches it and releases
// must not turn the file into the victim's resident memory.
TEST_P(UserAttacks, AttachingAReadOnlyFileMappingCostsTheVictimNoMemory) {
    constexpr std::size_t kSize = 128 << 20;
    TempDir dir(0777);
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        std::string path = dir.path + "/model.bin";
        int file = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        CHILD_CHECK(file >= 0 && ftruncate(file, kSize) == 0);
        void *mapped = mmap(nullptr, kSize, PROT_READ, MAP_PRIVATE, file, 0);
        CHILD_CHECK(mapped != MAP_FAILED);
        close(file);
        xpmem_segid_t segid = xpmem_make(mapped, kSize, XPMEM_PERMIT_MODE, (void *)0644);
        long before = private_and_shmem_kb();
        channel.send_a(VictimInfo{getpid(), segid});
        CHILD_CHECK(channel.receive_a<int>() == 1);
        long after = private_and_shmem_kb();
        std::printf("victim: RssAnon+RssShmem %ld KiB before, %ld KiB after attach+release\n",
                    before, after);
        std::fflush(stdout);
        if (after - before > 16 * 1024)
            xt::fail(__FILE__, __LINE__,
                     "an attacher's attach and release of a read-only file mapping the victim "
                     "never touched grew its memory by " +
                         std::to_string((after - before) / 1024) + " MiB");
    });
    auto info = channel.receive_b<VictimInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        int fd = raw_connect(info.pid);
        auto permit = ask<wire::GetReply>(fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDONLY});
        CHILD_CHECK(permit.error == 0);
        auto start = Clock::now();
        for (std::size_t done = 0; done < kSize;) {
            std::vector<int> fds;
            auto reply = ask<wire::AttachReply>(
                fd, wire::Attach{.permit = permit.permit, .offset = done, .size = kSize - done},
                &fds);
            CHILD_CHECK(reply.error == 0 && reply.piece_count > 0);
            for (std::uint32_t i = 0; i < reply.piece_count; ++i) done += reply.pieces[i].length;
            for (int received : fds) close(received);
        }
        double attached = seconds_since(start);
        send_raw(fd, wire::Release{.permit = permit.permit});
        ask<wire::GetReply>(fd, wire::Get{.segid = info.segid, .flags = XPMEM_RDONLY});
        std::printf("attacker: attach of 128 MiB took %.3f s, release %.3f s\n", attached,
                    seconds_since(start) - attached);
        std::fflush(stdout);
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacker, &victim});
}

// An attacker with a read-only permit of a large segment attaches it and releases it in a
// loop: every attach converts the memory, every release takes it back, both on the
// victim's single service thread. Measures how long each cycle keeps the service busy and
// what another attacher of a one-page segment waits meanwhile.
TEST_P(UserAttacks, AttachReleaseLoopOnALargeSegmentStallsOtherAttachers) {
    OPEN_HOLE(
        "an attach/release loop on a 256 MiB segment keeps the victim's service thread copying "
        "256 MiB each way per cycle (measured: attach 0.2-0.5 s, release 0.4-0.9 s per cycle on "
        "this busy 2-core host); another attacher's GET+ATTACH of a one-page segment waits behind "
        "them (worst 0.9-2.0 s measured), and the victim's own stores stall up to 9-40 ms");
    constexpr std::size_t kSize = 256 << 20;
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        char *memory = anon(kSize / kPage);
        for (std::size_t i = 0; i < kSize; i += kPage) memory[i] = 1;
        char *other = anon(1);
        std::strcpy(other, "OTHER");
        xpmem_segid_t segid = xpmem_make(memory, kSize, XPMEM_PERMIT_MODE, (void *)0644);
        xpmem_segid_t small = xpmem_make(other, kPage, XPMEM_PERMIT_MODE, (void *)0644);
        channel.send_a(NestedInfo{getpid(), segid, small});
        CHILD_CHECK(channel.receive_a<int>() == 1);
        // The victim's own stores during the attack: the longest one.
        std::atomic<bool> done{false};
        double worst_store = 0;
        std::thread writer([&] {
            std::size_t i = 0;
            while (!done.load()) {
                auto start = Clock::now();
                memory[(i += 97 * kPage) % kSize] = 2;
                worst_store = std::max(worst_store, seconds_since(start));
            }
        });
        CHILD_CHECK(channel.receive_a<int>() == 2);
        done = true;
        writer.join();
        std::printf("victim: longest store into its own memory during the loop: %.3f s\n",
                    worst_store);
        std::fflush(stdout);
    });
    auto info = channel.receive_b<NestedInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        int fd = raw_connect(info.pid);
        auto permit = ask<wire::GetReply>(fd, wire::Get{.segid = info.big, .flags = XPMEM_RDONLY});
        CHILD_CHECK(permit.error == 0);
        std::atomic<bool> looping{true};
        double worst_other = 0;
        int other_requests = 0;
        std::thread other([&] {
            int mine = raw_connect(info.pid);
            while (looping.load()) {
                auto start = Clock::now();
                auto g = ask<wire::GetReply>(mine,
                                             wire::Get{.segid = info.small, .flags = XPMEM_RDONLY});
                std::vector<int> fds;
                ask<wire::AttachReply>(
                    mine, wire::Attach{.permit = g.permit, .offset = 0, .size = kPage}, &fds);
                for (int received : fds) close(received);
                send_raw(mine, wire::Release{.permit = g.permit});
                worst_other = std::max(worst_other, seconds_since(start));
                ++other_requests;
                std::this_thread::sleep_for(5ms);
            }
            close(mine);
        });
        channel.send_b(1);
        long ticks_before = cpu_ticks(info.pid);
        auto start = Clock::now();
        constexpr int kCycles = 4;
        for (int cycle = 0; cycle < kCycles; ++cycle) {
            auto t0 = Clock::now();
            std::vector<int> fds;
            auto reply = ask<wire::AttachReply>(
                fd, wire::Attach{.permit = permit.permit, .offset = 0, .size = kSize}, &fds);
            CHILD_CHECK(reply.error == 0);
            for (int received : fds) close(received);
            double attach = seconds_since(t0);
            send_raw(fd, wire::Release{.permit = permit.permit});
            permit = ask<wire::GetReply>(fd, wire::Get{.segid = info.big, .flags = XPMEM_RDONLY});
            CHILD_CHECK(permit.error == 0);
            std::printf("attacker: cycle %d: attach %.3f s, release (+GET) %.3f s\n", cycle, attach,
                        seconds_since(t0) - attach);
            std::fflush(stdout);
        }
        double total = seconds_since(start);
        long ticks = cpu_ticks(info.pid) - ticks_before;
        looping = false;
        other.join();
        std::printf(
            "attacker: %d cycles in %.2f s, victim CPU %.2f s; other attacher: %d "
            "requests, worst %.3f s\n",
            kCycles, total, static_cast<double>(ticks) / static_cast<double>(sysconf(_SC_CLK_TCK)),
            other_requests, worst_other);
        std::fflush(stdout);
        channel.send_b(2);
        if (worst_other > 0.1)
            xt::fail(__FILE__, __LINE__,
                     "another attacher's GET+ATTACH of a one-page segment waited " +
                         std::to_string(worst_other) + " s behind the loop");
    });
    xt::expect_all_ok({&attacker, &victim});
}

// The victim publishes its region read-only to everyone (0644) and one page of it
// read-write to its partners (0666). The attacker attaches the big segment first: the
// whole region moves into the big segment's file, handed out. A partner attaching the
// small segment afterwards must still reach the page.
TEST_P(UserAttacks, AttachingAContainingSegmentFirstDoesNotBlindOtherAttachers) {
    REQUIRE_ROOT("attacker and partner of other uids than the victim");
    OPEN_HOLE(
        "an attacker that attaches a read-only 0644 segment first moves all its memory into that "
        "segment's file; every segment inside it is then attached as a hole by everyone else: "
        "the partner's xpmem_attach of the 0666 page succeeds and touching it is SIGBUS");
    xt::Channel channel;
    xt::Process victim([&] {
        be(kVictimUid);
        char *region = anon(4);
        std::strcpy(region + kPage, "FOR-PARTNER");
        channel.send_a(
            NestedInfo{getpid(), xpmem_make(region, 4 * kPage, XPMEM_PERMIT_MODE, (void *)0644),
                       xpmem_make(region + kPage, kPage, XPMEM_PERMIT_MODE, (void *)0666)});
        channel.receive_a<int>();
    });
    auto info = channel.receive_b<NestedInfo>();
    xt::Process attacker([&] {
        be(kAttackerUid);
        int fd = raw_connect(info.pid);
        auto big = ask<wire::GetReply>(fd, wire::Get{.segid = info.big, .flags = XPMEM_RDONLY});
        std::vector<int> fds;
        auto reply = ask<wire::AttachReply>(
            fd, wire::Attach{.permit = big.permit, .offset = 0, .size = 4 * kPage}, &fds);
        CHILD_CHECK(big.error == 0 && reply.error == 0);
        xt::Process partner([&] {
            be(kPartnerUid);
            xpmem_apid_t apid = xpmem_get(info.small, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
            CHILD_CHECK(apid > 0);
            auto *view = static_cast<char *>(xpmem_attach(xpmem_addr{apid, 0}, kPage, nullptr));
            CHILD_CHECK(view != reinterpret_cast<void *>(-1));
            if (!page_contains(view, "FOR-PARTNER"))
                xt::fail(__FILE__, __LINE__,
                         "the partner's attachment of the 0666 page is a hole (SIGBUS) after the "
                         "attacker attached the 0644 segment containing it");
        });
        CHILD_CHECK(partner.wait().exited_ok());
    });
    EXPECT_CHILD_OK(attacker);
    channel.send_b(1);
    EXPECT_CHILD_OK(victim);
}

INSTANTIATE_BACKENDS(UserAttacks);

}  // namespace
