// docs/contract.md §2, "owner changes its memory": an attachment always shows what the owner
// maps at those addresses now. Once munmap, mmap, mremap, madvise(MADV_DONTNEED) or brk
// returns in the owner, the attacher's very next access sees the result: SIGBUS where the
// owner has nothing mapped (for loads and stores alike), the owner's new bytes where it
// mapped something new. Every check here is made on the attacher's first access after
// the owner told it about the change, with no waiting and no retry. The last tests are the
// pattern MPI libraries rely on (UCX, Open MPI, MPICH): one window of the owner's heap,
// attached once and kept, through thousands of free/malloc rounds.
//
// The kernel backend is the reference. (Changes made by someone other than the owner:
// test_invalidation.cpp; copy-on-write after the owner forks: test_fork.cpp.)

#include <linux/futex.h>
#include <malloc.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xpmem.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"
#include "util/sanitizer.hpp"

namespace {

using namespace std::chrono_literals;
constexpr std::size_t kPage = 4096;

class Follow : public xt::BackendTest {};

#define SKIP_UNDER_SANITIZER_FOR_HOLES()                                                   \
    do {                                                                                   \
        if (xpmem::util::kSanitizer)                                                       \
            GTEST_SKIP() << "the sanitizer's runtime maps single pages of its own, which " \
                            "the kernel may put into the hole this test makes";            \
    } while (0)

std::string hex(const void *address) {
    std::ostringstream out;
    out << address;
    return out.str();
}

// ---------------------------------------------------------------------------------------
// Faults, caught in the attacher itself: attachments are not inherited, so a forked prober
// would see nothing.

struct Fault {
    int signal = 0;  // 0: the access went through
    int code = 0;
    const void *address = nullptr;

