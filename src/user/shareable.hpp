// Making this process's private memory shareable in place, and private again after fork.
//
// Every process has one backing memfd. Private memory at address A becomes a MAP_SHARED
// mapping of the backing at file offset A (so neighbouring conversions merge into one
// VMA), filled with the same bytes, without losing a store made meanwhile:
//   - private anonymous writable memory is write-protected with userfaultfd (writers
//     block in the kernel), copied, the copy mremap'ed over it, then writers are woken;
//   - private file mappings that are writable (.data) cannot be registered with
//     userfaultfd: they are made read-only for the copy, and a SIGSEGV handler parks any
//     writer until the copy is in place;
//   - memory nobody can write (read-only mappings) is simply copied.
// Conversions run in steps of at most 2 MiB, which bounds how long a writer stalls.
// Between write-protect and wake nothing allocates or takes a lock: a blocked writer may
// hold the allocator's lock or the library's.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>

#include "user/address_space.hpp"
#include "util/unique_fd.hpp"

namespace xpmem::user {

struct Interval {
    std::uintptr_t start;
    std::uintptr_t end;
};

class Backing {
  public:
    Backing();

    int fd() const { return fd_.get(); }
    // A read-only descriptor of the same file, for read-only permits.
    int read_only_fd() const { return read_only_fd_.get(); }
    // Whether `vma` is a mapping of this backing.
    bool backs(const Vma &vma) const {
        return vma.shared && vma.inode == inode_ && vma.device == device_;
    }
    dev_t device() const { return device_; }
    ino_t inode() const { return inode_; }

    // Converts [start, end) of private `vma` in place. `maps` is the current address
    // space and `ours` the library's own mappings (attachments), which may alias the
    // backing anywhere; `unprotectable` lists, sorted, the pages that must not be
    // write-protected (threads.hpp). Returns the file offset where `start` now lives.
    std::uint64_t make_shareable(const Vma &vma, std::uintptr_t start, std::uintptr_t end,
                                 std::span<const Vma> maps, std::span<const Interval> ours,
                                 std::span<const std::uintptr_t> unprotectable);

  private:
    std::uint64_t choose_offset(std::uintptr_t start, std::uintptr_t end, std::span<const Vma> maps,
                                std::span<const Interval> ours);

    util::UniqueFd fd_;
    util::UniqueFd read_only_fd_;
    dev_t device_ = 0;
    ino_t inode_ = 0;
    std::uint64_t next_spill_offset_;
};

// In a fork child: gives every mapping of the parent's backing private copy-on-write
// semantics again by copying it into private anonymous memory in place.
void make_private_after_fork(int backing_fd) noexcept;

// Forgets a closed guard window once its stragglers have been served; true while one is
// still pending (the caller checks again later).
bool expire_guard_window() noexcept;

}  // namespace xpmem::user
