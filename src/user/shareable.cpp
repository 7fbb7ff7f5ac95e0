#include "user/shareable.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "user/kernel_facilities.hpp"
#include "util/error.hpp"
#include "util/mapping.hpp"

namespace xpmem::user {
namespace {

using util::kPageSize;
using util::Mapping;
using util::throw_errno;
using util::throw_last_errno;
using util::UniqueFd;

constexpr std::uintptr_t kStep = 2 << 20;

void punch(int fd, std::uint64_t offset, std::uint64_t length) noexcept {
    ::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                static_cast<off_t>(length));
}

// A step that failed leaves nothing in the file it copied into (`backing`, if not private
// memory): the owner does not map those bytes there, and an attacher must not see them.
[[noreturn]] void fail_step(int error, int backing, std::uint64_t offset, std::size_t length,
                            const char *what) {
    if (backing >= 0) punch(backing, offset, length);
    throw_errno(error, what);
}
constexpr std::size_t kPagesPerStep = kStep / kPageSize;

std::uintptr_t step_end(std::uintptr_t cursor, std::uintptr_t end) {
    return std::min(end, (cursor & ~(kStep - 1)) + kStep);
}

// ---- userfaultfd -------------------------------------------------------------------

// A userfaultfd set up for write-protection; `unpopulated` says whether it also protects
// pages that were never touched (else the caller populates them first).
// `shmem`: for mappings of our files (Linux 5.19), else for private anonymous memory.
struct WriteProtector {
    UniqueFd fd;
    bool unpopulated;

    explicit WriteProtector(bool shmem) : fd(open_userfaultfd().fd) {
        std::uint64_t supported = supported_uffd_features();
        if (shmem && (supported & UFFD_FEATURE_WP_HUGETLBFS_SHMEM) == 0)
            throw_errno(ENOTSUP, "userfaultfd write-protection of shmem");
        unpopulated = (supported & UFFD_FEATURE_WP_UNPOPULATED) != 0;
        uffdio_api api{UFFD_API,
                       (unpopulated ? std::uint64_t{UFFD_FEATURE_WP_UNPOPULATED} : 0) |
                           (shmem ? std::uint64_t{UFFD_FEATURE_WP_HUGETLBFS_SHMEM} : 0),
                       0};
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

// Copies [from, from + length) of this process's memory to `to`, through the kernel: an
// application thread may unmap the source meanwhile (false then), which must not crash
// the thread that converts. Allocates nothing.
bool copy_from_self(std::byte *to, std::uintptr_t from, std::size_t length) {
    iovec local{to, length};
    iovec remote{reinterpret_cast<void *>(from), length};
    return ::process_vm_readv(::getpid(), &local, 1, &remote, 1, 0) == static_cast<ssize_t>(length);
}

// Copies the pages of [start, start + length) that hold data (all of them unless
// `entries` is given) to `to`; false if the source went away. Allocates nothing.
bool copy_pages(std::uintptr_t start, std::size_t length, std::byte *to,
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
        if (!copy_from_self(to + page * kPageSize, start + page * kPageSize,
                            (run - page) * kPageSize))
            return false;
        page = run;
    }
    return true;
}

// Copies the parts of [file_offset, file_offset + length) of `fd` that hold data to `to`
// (the holes stay holes: reading them would allocate them); false if it could not.
bool copy_file_data(int fd, std::uint64_t file_offset, std::size_t length, std::byte *to) {
    auto from = static_cast<off_t>(file_offset);
    auto limit = static_cast<off_t>(file_offset + length);
    constexpr auto kPage = static_cast<off_t>(kPageSize);
    while (from < limit) {
        off_t data = ::lseek(fd, from, SEEK_DATA);
        if (data < 0 || data >= limit) break;
        // The run ends at the first page without data. Not SEEK_HOLE: in a file full of
        // data it scans to the end of the file, every step of a conversion again.
        off_t end = data + kPage;
        while (end < limit && ::lseek(fd, end, SEEK_DATA) == end) end += kPage;
        auto skip = static_cast<std::size_t>(data - static_cast<off_t>(file_offset));
        auto want = static_cast<std::size_t>(end - data);
        for (std::size_t done = 0; done < want;) {
            ssize_t got =
                ::pread(fd, to + skip + done, want - done, data + static_cast<off_t>(done));
            if (got <= 0) return false;
            done += static_cast<std::size_t>(got);
        }
        from = end;
    }
    return true;
}

// Where converted bytes come from: private anonymous memory, copied where the pagemap says
// a page holds data, or a file of ours that `vma` maps, copied where the file holds data.
struct Source {
    const Vma &vma;
    const Pagemap *pagemap;  // anonymous memory; null: copy every page
    int fd = -1;             // the file `vma` maps, if it is ours