    std::string describe() const {
        if (signal == 0) return "no signal";
        return std::string(sigabbrev_np(signal) ? sigabbrev_np(signal) : "?") + " si_code " +
               std::to_string(code) + " at " + hex(address);
    }
};

sigjmp_buf probe_jump;
siginfo_t probe_info;
volatile sig_atomic_t probing = 0;
bool faults_caught = false;

void on_fault(int signal, siginfo_t *info, void *) {
    if (!probing) {
        // Not a probe: the default action, as without this handler. The access runs
        // again and ends the process with this signal.
        ::signal(signal, SIG_DFL);
        return;
    }
    probing = 0;
    probe_info = *info;
    siglongjmp(probe_jump, signal);
}

// Installs the handler that probe() needs. The attacher does so before it uses the
// library, as an application installs its handlers at start: a backend that resolves
// faults in attachments itself then sees them first, and passes on those it does not.
void catch_faults() {
    struct sigaction handler {};
    handler.sa_sigaction = on_fault;
    handler.sa_flags = SA_SIGINFO;
    sigemptyset(&handler.sa_mask);
    CHILD_CHECK(sigaction(SIGBUS, &handler, nullptr) == 0);
    CHILD_CHECK(sigaction(SIGSEGV, &handler, nullptr) == 0);
    faults_caught = true;
}

// Runs `access`; returns the SIGBUS or SIGSEGV it raised, if any.
template <class Access>
Fault probe(Access access) {
    CHILD_CHECK(faults_caught);
    Fault fault;
    if (int signal = sigsetjmp(probe_jump, 1); signal != 0) {
        fault = {signal, probe_info.si_code, probe_info.si_addr};
    } else {
        probing = 1;
        access();
        probing = 0;
    }
    return fault;
}

Fault load(const void *address) {
    return probe([=] { (void)*static_cast<const volatile char *>(address); });
}

Fault store(void *address, char value) {
    return probe([=] { *static_cast<volatile char *>(address) = value; });
}

// The si_code of the SIGBUS for a hole: the kernel's BUS_ADRERR, or on the user backend
// SI_QUEUE, for the library sends it (only the kernel or the thread itself may send
// BUS_ADRERR; docs/user-backend.md, "Following the owner").
int hole_si_code() {
    return (xpmem_version() & XPMEM_USER_BACKEND_FLAG) != 0 ? static_cast<int>(SI_QUEUE)
                                                            : static_cast<int>(BUS_ADRERR);
}

// Expects `fault` to be SIGBUS for an address the owner has nothing mapped at: si_code
// hole_si_code(), si_addr the very byte accessed.
void check_sigbus(const Fault &fault, const void *address, const char *what, const char *file,
                  int line) {
    if (fault.signal == SIGBUS && fault.code == hole_si_code() && fault.address == address) return;
    xt::fail(file, line,
             std::string(what) + " at " + hex(address) + ": expected SIGBUS (si_code " +
                 std::to_string(hole_si_code()) + ") at that address, got " + fault.describe());
}
#define CHILD_CHECK_SIGBUS(fault, address, what) \
    check_sigbus((fault), (address), (what), __FILE__, __LINE__)

// The NUL-terminated text at `address` (at most one page), read with plain loads, or what
// the first load raised.
std::string text_at(const char *address) {
    std::string text;
    Fault fault = probe([&] {
        for (std::size_t i = 0; i < kPage; ++i) {
            char c = static_cast<const volatile char *>(address)[i];
            if (c == '\0') break;
            text += c;
        }
    });
    return fault.signal == 0 ? text : "<" + fault.describe() + ">";
}

void check_text(const char *address, const std::string &expected, const char *file, int line) {
    std::string seen = text_at(address);
    if (seen != expected)
        xt::fail(file, line,
                 "attachment at " + hex(address) + " shows \"" + seen + "\", expected \"" +
                     expected + "\"");
}
#define CHILD_CHECK_TEXT(address, expected) check_text((address), (expected), __FILE__, __LINE__)

// ---------------------------------------------------------------------------------------
// The owner publishes `pages` fresh private anonymous pages that `prepare` sets up. The
// attacher attaches them and faults every page in with a user-mode load (a hole raises
// SIGBUS, which is caught), then runs `before`. The owner runs `change`, tells the
// attacher, and the attacher runs `after` as its first access since.
struct Change {
    std::size_t pages = 1;
    xpmem::Access access = xpmem::Access::read_write;
    std::function<void(char *)> prepare = [](char *) {};
    std::function<void(char *)> before = [](char *) {};
    std::function<void(char *)> change = [](char *) {};
    std::function<void(char *)> after = [](char *) {};
};

void follow(const Change &steps) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = xt::anonymous(steps.pages * kPage);
        auto *bytes = reinterpret_cast<char *>(memory.data());
        steps.prepare(bytes);
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        steps.change(bytes);
        channel.send_a(2);  // only once the change has returned
        CHILD_CHECK(channel.receive_a<int>() == 3);
    });
    xt::Process attacher([&] {
        catch_faults();
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>(), steps.access);
        auto view = permit.attach(0, steps.pages * kPage);
        auto *bytes = reinterpret_cast<char *>(view.data());
        for (std::size_t offset = 0; offset < view.size(); offset += kPage)
            (void)load(bytes + offset);
        steps.before(bytes);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        steps.after(bytes);
        channel.send_b(3);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// Fresh private anonymous memory mapped over `at` (which may be mapped or a hole).
void map_fresh(char *at, std::size_t size = kPage) {
    CHILD_CHECK(mmap(at, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1,
                     0) == at);
}

void write_text(char *at, const char *text) {
    std::strcpy(at, text);
}

// ---------------------------------------------------------------------------------------
// munmap, mmap, mremap

TEST_P(Follow, MunmapIsSigbusAsSoonAsMunmapReturns) {
    SKIP_UNDER_SANITIZER_FOR_HOLES();
    follow({
        .pages = 2,
        .prepare =
            [](char *memory) {
                write_text(memory, "page 0");
                write_text(memory + kPage, "page 1");
            },
        .before =
            [](char *view) {
                CHILD_CHECK_TEXT(view, "page 0");
                CHILD_CHECK_TEXT(view + kPage, "page 1");
            },
        .change = [](char *memory) { CHILD_CHECK(munmap(memory, 2 * kPage) == 0); },
        .after =
            [](char *view) {
                // The first access to each page since the owner's munmap returned: a load on
                // one, a store on the other, at an address inside the page.
                CHILD_CHECK_SIGBUS(load(view + 123), view + 123, "load");
                CHILD_CHECK_SIGBUS(store(view + kPage + 456, 'x'), view + kPage + 456, "store");
            },
    });
}

TEST_P(Follow, MunmapThenMmapFixedShowsTheNewBytes) {
    follow({
        .prepare = [](char *memory) { write_text(memory, "old"); },
        .before = [](char *view) { CHILD_CHECK_TEXT(view, "old"); },
        .change =
            [](char *memory) {
                CHILD_CHECK(munmap(memory, kPage) == 0);
                map_fresh(memory);
                write_text(memory, "new");
            },
        .after = [](char *view) { CHILD_CHECK_TEXT(view, "new"); },
    });
}

// A read-only attachment of the user backend does not follow: userfaultfd registers only
// mappings that could be made writable, and a read-only one must not be (mprotect to
// writable fails with EACCES). Once the owner unmaps the memory, the attachment shows
// zeroes there (never the old bytes), until an attach or fault of a read-write permit
// makes the new memory shareable (docs/user-backend.md, limits).
TEST_P(Follow, ReadOnlyAttachmentShowsZeroesWhereTheOwnerReplacedItsMemory) {
    bool user = user_backend();
    follow({
        .access = xpmem::Access::read_only,
        .prepare = [](char *memory) { write_text(memory, "old"); },
        .before = [](char *view) { CHILD_CHECK_TEXT(view, "old"); },
        .change =
            [](char *memory) {
                CHILD_CHECK(munmap(memory, kPage) == 0);
                map_fresh(memory);
                write_text(memory, "new");
            },
        .after = [user](char *view) { CHILD_CHECK_TEXT(view, user ? "" : "new"); },
    });
}

// As an allocator does: munmap, then mmap without MAP_FIXED, which the kernel places at
// the address asked for since it is free again.
TEST_P(Follow, MunmapThenMmapAtTheSameAddressShowsTheNewBytes) {
    follow({
        .prepare = [](char *memory) { write_text(memory, "old"); },
        .before = [](char *view) { CHILD_CHECK_TEXT(view, "old"); },
        .change =
            [](char *memory) {
                CHILD_CHECK(munmap(memory, kPage) == 0);
                CHILD_CHECK(mmap(memory, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                                 -1, 0) == memory);
                write_text(memory, "new");
            },
        .after = [](char *view) { CHILD_CHECK_TEXT(view, "new"); },
    });
}

// The new page exists before the old one is freed, so it cannot be the same page frame
// reused: a stale mapping of the old frame cannot pass for the new memory.
TEST_P(Follow, MunmapThenMremapOfFreshMemoryIntoThePlaceShowsTheNewBytes) {
    follow({
        .prepare = [](char *memory) { write_text(memory, "old"); },
        .before = [](char *view) { CHILD_CHECK_TEXT(view, "old"); },
        .change =
            [](char *memory) {
                auto *fresh = static_cast<char *>(mmap(nullptr, kPage, PROT_READ | PROT_WRITE,
                                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
                CHILD_CHECK(fresh != MAP_FAILED);
                write_text(fresh, "new");
                CHILD_CHECK(munmap(memory, kPage) == 0);
                CHILD_CHECK(mremap(fresh, kPage, kPage, MREMAP_MAYMOVE | MREMAP_FIXED, memory) ==
                            memory);
            },
        .after = [](char *view) { CHILD_CHECK_TEXT(view, "new"); },
    });
}

TEST_P(Follow, MmapFixedOverTheOldMemoryShowsTheNewBytes) {
    follow({
        .pages = 2,
        .prepare =
            [](char *memory) {
                write_text(memory, "old 0");
                write_text(memory + kPage, "old 1");
            },
        .before = [](char *view) { CHILD_CHECK_TEXT(view + kPage, "old 1"); },
        .change =
            [](char *memory) {
                map_fresh(memory, 2 * kPage);  // no munmap first
                write_text(memory + kPage, "new 1");
            },
        .after =
            [](char *view) {
                CHILD_CHECK_TEXT(view + kPage, "new 1");
                CHILD_CHECK_TEXT(view, "");  // fresh, never written: zeroes
            },
    });
}

// Pages 0-1 (A) move to pages 2-3 (A'), both inside the attachment.
void move_pages_0_1_to_2_3(char *memory) {
    CHILD_CHECK(mremap(memory, 2 * kPage, 2 * kPage, MREMAP_MAYMOVE | MREMAP_FIXED,
                       memory + 2 * kPage) == memory + 2 * kPage);
}

const Change kMremapWithinTheWindow{
    .pages = 4,
    .prepare =
        [](char *memory) {
            for (int page = 0; page < 4; ++page)
                write_text(memory + page * kPage, ("before " + std::to_string(page)).c_str());
        },
    .before = [](char *view) { CHILD_CHECK_TEXT(view + 3 * kPage, "before 3"); },
};

TEST_P(Follow, MremapWithinTheWindowIsSigbusAtTheSourceAndShowsTheMovedBytesAtTheTarget) {
    SKIP_UNDER_SANITIZER_FOR_HOLES();
    Change steps = kMremapWithinTheWindow;
    steps.change = move_pages_0_1_to_2_3;
    steps.after = [](char *view) {
        CHILD_CHECK_SIGBUS(load(view + 100), view + 100, "load at the source");
        CHILD_CHECK_SIGBUS(store(view + kPage + 100, 'x'), view + kPage + 100,
                           "store at the source");
        CHILD_CHECK_TEXT(view + 2 * kPage, "before 0");
        CHILD_CHECK_TEXT(view + 3 * kPage, "before 1");
    };
    follow(steps);
}

TEST_P(Follow, MremapWithinTheWindowThenNewMemoryAtTheSourceShowsBoth) {
    Change steps = kMremapWithinTheWindow;
    steps.change = [](char *memory) {
        move_pages_0_1_to_2_3(memory);
        map_fresh(memory, 2 * kPage);
        write_text(memory, "new 0");
        write_text(memory + kPage, "new 1");
    };
    steps.after = [](char *view) {
        CHILD_CHECK_TEXT(view, "new 0");
        CHILD_CHECK_TEXT(view + kPage, "new 1");
        CHILD_CHECK_TEXT(view + 2 * kPage, "before 0");
        CHILD_CHECK_TEXT(view + 3 * kPage, "before 1");
    };
    follow(steps);
}

// The owner's memory moves out of the attached range altogether, and new memory takes
// its place.
TEST_P(Follow, MremapAwayThenNewMemoryAtTheOldAddressShowsTheNewMemory) {
    follow({
        .prepare = [](char *memory) { write_text(memory, "old"); },
        .before = [](char *view) { CHILD_CHECK_TEXT(view, "old"); },
        .change =
            [](char *memory) {
                auto *elsewhere = static_cast<char *>(
                    mmap(nullptr, kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
                CHILD_CHECK(elsewhere != MAP_FAILED);
                CHILD_CHECK(mremap(memory, kPage, kPage, MREMAP_MAYMOVE | MREMAP_FIXED,
                                   elsewhere) == elsewhere);
                CHILD_CHECK(std::strcmp(elsewhere, "old") == 0);
                map_fresh(memory);
                write_text(memory, "new");
            },
        .after = [](char *view) { CHILD_CHECK_TEXT(view, "new"); },
    });
}

// ---------------------------------------------------------------------------------------
// madvise(MADV_DONTNEED) of private anonymous memory zeroes it (calloc-style allocators
// rely on that). MADV_REMOVE does not apply to private anonymous memory: not tested.

bool all_zero(const char *memory, std::size_t size, std::size_t except = SIZE_MAX) {
    for (std::size_t i = 0; i < size; ++i)
        if (i != except && static_cast<const volatile char *>(memory)[i] != 0) return false;
    return true;
}

TEST_P(Follow, MadviseDontneedZeroesTheOwnersMemory) {
    follow({
        .prepare = [](char *memory) { std::memset(memory, 'o', kPage); },
        .before = [](char *view) { CHILD_CHECK(view[kPage - 1] == 'o'); },
        .change =
            [](char *memory) {
                CHILD_CHECK(madvise(memory, kPage, MADV_DONTNEED) == 0);
                CHILD_CHECK(all_zero(memory, kPage));
            },
        .after = [](char *) {},
    });
}

TEST_P(Follow, MadviseDontneedThenAStoreShowsZeroesAndTheStore) {
    follow({
        .pages = 2,
        .prepare = [](char *memory) { std::memset(memory, 'o', 2 * kPage); },
        .before =
            [](char *view) { CHILD_CHECK(view[kPage - 1] == 'o' && view[2 * kPage - 1] == 'o'); },
        .change =
            [](char *memory) {
                CHILD_CHECK(madvise(memory, 2 * kPage, MADV_DONTNEED) == 0);
                memory[kPage + 100] = 's';  // page 0 stays untouched since
            },
        .after =
            [](char *view) {
                Fault fault = probe([&] {
                    CHILD_CHECK(view[kPage + 100] == 's');
                    CHILD_CHECK(all_zero(view + kPage, kPage, 100));
                    CHILD_CHECK(all_zero(view, kPage));
                });
                if (fault.signal != 0) xt::fail(__FILE__, __LINE__, "reading: " + fault.describe());
            },
    });
}

// ---------------------------------------------------------------------------------------
// brk

// The owner moves the break itself. glibc's malloc must then not move it too: its main
// arena gets room to spare first, kept (no trimming), so nothing it allocates later
// needs sbrk. (A sanitizer's allocator does not use brk at all.)
void brk_test(bool regrow) {
    constexpr std::size_t kPages = 4;
    xt::Channel channel;
    xt::Process owner([&] {
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        std::free(std::malloc(16 << 20));
        auto *end = static_cast<char *>(sbrk(0));
        std::size_t misaligned = reinterpret_cast<std::uintptr_t>(end) % kPage;
        if (misaligned != 0) CHILD_CHECK(sbrk(static_cast<intptr_t>(kPage - misaligned)) == end);
        auto *memory = static_cast<char *>(sbrk(kPages * kPage));
        CHILD_CHECK(memory != reinterpret_cast<char *>(-1));
        for (std::size_t page = 0; page < kPages; ++page)
            write_text(memory + page * kPage, ("brk " + std::to_string(page)).c_str());
        auto segment =
            xpmem::Segment::make({reinterpret_cast<std::byte *>(memory), kPages * kPage});
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(sbrk(-static_cast<intptr_t>(2 * kPage)) == memory + kPages * kPage);
        CHILD_CHECK(sbrk(0) == memory + 2 * kPage);
        if (regrow) {
            CHILD_CHECK(sbrk(2 * kPage) == memory + 2 * kPage);
            write_text(memory + 2 * kPage, "regrown 2");
            write_text(memory + 3 * kPage, "regrown 3");
        }
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
    });
    xt::Process attacher([&] {
        catch_faults();
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kPages * kPage);
        auto *bytes = reinterpret_cast<char *>(view.data());
        for (std::size_t page = 0; page < kPages; ++page)
            CHILD_CHECK_TEXT(bytes + page * kPage, "brk " + std::to_string(page));
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        if (regrow) {
            CHILD_CHECK_TEXT(bytes + 2 * kPage, "regrown 2");
            CHILD_CHECK_TEXT(bytes + 3 * kPage, "regrown 3");
        } else {
            CHILD_CHECK_SIGBUS(load(bytes + 2 * kPage + 8), bytes + 2 * kPage + 8, "load");
            CHILD_CHECK_SIGBUS(store(bytes + 3 * kPage + 8, 'x'), bytes + 3 * kPage + 8, "store");
        }
        CHILD_CHECK_TEXT(bytes, "brk 0");
        CHILD_CHECK_TEXT(bytes + kPage, "brk 1");
        channel.send_b(3);
    });
    xt::expect_all_ok({&attacher, &owner});
}

TEST_P(Follow, BrkShrinkIsSigbusAtTheReleasedPages) {
    brk_test(false);
}

TEST_P(Follow, BrkRegrowShowsTheNewBytes) {
    brk_test(true);
}

// ---------------------------------------------------------------------------------------
// Holes

// Pages 0 and 2 hold data, page 1 is a hole when the segment is attached.
const Change kHoleInTheMiddle{
    .pages = 3,
    .prepare =
        [](char *memory) {
            write_text(memory, "page 0");
            write_text(memory + 2 * kPage, "page 2");
            CHILD_CHECK(munmap(memory + kPage, kPage) == 0);
        },
};

TEST_P(Follow, HoleFilledAfterAttachShowsTheData) {
    SKIP_UNDER_SANITIZER_FOR_HOLES();
    Change steps = kHoleInTheMiddle;
    steps.before = [](char *view) {
        CHILD_CHECK_TEXT(view, "page 0");
        CHILD_CHECK_SIGBUS(load(view + kPage), view + kPage, "load from the hole");
    };
    steps.change = [](char *memory) {
        map_fresh(memory + kPage);
        write_text(memory + kPage, "filled");
    };
    steps.after = [](char *view) {
        CHILD_CHECK_TEXT(view + kPage, "filled");
        CHILD_CHECK_TEXT(view + 2 * kPage, "page 2");
    };
    follow(steps);
}

// A read-write attachment of a range with a hole; the attacher then runs `access` on the
// hole, which must kill it with SIGBUS.
void hole_kills_with_sigbus(const std::function<void(volatile char *)> &access) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = xt::anonymous(3 * kPage);
        CHILD_CHECK(munmap(memory.data() + kPage, kPage) == 0);
        memory[0] = std::byte{1};
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        channel.receive_a<int>();
    });
    xt::Process attacher([&] {
        auto permit =
            xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>(), xpmem::Access::read_write);
        auto view = permit.attach(0, 3 * kPage);
        CHILD_CHECK(view.bytes()[0] == std::byte{1});
        access(reinterpret_cast<volatile char *>(view.data() + kPage + 8));
        xt::fail(__FILE__, __LINE__, "the access to the hole went through");
    });
    xt::Status status = attacher.wait();
    EXPECT_EQ(status.signal(), SIGBUS) << status.describe();
    channel.send_b(1);  // only now may the owner exit: its exit would revoke too
    EXPECT_CHILD_OK(owner);
}

