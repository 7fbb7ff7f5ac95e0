// The ioctl operations: MAKE, REMOVE, GET, RELEASE, ATTACH, DETACH with valid, stale,
// foreign and garbage arguments, the reads and writes through attachments, and the
// commands and mappings the module must refuse.
#include "fuzz_worker.hpp"

#include "xpmem_abi.h"

#include <fmt/format.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace xpmem_fuzz {
namespace {

constexpr int kPermitMode = 1;
constexpr int kReadOnly = 1;
constexpr int kReadWrite = 2;
constexpr uint64_t kKernelAddress = 0xffff888000000000ULL;
constexpr std::array<uint32_t, 10> kModes{0600, 0644, 0666, 0400, 0440, 0444, 0, 0777, 0604, 0660};
constexpr std::array<int64_t, 8> kGarbageIds{0, -1, INT_MAX, int64_t{INT_MAX} + 1, INT64_MIN, 1, 2, 0x7fffffffffffffff};

long xpmem_ioctl(int fd, unsigned long command, void* argument, int& error)
{
    const long result = ioctl(fd, command, argument);
    error = result < 0 ? errno : 0;
    return result;
}

bool page_aligned(uint64_t value) { return value % kPageSize == 0; }

} // namespace

void Worker::op_make(Draws& draws)
{
    FdAlias* alias = choose_fd(draws);
    if (alias == nullptr)
        return note("no descriptor");
    XpmemFile& file = file_of(*alias);
    uint64_t vaddr = kArenaBase, size = kArenaSize;
    const uint64_t shape = draws.below(14);
    const size_t first = draws.below(kArenaPages);
    const size_t count = 1 + draws.small_below(kArenaPages - first);
    if (shape < 8) {
        vaddr = kArenaBase + first * kPageSize;
        size = count * kPageSize;
    } else if (shape == 8) {
        vaddr = 0;
        size = UINT64_MAX;  // the whole address space
    } else if (shape == 9) {
        vaddr = kArenaBase + first * kPageSize;
        size = UINT64_MAX;  // to the end of the address space
    } else if (shape == 10) {
        vaddr = kArenaBase + first * kPageSize + 1 + draws.below(kPageSize - 1);
        size = count * kPageSize + (draws.percent(50) ? 0 : 1 + draws.below(kPageSize - 1));
    } else if (shape == 11) {
        const std::array<std::pair<uint64_t, uint64_t>, 8> garbage{{
            {kKernelAddress, kPageSize}, {kTaskSize, kPageSize}, {kArenaBase, 0},
            {kArenaBase, uint64_t{1} << 63}, {kTaskSize - kPageSize, 2 * kPageSize},
            {UINT64_MAX & ~(kPageSize - 1), kPageSize}, {kPageSize, kTaskSize}, {0, kPageSize}}};
        std::tie(vaddr, size) = draws.pick(garbage);
    } else {
        // Somewhere that is not our stamped memory (window, scratch): never read, may attach.
        vaddr = (draws.percent(50) ? kWindowBase : kScratchBase) + draws.below(1024) * kPageSize;
        size = (1 + draws.small_below(256)) * kPageSize;
    }
    const int permit_type = draws.percent(95) ? kPermitMode : static_cast<int>(draws.pick(std::array<int64_t, 4>{0, 2, -1, 256}));
    uint64_t mode = draws.pick(kModes);
    if (draws.percent(4))
        mode = draws.pick(std::array<uint64_t, 4>{01000, 07777, 0xffffffff, uint64_t{1} << 40});
    const uint64_t effective_size = size == UINT64_MAX && vaddr < kTaskSize ? kTaskSize - vaddr : size;
    const bool valid = permit_type == kPermitMode && mode <= 0777 && page_aligned(vaddr) && page_aligned(effective_size) &&
                       effective_size != 0 && vaddr < kTaskSize && effective_size <= kTaskSize - vaddr;

    auto ref = shared_.claim_segment();
    if (!ref)
        return note("segment table full");
    SegmentEntry& entry = shared_.segments[ref->index];
    entry.segid.store(0);
    entry.owner_tag.store(file.opener_tag);
    entry.uid.store(geteuid());
    entry.gid.store(getegid());
    entry.mode.store(static_cast<uint32_t>(mode));
    entry.vaddr.store(vaddr);
    entry.size.store(effective_size);
    entry.file_id.store(file.file_id);

    xpmem_cmd_make command{};
    command.vaddr = vaddr;
    command.size = size;
    command.permit_type = permit_type;
    command.permit_value = mode;
    command.segid = -77;
    void* argument = &command;
    bool read_only_argument = false;
    prepare_argument(draws, &command, sizeof(command), argument, read_only_argument);
    int error = 0;
    const long result = xpmem_ioctl(alias->fd.get(), XPMEM_CMD_MAKE, argument, error);
    note("MAKE fd {} vaddr {:#x} size {:#x} type {} mode {:#o}{} -> {} {} segid {}", alias->fd.get(), vaddr, size, permit_type,
         mode, read_only_argument ? " (read-only struct)" : "", result, strerror(error), command.segid);
    check_foreign_result(file, result, error, "MAKE");
    if (result == 0 && !valid)
        fail(fmt::format("MAKE accepted an invalid request (vaddr {:#x} size {:#x} type {} mode {:#o})", vaddr, size,
                         permit_type, mode));
    if (result != 0) {
        if (read_only_argument && error == EFAULT && valid && owns(file))
            file.unknown_objects = true;  // made, but its id could not be written back
        if (!valid)
            rejected();
        entry.state.store(static_cast<uint32_t>(SegmentState::free));
        return;
    }
    if (command.segid <= 0 || command.segid > INT_MAX)
        fail(fmt::format("MAKE returned segid {}", command.segid));
    entry.segid.store(command.segid);
    entry.state.store(static_cast<uint32_t>(SegmentState::live), std::memory_order_release);
    file.segments.push_back(*ref);
    succeeded();
}

