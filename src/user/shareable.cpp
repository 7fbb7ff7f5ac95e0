#include "user/shareable.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "util/error.hpp"
#include "util/mapping.hpp"
#include "util/sanitizer.hpp"

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)  // Linux 6.7
#endif

namespace xpmem::user {
namespace {

using util::kPageSize;
using util::Mapping;
using util::throw_errno;
using util::throw_last_errno;
using util::UniqueFd;

constexpr std::uint64_t kBackingSize = std::uint64_t{1} << 58;
constexpr std::uint64_t kSpillBase = std::uint64_t{1} << 57;  // above every user address
constexpr std::uintptr_t kStep = 2 << 20;
constexpr std::size_t kPagesPerStep = kStep / kPageSize;

std::uintptr_t step_end(std::uintptr_t cursor, std::uintptr_t end) {
    return std::min(end, (cursor & ~(kStep - 1)) + kStep);
}

// ---- userfaultfd -------------------------------------------------------------------

// Sets `user_mode_only` when only user-mode faults can be caught: without privilege,
// vm.unprivileged_userfaultfd = 0 allows no more.
UniqueFd open_userfaultfd(bool &user_mode_only) {
    user_mode_only = false;
    int fd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (fd < 0 && errno == EPERM) {
        user_mode_only = true;
        fd = static_cast<int>(
            ::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
    }
    if (fd < 0) throw_last_errno("userfaultfd");
    return UniqueFd(fd);
}

std::uint64_t supported_uffd_features() {
    static const std::uint64_t features = [] {
        bool user_mode_only;
        UniqueFd fd = open_userfaultfd(user_mode_only);
        uffdio_api api{UFFD_API, 0, 0};
        if (::ioctl(fd.get(), UFFDIO_API, &api) < 0) throw_last_errno("UFFDIO_API");
        return static_cast<std::uint64_t>(api.features);
    }();
    return features;
}

// A userfaultfd set up for write-protection; `unpopulated` says whether it also protects
// pages that were never touched (else the caller populates them first).
struct WriteProtector {
    bool user_mode_only;
    UniqueFd fd;
    bool unpopulated;

    WriteProtector() : fd(open_userfaultfd(user_mode_only)) {
        unpopulated = (supported_uffd_features() & UFFD_FEATURE_WP_UNPOPULATED) != 0;
        uffdio_api api{UFFD_API, unpopulated ? std::uint64_t{UFFD_FEATURE_WP_UNPOPULATED} : 0, 0};
        if (::ioctl(fd.get(), UFFDIO_API, &api) < 0) throw_last_errno("UFFDIO_API");
    }
    int register_range(std::uintptr_t start, std::size_t length) const {
        uffdio_register reg{{start, length}, UFFDIO_REGISTER_MODE_WP, 0};
        return ::ioctl(fd.get(), UFFDIO_REGISTER, &reg) < 0 ? errno : 0;
    }
    void unregister_range(std::uintptr_t start, std::size_t length) const noexcept {
        uffdio_range range{start, length};
        ::ioctl(fd.get(), UFFDIO_UNREGISTER, &range);
    }
    int protect(std::uintptr_t start, std::size_t length, bool on) const noexcept {
        uffdio_writeprotect wp{{start, length}, on ? UFFDIO_WRITEPROTECT_MODE_WP : 0};
        return ::ioctl(fd.get(), UFFDIO_WRITEPROTECT, &wp) < 0 ? errno : 0;
    }
    void wake(std::uintptr_t start, std::size_t length) const noexcept {
        uffdio_range range{start, length};
        ::ioctl(fd.get(), UFFDIO_WAKE, &range);
    }
};

// ---- the SIGSEGV guard for private file mappings -----------------------------------
//
// While [start, end) is read-only for its copy, a writer faults; the handler parks it
// until the window closes and returns, so the store is retried on the shared copy. A
// writer whose handler runs just after the window closed must retry too, so the range
// stays known for a grace period. Other faults go to the handler installed before ours.

struct GuardWindow {
    std::atomic<std::uintptr_t> start{0};
    std::atomic<std::uintptr_t> end{0};
    std::atomic<bool> open{false};
    std::atomic<std::int64_t> closed_at{0};  // steady_clock nanoseconds
};
GuardWindow guard_window;
struct sigaction previous_segv_action;
constexpr std::chrono::milliseconds kGuardGrace{100};

void on_segv(int signal, siginfo_t *info, void *context) {
    auto address = reinterpret_cast<std::uintptr_t>(info->si_addr);
    if (info->si_code == SEGV_ACCERR && address >= guard_window.start.load() &&
        address < guard_window.end.load()) {
        while (guard_window.open.load()) ::sched_yield();
        return;
    }
    const struct sigaction &previous = previous_segv_action;
    if ((previous.sa_flags & SA_SIGINFO) != 0 && previous.sa_sigaction != nullptr) {
        previous.sa_sigaction(signal, info, context);
    } else if (previous.sa_handler == SIG_DFL || previous.sa_handler == SIG_IGN) {
        ::sigaction(SIGSEGV, &previous, nullptr);  // the fault repeats and takes its course
    } else {
        previous.sa_handler(signal);
    }
}

void install_segv_guard() {
    struct sigaction current {};
    ::sigaction(SIGSEGV, nullptr, &current);
    if ((current.sa_flags & SA_SIGINFO) != 0 && current.sa_sigaction == &on_segv) return;
    struct sigaction ours {};
    ours.sa_sigaction = &on_segv;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART | SA_NODEFER;
    sigemptyset(&ours.sa_mask);
    if (::sigaction(SIGSEGV, &ours, &previous_segv_action) < 0) throw_last_errno("sigaction");
}

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// ---- copying -----------------------------------------------------------------------

// Copies the pages of [start, start + length) that hold data (all of them unless
// `entries` is given) to `to`. Allocates nothing.
void copy_pages(std::uintptr_t start, std::size_t length, std::byte *to,
                const std::uint64_t *entries) {
    std::size_t pages = length / kPageSize;
    std::size_t page = 0;
    while (page < pages) {
        auto holds_data = [&](std::size_t i) {
            return entries == nullptr ||
                   (entries[i] & (Pagemap::kPresent | Pagemap::kSwapped)) != 0;
        };
        if (!holds_data(page)) {
            ++page;
            continue;
        }
        std::size_t run = page;
        while (run < pages && holds_data(run)) ++run;
        util::copy_pages_unchecked(to + page * kPageSize,
                                   reinterpret_cast<const void *>(start + page * kPageSize),
                                   (run - page) * kPageSize);
        page = run;
    }
}

// A mapping of the backing at `offset`, not inherited by fork children.
Mapping map_backing(int fd, std::uint64_t offset, std::size_t length) {
    void *at =
        ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(offset));
    if (at == MAP_FAILED) throw_last_errno("mmap backing");
    Mapping mapping(at, length);
    ::madvise(at, length, MADV_DONTFORK);
    return mapping;
}

// Moves `copy` over [start, start + length) with protection `prot`; returns 0 or errno.
int move_over(Mapping &copy, std::uintptr_t start, int prot) noexcept {
    if (prot != (PROT_READ | PROT_WRITE) && ::mprotect(copy.data(), copy.size(), prot) < 0)
        return errno;
    std::size_t length = copy.size();
    void *moved = ::mremap(copy.data(), length, length, MREMAP_MAYMOVE | MREMAP_FIXED,
                           reinterpret_cast<void *>(start));
    if (moved == MAP_FAILED) return errno;
    copy.release();
    ::madvise(moved, length, MADV_DOFORK);  // the copy was MADV_DONTFORK; the memory is not
    return 0;
}

// Copies [start, end) without protection: for memory nobody writes, or that cannot be
// protected. `pagemap` (anonymous memory) limits the copy to pages holding data.
void convert_step_unprotected(int backing, std::uint64_t file_offset, const Vma &vma,
                              std::uintptr_t start, std::uintptr_t end, const Pagemap *pagemap) {
    std::array<std::uint64_t, kPagesPerStep> entries;
    std::size_t length = end - start;
    Mapping copy = map_backing(backing, file_offset, length);
    if (pagemap != nullptr) pagemap->read(start, std::span(entries.data(), length / kPageSize));
    copy_pages(start, length, copy.data(), pagemap != nullptr ? entries.data() : nullptr);
    if (int error = move_over(copy, start, vma.protection())) throw_errno(error, "conversion");
}

void convert_step_protected(const WriteProtector &uffd, const Pagemap &pagemap, int backing,
                            std::uint64_t file_offset, const Vma &vma, std::uintptr_t start,
                            std::uintptr_t end) {
    std::array<std::uint64_t, kPagesPerStep> entries;
    std::size_t length = end - start;
    Mapping copy = map_backing(backing, file_offset, length);
    if (int error = uffd.register_range(start, length)) throw_errno(error, "UFFDIO_REGISTER");
    if (!uffd.unpopulated &&
        ::madvise(reinterpret_cast<void *>(start), length, MADV_POPULATE_READ) < 0) {
        int error = errno;
        uffd.unregister_range(start, length);
        throw_errno(error, "MADV_POPULATE_READ");
    }
    int error = uffd.protect(start, length, true);
    if (error == 0) {
        // Writers now block; nothing below allocates or locks.
        pagemap.read(start, std::span(entries.data(), length / kPageSize));
        copy_pages(start, length, copy.data(), entries.data());
        error = move_over(copy, start, vma.protection());
        if (error == 0) uffd.wake(start, length);
    }
    if (error != 0) {
        uffd.protect(start, length, false);
        uffd.unregister_range(start, length);
        throw_errno(error, "write-protected conversion");
    }
}

// Anonymous writable memory: write-protected step by step, except the rseq pages in
// `unprotectable` when only user-mode faults can be caught (threads.hpp). Those are
// copied alone, unprotected: a store into one in that window of a few microseconds
// could be lost (README, limits), where protecting it could get the process killed.
void convert_write_protected(int backing, std::uint64_t offset, const Vma &vma,
                             std::uintptr_t start, std::uintptr_t end,
                             std::span<const std::uintptr_t> unprotectable) {
    WriteProtector uffd;
    Pagemap pagemap;
    if (!uffd.user_mode_only) unprotectable = {};
    auto next_unprotectable = std::lower_bound(unprotectable.begin(), unprotectable.end(), start);
    for (std::uintptr_t cursor = start; cursor < end;) {
        std::uint64_t file_offset = offset + (cursor - start);
        if (next_unprotectable != unprotectable.end() && *next_unprotectable == cursor) {
            convert_step_unprotected(backing, file_offset, vma, cursor, cursor + kPageSize,
                                     &pagemap);
            ++next_unprotectable;
            cursor += kPageSize;
            continue;
        }
        std::uintptr_t next = step_end(cursor, end);
        if (next_unprotectable != unprotectable.end()) next = std::min(next, *next_unprotectable);
        convert_step_protected(uffd, pagemap, backing, file_offset, vma, cursor, next);
        cursor = next;
    }
}

void convert_guarded(int backing, std::uint64_t offset, const Vma &vma, std::uintptr_t start,
                     std::uintptr_t end) {
    install_segv_guard();
    for (std::uintptr_t cursor = start; cursor < end;) {
        std::uintptr_t next = step_end(cursor, end);
        std::size_t length = next - cursor;
        Mapping copy = map_backing(backing, offset + (cursor - start), length);
        guard_window.start = cursor;
        guard_window.end = next;
        guard_window.open = true;
        int error = 0;
        if (::mprotect(reinterpret_cast<void *>(cursor), length, vma.protection() & ~PROT_WRITE) <
            0)
            error = errno;
        if (error == 0) {
            copy_pages(cursor, length, copy.data(), nullptr);
            error = move_over(copy, cursor, vma.protection());
            if (error != 0) ::mprotect(reinterpret_cast<void *>(cursor), length, vma.protection());
        }
        guard_window.closed_at = now_ns();
        guard_window.open = false;
        if (error != 0) throw_errno(error, "guarded conversion");
        cursor = next;
    }
}

void convert_quiet(int backing, std::uint64_t offset, const Vma &vma, std::uintptr_t start,
                   std::uintptr_t end) {
    std::optional<Pagemap> pagemap;
    if (!vma.file_backed()) pagemap.emplace();
    for (std::uintptr_t cursor = start; cursor < end;) {
        std::uintptr_t next = step_end(cursor, end);
        convert_step_unprotected(backing, offset + (cursor - start), vma, cursor, next,
                                 pagemap ? &*pagemap : nullptr);
        cursor = next;
    }
}

}  // namespace

Backing::Backing()
    : fd_(static_cast<int>(::memfd_create("xpmem-backing", MFD_CLOEXEC | MFD_ALLOW_SEALING))),
      next_spill_offset_(kSpillBase) {
    if (!fd_) throw_last_errno("memfd_create");
    if (::ftruncate(fd_.get(), static_cast<off_t>(kBackingSize)) < 0) throw_last_errno("ftruncate");
    // Attachers hold this descriptor: none of them may shrink it under the owner.
    if (::fcntl(fd_.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
        throw_last_errno("F_ADD_SEALS");
    std::string self = "/proc/self/fd/" + std::to_string(fd_.get());
    read_only_fd_.reset(::open(self.c_str(), O_RDONLY | O_CLOEXEC));
    if (!read_only_fd_) throw_last_errno("reopen backing read-only");
    struct stat status {};
    if (::fstat(fd_.get(), &status) < 0) throw_last_errno("fstat backing");
    device_ = status.st_dev;
    inode_ = status.st_ino;
}

std::uint64_t Backing::choose_offset(std::uintptr_t start, std::uintptr_t end,
                                     std::span<const Vma> maps, std::span<const Interval> ours) {
    // The natural offset is the address itself, unless memory the owner moved (mremap,
    // realloc) still lives at those offsets elsewhere.
    for (const Vma &vma : maps) {
        if (!backs(vma) || vma.offset == vma.start) continue;
        bool library_owned = std::any_of(ours.begin(), ours.end(), [&](const Interval &i) {
            return vma.start >= i.start && vma.end <= i.end;
        });
        if (library_owned) continue;
        std::uint64_t vma_end = vma.offset + (vma.end - vma.start);
        if (vma.offset < end && start < vma_end) {
            std::uint64_t spill = next_spill_offset_;
            next_spill_offset_ += end - start;
            return spill;
        }
    }
    return start;
}

std::uint64_t Backing::make_shareable(const Vma &vma, std::uintptr_t start, std::uintptr_t end,
                                      std::span<const Vma> maps, std::span<const Interval> ours,
                                      std::span<const std::uintptr_t> unprotectable) {
    std::uint64_t offset = choose_offset(start, end, maps, ours);
    // Stale data from an earlier conversion at these offsets must not show through.
    if (::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>(offset), static_cast<off_t>(end - start)) < 0)
        throw_last_errno("punch backing");
    if (vma.writable && !vma.file_backed())
        convert_write_protected(fd_.get(), offset, vma, start, end, unprotectable);
    else if (vma.writable)
        convert_guarded(fd_.get(), offset, vma, start, end);
    else
        convert_quiet(fd_.get(), offset, vma, start, end);
    return offset;
}

void make_private_after_fork(int backing_fd) noexcept {
    try {
        struct stat status {};
        if (::fstat(backing_fd, &status) < 0) return;
        for (const Vma &vma : read_maps()) {
            if (!vma.shared || vma.inode != status.st_ino || vma.device != status.st_dev) continue;
            std::size_t length = vma.end - vma.start;
            void *at = ::mmap(nullptr, length, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (at == MAP_FAILED) continue;
            Mapping copy(at, length);
            // Copy only the extents that hold data: reading a tmpfs hole would allocate it.
            auto from = static_cast<off_t>(vma.offset);
            auto limit = static_cast<off_t>(vma.offset + length);
            while (from < limit) {
                off_t data = ::lseek(backing_fd, from, SEEK_DATA);
                if (data < 0 || data >= limit) break;
                off_t hole = std::min(::lseek(backing_fd, data, SEEK_HOLE), limit);
                auto skip = static_cast<std::size_t>(data - static_cast<off_t>(vma.offset));
                util::copy_pages_unchecked(copy.data() + skip,
                                           reinterpret_cast<const void *>(vma.start + skip),
                                           static_cast<std::size_t>(hole - data));
                from = hole;
            }
            move_over(copy, vma.start, vma.protection());
        }
    } catch (...) {
        // The child keeps sharing what it could not copy; nothing else can be done here.
    }
}

bool expire_guard_window() noexcept {
    if (guard_window.end == 0) return false;
    if (guard_window.open) return true;
    if (now_ns() - guard_window.closed_at <
        std::chrono::duration_cast<std::chrono::nanoseconds>(kGuardGrace).count())
        return true;
    guard_window.start = 0;
    guard_window.end = 0;
    return false;
}

}  // namespace xpmem::user