TEST_P(Follow, HoleLoadKillsWithSigbus) {
    SKIP_UNDER_SANITIZER_FOR_HOLES();
    hole_kills_with_sigbus([](volatile char *hole) { (void)*hole; });
}

TEST_P(Follow, HoleStoreKillsWithSigbus) {
    SKIP_UNDER_SANITIZER_FOR_HOLES();
    hole_kills_with_sigbus([](volatile char *hole) { *hole = 'x'; });
}

TEST_P(Follow, HoleLoadAndStoreRaiseSigbusAtTheAddress) {
    SKIP_UNDER_SANITIZER_FOR_HOLES();
    Change steps{
        .pages = 4,
        .prepare = [](char *memory) { CHILD_CHECK(munmap(memory + kPage, 2 * kPage) == 0); },
    };
    steps.change = [](char *) {};
    steps.after = [](char *view) {
        // `follow` loaded the first byte of every page: these are other bytes.
        CHILD_CHECK_SIGBUS(store(view + 2 * kPage + 300, 'x'), view + 2 * kPage + 300, "store");
        CHILD_CHECK_SIGBUS(load(view + kPage + 200), view + kPage + 200, "load");
        CHILD_CHECK_SIGBUS(store(view + kPage + 200, 'x'), view + kPage + 200, "store");
    };
    follow(steps);
}

