// Pages where the kernel writes on a thread's behalf when it returns to user space: the
// rseq area glibc registers for every thread, which lives in the thread's TLS block.
//
// An unprivileged process must use UFFD_USER_MODE_ONLY; a kernel write into a page it
// write-protects then fails, and for rseq the kernel kills the process. Conversion
// therefore copies these pages without write-protection (shareable.cpp).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "user/address_space.hpp"

namespace xpmem::user {

// The calling thread's rseq page, or 0 when glibc registered no rseq area.
std::uintptr_t current_rseq_page() noexcept;

// The rseq pages of the threads in `known` (thread-pointer pages of threads that called
// the library, and the main thread's) and, because other threads are not known, of every
// thread descriptor found at the top of a glibc thread stack (an anonymous writable
// mapping right above a PROT_NONE guard). Sorted, unique.
std::vector<std::uintptr_t> rseq_pages(std::span<const std::uintptr_t> known,
                                       std::span<const Vma> maps);

}  // namespace xpmem::user