    // Copies [start, start + length) to `to`; false if the source went away meanwhile
    // (another thread of the owner unmapped it). Allocates nothing.
    bool copy(std::uintptr_t start, std::size_t length, std::byte *to) const {
        if (fd >= 0) return copy_file_data(fd, vma.offset + (start - vma.start), length, to);
        std::array<std::uint64_t, kPagesPerStep> entries;
        if (pagemap != nullptr) pagemap->read(start, std::span(entries.data(), length / kPageSize));
        return copy_pages(start, length, to, pagemap != nullptr ? entries.data() : nullptr);
    }
};

// A mapping of `fd` at `offset` (private anonymous memory if `fd` < 0) to copy
// [start, start + length) into, not inherited by fork children. EAGAIN if the kernel put it
// where that range was: another thread of the owner unmapped the range meanwhile.
Mapping map_backing(int fd, std::uint64_t offset, std::size_t length, std::uintptr_t start) {
    void *at = fd < 0 ? ::mmap(nullptr, length, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                      : ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                               static_cast<off_t>(offset));
    if (at == MAP_FAILED) throw_last_errno("mmap backing");
    Mapping mapping(at, length);
    if (mapping.address() < start + length && start < mapping.address() + length)
        throw_errno(EAGAIN, "memory changed");
    ::madvise(at, length, MADV_DONTFORK);
    return mapping;
}

// Moves `copy` over [start, start + length) with protection `prot`; returns 0 or errno.
int move_over(Mapping &copy, std::uintptr_t start, int prot) noexcept {
    if (prot != (PROT_READ | PROT_WRITE) && ::mprotect(copy.data(), copy.size(), prot) < 0)
        return errno;
    std::size_t length = copy.size();
    void *moved = util::move_mapping(copy.data(), length, reinterpret_cast<void *>(start));
    if (moved == MAP_FAILED) return errno;
    copy.release();
    ::madvise(moved, length, MADV_DOFORK);  // the copy was MADV_DONTFORK; the memory is not
    return 0;
}

// Copies [start, end) without protection: for memory nobody writes, or that cannot be
// protected.
void convert_step_unprotected(int backing, std::uint64_t file_offset, const Source &source,
                              std::uintptr_t start, std::uintptr_t end) {
    std::size_t length = end - start;
    Mapping copy = map_backing(backing, file_offset, length, start);
    if (!source.copy(start, length, copy.data()))
        fail_step(EAGAIN, backing, file_offset, length, "memory changed");
    if (int error = move_over(copy, start, source.vma.protection()))
        fail_step(error, backing, file_offset, length, "conversion");
}

void convert_step_protected(const WriteProtector &uffd, const Source &source, int backing,
                            std::uint64_t file_offset, std::uintptr_t start, std::uintptr_t end) {
    std::size_t length = end - start;
    Mapping copy = map_backing(backing, file_offset, length, start);
    if (int error = uffd.register_range(start, length)) throw_errno(error, "UFFDIO_REGISTER");
    if (!uffd.unpopulated &&
        ::madvise(reinterpret_cast<void *>(start), length, MADV_POPULATE_READ) < 0) {
        int error = errno;
        uffd.unregister_range(start, length);
        throw_errno(error, "MADV_POPULATE_READ");
    }
    int error = uffd.protect(start, length, true);
    if (error == 0) {
        // Writers now block; nothing below allocates or locks. Another thread of the owner
        // may still unmap or replace the range: the copy then fails, or the range is no
        // longer all registered (protecting it again fails), and nothing moves over it.
        if (!source.copy(start, length, copy.data()) || uffd.protect(start, length, true) != 0)
            error = EAGAIN;
        else
            error = move_over(copy, start, source.vma.protection());
        if (error == 0) uffd.wake(start, length);
    }
    if (error != 0) {
        uffd.protect(start, length, false);
        uffd.unregister_range(start, length);
        fail_step(error, backing, file_offset, length, "write-protected conversion");
    }
}

// Writable memory (private anonymous, or a file of ours: `source_fd`) to `backing` at
// `offset` (private anonymous memory if `backing` < 0), write-protected step by step.
void convert_write_protected(int backing, std::uint64_t offset, const Vma &vma,
                             std::uintptr_t start, std::uintptr_t end, int source_fd) {
    WriteProtector uffd(source_fd >= 0);
    Pagemap pagemap;
    Source source{vma, &pagemap, source_fd};
    for (std::uintptr_t cursor = start; cursor < end;) {
        std::uintptr_t next = step_end(cursor, end);
        convert_step_protected(uffd, source, backing, offset + (cursor - start), cursor, next);
        cursor = next;
    }
}

// Copies [start, end) of writable memory to `backing` at `offset` (private anonymous
// memory if `backing` < 0) while stores to it are parked: for mappings userfaultfd cannot
// protect (private file mappings, and our files before Linux 5.19). A system call that
// writes there meanwhile fails with EFAULT.
void convert_guarded(int backing, std::uint64_t offset, const Source &source, std::uintptr_t start,
                     std::uintptr_t end) {
    install_segv_guard();
    int protection = source.vma.protection();
    for (std::uintptr_t cursor = start; cursor < end;) {
        std::uintptr_t next = step_end(cursor, end);
        std::size_t length = next - cursor;
        Mapping copy = map_backing(backing, offset + (cursor - start), length, cursor);
        guard_window.start = cursor;
        guard_window.end = next;
        guard_window.open = true;
        int error = 0;
        if (::mprotect(reinterpret_cast<void *>(cursor), length, protection & ~PROT_WRITE) < 0)
            error = errno;
        if (error == 0) {
            error = source.copy(cursor, length, copy.data()) ? move_over(copy, cursor, protection)
                                                             : EAGAIN;
            if (error != 0) ::mprotect(reinterpret_cast<void *>(cursor), length, protection);
        }
        guard_window.closed_at = now_ns();
        guard_window.open = false;
        if (error != 0)
            fail_step(error, backing, offset + (cursor - start), length, "guarded conversion");
        cursor = next;
    }
}

// Copies [start, end) of `vma` (private memory, or a file of ours: `source_fd`) to
// `backing` at `offset` (private anonymous memory if `backing` < 0) and moves the copy
// over it, without losing a concurrent store. The range holds no thread descriptor
// (threads.hpp): the kernel's writes there could not be ordered against the copy.
void convert(int backing, std::uint64_t offset, const Vma &vma, std::uintptr_t start,
             std::uintptr_t end, int source_fd) {
    std::optional<Pagemap> pagemap;
    if (!vma.file_backed()) pagemap.emplace();
    Source source{vma, pagemap ? &*pagemap : nullptr, source_fd};
    if (!vma.writable) {  // nobody writes it: a plain copy
        for (std::uintptr_t cursor = start; cursor < end;) {
            std::uintptr_t next = step_end(cursor, end);
            convert_step_unprotected(backing, offset + (cursor - start), source, cursor, next);
            cursor = next;
        }
        return;
    }
    if (!vma.file_backed() || source_fd >= 0) {
        try {
            return convert_write_protected(backing, offset, vma, start, end, source_fd);
        } catch (const std::system_error &error) {
            if (error.code().value() != ENOTSUP) throw;
        }
    }
    convert_guarded(backing, offset, source, start, end);
}

}  // namespace

Backing::Backing() {
    constexpr std::uint64_t kEvents =
        UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE;
    try {
        std::uint64_t supported = supported_uffd_features();
        std::uint64_t mode_feature = 0;
        if ((supported & UFFD_FEATURE_MINOR_SHMEM) != 0) {
            mode_feature = UFFD_FEATURE_MINOR_SHMEM;
            follow_mode_ = UFFDIO_REGISTER_MODE_MINOR;
        } else if ((supported & UFFD_FEATURE_WP_HUGETLBFS_SHMEM) != 0) {
            // Events only: no remove is ordered against the owner's next store.
            mode_feature = UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
            follow_mode_ = UFFDIO_REGISTER_MODE_WP;
        }
        if (mode_feature == 0 || (supported & kEvents) != kEvents) return;
        // User-mode faults only, also for root: the threads of the library read the
        // owner's memory through the kernel (process_vm_readv) while holding the lock the
        // follower needs, so a kernel-mode fault must fail (EFAULT), not wait for it.
        UniqueFd fd = open_userfaultfd(true).fd;
        uffdio_api api{UFFD_API, kEvents | mode_feature, 0};
        if (::ioctl(fd.get(), UFFDIO_API, &api) == 0) follow_ = std::move(fd);
    } catch (const std::system_error &) {
        // No userfaultfd here: attachments do not follow the owner.
    }
}

namespace {

// Adds [start, end) to `ranges`, merging what touches it.
void add_range(std::map<std::uintptr_t, std::uintptr_t> &ranges, std::uintptr_t start,
               std::uintptr_t end) {
    auto it = ranges.upper_bound(start);
    if (it != ranges.begin() && std::prev(it)->second >= start) {
        --it;
        start = it->first;
        end = std::max(end, it->second);
        it = ranges.erase(it);
    }
    while (it != ranges.end() && it->first <= end) {
        end = std::max(end, it->second);
        it = ranges.erase(it);
    }
    ranges.emplace(start, end);
}

}  // namespace

void Backing::follow(File &file, std::uintptr_t start, std::uintptr_t end) {
    if (!follow_) return;
    uffdio_register reg{{start, end - start}, follow_mode_, 0};
    bool registered = ::ioctl(follow_.get(), UFFDIO_REGISTER, &reg) == 0;
    add_range(file.followed, start, end);
    // Another thread of the owner replaced the range the moment it was converted: what
    // the file holds there is nobody's memory.
    if (!registered) follow_unmapped();
}

void Backing::unfollow(std::uintptr_t start, std::uintptr_t end) noexcept {
    if (!follow_) return;
    uffdio_range range{start, end - start};
    ::ioctl(follow_.get(), UFFDIO_UNREGISTER, &range);
}

bool Backing::natural(ino_t inode, const File &file, const MapEntry &entry) {
    return entry.shared && entry.inode == inode && entry.device == file.device &&
           entry.start >= file.start && entry.start - file.start == entry.offset;
}

// [start, end) of `file`'s natural place is no longer mapped there: whatever maps those
// offsets elsewhere (memory the owner moved) goes back into private memory, then the
// offsets are punched. Returns whether it changed the mappings (`maps` is stale then).
bool Backing::follow_gone(ino_t inode, File &file, std::uintptr_t start, std::uintptr_t end,
                          std::span<const MapEntry> maps) noexcept {
    std::uint64_t first = start - file.start, last = end - file.start;
    bool moved = false;
    for (const MapEntry &entry : maps) {
        if (!entry.shared || entry.inode != inode || entry.device != file.device) continue;
        std::uint64_t from = std::max(first, entry.offset);
        std::uint64_t to = std::min(last, entry.offset + (entry.end - entry.start));
        if (from >= to) continue;
        std::uintptr_t moved_start = entry.start + (from - entry.offset);
        std::uintptr_t moved_end = moved_start + (to - from);
        unfollow(moved_start, moved_end);
        if (!entry.readable)  // nobody can touch it: make it readable for the copy
            ::mprotect(reinterpret_cast<void *>(moved_start), moved_end - moved_start, PROT_READ);
        try {
            convert(-1, 0, Vma{entry, {}}, moved_start, moved_end, file.fd.get());
        } catch (const std::system_error &) {
            return false;  // the owner still maps it there: its bytes stay
        }
        moved = true;
    }
    punch(file.fd.get(), first, last - first);
    return moved;
}

void Backing::follow_unmapped() noexcept {
    if (!follow_) return;
    for (bool again = true; again;) {  // until no moved memory was taken back
        again = false;
        std::span<const MapEntry> maps;
        try {
            if (!files_.empty()) maps = maps_.read();
        } catch (const std::system_error &) {
            return;
        }
        for (auto &[inode, file] : files_) {
            for (auto range = file.followed.begin(); range != file.followed.end() && !again;) {
                std::uintptr_t cursor = range->first, end = range->second, last_natural = 0;
                auto entry = std::upper_bound(
                    maps.begin(), maps.end(), cursor,
                    [](std::uintptr_t address, const MapEntry &e) { return address < e.end; });
                for (; entry != maps.end() && entry->start < end && !again; ++entry) {
                    if (!natural(inode, file, *entry)) continue;
                    if (entry->start > cursor)
                        again = follow_gone(inode, file, cursor, entry->start, maps);
                    cursor = std::max(cursor, entry->end);
                    last_natural = std::min(cursor, end);
                }
                if (again) break;
                if (cursor < end) again = follow_gone(inode, file, cursor, end, maps);
                if (last_natural == 0) {
                    range = file.followed.erase(range);
                } else {
                    range->second = last_natural;  // what follows is punched already
                    ++range;
                }
            }
            if (again) break;
        }
    }
}

void Backing::punch_followed(std::uintptr_t start, std::uintptr_t end) noexcept {
    for (auto &[inode, file] : files_) {
        auto it = file.followed.upper_bound(start);
        if (it != file.followed.begin()) --it;
        for (; it != file.followed.end() && it->first < end; ++it) {
            std::uintptr_t from = std::max(start, it->first), to = std::min(end, it->second);
            if (from < to) punch(file.fd.get(), from - file.start, to - from);
        }
    }
}

// A minor fault: the page is still there (map it), or punched by now (wake the thread: its
// fault then finds no page and gets a fresh one). False while events wait to be read: no
// fault is resolved before them.
bool Backing::resolve_minor(std::uintptr_t page) noexcept {
    uffdio_continue resolve{{page, kPageSize}, 0, 0};
    if (::ioctl(follow_.get(), UFFDIO_CONTINUE, &resolve) == 0) return true;
    if (errno == EAGAIN) return false;
    wake_page(page);
    return true;
}

void Backing::follow_message() noexcept {
    uffd_msg message{};
    if (::read(follow_.get(), &message, sizeof message) != sizeof message) return;
    if (message.event == UFFD_EVENT_PAGEFAULT) {
        std::uintptr_t page = util::page_down(message.arg.pagefault.address);
        if (!resolve_minor(page)) {
            if (waiting_minor_count_ < waiting_minor_.size())
                waiting_minor_[waiting_minor_count_++] = page;
            else  // no room: the thread faults again (and maybe waits for an event again)
                wake_page(page);
        }
        return;
    }
    if (message.event == UFFD_EVENT_REMOVE)
        punch_followed(message.arg.remove.start, message.arg.remove.end);
    // Unmaps and remaps: follow_unmapped() saw their effect before the message was read.
    std::size_t kept = 0;
    for (std::size_t i = 0; i < waiting_minor_count_; ++i)
        if (!resolve_minor(waiting_minor_[i])) waiting_minor_[kept++] = waiting_minor_[i];
    waiting_minor_count_ = kept;
}

void Backing::wake_page(std::uintptr_t page) noexcept {
    uffdio_range range{page, kPageSize};
    ::ioctl(follow_.get(), UFFDIO_WAKE, &range);
}

Backing::File *Backing::file_of(const Vma &vma) {
    if (!vma.shared || files_.empty()) return nullptr;
    auto it = files_.find(vma.inode);
    if (it == files_.end()) return nullptr;
    struct stat status {};
    if (::fstat(it->second.fd.get(), &status) < 0 || status.st_dev != vma.device) return nullptr;
    return &it->second;
}

Backing::File &Backing::file_for(const SegmentRange &segment, bool writable_memory,
                                 std::uint64_t offset, std::uint64_t length,
                                 std::span<const Vma> maps) {
    // A file whose offsets there the owner maps nowhere (memory it moved keeps them until
    // the follower takes it back, or for good where the kernel cannot follow).
    auto offsets_free = [&](const File &file) {
        return std::none_of(maps.begin(), maps.end(), [&](const Vma &vma) {
            return file_of(vma) == &file && vma.offset < offset + length &&
                   offset < vma.offset + (vma.end - vma.start);
        });
    };
    for (auto &[inode, file] : files_)
        if (file.segid == segment.segid && file.writable_memory == writable_memory &&
            offsets_free(file))
            return file;
    // Attachers hold these descriptors: none of them may resize the file under the owner,
    // nor reopen a read-only descriptor for writing.
    UniqueFd fd =
        sealed_memfd(writable_memory ? "xpmem-segment-rw" : "xpmem-segment-ro", segment.size);
    if (::fchmod(fd.get(), S_IRUSR) < 0) throw_last_errno("fchmod");
    struct stat status {};
    if (::fstat(fd.get(), &status) < 0) throw_last_errno("fstat");
    File file{std::move(fd),
              segment.segid,
              segment.start,
              segment.size,
              writable_memory,
              false,
              {},
              status.st_dev,
              {}};
    return files_.insert_or_assign(status.st_ino, std::move(file)).first->second;
}

Backing::File &Backing::make_shareable(const SegmentRange &segment, const Vma &vma,
                                       std::uintptr_t start, std::uintptr_t end,
                                       std::span<const Vma> maps) {
    File *source = file_of(vma);
    std::uint64_t offset = start - segment.start;
    File &target = file_for(segment, vma.writable, offset, end - start, maps);
    // Stale data from an earlier conversion at these offsets must not show through.
    if (::fallocate(target.fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>(offset), static_cast<off_t>(end - start)) < 0)
        throw_last_errno("punch segment file");
    // Our own replacement of a followed range must not wait for its own event.
    if (source != nullptr) unfollow(start, end);
    // Step by step, each followed at once, and the owner's unmaps that came meanwhile
    // followed in between: an unmap must not wait for a long conversion.
    for (std::uintptr_t cursor = start; cursor < end;) {
        std::uintptr_t next = step_end(cursor, end);
        convert(target.fd.get(), offset + (cursor - start), vma, cursor, next,
                source != nullptr ? source->fd.get() : -1);
        if (source != nullptr)  // the range left that file: free its copy there
            punch(source->fd.get(), vma.offset + (cursor - vma.start), next - cursor);
        follow(target, cursor, next);
        follow_pending();
        cursor = next;
    }
    return target;
}

void Backing::follow_pending() noexcept {
    constexpr int kMostAtOnce = 64;
    for (int i = 0; i < kMostAtOnce && follow_; ++i) {
        pollfd ready{follow_.get(), POLLIN, 0};
        if (::poll(&ready, 1, 0) <= 0 || (ready.revents & POLLIN) == 0) return;
        follow_unmapped();
        follow_message();
    }
}

void Backing::populate(File &file, std::uint64_t offset) noexcept {
    ::fallocate(file.fd.get(), 0, static_cast<off_t>(offset), kPageSize);
    if (!follow_) return;
    // Where the owner maps it at its natural place (it is registered there), the page
    // goes into the owner's page table; elsewhere CONTINUE fails and nothing happens.
    uffdio_continue map{{file.start + offset, kPageSize}, UFFDIO_CONTINUE_MODE_DONTWAKE, 0};
    ::ioctl(follow_.get(), UFFDIO_CONTINUE, &map);
}

UniqueFd Backing::descriptor(File &file, bool writable, const Holder &holder) {
    UniqueFd fd;
    if (writable) {
        fd.reset(::fcntl(file.fd.get(), F_DUPFD_CLOEXEC, 0));
    } else {
        std::string self = "/proc/self/fd/" + std::to_string(file.fd.get());
        fd.reset(::open(self.c_str(), O_RDONLY | O_CLOEXEC));
    }
    if (!fd) throw_last_errno("segment file descriptor");
    file.handed_out = true;
    file.holders.insert(holder);
    return fd;
}

void Backing::forget_holders(const std::function<bool(const Holder &)> &gone) {
    std::vector<const File *> orphans;
    for (auto &[inode, file] : files_) {
        std::erase_if(file.holders, gone);
        if (file.handed_out && file.holders.empty()) orphans.push_back(&file);
    }
    if (orphans.empty()) return;
    std::vector<Vma> maps = read_maps();
    for (const File *file : orphans) take_back(*file, maps);
}

void Backing::forget_unmapped(std::span<const Vma> maps) {
    for (auto it = files_.begin(); it != files_.end();) {
        bool mapped = std::any_of(maps.begin(), maps.end(), [&](const Vma &vma) {
            return vma.shared && vma.inode == it->first;
        });
        if (mapped) {
            ++it;
            continue;
        }
        // The owner freed this memory: kept descriptors must not show what it held.
        punch(it->second.fd.get(), 0, it->second.size);
        it = files_.erase(it);
    }
}

void Backing::take_back(const File &file, std::span<const Vma> maps) {
    for (const Vma &vma : maps) {
        if (file_of(vma) != &file) continue;
        unfollow(vma.start, vma.end);
        if (!vma.readable)  // nobody can touch it: make it readable for the copy
            ::mprotect(reinterpret_cast<void *>(vma.start), vma.end - vma.start, PROT_READ);
        convert(-1, 0, vma, vma.start, vma.end, file.fd.get());
    }
    // What a kept descriptor still maps is now nobody's memory: free it.
    punch(file.fd.get(), 0, file.size);
    for (auto it = files_.begin(); it != files_.end(); ++it) {
        if (&it->second != &file) continue;
        files_.erase(it);
        break;
    }
}

void Backing::make_private_after_fork() noexcept {
    try {
        for (const Vma &vma : read_maps()) {
            File *file = file_of(vma);
            if (file == nullptr) continue;
            std::size_t length = vma.end - vma.start;
            Mapping copy = map_backing(-1, 0, length, vma.start);
            if (!copy_file_data(file->fd.get(), vma.offset, length, copy.data())) continue;
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