// ---------------------------------------------------------------------------------------
// System calls on an attachment page the owner replaced. The user backend brings the
// owner's current page in on a user-mode fault only, so a system call reading a page the
// attacher has not touched since the owner replaced it fails with EFAULT; once the
// attacher has loaded from it, the same call works and carries the new bytes. The kernel
// backend faults the page in for the system call as well.

TEST_P(Follow, WriteFromAReplacedPageTheAttacherHasNotTouchedSince) {
    bool user = user_backend();
    follow({
        .prepare = [](char *memory) { write_text(memory, "old"); },
        .before = [](char *view) { CHILD_CHECK_TEXT(view, "old"); },
        .change =
            [](char *memory) {
                map_fresh(memory);
                write_text(memory, "new");
            },
        .after =
            [user](char *view) {
                int pipe_fds[2];
                CHILD_CHECK(pipe(pipe_fds) == 0);
                char copy[4] = {};
                errno = 0;
                ssize_t written = write(pipe_fds[1], view, 4);
                if (user) {
                    if (written != -1 || errno != EFAULT)
                        xt::fail(
                            __FILE__, __LINE__,
                            "write(2) from the untouched replaced page should fail with EFAULT: "
                            "returned " +
                                std::to_string(written) + ", errno " + std::to_string(errno) +
                                (written == 4 && read(pipe_fds[0], copy, 4) == 4
                                     ? std::string(", bytes \"") + copy + "\""
                                     : std::string()));
                    CHILD_CHECK_TEXT(view, "new");  // a user-mode load brings the page in
                    written = write(pipe_fds[1], view, 4);
                }
                CHILD_CHECK(written == 4);
                CHILD_CHECK(read(pipe_fds[0], copy, 4) == 4);
                if (std::strcmp(copy, "new") != 0)
                    xt::fail(__FILE__, __LINE__,
                             std::string("write(2) carried \"") + copy + "\", expected \"new\"");
                close(pipe_fds[0]);
                close(pipe_fds[1]);
            },
    });
}

