// The memory-management operations on the owner's arena and on attachments, and the
// descriptor operations (close, dup, SCM_RIGHTS passing).
#include "fuzz_worker.hpp"
#include "guarded_memory.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "mm_constants.hpp"

namespace xpmem_fuzz {
namespace {

struct Advice {
    const char* name;
    int value;
    bool zeroes;  // the owner's pages may read as zero afterwards
};
// The order is the bit order of --disable owner-madvise:NAME / attachment-madvise:NAME.
constexpr std::array<Advice, 21> kAdvice{{
    {"dontneed", MADV_DONTNEED, true}, {"free", MADV_FREE, true}, {"remove", MADV_REMOVE, true},
    {"collapse", MADV_COLLAPSE, false}, {"hugepage", MADV_HUGEPAGE, false},
    {"nohugepage", MADV_NOHUGEPAGE, false}, {"cold", MADV_COLD, false},
    {"pageout", MADV_PAGEOUT, false}, {"willneed", MADV_WILLNEED, false},
    {"dofork", MADV_DOFORK, false}, {"dontfork", MADV_DONTFORK, false},
    {"wipeonfork", MADV_WIPEONFORK, false}, {"keeponfork", MADV_KEEPONFORK, false},
    {"mergeable", MADV_MERGEABLE, false}, {"unmergeable", MADV_UNMERGEABLE, false},
    {"populate-read", MADV_POPULATE_READ, false}, {"populate-write", MADV_POPULATE_WRITE, false},
    {"dontdump", MADV_DONTDUMP, false}, {"dodump", MADV_DODUMP, false},
    {"random", MADV_RANDOM, false}, {"normal", MADV_NORMAL, false},
}};

constexpr std::array<int, 5> kProtections{PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE, PROT_READ | PROT_EXEC,
                                          PROT_READ | PROT_WRITE | PROT_EXEC};

// The advice to use, or nullptr when the chosen one is disabled. Bits 0-31 of the mask
// are for the owner, 32-63 for attachments.
const Advice* choose_advice(Draws& draws, uint64_t disabled, bool attachment)
{
    const size_t index = draws.below(kAdvice.size());
    if (disabled & (uint64_t{1} << (index + (attachment ? 32 : 0))))
        return nullptr;
    return &kAdvice[index];
}

} // namespace

std::vector<std::string> advice_names()
{
    std::vector<std::string> names;
    for (const auto& advice : kAdvice)
        names.emplace_back(advice.name);
    return names;
}

// ---- the owner's arena -----------------------------------------------------------------------

void Worker::op_restamp(Draws& draws)
{
    size_t first = 0, count = 0;
    choose_arena_range(draws, first, count, false);
    stamp_pages(first, count);
    note("restamp pages {}+{} generation {}", first, count, generation_);
    succeeded();
}

void Worker::op_check_own(Draws& draws)
{
    size_t first = 0, count = 0;
    if (!choose_arena_range(draws, first, count, true))
        return note("page {} not mapped", first);
    count = std::min<size_t>(count, 8);
    note("check own pages {}+{}", first, count);
    for (size_t page = first; page < first + count; ++page) {
        if (!(arena_[page].protection & PROT_READ))
            continue;
        const bool may_be_zero = identity_->page_sequence[page].load() & 1;
        for (size_t word = 0; word < kPageSize / 8; ++word) {
            const uintptr_t address = arena_address(page) + word * 8;
            uint64_t value = 0;
            if (guarded_load(as_pointer(address), value) != Access::ok)
                fail(fmt::format("own arena page {} faults although mapped readable", page));
            shared_.counters.words_validated.fetch_add(1, std::memory_order_relaxed);
            if (value == 0 && may_be_zero)
                continue;
            if (value == 0)
                fail(fmt::format("own arena word {:#x} (page {}) reads zero although stamped", address, page));
            if (stamp_tag(value) != tag_ || stamp_address(value) != address)
                fail(fmt::format("own arena word {:#x} holds {} (expected a stamp of tag {} for that address)", address,
                                 describe_stamp(value), tag_));
        }
    }
    succeeded();
}

void Worker::op_owner_mmap(Draws& draws)
{
    size_t first = 0, count = 0;
    choose_arena_range(draws, first, count, false);
    map_fresh(first, count);
    note("fresh mapping over own pages {}+{}", first, count);
    succeeded();
}

void Worker::op_owner_munmap(Draws& draws)
{
    size_t first = 0, count = 0;
    choose_arena_range(draws, first, count, false);
    for (size_t page = first; page < first + count; ++page)
        may_be_zero(page);
    const int result = munmap(as_pointer(arena_address(first)), count * kPageSize);
    note("munmap own pages {}+{} -> {}", first, count, result);
    if (result != 0)
        fail(fmt::format("munmap of own pages: {}", strerror(errno)));
    for (size_t page = first; page < first + count; ++page)
        arena_[page] = ArenaPage{};
    succeeded();
}

void Worker::op_owner_mremap(Draws& draws)
{
    size_t first = 0, count = 0;
    choose_arena_range(draws, first, count, false);
    const uintptr_t address = arena_address(first);
    const size_t length = count * kPageSize;
    const uint64_t variant = draws.below(4);
    const size_t change = 1 + draws.below(std::max<size_t>(count, 2) - 1);
    if (variant == 0) {
        // Move out (to scratch, then gone): the pages become a hole.
        for (size_t page = first; page < first + count; ++page)
            may_be_zero(page);
        void* moved = mremap(as_pointer(address), length, length, MREMAP_MAYMOVE | MREMAP_FIXED, as_pointer(kScratchBase));
        note("mremap own pages {}+{} out -> {}", first, count, moved);
        if (moved == MAP_FAILED)
            return;
        munmap(moved, length);
        for (size_t page = first; page < first + count; ++page)
            arena_[page] = ArenaPage{};
    } else if (variant == 1) {
        // Move in: a block stamped for its destination replaces the pages in one step.
        void* staging = mmap(as_pointer(kScratchBase), length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (staging == MAP_FAILED)
            fail(fmt::format("mmap of scratch: {}", strerror(errno)));
        generation_ = static_cast<uint8_t>((generation_ + 1) % kAttacherGeneration);
        auto* words = static_cast<uint64_t*>(staging);
        for (size_t word = 0; word < length / 8; ++word)
            words[word] = make_stamp(tag_, address + word * 8, generation_);
        void* moved = mremap(staging, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, as_pointer(address));
        note("mremap stamped block into own pages {}+{} -> {}", first, count, moved);
        if (moved == MAP_FAILED) {
            munmap(staging, length);
            return;
        }
        for (size_t page = first; page < first + count; ++page) {
            arena_[page] = ArenaPage{true, PROT_READ | PROT_WRITE};
            stamped(page);
        }
    } else if (variant == 2) {
        // Shrink in place: the tail becomes a hole.
        if (count < 2)
            return note("nothing to shrink");
        for (size_t page = first + count - change; page < first + count; ++page)
            may_be_zero(page);
        void* result = mremap(as_pointer(address), length, length - change * kPageSize, 0);
        note("mremap shrink own pages {}+{} by {} -> {}", first, count, change, result);
        if (result == MAP_FAILED)
            return;
        for (size_t page = first + count - change; page < first + count; ++page)
            arena_[page] = ArenaPage{};
    } else {
        // Grow in place into a hole after the range: the new tail reads as zero.
        const size_t end = first + count;
        if (end + change > kArenaPages || !arena_[end - 1].mapped)
            return note("no room to grow");
        for (size_t page = end; page < end + change; ++page)
            if (arena_[page].mapped)
                return note("no hole to grow into");
        void* result = mremap(as_pointer(address), length, length + change * kPageSize, 0);
        note("mremap grow own pages {}+{} by {} -> {}", first, count, change, result);
        if (result == MAP_FAILED)
            return;
        for (size_t page = end; page < end + change; ++page) {
            may_be_zero(page);
            arena_[page] = ArenaPage{true, arena_[end - 1].protection};
        }
    }
    succeeded();
}

void Worker::op_owner_mprotect(Draws& draws)
{
    size_t first = 0, count = 0;
    if (!choose_arena_range(draws, first, count, true))
        return note("page {} not mapped", first);
    const int protection = draws.pick(kProtections);
    const int result = mprotect(as_pointer(arena_address(first)), count * kPageSize, protection);
    note("mprotect own pages {}+{} {:#x} -> {}", first, count, protection, result);
    if (result != 0)
        fail(fmt::format("mprotect of own mapped pages: {}", strerror(errno)));
    for (size_t page = first; page < first + count; ++page)
        arena_[page].protection = protection;
    succeeded();
}

void Worker::op_owner_madvise(Draws& draws)
{
    size_t first = 0, count = 0;
    choose_arena_range(draws, first, count, false);
    if (draws.percent(10)) {
        first = 0;
        count = kArenaPages;  // whole 2 MiB: a huge page can form (collapse, hugepage)
    }
    const Advice* advice = choose_advice(draws, shared_.disabled_advice_mask, false);
    if (advice == nullptr)
        return note("advice disabled");
    if (advice->zeroes)
        for (size_t page = first; page < first + count; ++page)
            may_be_zero(page);
    const int result = madvise(as_pointer(arena_address(first)), count * kPageSize, advice->value);
    note("madvise own pages {}+{} {} -> {} {}", first, count, advice->name, result, result ? strerror(errno) : "");
    if (result == 0)
        succeeded();
}

void Worker::op_owner_migrate(Draws& draws)
{
    size_t first = 0, count = 0;
    if (!choose_arena_range(draws, first, count, true))
        return note("page {} not mapped", first);
    std::vector<void*> pages;
    std::vector<int> nodes, status(count);
    const int node = static_cast<int>(draws.below(2));
    for (size_t page = first; page < first + count; ++page) {
        pages.push_back(as_pointer(arena_address(page)));
        nodes.push_back(draws.percent(80) ? node : 1 - node);
    }
    const long result = syscall(SYS_move_pages, 0, count, pages.data(), nodes.data(), status.data(), MPOL_MF_MOVE);
    note("move_pages own pages {}+{} to node {} -> {} {}", first, count, node, result, result ? strerror(errno) : "");
    if (result >= 0)
        succeeded();
}

// ---- attachments ----------------------------------------------------------------------------------

void Worker::op_attachment_munmap(Draws& draws)
{
    AttachRecord* record = choose_record(draws, false);
    if (record == nullptr)
        return note("no attachment");
    const uint64_t pages = record->length / kPageSize;
    const uint64_t first = draws.below(pages);
    const uint64_t count = 1 + draws.small_below(pages - first);
    const uintptr_t start = record->start + first * kPageSize;
    const int result = munmap(as_pointer(start), count * kPageSize);
    note("munmap attachment [{:#x}, +{:#x}) -> {}", start, count * kPageSize, result);
    if (result != 0)
        fail(fmt::format("munmap of an attachment piece: {}", strerror(errno)));
    remember_range(start, count * kPageSize, "munmap");
    forget_range(start, count * kPageSize);
    succeeded();
}

void Worker::op_attachment_mremap(Draws& draws)
{
    AttachRecord* chosen = choose_record(draws, false);
    if (chosen == nullptr)
        return note("no attachment");
    const AttachRecord record = *chosen;
    const uint64_t pages = record.length / kPageSize;
    const uint64_t variant = draws.below(kMremapVariants.size());
    if (shared_.disabled_mremap_mask & (uint64_t{1} << variant))
        return note("mremap variant {} disabled", kMremapVariants[variant]);
    if (record.length > kWindowSize / 4)
        return note("piece too large for the window");
    // The part to move: the whole piece, or a sub-range of it.
    uint64_t first = 0, count = pages;
    if (variant == 1) {
        first = draws.below(pages);
        count = 1 + draws.small_below(pages - first);
    }
    const uintptr_t source = record.start + first * kPageSize;
    const size_t length = count * kPageSize;
    const uintptr_t target = kWindowBase + draws.below(kWindowSize / kPageSize - pages - 16) * kPageSize;
    const size_t change = (1 + draws.small_below(16)) * kPageSize;
    void* result = MAP_FAILED;
    size_t new_length = length;
    int flags = 0;
    if (variant <= 1) {
        flags = MREMAP_MAYMOVE | MREMAP_FIXED;
    } else if (variant == 2) {
        flags = MREMAP_MAYMOVE;  // the kernel picks the place (growing is refused)
        new_length = draws.percent(50) ? length : length + change;
    } else if (variant == 3) {
        if (length <= kPageSize)
            return note("nothing to shrink");
        new_length = length - std::min(change, length - kPageSize);
    } else if (variant == 4) {
        new_length = length + change;  // VM_DONTEXPAND: refused
    } else {
        flags = MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP;
    }
    const bool fixed = flags & MREMAP_FIXED;
    const bool overlapping = fixed && target < source + length && source < target + new_length;
    result = fixed ? mremap(as_pointer(source), length, new_length, flags, as_pointer(target))
                   : mremap(as_pointer(source), length, new_length, flags);
    note("mremap attachment [{:#x}, +{:#x}) to {:#x} flags {} -> {} {}", source, length, new_length, flags, result,
         result == MAP_FAILED ? strerror(errno) : "");
    if (result == MAP_FAILED || overlapping)
        return;
    const auto moved_to = reinterpret_cast<uintptr_t>(result);
    if (moved_to == source) {
        if (new_length < length)
            forget_range(source + new_length, length - new_length);
        succeeded();
        return;
    }
    AttachRecord moved = record;
    moved.start = moved_to;
    moved.length = std::min(length, new_length);
    moved.owner_address = record.owner_address + first * kPageSize;
    forget_range(moved_to, new_length);
    if (!(flags & MREMAP_DONTUNMAP))
        forget_range(source, length);
    remember(record.instance, fmt::format("mremap [{:#x}, {:#x}) flags {} -> [{:#x}, {:#x})", source, source + length, flags,
                                          moved_to, moved_to + moved.length));
    records_.push_back(moved);
    succeeded();
}

void Worker::op_attachment_mprotect(Draws& draws)
{
    AttachRecord* record = choose_record(draws, false);
    if (record == nullptr)
        return note("no attachment");
    const uint64_t pages = record->length / kPageSize;
    const uint64_t first = draws.below(pages);
    const uint64_t count = 1 + draws.small_below(pages - first);
    const int protection = draws.pick(kProtections);
    const int result = mprotect(as_pointer(record->start + first * kPageSize), count * kPageSize, protection);
    note("mprotect attachment [{:#x}, +{:#x}) {:#x} -> {}", record->start + first * kPageSize, count * kPageSize, protection,
         result);
    if (result == 0 && record->read_only && (protection & PROT_WRITE))
        fail(fmt::format("mprotect made a read-only attachment writable: {}", describe_record(*record)));
    if (result == 0)
        succeeded();
}

void Worker::op_attachment_madvise(Draws& draws)
{
    AttachRecord* record = choose_record(draws, false);
    if (record == nullptr)
        return note("no attachment");
    const uint64_t pages = record->length / kPageSize;
    const uint64_t first = draws.percent(50) ? 0 : draws.below(pages);
    const uint64_t count = draws.percent(50) ? pages - first : 1 + draws.small_below(pages - first);
    const Advice* advice = choose_advice(draws, shared_.disabled_advice_mask, true);
    if (advice == nullptr)
        return note("advice disabled");
    const uintptr_t start = record->start + first * kPageSize;
    const size_t length = count * kPageSize;
    const int result = madvise(as_pointer(start), length, advice->value);
    note("madvise attachment [{:#x}, +{:#x}) {} -> {} {}", start, length, advice->name, result, result ? strerror(errno) : "");
    if (result != 0)
        return;
    if (advice->value == MADV_DOFORK || advice->value == MADV_DONTFORK) {
        remember_range(start, length, fmt::format("madvise {}", advice->name));
        split_records_at(start);
        split_records_at(start + length);
        for (auto& piece : records_)
            if (piece.start >= start && piece.start + piece.length <= start + length)
                piece.inherit_on_fork = advice->value == MADV_DOFORK;
    }
    succeeded();
}

void Worker::op_attachment_mmap_over(Draws& draws)
{
    AttachRecord* record = choose_record(draws, false);
    if (record == nullptr)
        return note("no attachment");
    const uint64_t pages = record->length / kPageSize;
    const uint64_t first = draws.below(pages);
    const uint64_t count = 1 + draws.small_below(pages - first);
    const uintptr_t start = record->start + first * kPageSize;
    void* result = mmap(as_pointer(start), count * kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    note("mmap over attachment [{:#x}, +{:#x}) -> {}", start, count * kPageSize, result);
    if (result == MAP_FAILED)
        fail(fmt::format("mmap over an attachment piece: {}", strerror(errno)));
    remember_range(start, count * kPageSize, "mmap over");
    forget_range(start, count * kPageSize);
    succeeded();
}

// ---- descriptors ----------------------------------------------------------------------------------

void Worker::op_close(Draws& draws)
{
    if (fds_.empty())
        return note("no descriptor");
    const size_t index = draws.below(fds_.size());
    const uint64_t file_id = fds_[index].file_id;
    const bool last = std::count_if(fds_.begin(), fds_.end(), [&](const FdAlias& alias) { return alias.file_id == file_id; }) == 1;
    note("close fd {} (file {}{})", fds_[index].fd.get(), file_id, last ? ", its last descriptor here" : "");
    if (last)
        forget_file(file_id);
    fds_.erase(fds_.begin() + static_cast<std::ptrdiff_t>(index));
    succeeded();
}

void Worker::op_dup(Draws& draws)
{
    if (fds_.empty() || fds_.size() >= 10)
        return note("no descriptor or too many");
    FdAlias& alias = fds_[draws.below(fds_.size())];
    const int minimum = draws.percent(50) ? 0 : static_cast<int>(100 + draws.below(100));
    const int fd = fcntl(alias.fd.get(), F_DUPFD, minimum);
    note("dup fd {} -> {}", alias.fd.get(), fd);
    if (fd < 0)
        return;
    const uint64_t file_id = alias.file_id;
    fds_.push_back(FdAlias{UniqueFd(fd), file_id});
    succeeded();
}

namespace {
struct FdMessage {
    uint64_t file_id;
    int32_t opener_pid;
    uint32_t opener_tag;
};
} // namespace

void Worker::op_send_fd(Draws& draws)
{
    if (fds_.empty() || plan_.mailboxes.empty())
        return note("no descriptor or no mailbox");
    FdAlias& alias = fds_[draws.below(fds_.size())];
    const size_t target = draws.below(plan_.mailboxes.size() / 2);
    const XpmemFile& file = file_of(alias);
    FdMessage message{file.file_id, file.opener_pid, file.opener_tag};
    iovec payload{&message, sizeof(message)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr header{};
    header.msg_iov = &payload;
    header.msg_iovlen = 1;
    header.msg_control = control;
    header.msg_controllen = sizeof(control);
    cmsghdr* rights = CMSG_FIRSTHDR(&header);
    rights->cmsg_level = SOL_SOCKET;
    rights->cmsg_type = SCM_RIGHTS;
    rights->cmsg_len = CMSG_LEN(sizeof(int));
    const int fd = alias.fd.get();
    memcpy(CMSG_DATA(rights), &fd, sizeof(fd));
    const ssize_t sent = sendmsg(plan_.mailboxes[target * 2], &header, MSG_DONTWAIT);
    note("send fd {} (file {}) to worker {} -> {}", fd, file.file_id, target, sent);
    if (sent > 0)
        succeeded();
}

void Worker::op_receive_fd(Draws& draws)
{
    if (plan_.mailboxes.empty())
        return note("no mailbox");
    FdMessage message{};
    iovec payload{&message, sizeof(message)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr header{};
    header.msg_iov = &payload;
    header.msg_iovlen = 1;
    header.msg_control = control;
    header.msg_controllen = sizeof(control);
    const ssize_t received = recvmsg(plan_.mailboxes[plan_.worker * 2 + 1], &header, MSG_DONTWAIT);
    cmsghdr* rights = received > 0 ? CMSG_FIRSTHDR(&header) : nullptr;
    if (rights == nullptr || rights->cmsg_type != SCM_RIGHTS)
        return note("nothing received");
    int fd = -1;
    memcpy(&fd, CMSG_DATA(rights), sizeof(fd));
    UniqueFd received_fd(fd);
    note("received fd {} (file {}, opened by pid {})", fd, message.file_id, message.opener_pid);
    if (fds_.size() >= 10 || draws.percent(20))
        return;  // dropped again at once
    if (files_.find(message.file_id) == files_.end()) {
        XpmemFile& file = files_[message.file_id];
        file.file_id = message.file_id;
        file.opener_pid = message.opener_pid;
        file.opener_tag = message.opener_tag;
        file.unknown_objects = true;  // if it is ours after all (pid reuse), we know nothing of it
    }
    fds_.push_back(FdAlias{std::move(received_fd), message.file_id});
    succeeded();
}

void Worker::op_mapper_thread(Draws& draws)
{
    if (mapper_running_) {
        stop_mapper();
        note("mapper thread stopped");
    } else {
        start_mapper(draws.raw());
        note("mapper thread started: {}", mapper_running_);
    }
    succeeded();
}

} // namespace xpmem_fuzz