void Worker::op_remove(Draws& draws)
{
    FdAlias* alias = choose_fd(draws);
    if (alias == nullptr)
        return note("no descriptor");
    XpmemFile& file = file_of(*alias);
    const uint64_t source = draws.below(100);
    int64_t segid = draws.pick(kGarbageIds);
    std::optional<EntryRef> own;
    if (source < 60 && !file.segments.empty()) {
        own = file.segments[draws.below(file.segments.size())];
        if (auto segment = shared_.segment(*own))
            segid = segment->segid;
    } else if (source < 85) {
        // Anyone's segment (live, removed or stale).
        if (auto segment = shared_.segment(static_cast<uint32_t>(draws.below(kMaxSegments))); segment && segment->segid > 0)
            segid = segment->segid;
    }
    const auto own_live = std::find_if(file.segments.begin(), file.segments.end(), [&](const EntryRef& ref) {
        auto segment = shared_.segment(ref);
        return segment && segment->segid == segid;
    });
    const bool may_succeed = owns(file) && (own_live != file.segments.end() || file.unknown_objects);
    if (own_live != file.segments.end())
        shared_.set_segment_state(*own_live, SegmentState::removing);
    xpmem_cmd_remove command{segid};
    int error = 0;
    const long result = xpmem_ioctl(alias->fd.get(), XPMEM_CMD_REMOVE, &command, error);
    note("REMOVE fd {} segid {} -> {} {}", alias->fd.get(), segid, result, strerror(error));
    check_foreign_result(file, result, error, "REMOVE");
    if (result == 0 && !may_succeed)
        fail(fmt::format("REMOVE of segid {}, which this file does not own, succeeded", segid));
    if (own_live == file.segments.end()) {
        if (result != 0)
            rejected();
        return;
    }
    if (result != 0) {
        if (owns(file))
            fail(fmt::format("REMOVE of our own live segid {} failed: {}", segid, strerror(error)));
        shared_.set_segment_state(*own_live, SegmentState::live);
        return;
    }
    shared_.set_segment_state(*own_live, SegmentState::removed);
    for (const auto& record : records_)
        if (record.segment.index == own_live->index && record.segment.generation == own_live->generation)
            remember(record.instance, fmt::format("its segment {} REMOVEd by us", segid));
    file.segments.erase(own_live);
    succeeded();
}