// ---------------------------------------------------------------------------------------
// A process-shared futex wait of the owner's, on its private memory, and a FUTEX_WAKE
// through the attachment. Neither backend wakes a waiter that started before the attach:
//   - the kernel backend: a futex on private memory is keyed to the owner's address space,
//     and FUTEX_WAKE on the module's attachment (VM_PFNMAP) fails with EFAULT;
//   - the user backend: the waiter is keyed to the private page that the conversion
//     replaced by shared memory; a waiter that starts after the attach waits on the
//     shared page, and the wake through the attachment reaches it.
// (docs/user-backend.md, "Following the owner".)

// Whether thread `tid` of the calling process is blocked in futex(2).
bool in_futex_wait(pid_t tid) {
    std::ifstream file("/proc/self/task/" + std::to_string(tid) + "/syscall");
    long number = -1;
    file >> number;
    return number == SYS_futex;
}

struct FutexOutcome {
    long woken;      // FUTEX_WAKE's result through the attachment
    int wake_errno;  // its errno
    bool waiter_woken;
};

// The owner waits on a word of its memory, before the segment is made or after the
// attacher attached it; the attacher stores 1 there and wakes one waiter.
FutexOutcome futex_through_attachment(bool wait_before_attach) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = xt::anonymous(kPage);
        auto *word = reinterpret_cast<std::uint32_t *>(memory.data() + 64);
        *word = 0;
        std::atomic<pid_t> waiter_tid{0};
        std::atomic<long> waited{1};  // 1: still waiting
        std::thread waiter;
        auto start_waiting = [&] {
            waiter = std::thread([&] {
                waiter_tid = static_cast<pid_t>(syscall(SYS_gettid));
                timespec timeout{2, 0};  // the thread never hangs
                waited = syscall(SYS_futex, word, FUTEX_WAIT, 0, &timeout, nullptr, 0);
            });
            CHILD_CHECK(xt::eventually(
                [&] { return waiter_tid.load() != 0 && in_futex_wait(waiter_tid.load()); }, 5s));
        };
        if (wait_before_attach) start_waiting();
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);  // attached
        if (!wait_before_attach) start_waiting();
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);  // stored and woken
        waiter.join();
        channel.send_a(waited.load() == 0 ? 1 : 0);
    });
    FutexOutcome outcome{};
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kPage);
        auto *word = reinterpret_cast<std::uint32_t *>(view.data() + 64);
        (void)*reinterpret_cast<volatile std::uint32_t *>(word);  // fetched in user mode
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        __atomic_store_n(word, 1u, __ATOMIC_SEQ_CST);
        errno = 0;
        long woken = syscall(SYS_futex, word, FUTEX_WAKE, 1, nullptr, nullptr, 0);
        int error = errno;
        channel.send_b(3);
        bool waiter_woken = channel.receive_b<int>() == 1;
        // The exit status: 0 if FUTEX_WAKE woke one waiter, else 1 + 2 * its errno (below
        // 100); plus 100 if the owner's waiter was not woken.
        std::fflush(nullptr);
        _exit(static_cast<int>((woken == 1 ? 0 : 1 + 2 * error) % 1000) + (waiter_woken ? 0 : 100));
    });
    xt::Status status = attacher.wait();
    EXPECT_CHILD_OK(owner);
    int code = WIFEXITED(status.raw) ? WEXITSTATUS(status.raw) : -1;
    EXPECT_GE(code, 0) << status.describe();
    outcome.waiter_woken = code >= 0 && code < 100;
    int wake = code % 100;
    outcome.woken = wake == 0 ? 1 : 0;
    outcome.wake_errno = wake == 0 ? 0 : (wake - 1) / 2;
    return outcome;
}

TEST_P(Follow, FutexWaiterFromBeforeTheAttachIsNotWokenThroughTheAttachment) {
    FutexOutcome outcome = futex_through_attachment(true);
    EXPECT_FALSE(outcome.waiter_woken);
    if (user_backend()) {
        EXPECT_EQ(outcome.woken, 0);
        EXPECT_EQ(outcome.wake_errno, 0);
    } else {
        EXPECT_EQ(outcome.wake_errno, EFAULT);
    }
}

TEST_P(Follow, FutexWaiterAfterTheAttachIsWokenThroughTheAttachment) {
    if (!user_backend())
        GTEST_SKIP() << "FUTEX_WAKE on the module's attachment fails with EFAULT "
                        "(Limits.SystemCallsOnAttachedMemory)";
    FutexOutcome outcome = futex_through_attachment(false);
    EXPECT_EQ(outcome.woken, 1) << "errno " << outcome.wake_errno;
    EXPECT_TRUE(outcome.waiter_woken);
}

