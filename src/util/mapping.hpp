#pragma once

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

namespace xpmem::util {

inline constexpr std::size_t kPageSize = 4096;

constexpr std::uintptr_t page_down(std::uintptr_t a) {
    return a & ~(kPageSize - 1);
}
constexpr std::uintptr_t page_up(std::uintptr_t a) {
    return (a + kPageSize - 1) & ~(kPageSize - 1);
}
constexpr bool page_aligned(std::uintptr_t a) {
    return (a & (kPageSize - 1)) == 0;
}

// mremap(from, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, to) as a raw system call: libraries
// that interpose mremap see only four arguments (UCX 1.13's memory hooks, say, which patch
// libc's own entry point) and pass garbage for `to`, moving the memory anywhere.
inline void *move_mapping(void *from, std::size_t size, void *to) noexcept {
    return reinterpret_cast<void *>(
        ::syscall(SYS_mremap, from, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, to));
}

// Owns one mmap'ed range; unmaps it on destruction.
class Mapping {
  public:
    Mapping() noexcept = default;
    Mapping(void *address, std::size_t size) noexcept
        : bytes_(static_cast<std::byte *>(address), size) {}
    Mapping(Mapping &&other) noexcept : bytes_(std::exchange(other.bytes_, {})) {}
    Mapping &operator=(Mapping &&other) noexcept {
        reset();
        bytes_ = std::exchange(other.bytes_, {});
        return *this;
    }
    Mapping(const Mapping &) = delete;
    Mapping &operator=(const Mapping &) = delete;
    ~Mapping() { reset(); }

    std::byte *data() const noexcept { return bytes_.data(); }
    std::size_t size() const noexcept { return bytes_.size(); }
    std::uintptr_t address() const noexcept { return reinterpret_cast<std::uintptr_t>(data()); }
    explicit operator bool() const noexcept { return data() != nullptr; }
    // Forgets the range without unmapping it (it was moved over by mremap, or handed on).
    void release() noexcept { bytes_ = {}; }
    void reset() noexcept {
        if (data() != nullptr) ::munmap(data(), size());
        bytes_ = {};
    }

  private:
    std::span<std::byte> bytes_;
};

}  // namespace xpmem::util
