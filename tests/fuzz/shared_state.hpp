// The table every fuzzing process shares: a memfd mapped MAP_SHARED, created by the
// supervisor before the first fork; its descriptor survives execve, so re-executed
// processes map it again. It holds what makes ids "foreign" and "stale" for real (every
// segment and permit with its state), the per-page sequence counters that tell readers
// when an owner's page may legitimately read as zero, heartbeats for hang detection, the
// first failure and the operation counts.
#pragma once

#include "op_kinds.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace xpmem_fuzz {

constexpr size_t kPageSize = 4096;
// Every process keeps its stamped memory ("arena") at the same address: memory of the
// wrong owner then differs only in the owner tag of its stamps, which is what a mix-up
// between owners looks like. 2 MiB aligned, so that MADV_COLLAPSE can make a huge page.
constexpr uintptr_t kArenaBase = 0x40000000000;
constexpr size_t kArenaPages = 512;
constexpr size_t kArenaSize = kArenaPages * kPageSize;
constexpr uintptr_t kScratchBase = 0x41000000000;  // owner mremap staging, unvalidated
constexpr uintptr_t kWindowBase = 0x50000000000;   // fixed attach and mremap targets
constexpr size_t kWindowSize = size_t{1} << 28;
constexpr uintptr_t kMapperBase = 0x60000000000;   // the mmap/munmap thread's playground
constexpr size_t kMapperSize = size_t{1} << 26;
constexpr uint64_t kTaskSize = 0x7ffffffff000;     // 4-level paging (the guest has la57=off)

constexpr uint32_t kMaxIdentities = 2048;
constexpr uint32_t kMaxSegments = 2048;
constexpr uint32_t kMaxPermits = 4096;
constexpr uint32_t kMaxWorkers = 64;

// A stamp: owner tag (16 bits, never 0), generation (8 bits), owner address / 8 (40 bits).
// Zero is never a stamp.
constexpr uint8_t kAttacherGeneration = 0xff;  // written through an attachment
constexpr uint64_t make_stamp(uint32_t tag, uintptr_t owner_address, uint8_t generation)
{
    return uint64_t{tag} << 48 | uint64_t{generation} << 40 | ((owner_address >> 3) & ((uint64_t{1} << 40) - 1));
}
constexpr uint32_t stamp_tag(uint64_t stamp) { return static_cast<uint32_t>(stamp >> 48); }
constexpr uintptr_t stamp_address(uint64_t stamp) { return (stamp & ((uint64_t{1} << 40) - 1)) << 3; }
constexpr unsigned stamp_generation(uint64_t stamp) { return static_cast<unsigned>((stamp >> 40) & 0xff); }
constexpr bool in_arena(uintptr_t address) { return address >= kArenaBase && address < kArenaBase + kArenaSize; }

enum class Role : uint32_t { worker, fork_child, exec_prelude, exec_continuer };
// claiming: taken, heartbeat not set yet (the hang check skips it).
enum class IdentityState : uint32_t { free, running, exited, claiming };

// One process image: a worker, a fork child, or a process after execve.
struct Identity {
    std::atomic<uint32_t> state;
    std::atomic<uint32_t> tag;
    std::atomic<int32_t> pid;
    std::atomic<uint32_t> parent_tag;
    std::atomic<uint32_t> role;
    std::atomic<uint32_t> worker;
    std::atomic<uint64_t> seed;
    std::atomic<uint64_t> op_number;
    std::atomic<uint32_t> op_kind;
    std::atomic<uint64_t> progress_ns;  // CLOCK_MONOTONIC when the current op began
    // Odd while the page may read as zero (fresh, DONTNEEDed, unmapped): a seqlock that
    // lets a reader tell a legitimate zero from lost memory.
    std::atomic<uint32_t> page_sequence[kArenaPages];
};

struct EntryRef {
    uint32_t index = UINT32_MAX;
    uint32_t generation = 0;
    bool known() const { return index != UINT32_MAX; }
};

enum class SegmentState : uint32_t { free, creating, live, removing, removed, closing };
enum class PermitState : uint32_t { free, creating, live, releasing, released, closing };