// ---------------------------------------------------------------------------------------
// The attachment cache of UCX (and Open MPI, MPICH): the attacher gets the owner's whole
// address space as one segment and attaches one large window of it once, then reads the
// owner's buffers through it for as long as it runs, while the owner frees and allocates
// them. Every word of every buffer the attacher reads must be the one the owner wrote in
// that round: no stale page (the memory that was there before), no torn buffer.

constexpr std::size_t kAlignment = 8 << 20;
constexpr std::size_t kMinBuffer = 4 << 10;
constexpr std::size_t kMaxBuffer = 4 << 20;

// 10,000 rounds; under a sanitizer, which checks memory errors rather than scale and runs
// the rounds several times slower (ThreadSanitizer near the test's time limit), 1,000.
std::uint64_t cache_rounds() {
    const char *text = std::getenv("XPMEM_TEST_CACHE_ROUNDS");
    if (text != nullptr) return std::strtoull(text, nullptr, 10);
    return xpmem::util::kSanitizer ? 1000 : 10000;
}

// The buffer sizes: from 4 KiB to 4 MiB, log-uniform (each doubling equally likely), so
// most buffers are small but every round can still be up to 4 MiB. A uniform spread makes
// 10,000 rounds move about 20 GiB through the owner and the attacher each.
std::size_t random_size(std::mt19937_64 &random, std::size_t multiple) {
    double doublings = std::uniform_real_distribution<double>(0, 10)(random);  // 4 KiB * 2^10
    auto size = static_cast<std::size_t>(static_cast<double>(kMinBuffer) * std::exp2(doublings));
    size = std::clamp(size, kMinBuffer, kMaxBuffer);
    return std::max(size / multiple * multiple, kMinBuffer);
}

enum class Layout {
    reserved_region,  // all buffers mapped with MAP_FIXED inside a 64 MiB PROT_NONE region
    heap,             // glibc malloc/free and mmap/munmap, wherever they put the buffers
};

struct Buffer {
    char *address = nullptr;
    std::size_t size = 0;
    bool mapped = false;  // mmap, else malloc

    explicit operator bool() const { return address != nullptr; }
};

// What the owner's allocator of the round (or the churn thread) gets and gives back.
Buffer allocate(std::size_t size, bool mapped) {
    if (!mapped) {
        auto *address = static_cast<char *>(std::malloc(size));
        CHILD_CHECK(address != nullptr);
        return {address, size, false};
    }
    void *address = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHILD_CHECK(address != MAP_FAILED);
    return {static_cast<char *>(address), size, true};
}

void release(const Buffer &buffer) {
    if (buffer.mapped)
        CHILD_CHECK(munmap(buffer.address, buffer.size) == 0);
    else
        std::free(buffer.address);
}

struct Window {
    std::uintptr_t start = 0;
    std::size_t size = 0;

    bool contains(const Buffer &buffer) const {
        auto address = reinterpret_cast<std::uintptr_t>(buffer.address);
        return address >= start && address + buffer.size <= start + size;
    }
};

struct CacheStart {
    xpmem_segid_t segid;
    Window window;
    std::uint64_t seed;
};

struct CacheRound {
    std::uintptr_t address;
    std::uint64_t size;
    std::uint64_t round;  // UINT64_MAX: no more rounds
    bool mapped;
    // The churn thread was still freeing memory at this buffer's addresses (its munmap had
    // not returned) when the buffer was filled: the user backend may show the old memory
    // there until that munmap returns (docs/user-backend.md, "Following the owner").
    bool racing_unmap = false;
};

// The range the churn thread is freeing right now (start == end: none).
std::atomic<std::uintptr_t> churn_freeing_start{0};
std::atomic<std::uintptr_t> churn_freeing_end{0};

bool racing_churn_unmap(const Buffer &buffer) {
    auto start = reinterpret_cast<std::uintptr_t>(buffer.address);
    std::uintptr_t freeing_end = churn_freeing_end.load();
    return churn_freeing_start.load() < start + buffer.size && start < freeing_end;
}

// Another owner thread allocating, writing and freeing random buffers (malloc and mmap)
// all along, telling nobody.
void churn(const std::atomic<bool> &stop, std::uint64_t seed) {
    std::mt19937_64 random(seed);
    std::array<Buffer, 16> slots{};
    while (!stop.load()) {
        Buffer &slot = slots[random() % slots.size()];
        if (slot) {
            auto start = reinterpret_cast<std::uintptr_t>(slot.address);
            churn_freeing_start = start;
            churn_freeing_end = start + slot.size;
            release(slot);
            churn_freeing_end = start;
            slot = {};
        } else {
            bool mapped = random() % 2 == 0;
            slot = allocate(random_size(random, mapped ? kPage : 8), mapped);
            std::memset(slot.address, 0xa5, std::min<std::size_t>(slot.size, 64 << 10));
        }
        std::this_thread::sleep_for(100us);
    }
    for (const Buffer &slot : slots)
        if (slot) release(slot);
}

// The owner's buffers for one layout, all inside the window.
class Allocator {
  public:
    Allocator(Layout layout, std::mt19937_64 &random) : layout_(layout), random_(random) {}