void Worker::op_get(Draws& draws)
{
    FdAlias* alias = choose_fd(draws);
    if (alias == nullptr)
        return note("no descriptor");
    XpmemFile& file = file_of(*alias);
    const uint64_t source = draws.below(100);
    int64_t segid = draws.pick(kGarbageIds);
    std::optional<SegmentSnapshot> before;
    if (source < 70) {
        // Some segment of the table: ours or foreign, live or stale.
        for (int attempt = 0; attempt < 8 && !before; ++attempt) {
            auto segment = shared_.segment(static_cast<uint32_t>(draws.below(kMaxSegments)));
            if (segment && segment->segid > 0 &&
                (segment->state == SegmentState::live || attempt >= 4 || source >= 60))
                before = segment;
        }
    } else if (source < 85 && !file.segments.empty()) {
        before = shared_.segment(file.segments[draws.below(file.segments.size())]);
    }
    if (before)
        segid = before->segid;
    int flags = draws.percent(50) ? kReadWrite : kReadOnly;
    if (draws.percent(6))
        flags = static_cast<int>(draws.pick(std::array<int64_t, 4>{0, 3, -1, 4}));
    const int permit_type = draws.percent(96) ? kPermitMode : static_cast<int>(draws.pick(std::array<int64_t, 3>{0, 2, -1}));

    auto ref = shared_.claim_permit();
    if (!ref)
        return note("permit table full");
    PermitEntry& entry = shared_.permits[ref->index];
    entry.apid.store(0);
    entry.holder_tag.store(tag_);
    entry.file_id.store(file.file_id);
    entry.segment_index.store(UINT32_MAX);
    entry.segment_generation.store(0);
    entry.read_only.store(flags == kReadOnly);

    xpmem_cmd_get command{};
    command.segid = segid;
    command.flags = flags;
    command.permit_type = permit_type;
    command.permit_value = draws.raw();
    command.apid = -77;
    void* argument = &command;
    bool read_only_argument = false;
    prepare_argument(draws, &command, sizeof(command), argument, read_only_argument);
    int error = 0;
    const long result = xpmem_ioctl(alias->fd.get(), XPMEM_CMD_GET, argument, error);
    note("GET fd {} segid {} flags {} type {}{} -> {} {} apid {}", alias->fd.get(), segid, flags, permit_type,
         read_only_argument ? " (read-only struct)" : "", result, strerror(error), command.apid);
    check_foreign_result(file, result, error, "GET");
    const bool valid_arguments = segid > 0 && permit_type == kPermitMode && (flags == kReadOnly || flags == kReadWrite);
    if (result == 0 && !valid_arguments)
        fail(fmt::format("GET accepted segid {} flags {} permit type {}", segid, flags, permit_type));
    if (result != 0) {
        if (read_only_argument && error == EFAULT && owns(file))
            file.unknown_objects = true;
        if (!valid_arguments)
            rejected();
        entry.state.store(static_cast<uint32_t>(PermitState::free));
        return;
    }
    if (command.apid <= 0 || command.apid > INT_MAX)
        fail(fmt::format("GET returned apid {}", command.apid));
    // SysV IPC rules, judged only when the segment was live and unchanged around the call.
    const auto after = before ? shared_.segment(before->ref) : std::nullopt;
    const bool stable = before && before->state == SegmentState::live && after && after->state == SegmentState::live;
    if (stable) {
        const uid_t uid = geteuid();
        uint32_t granted = before->mode & 07;
        if (uid == before->uid)
            granted = (before->mode >> 6) & 07;
        else if (getegid() == before->gid)
            granted = (before->mode >> 3) & 07;
        const uint32_t wanted = flags == kReadOnly ? 04 : 06;
        if (uid != 0 && (granted & wanted) != wanted)
            fail(fmt::format("permission: GET {} of segid {} (owner uid {} gid {} mode {:#o}) by uid {} gid {} succeeded",
                             flags == kReadOnly ? "read-only" : "read-write", segid, before->uid, before->gid, before->mode,
                             uid, getegid()));
        entry.segment_index.store(before->ref.index);
        entry.segment_generation.store(before->ref.generation);
    }
    entry.apid.store(command.apid);
    entry.state.store(static_cast<uint32_t>(PermitState::live), std::memory_order_release);
    file.permits.push_back(*ref);
    succeeded();
}