struct SegmentEntry {
    std::atomic<uint32_t> state;
    std::atomic<uint32_t> generation;
    std::atomic<int64_t> segid;
    std::atomic<uint32_t> owner_tag;  // whose memory (the identity that opened the file)
    std::atomic<uint32_t> uid, gid, mode;
    std::atomic<uint64_t> vaddr, size, file_id;
};

struct PermitEntry {
    std::atomic<uint32_t> state;
    std::atomic<uint32_t> generation;
    std::atomic<int64_t> apid;
    std::atomic<uint32_t> holder_tag;
    std::atomic<uint64_t> file_id;
    std::atomic<uint32_t> segment_index, segment_generation;
    std::atomic<uint32_t> read_only;
};

struct SegmentSnapshot {
    EntryRef ref;
    SegmentState state;
    int64_t segid;
    uint32_t owner_tag, uid, gid, mode;
    uint64_t vaddr, size, file_id;
};

struct PermitSnapshot {
    EntryRef ref;
    PermitState state;
    int64_t apid;
    uint32_t holder_tag;
    uint64_t file_id;
    EntryRef segment;
    bool read_only;
};

// What processes did to attachments, for failure reports that span a fork (an attachment
// inherited through MADV_DOFORK is changed by both processes). A ring: old events drop out.
constexpr uint32_t kSharedEvents = 8192;
struct SharedEvent {
    std::atomic<uint64_t> key;  // attaching process's tag << 32 | its attach number; 0: empty
    char text[184];             // written before key is published; a torn text is only cosmetic
};

struct WorkerSlot {
    std::atomic<int32_t> pid;
    std::atomic<uint32_t> generation;
    std::atomic<uint64_t> operations_done;
    std::atomic<uint32_t> finished;
};

struct Counters {
    std::atomic<uint64_t> attempts[kOpKinds];
    std::atomic<uint64_t> successes[kOpKinds];
    std::atomic<uint64_t> sigbus, sigsegv, words_validated, zero_words, revoked_faults,
        expected_rejections, processes;
};

struct SharedState {
    static constexpr uint64_t kMagic = 0x58504d454d465a5aULL;
    uint64_t magic;
    uint64_t seed;
    uint64_t disabled_mask;        // bit per OpKind
    uint64_t disabled_advice_mask; // bit per advice index (see the worker)
    uint64_t disabled_mremap_mask; // bit per attachment-mremap variant (kMremapVariants)
    uint32_t weights[kOpKinds];    // kOpKindInfo's, as changed by --weight
    uint32_t trace;
    uint32_t hang_seconds;
    uint32_t processes;
    uint64_t operations_per_worker;  // 0: until the deadline
    uint64_t deadline_ns;            // 0: none
    char self_path[256];
    std::atomic<uint32_t> stop;
    std::atomic<uint32_t> failed;
    char failure[4096];
    std::atomic<uint64_t> next_file_id, identity_cursor, segment_cursor, permit_cursor, event_cursor;
    Counters counters;
    WorkerSlot workers[kMaxWorkers];
    Identity identities[kMaxIdentities];
    SegmentEntry segments[kMaxSegments];
    PermitEntry permits[kMaxPermits];
    SharedEvent events[kSharedEvents];

    Identity* identity(uint32_t tag)
    {
        Identity& slot = identities[tag % kMaxIdentities];
        return slot.tag.load(std::memory_order_acquire) == tag ? &slot : nullptr;
    }

    // A new identity with a tag not used recently, or nullptr when all are busy.
    Identity* claim_identity()
    {
        for (uint32_t attempt = 0; attempt < kMaxIdentities; ++attempt) {
            const uint64_t cursor = identity_cursor.fetch_add(1);
            const uint32_t tag = static_cast<uint32_t>(cursor % 65535) + 1;
            Identity& slot = identities[tag % kMaxIdentities];
            uint32_t state = slot.state.load();
            if ((state != static_cast<uint32_t>(IdentityState::free) && state != static_cast<uint32_t>(IdentityState::exited)) ||
                !slot.state.compare_exchange_strong(state, static_cast<uint32_t>(IdentityState::claiming)))
                continue;
            slot.tag.store(tag, std::memory_order_release);
            for (auto& sequence : slot.page_sequence)
                sequence.store(0);
            return &slot;
        }
        return nullptr;
    }

