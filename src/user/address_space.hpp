// This process's own address space, as /proc/self/maps and /proc/self/pagemap show it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "util/mapping.hpp"
#include "util/unique_fd.hpp"

namespace xpmem::user {

// One line of /proc/self/maps, without its path.
struct MapEntry {
    std::uintptr_t start = 0;
    std::uintptr_t end = 0;
    bool readable = false;
    bool writable = false;
    bool executable = false;
    bool shared = false;
    std::uint64_t offset = 0;
    dev_t device = 0;
    ino_t inode = 0;
};

// A mapping with its path.
struct Vma : MapEntry {
    std::string path;

    bool file_backed() const { return inode != 0; }
    int protection() const;
    // [vdso], [vvar], [vsyscall] and hugetlb mappings cannot be handed over.
    bool special() const;
    // A SysV shared memory segment's mapping: its inode is the segment's shm id.
    bool sysv_shm() const;
};

// The mappings in address order.
std::vector<Vma> read_maps();

// /proc/self/maps read without allocating from the heap (its buffers are mappings of their
// own): for a thread that must not take the allocator's lock, because an application thread
// that holds it may be waiting for that thread.
class MapsSnapshot {
  public:
    // The mappings in address order, valid until the next read().
    std::span<const MapEntry> read();

  private:
    void grow(util::Mapping &buffer);
    util::Mapping text_;
    util::Mapping entries_;
};

// Page flags from /proc/self/pagemap (readable without privileges; PFNs are not used).
class Pagemap {
  public:
    static constexpr std::uint64_t kPresent = std::uint64_t{1} << 63;
    static constexpr std::uint64_t kSwapped = std::uint64_t{1} << 62;
    static constexpr std::uint64_t kFileOrShared = std::uint64_t{1} << 61;

    Pagemap();
    // One entry per page from `start`; allocates nothing.
    void read(std::uintptr_t start, std::span<std::uint64_t> entries) const;
    // Whether any page of [start, end) is private anonymous memory (a copy-on-write copy
    // in a file mapping, say).
    bool any_anonymous(std::uintptr_t start, std::uintptr_t end) const;

  private:
    util::UniqueFd fd_;
};

// [start, end) of this process's addresses.
struct Range {
    std::uintptr_t start;
    std::uintptr_t end;
};

// The buffers this process registered with io_uring (IORING_REGISTER_BUFFERS), from the
// fdinfo of its io_uring descriptors, sorted. The kernel pinned their pages: a conversion
// that replaced them would leave io_uring reading and writing pages no longer mapped.
std::vector<Range> io_uring_buffers();

// This process's IPC namespace (the inode of /proc/self/ns/ipc), where SysV shm ids name
// segments; 0 if unknown.
std::uint64_t ipc_namespace();

// Opens the object `vma` maps, verified to be that object, writable if asked and allowed;
// an invalid fd if it cannot be reached (a deleted file without an open descriptor, say).
util::UniqueFd open_mapped_object(const Vma &vma, bool writable);

}  // namespace xpmem::user