void Worker::op_release(Draws& draws)
{
    FdAlias* alias = choose_fd(draws);
    if (alias == nullptr)
        return note("no descriptor");
    XpmemFile& file = file_of(*alias);
    const uint64_t source = draws.below(100);
    int64_t apid = draws.pick(kGarbageIds);
    if (source < 65 && !file.permits.empty()) {
        if (auto permit = shared_.permit(file.permits[draws.below(file.permits.size())]))
            apid = permit->apid;
    } else if (source < 90) {
        if (auto permit = shared_.permit(static_cast<uint32_t>(draws.below(kMaxPermits))); permit && permit->apid > 0)
            apid = permit->apid;
    }
    const auto own_live = std::find_if(file.permits.begin(), file.permits.end(), [&](const EntryRef& ref) {
        auto permit = shared_.permit(ref);
        return permit && permit->apid == apid;
    });
    const bool may_succeed = owns(file) && (own_live != file.permits.end() || file.unknown_objects);
    xpmem_cmd_release command{apid};
    int error = 0;
    const long result = xpmem_ioctl(alias->fd.get(), XPMEM_CMD_RELEASE, &command, error);
    note("RELEASE fd {} apid {} -> {} {}", alias->fd.get(), apid, result, strerror(error));
    check_foreign_result(file, result, error, "RELEASE");
    if (result == 0 && !may_succeed)
        fail(fmt::format("RELEASE of apid {}, which this file does not hold, succeeded", apid));
    if (own_live == file.permits.end()) {
        if (result != 0)
            rejected();
        return;
    }
    if (result != 0) {
        if (owns(file))
            fail(fmt::format("RELEASE of our own live apid {} failed: {}", apid, strerror(error)));
        return;
    }
    const EntryRef released = *own_live;
    shared_.set_permit_state(released, PermitState::released);
    file.permits.erase(own_live);
    // The module detached what was attached through it (in the original ranges).
    std::vector<uint64_t> instances;
    for (const auto& record : records_)
        if (record.permit.index == released.index && record.permit.generation == released.generation)
            instances.push_back(record.instance);
    for (uint64_t instance : instances) {
        remember(instance, fmt::format("RELEASE of its apid {} fd {}", apid, alias->fd.get()));
        drop_detached_instance(instance, false);
    }
    succeeded();
}

