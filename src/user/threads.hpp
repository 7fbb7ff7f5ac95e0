// Pages where the kernel writes on a thread's behalf: the thread descriptor glibc keeps at
// the top of every thread's stack, with the rseq area the kernel updates whenever the
// thread returns to user space, and the tid the kernel clears when the thread exits
// (CLONE_CHILD_CLEARTID, which pthread_join waits for).
//
// Such a write into a page that userfaultfd write-protects fails: always for an exiting
// thread (pthread_join then waits forever), and for every kernel write where an
// unprivileged process must use UFFD_USER_MODE_ONLY (for rseq the kernel then kills the
// process). Copied without protection, the page loses a write made during the copy (the
// tid cleared by an exiting thread: the same hang). So these pages are never converted:
// they are holes in attachments.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "user/address_space.hpp"

namespace xpmem::user {

// The calling thread's thread pointer (its descriptor's address).
std::uintptr_t current_thread_pointer() noexcept;

// The descriptor pages (from the thread pointer to its tid and rseq area) of the threads
// in `known` (thread pointers of threads that called the library, and the main thread's)
// and, because other threads are not known, of every thread descriptor found at the top
// of a glibc thread stack (a writable mapping right above a PROT_NONE guard).
// Sorted, unique.
std::vector<std::uintptr_t> descriptor_pages(std::span<const std::uintptr_t> known,
                                             std::span<const Vma> maps);

}  // namespace xpmem::user