    // The first buffer; chooses the window around it.
    Buffer first() {
        if (layout_ == Layout::reserved_region) {
            // 64 MiB, 8 MiB-aligned, reserved PROT_NONE; buffers are mapped inside.
            std::size_t size = 64 << 20;
            auto *raw =
                static_cast<char *>(mmap(nullptr, size + kAlignment, PROT_NONE,
                                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
            CHILD_CHECK(raw != MAP_FAILED);
            auto start =
                (reinterpret_cast<std::uintptr_t>(raw) + kAlignment - 1) & ~(kAlignment - 1);
            auto *aligned = reinterpret_cast<char *>(start);
            if (aligned > raw)
                CHILD_CHECK(munmap(raw, static_cast<std::size_t>(aligned - raw)) == 0);
            CHILD_CHECK(
                munmap(aligned + size, static_cast<std::size_t>(raw + kAlignment - aligned)) == 0);
            window_ = {start, size};
            return next(0);
        }
        // A small first buffer, from the heap of this thread's malloc arena (64 MiB,
        // mmapped, 64 MiB-aligned). The kernel hands out mmap addresses top-down: the
        // highest free range that fits, so malloc's mmapped chunks, plain mmaps and the
        // arena of the churn thread go into the gaps above and between the arenas, then
        // below the lowest one. The window, 8 MiB-aligned, runs from 384 MiB below the
        // first buffer to 256 MiB above.
        Buffer buffer = allocate(kMinBuffer, false);
        auto address = reinterpret_cast<std::uintptr_t>(buffer.address);
        window_ = {(address & ~(kAlignment - 1)) - (384 << 20), 640 << 20};
        CHILD_CHECK(window_.contains(buffer));
        return buffer;
    }

    // How many allocations landed outside the window (and were asked for again).
    std::uint64_t misses() const { return misses_; }

    const Window &window() const { return window_; }

    // The buffer of round `round`: malloc on even rounds, mmap on odd ones (with the
    // reserved region: MAP_FIXED inside it, always).
    Buffer next(std::uint64_t round) {
        if (layout_ == Layout::reserved_region) {
            std::size_t size = random_size(random_, kPage);
            std::size_t pages = (window_.size - size) / kPage;
            auto *address =
                reinterpret_cast<char *>(window_.start + random_() % (pages + 1) * kPage);
            CHILD_CHECK(mmap(address, size, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == address);
            return {address, size, true};
        }
        bool mapped = round % 2 == 1;
        std::size_t size = random_size(random_, mapped ? kPage : 8);
        // One that lands outside the window is kept while the allocator is asked again
        // (so that it hands out another address), then freed.
        std::vector<Buffer> outside;
        for (int attempt = 0; attempt < 1024; ++attempt) {
            Buffer buffer = allocate(size, mapped);
            if (window_.contains(buffer)) {
                for (const Buffer &miss : outside) release(miss);
                return buffer;
            }
            ++misses_;
            outside.push_back(buffer);
        }
        std::ostringstream message;
        message << "1024 buffers of " << size << " bytes (" << (mapped ? "mmap" : "malloc")
                << ") in a row landed outside the window ["
                << hex(reinterpret_cast<void *>(window_.start)) << ", +" << window_.size
                << "), last at " << hex(outside.back().address);
        xt::fail(__FILE__, __LINE__, message.str());
    }

    void free(const Buffer &buffer) {
        if (layout_ == Layout::reserved_region)  // back to the reservation
            CHILD_CHECK(mmap(buffer.address, buffer.size, PROT_NONE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1,
                             0) == buffer.address);
        else
            release(buffer);
    }

  private:
    Layout layout_;
    std::mt19937_64 &random_;
    Window window_;
    std::uint64_t misses_ = 0;
};

void fill(const Buffer &buffer, std::uint64_t round) {
    auto *words = reinterpret_cast<std::uint64_t *>(buffer.address);
    std::fill(words, words + buffer.size / sizeof *words, round);
}

void cache_owner(xt::Channel &channel, Layout layout) {
    // Buffers of 128 KiB and more come from mmap (a fixed threshold: glibc would raise it
    // as mmapped chunks are freed, which would put them all into the heap).
    mallopt(M_MMAP_THRESHOLD, 128 << 10);
    auto segment = xpmem::Segment::make_whole_address_space(0600);
    std::uint64_t rounds = cache_rounds();
    // The rounds run on a thread of their own, so that malloc serves them from an arena
    // of that thread (mmapped, near the other mmaps) rather than from the brk heap.
    std::thread rounds_thread([&] {
        std::uint64_t seed = std::random_device{}();
        std::mt19937_64 random(seed);
        Allocator allocator(layout, random);
        Buffer buffer = allocator.first();
        fill(buffer, 0);
        channel.send_a(CacheStart{segment.id(), allocator.window(), seed});
        CHILD_CHECK(channel.receive_a<int>() == 1);  // attached, once and for all
        std::atomic<bool> stop{false};
        std::thread churn_thread([&] { churn(stop, seed + 1); });
        for (std::uint64_t round = 0;; ++round) {
            channel.send_a(CacheRound{reinterpret_cast<std::uintptr_t>(buffer.address), buffer.size,
                                      round, buffer.mapped, racing_churn_unmap(buffer)});
            CHILD_CHECK(channel.receive_a<std::uint64_t>() == round);  // read
            allocator.free(buffer);
            if (round == rounds) break;
            buffer = allocator.next(round + 1);
            fill(buffer, round + 1);
        }
        if (allocator.misses() > 0)
            std::fprintf(stderr, "[owner] %llu allocations landed outside the window: retried\n",
                         static_cast<unsigned long long>(allocator.misses()));
        channel.send_a(CacheRound{0, 0, UINT64_MAX, false});
        stop = true;
        churn_thread.join();
    });
    rounds_thread.join();
}

struct RoundCheck {
    bool wrong = false;    // a word is not the round's
    bool faulted = false;  // a load raised a signal
    std::string what;
};

// Checks that each of the `count` words at `words` is `expected`.
RoundCheck check_round(const std::uint64_t *words, std::size_t count, std::uint64_t expected) {
    RoundCheck check;
    Fault fault = probe([&] {
        auto differs = [&](std::uint64_t word) { return word != expected; };
        const std::uint64_t *wrong = std::find_if(words, words + count, differs);
        if (wrong == words + count) return;
        auto wrong_words = static_cast<std::size_t>(std::count_if(wrong, words + count, differs));
        std::ostringstream what;
        what << "expected " << expected << ", seen " << *wrong << " at offset "
             << (wrong - words) * sizeof *words << " (" << wrong_words << " of " << count
             << " words wrong: " << (wrong_words == count ? "stale" : "torn") << ")";
        check = {true, false, what.str()};
    });
    if (fault.signal != 0) {
        std::ostringstream what;
        what << fault.describe() << ", offset "
             << static_cast<const char *>(fault.address) - reinterpret_cast<const char *>(words);
        check = {false, true, what.str()};
    }
    return check;
}

void cache_attacher(xt::Channel &channel) {
    catch_faults();
    auto start = channel.receive_b<CacheStart>();
    auto permit = xpmem::Permit::get(start.segid);
    auto view = permit.attach(static_cast<off_t>(start.window.start), start.window.size);
    channel.send_b(1);

    std::uint64_t bad_rounds = 0, faulted_rounds = 0, rounds = 0, bytes = 0;
    std::uint64_t racing_rounds = 0, racing_bad_rounds = 0;
    std::string first_bad, first_fault;
    for (;;) {
        auto round = channel.receive_b<CacheRound>();
        if (round.round == UINT64_MAX) break;
        ++rounds;
        bytes += round.size;
        const auto *words = reinterpret_cast<const std::uint64_t *>(
            view.data() + (round.address - start.window.start));
        RoundCheck check = check_round(words, round.size / sizeof *words, round.round);
        racing_rounds += round.racing_unmap;
        if (round.racing_unmap && check.wrong) {  // the documented window, counted apart
            ++racing_bad_rounds;
            check.wrong = false;
        }
        bad_rounds += check.wrong;
        faulted_rounds += check.faulted;
        std::string &first = check.wrong ? first_bad : first_fault;
        if ((check.wrong || check.faulted) && first.empty()) {
            std::ostringstream report;
            report << "round " << round.round << " (" << (round.mapped ? "mmap" : "malloc")
                   << " of " << round.size << " bytes at "
                   << hex(reinterpret_cast<void *>(round.address))
                   << (round.racing_unmap ? ", where the churn thread was still unmapping" : "")
                   << "): " << check.what;
            first = report.str();
        }
        channel.send_b(round.round);
    }
    std::fprintf(stderr,
                 "[attacher] %llu rounds, %llu MiB of buffers checked through the cached window; "
                 "%llu rounds filled at addresses the churn thread was still unmapping, %llu of "
                 "them read old memory\n",
                 static_cast<unsigned long long>(rounds),
                 static_cast<unsigned long long>(bytes >> 20),
                 static_cast<unsigned long long>(racing_rounds),
                 static_cast<unsigned long long>(racing_bad_rounds));
    if (bad_rounds + faulted_rounds > 0) {
        std::ostringstream message;
        message << bad_rounds << " of " << rounds << " rounds read stale or torn words, "
                << faulted_rounds << " raised a signal (seed " << start.seed << ")";
        if (!first_bad.empty()) message << "; first stale or torn: " << first_bad;
        if (!first_fault.empty()) message << "; first signal: " << first_fault;
        xt::fail(__FILE__, __LINE__, message.str());
    }
}

// Waits for both, at most `limit`; once one fails the other is killed.
void expect_both_ok(xt::Process &first, xt::Process &second, std::chrono::seconds limit) {
    std::array<xt::Process *, 2> processes{&first, &second};
    std::array<bool, 2> done{};
    auto deadline = std::chrono::steady_clock::now() + limit;
    bool failed = false;
    while (!done[0] || !done[1]) {
        for (std::size_t i = 0; i < 2; ++i) {
            if (done[i]) continue;
            pid_t pid = processes[i]->pid();
            xt::Status status;
            if (waitpid(pid, &status.raw, WNOHANG) != pid) {
                if (!failed && std::chrono::steady_clock::now() < deadline) continue;
                kill(pid, SIGKILL);
                waitpid(pid, &status.raw, 0);
                if (!failed) ADD_FAILURE() << "child " << pid << " took too long; killed";
                failed = true;
            } else if (!status.exited_ok() && !failed) {
                ADD_FAILURE() << "child " << pid << " " << status.describe();
                failed = true;
            }
            processes[i]->forget();
            done[i] = true;
        }
        std::this_thread::sleep_for(2ms);
    }
}

void cache_test(Layout layout, bool as_nobody) {
    auto began = std::chrono::steady_clock::now();
    xt::Channel channel;
    auto become = [&] {
        if (!as_nobody) return;
        xt::become(65534, 65534);
        prctl(PR_SET_DUMPABLE, 1);  // as a process started by that user is
    };
    xt::Process owner([&] {
        become();
        cache_owner(channel, layout);
    });
    xt::Process attacher([&] {
        become();
        cache_attacher(channel);
    });
    expect_both_ok(attacher, owner, 240s);  // within CTest's 300 s
    std::chrono::duration<double> took = std::chrono::steady_clock::now() - began;
    std::cout << "[   TIME   ] " << cache_rounds() << " rounds in " << took.count() << " s\n";
}

TEST_P(Follow, CachedWindowOverAReservedRegionShowsEveryRoundsBuffer) {
    cache_test(Layout::reserved_region, false);
}

TEST_P(Follow, CachedWindowOverAReservedRegionShowsEveryRoundsBufferAsNobody) {
    if (!xt::running_as_root()) GTEST_SKIP() << "needs root to become uid 65534";
    cache_test(Layout::reserved_region, true);
}

#define SKIP_UNDER_SANITIZER_FOR_MALLOC()                                                        \
    do {                                                                                         \
        if (xpmem::util::kSanitizer)                                                             \
            GTEST_SKIP() << "the sanitizer's allocator keeps malloc'd memory in regions of its " \
                            "own, far from mmaps, and quarantines what is freed";                \
    } while (0)

TEST_P(Follow, CachedWindowOverMallocAndMmapShowsEveryRoundsBuffer) {
    SKIP_UNDER_SANITIZER_FOR_MALLOC();
    cache_test(Layout::heap, false);
}

TEST_P(Follow, CachedWindowOverMallocAndMmapShowsEveryRoundsBufferAsNobody) {
    SKIP_UNDER_SANITIZER_FOR_MALLOC();
    if (!xt::running_as_root()) GTEST_SKIP() << "needs root to become uid 65534";
    cache_test(Layout::heap, true);
}

INSTANTIATE_BACKENDS(Follow);

}  // namespace