void Worker::op_attach(Draws& draws)
{
    FdAlias* alias = choose_fd(draws);
    if (alias == nullptr)
        return note("no descriptor");
    XpmemFile& file = file_of(*alias);
    const uint64_t source = draws.below(100);
    int64_t apid = draws.pick(kGarbageIds);
    std::optional<PermitSnapshot> permit;
    bool own_live = false;
    if (source < 75) {
        // One of our live permits, usually of this file.
        std::vector<EntryRef> candidates = file.permits;
        if (candidates.empty() || draws.percent(10))
            for (const auto& [file_id, other] : files_)
                candidates.insert(candidates.end(), other.permits.begin(), other.permits.end());
        if (!candidates.empty())
            permit = shared_.permit(candidates[draws.below(candidates.size())]);
    } else if (source < 90) {
        // Anyone's permit: foreign, or stale.
        permit = shared_.permit(static_cast<uint32_t>(draws.below(kMaxPermits)));
        if (permit && permit->apid <= 0)
            permit.reset();
    }
    if (permit)
        apid = permit->apid;
    for (const auto& ref : file.permits)
        if (auto held = shared_.permit(ref); held && held->apid == apid) {
            own_live = true;
            permit = held;
        }
    const auto segment = permit ? shared_.segment(permit->segment) : std::nullopt;

    // Offset and size: usually a piece of the segment that lies in the owner's arena.
    int64_t offset = 0;
    uint64_t size = kPageSize;
    const uint64_t segment_size = segment ? segment->size : kArenaSize;
    const uint64_t segment_vaddr = segment ? segment->vaddr : kArenaBase;
    const uint64_t overlap_start = std::max<uint64_t>(segment_vaddr, kArenaBase);
    const uint64_t overlap_end = std::min<uint64_t>(segment_vaddr + segment_size, kArenaBase + kArenaSize);
    const uint64_t shape = draws.below(100);
    if (shape < 75 && overlap_start < overlap_end) {
        const uint64_t pages = (overlap_end - overlap_start) / kPageSize;
        const uint64_t first = draws.below(pages);
        offset = static_cast<int64_t>(overlap_start - segment_vaddr + first * kPageSize);
        size = (1 + draws.small_below(pages - first)) * kPageSize;
    } else if (shape < 85) {
        offset = static_cast<int64_t>(draws.below(std::min<uint64_t>(segment_size, 1 << 28) / kPageSize) * kPageSize);
        size = (1 + draws.small_below(1024)) * kPageSize;
    } else {
        const std::array<std::pair<int64_t, uint64_t>, 10> garbage{{
            {1, kPageSize}, {-static_cast<int64_t>(kPageSize), kPageSize}, {0, 0},
            {0, 1}, {0, segment_size + kPageSize}, {static_cast<int64_t>(segment_size), kPageSize},
            {int64_t{1} << 62, kPageSize}, {0, UINT64_MAX}, {0, uint64_t{1} << 60}, {0, kPageSize + 7}}};
        std::tie(offset, size) = draws.pick(garbage);
    }
    uint64_t vaddr = 0;
    const uint64_t placement = draws.below(100);
    const uintptr_t length = page_align_up(size);
    if (placement >= 70 && placement < 88) {
        if (placement < 76 && !records_.empty())
            vaddr = records_[draws.below(records_.size())].start;  // over an attachment: refused
        else
            vaddr = kWindowBase + draws.below(kWindowSize / kPageSize - 1024) * kPageSize;
    } else if (placement >= 88) {
        vaddr = draws.pick(std::array<uint64_t, 6>{kWindowBase + 123, kKernelAddress, kTaskSize, kTaskSize - kPageSize,
                                                   kPageSize, 0xffffffffff600000ULL});
    }
    const bool fixed_in_window = vaddr >= kWindowBase && vaddr + length <= kWindowBase + kWindowSize && length <= kWindowSize;
    if (vaddr != 0 && !fixed_in_window && vaddr < kTaskSize && page_aligned(vaddr) && size <= kTaskSize &&
        length <= kTaskSize - vaddr)
        vaddr = 0;  // a valid fixed address outside our window would map over our own memory

    bool must_fail = !own_live && !file.unknown_objects;
    must_fail |= offset < 0 || !page_aligned(static_cast<uint64_t>(offset)) || size == 0 || size > kTaskSize || !page_aligned(vaddr);
    must_fail |= vaddr != 0 && (vaddr >= kTaskSize || length > kTaskSize - vaddr);
    must_fail |= vaddr != 0 && overlaps_record(vaddr, length);
    if (own_live && segment)
        must_fail |= static_cast<uint64_t>(offset) > segment_size || length > segment_size - static_cast<uint64_t>(offset);
    const bool removed_before = segment && segment->state == SegmentState::removed;
    must_fail |= removed_before;

    xpmem_cmd_attach command{};
    command.apid = apid;
    command.offset = offset;
    command.size = size;
    command.vaddr = vaddr;
    command.fd = static_cast<int>(draws.raw());
    command.flags = static_cast<int>(draws.raw());
    void* argument = &command;
    bool read_only_argument = false;
    if (vaddr == 0)  // an unknown address then: harmless
        prepare_argument(draws, &command, sizeof(command), argument, read_only_argument);
    int error = 0;
    const long result = xpmem_ioctl(alias->fd.get(), XPMEM_CMD_ATTACH, argument, error);
    note("ATTACH fd {} apid {} offset {:#x} size {:#x} vaddr {:#x}{} -> {} {} at {:#x}", alias->fd.get(), apid, offset, size,
         vaddr, read_only_argument ? " (read-only struct)" : "", result, strerror(error), command.vaddr);
    check_foreign_result(file, result, error, "ATTACH");
    if (result == 0 && must_fail)
        fail(fmt::format("ATTACH should have been refused (apid {} {}held by this file, offset {:#x}, size {:#x}, vaddr {:#x}, "
                         "segment size {:#x}{})",
                         apid, own_live ? "" : "not ", offset, size, vaddr, segment_size,
                         removed_before ? ", segment removed" : ""));
    if (result != 0) {
        if (must_fail)
            rejected();
        return;
    }
    const uintptr_t address = command.vaddr;
    if ((vaddr != 0 && address != vaddr) || !page_aligned(address) || address >= kTaskSize)
        fail(fmt::format("ATTACH returned address {:#x} for requested {:#x}", address, vaddr));
    if (overlaps_record(address, length))
        fail(fmt::format("ATTACH mapped [{:#x}, {:#x}) over one of our attachments", address, address + length));
    AttachRecord record;
    record.start = address;
    record.length = length;
    record.owner_address = segment_vaddr + static_cast<uint64_t>(offset);
    record.owner_tag = segment ? segment->owner_tag : 0;
    record.segment = segment ? segment->ref : EntryRef{};
    record.permit = permit ? permit->ref : EntryRef{};
    record.instance = next_instance_++;
    record.origin_tag = tag_;
    record.instance_start = address;
    record.instance_length = length;
    record.read_only = permit ? permit->read_only : true;
    records_.push_back(record);
    remember(record.instance, fmt::format("ATTACH fd {} (file {}) apid {} segid {} owner tag {} offset {:#x} -> [{:#x}, {:#x})",
                                          alias->fd.get(), file.file_id, apid, segment ? segment->segid : -1, record.owner_tag,
                                          offset, address, address + length));
    // Bounded bookkeeping: detach the oldest pieces past the limit.
    while (records_.size() > kMaxRecords) {
        xpmem_cmd_detach detach{records_.front().start};
        ioctl(alias->fd.get(), XPMEM_CMD_DETACH, &detach);
        munmap(as_pointer(records_.front().start), records_.front().length);
        forget_range(records_.front().start, records_.front().length);
    }
    succeeded();
}

