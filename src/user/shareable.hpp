// Making this process's private memory shareable in place, segment by segment, and
// private again after fork.
//
// Converted memory lives in memfds that belong to one segment each: a segment's memory at
// address A is a MAP_SHARED mapping of its file at offset A - segment start, and the file
// is exactly as large as the segment (sealed). Memory the owner can write and memory it
// cannot live in different files. Memory the owner moves (mremap) goes back into private
// memory (following the owner, below); where the kernel cannot follow, it keeps its file
// offsets, and new memory at its old address goes into another file of the segment. A
// file is handed out only under permits for its own segment. So a descriptor reaches memory of
// the segment it was handed out for and nothing else, and a descriptor of read-only
// memory never writes it. The files are mode 0400: a read-only descriptor cannot be reopened for
// writing through /proc by anyone but root (or the owner's uid, which can chmod it back).
//
// Conversion fills the file with the same bytes, without losing a store made meanwhile:
//   - private anonymous writable memory is write-protected with userfaultfd (writers
//     block in the kernel), copied, the copy mremap'ed over it, then writers are woken;
//   - our own files (memory moving to another segment's file, or back into private memory)
//     are write-protected the same way (Linux 5.19 and newer);
//   - private file mappings (.data) cannot be registered with userfaultfd: they are made
//     read-only for the copy, and a SIGSEGV handler parks any writer until the copy is in
//     place;
//   - memory nobody can write (read-only mappings) is simply copied.
// Conversions run in steps of at most 2 MiB, which bounds how long a writer stalls.
// Between write-protect and wake nothing allocates or takes a lock: a blocked writer may
// hold the allocator's lock or the library's.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <span>
#include <utility>

#include "user/address_space.hpp"
#include "util/unique_fd.hpp"

namespace xpmem::user {

// A segment as conversion sees it.
struct SegmentRange {
    std::int64_t segid;
    std::uintptr_t start;
    std::size_t size;
};

// Every member is called with the backing lock held (user_backend.cpp), by the service
// thread, or by the follower thread (follow_unmapped, follow_message).
class Backing {
  public:
    using Holder = std::pair<std::uint64_t, std::uint64_t>;  // (session, permit) of a peer

    // One file of converted memory.
    struct File {
        util::UniqueFd fd;
        std::int64_t segid;    // the segment it belongs to (which may be removed since)
        std::uintptr_t start;  // the segment's range: file offset 0 is this address
        std::size_t size;
        bool writable_memory;      // holds memory the owner could write when converted
        bool handed_out = false;   // a descriptor of it left this process
        std::set<Holder> holders;  // the permits it was handed out under, still live
        dev_t device = 0;
        // Where the owner maps it at its natural place (address = start + offset), as
        // converted; what of that it no longer maps is punched (follow_unmapped).
        std::map<std::uintptr_t, std::uintptr_t> followed;  // start -> end
    };

    Backing();

    // The file `vma` maps, if it is one of ours.
    File *file_of(const Vma &vma);

    // Converts [start, end) of `vma` in place into `segment`'s file for memory of that
    // protection, and returns the file. `vma` is private memory, or a mapping of another
    // segment's file that was never handed out (the range then leaves that file). The
    // range must hold no thread descriptor (threads.hpp). `maps` is the address space.
    File &make_shareable(const SegmentRange &segment, const Vma &vma, std::uintptr_t start,
                         std::uintptr_t end, std::span<const Vma> maps);

    // Makes the page at `offset` of `file` present, zeroed if it was not, and mapped where
    // the owner maps it: a page in the file that the owner's page table lacks would make
    // the owner's system calls on it fail (minor faults reach the follower from user mode
    // only).
    void populate(File &file, std::uint64_t offset) noexcept;

    // A descriptor of `file` to hand out under `holder`: read-write, or reopened read-only.
    util::UniqueFd descriptor(File &file, bool writable, const Holder &holder);

    // Forgets the holders for which `gone` is true, and takes back every file handed out
    // that has no holder left: its memory moves into private memory of the owner, the
    // file is emptied, and whatever descriptors are still out there reach nothing of it.
    void forget_holders(const std::function<bool(const Holder &)> &gone);

    // Closes the files the owner no longer maps anywhere in `maps`.
    void forget_unmapped(std::span<const Vma> maps);

    // ---- following the owner ---------------------------------------------------------
    //
    // Converted memory is registered with one userfaultfd that reports the owner's unmaps,
    // remaps and removes (MADV_DONTNEED, MADV_REMOVE), and minor faults: the owner touching
    // a page whose page-table entry a remove dropped. The thread that reads it brings the
    // files in line before it reads each message. A thread unmapping or moving converted
    // memory waits until its message is read, so by the time munmap or mremap returns the
    // old memory is out of every attacher's reach. A remove is reported before it happens:
    // its range is punched right after the message is read, and an owner access that comes
    // sooner faults and waits for that. No member below allocates from the heap: the thread
    // that waits may hold the allocator's lock.

    // The userfaultfd, or -1 where the kernel cannot follow (before Linux 5.14).
    int follow_fd() const { return follow_.get(); }
    // Punches the offsets of every file whose memory the owner no longer maps at its
    // natural place; memory it moved elsewhere goes back into private memory first.
    void follow_unmapped() noexcept;
    // Reads and acts on one message of follow_fd(), if one is pending.
    void follow_message() noexcept;
    // Both, for every message pending now.
    void follow_pending() noexcept;

    // In a fork child: gives every mapping of our files private copy-on-write semantics
    // again by copying it into private anonymous memory in place.
    void make_private_after_fork() noexcept;

  private:
    File &file_for(const SegmentRange &segment, bool writable_memory, std::uint64_t offset,
                   std::uint64_t length, std::span<const Vma> maps);
    void take_back(const File &file, std::span<const Vma> maps);
    void follow(File &file, std::uintptr_t start, std::uintptr_t end);
    void unfollow(std::uintptr_t start, std::uintptr_t end) noexcept;
    static bool natural(ino_t inode, const File &file, const MapEntry &entry);
    bool follow_gone(ino_t inode, File &file, std::uintptr_t start, std::uintptr_t end,
                     std::span<const MapEntry> maps) noexcept;
    void punch_followed(std::uintptr_t start, std::uintptr_t end) noexcept;
    bool resolve_minor(std::uintptr_t page) noexcept;
    void wake_page(std::uintptr_t page) noexcept;

    std::map<ino_t, File> files_;  // all memfds live on one device
    util::UniqueFd follow_;
    std::uint64_t follow_mode_ = 0;  // UFFDIO_REGISTER_MODE_MINOR, or _WP where only that works
    MapsSnapshot maps_;
    // Minor faults read while events were still pending, resolved after them.
    std::array<std::uintptr_t, 64> waiting_minor_{};
    std::size_t waiting_minor_count_ = 0;
};

// Forgets a closed guard window once its stragglers have been served; true while one is
// still pending (the caller checks again later).
bool expire_guard_window() noexcept;

}  // namespace xpmem::user