    std::optional<EntryRef> claim_segment()
    {
        for (uint32_t attempt = 0; attempt < kMaxSegments; ++attempt) {
            const uint32_t index = static_cast<uint32_t>(segment_cursor.fetch_add(1) % kMaxSegments);
            SegmentEntry& entry = segments[index];
            uint32_t state = entry.state.load();
            const auto reusable = [](uint32_t s) {
                return s == static_cast<uint32_t>(SegmentState::free) ||
                       s == static_cast<uint32_t>(SegmentState::removed) ||
                       s == static_cast<uint32_t>(SegmentState::closing);
            };
            if (!reusable(state) ||
                !entry.state.compare_exchange_strong(state, static_cast<uint32_t>(SegmentState::creating)))
                continue;
            return EntryRef{index, entry.generation.fetch_add(1) + 1};
        }
        return std::nullopt;
    }

    std::optional<EntryRef> claim_permit()
    {
        for (uint32_t attempt = 0; attempt < kMaxPermits; ++attempt) {
            const uint32_t index = static_cast<uint32_t>(permit_cursor.fetch_add(1) % kMaxPermits);
            PermitEntry& entry = permits[index];
            uint32_t state = entry.state.load();
            const auto reusable = [](uint32_t s) {
                return s == static_cast<uint32_t>(PermitState::free) ||
                       s == static_cast<uint32_t>(PermitState::released) ||
                       s == static_cast<uint32_t>(PermitState::closing);
            };
            if (!reusable(state) ||
                !entry.state.compare_exchange_strong(state, static_cast<uint32_t>(PermitState::creating)))
                continue;
            return EntryRef{index, entry.generation.fetch_add(1) + 1};
        }
        return std::nullopt;
    }

    // A consistent view of an entry (same generation before and after), or nullopt.
    std::optional<SegmentSnapshot> segment(uint32_t index)
    {
        SegmentEntry& entry = segments[index % kMaxSegments];
        const uint32_t before = entry.generation.load(std::memory_order_acquire);
        SegmentSnapshot view{EntryRef{index % kMaxSegments, before},
                             static_cast<SegmentState>(entry.state.load(std::memory_order_acquire)),
                             entry.segid.load(), entry.owner_tag.load(), entry.uid.load(),
                             entry.gid.load(), entry.mode.load(), entry.vaddr.load(),
                             entry.size.load(), entry.file_id.load()};
        if (entry.generation.load(std::memory_order_acquire) != before)
            return std::nullopt;
        return view;
    }
    std::optional<SegmentSnapshot> segment(EntryRef ref)
    {
        auto view = segment(ref.index);
        if (!ref.known() || !view || view->ref.generation != ref.generation)
            return std::nullopt;
        return view;
    }

    std::optional<PermitSnapshot> permit(uint32_t index)
    {
        PermitEntry& entry = permits[index % kMaxPermits];
        const uint32_t before = entry.generation.load(std::memory_order_acquire);
        PermitSnapshot view{EntryRef{index % kMaxPermits, before},
                            static_cast<PermitState>(entry.state.load(std::memory_order_acquire)),
                            entry.apid.load(), entry.holder_tag.load(), entry.file_id.load(),
                            EntryRef{entry.segment_index.load(), entry.segment_generation.load()},
                            entry.read_only.load() != 0};
        if (entry.generation.load(std::memory_order_acquire) != before)
            return std::nullopt;
        return view;
    }
    std::optional<PermitSnapshot> permit(EntryRef ref)
    {
        auto view = permit(ref.index);
        if (!ref.known() || !view || view->ref.generation != ref.generation)
            return std::nullopt;
        return view;
    }

    void set_segment_state(EntryRef ref, SegmentState state)
    {
        SegmentEntry& entry = segments[ref.index];
        if (entry.generation.load() == ref.generation)
            entry.state.store(static_cast<uint32_t>(state), std::memory_order_release);
    }
    void set_permit_state(EntryRef ref, PermitState state)
    {
        PermitEntry& entry = permits[ref.index];
        if (entry.generation.load() == ref.generation)
            entry.state.store(static_cast<uint32_t>(state), std::memory_order_release);
    }
};

} // namespace xpmem_fuzz