void Worker::op_detach(Draws& draws)
{
    FdAlias* alias = choose_fd(draws);
    if (alias == nullptr)
        return note("no descriptor");
    XpmemFile& file = file_of(*alias);
    AttachRecord* record = draws.percent(80) ? choose_record(draws, false) : nullptr;
    uint64_t vaddr = draws.pick(std::array<uint64_t, 6>{0, kArenaBase, kWindowBase + kWindowSize - kPageSize, kKernelAddress,
                                                        kTaskSize, UINT64_MAX});
    if (record != nullptr)
        vaddr = record->start + (draws.percent(80) ? draws.below(record->length / kPageSize) * kPageSize
                                                   : draws.below(record->length));
    // A "garbage" address may still fall in one of our pieces.
    for (auto& piece : records_)
        if (vaddr >= piece.start && vaddr - piece.start < piece.length)
            record = &piece;
    const uint64_t instance = record != nullptr ? record->instance : 0;
    xpmem_cmd_detach command{vaddr};
    int error = 0;
    const long result = xpmem_ioctl(alias->fd.get(), XPMEM_CMD_DETACH, &command, error);
    note("DETACH fd {} vaddr {:#x} -> {} {}", alias->fd.get(), vaddr, result, strerror(error));
    check_foreign_result(file, result, error, "DETACH");
    if (instance != 0)
        remember(instance, fmt::format("DETACH vaddr {:#x} fd {} (file {}) -> {} {}", vaddr, alias->fd.get(), file.file_id, result,
                                       strerror(error)));
    if (result == 0 && instance != 0 && owns(file)) {
        drop_detached_instance(instance, false);
        succeeded();
    }
}

void Worker::op_read(Draws& draws)
{
    const AttachRecord* chosen = choose_record(draws, true);
    if (chosen == nullptr)
        return note("no attachment of our arenas");
    const AttachRecord record = *chosen;  // check_word may change nothing, but fail() must not see a dangling one
    uintptr_t first = 0, end = 0;
    arena_span(record, first, end);
    const uint64_t pages = (end - first) / kPageSize;
    const uint64_t mode = draws.below(3);
    note("read mode {} of {}", mode, describe_record(record));
    if (mode == 0) {
        const uintptr_t page = first + draws.below(pages) * kPageSize;
        for (uintptr_t word = page; word < page + kPageSize; word += 8)
            check_word(record, word, false);
    } else if (mode == 1) {
        for (int count = 0; count < 64; ++count)
            check_word(record, first + draws.below((end - first) / 8) * 8, false);
    } else {
        const uint64_t start_page = draws.below(pages);
        for (uint64_t page = start_page; page < std::min(pages, start_page + 128); ++page)
            check_word(record, first + page * kPageSize + draws.below(kPageSize / 8) * 8, false);
    }
    succeeded();
}

void Worker::op_write(Draws& draws)
{
    const AttachRecord* chosen = choose_record(draws, true);
    if (chosen == nullptr)
        return note("no attachment of our arenas");
    const AttachRecord record = *chosen;
    uintptr_t first = 0, end = 0;
    arena_span(record, first, end);
    const uint64_t count = 1 + draws.small_below(64);
    note("write {} words through {}", count, describe_record(record));
    for (uint64_t index = 0; index < count; ++index) {
        const uintptr_t word = first + draws.below((end - first) / 8) * 8;
        check_word(record, word, true);
        check_word(record, word, false);
    }
    succeeded();
}

void Worker::op_bad_ioctl(Draws& draws)
{
    FdAlias* alias = choose_fd(draws);
    if (alias == nullptr)
        return note("no descriptor");
    XpmemFile& file = file_of(*alias);
    const uint64_t variant = draws.below(3);
    unsigned long command = 0;
    void* argument = nullptr;
    if (variant == 0) {
        // Not one of ours: other numbers, directions and sizes of type 'x', and other types.
        command = draws.percent(70) ? _IOC(draws.below(4), XPMEM_IOC_MAGIC, 9 + draws.below(247), draws.below(1 << 14))
                                    : _IOC(draws.below(4), 'y' + draws.below(5), draws.below(9), draws.below(64));
        if (draws.percent(30))
            command = _IOWR(XPMEM_IOC_MAGIC, 1 + draws.below(6), xpmem_cmd_make);
        argument = as_pointer(kWindowBase);
    } else {
        // One of ours with a pointer that does not point at a readable struct.
        command = draws.pick(std::array<unsigned long, 6>{XPMEM_CMD_MAKE, XPMEM_CMD_REMOVE, XPMEM_CMD_GET,
                                                          XPMEM_CMD_RELEASE, XPMEM_CMD_ATTACH, XPMEM_CMD_DETACH});
        argument = as_pointer(draws.pick(std::array<uint64_t, 5>{0, kKernelAddress, 0xffffffff81000000ULL,
                                                                 kWindowBase + kWindowSize - kPageSize, 1}));
    }
    int error = 0;
    const long result = xpmem_ioctl(alias->fd.get(), command, argument, error);
    note("ioctl fd {} command {:#x} argument {} -> {} {}", alias->fd.get(), command, argument, result, strerror(error));
    check_foreign_result(file, result, error, "a garbage ioctl");
    if (result >= 0)  // every one of them must be refused
        fail(fmt::format("ioctl {:#x} with argument {} succeeded ({})", command, argument, result));
    rejected();
}

void Worker::op_raw_mmap(Draws& draws)
{
    FdAlias* alias = choose_fd(draws);
    if (alias == nullptr)
        return note("no descriptor");
    const size_t length = (1 + draws.small_below(16)) * kPageSize;
    const off_t offset = static_cast<off_t>(draws.pick(std::array<uint64_t, 4>{0, kArenaBase, (uint64_t{1} << 47) | kArenaBase,
                                                                                (uint64_t{2} << 47) | kArenaBase}));
    const int protection = draws.percent(50) ? PROT_READ : PROT_READ | PROT_WRITE;
    const int flags = draws.percent(80) ? MAP_SHARED : MAP_PRIVATE;
    void* address = mmap(nullptr, length, protection, flags, alias->fd.get(), offset);
    note("mmap /dev/xpmem fd {} offset {:#x} -> {}", alias->fd.get(), offset, address);
    if (address != MAP_FAILED) {
        munmap(address, length);
        fail(fmt::format("mmap of /dev/xpmem outside ATTACH succeeded (offset {:#x})", offset));
    }
    rejected();
}

void Worker::op_version(Draws& draws)
{
    FdAlias* alias = choose_fd(draws);
    if (alias == nullptr)
        return note("no descriptor");
    const unsigned long command = draws.pick(std::array<unsigned long, 3>{XPMEM_CMD_VERSION, XPMEM_CMD_FORK_BEGIN, XPMEM_CMD_FORK_END});
    int error = 0;
    const long result = xpmem_ioctl(alias->fd.get(), command, as_pointer(draws.raw()), error);
    note("ioctl {:#x} fd {} -> {:#x} {}", command, alias->fd.get(), result, strerror(error));
    check_foreign_result(file_of(*alias), result, error, "VERSION/FORK_BEGIN/FORK_END");
    if (result >= 0)
        succeeded();
}

} // namespace xpmem_fuzz
