#include "user/threads.hpp"

#include <pthread.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>

#include "util/mapping.hpp"

// glibc 2.35 and newer register an rseq area per thread and say where; older ones do not.
extern "C" {
extern const std::ptrdiff_t __rseq_offset __attribute__((weak));
extern const unsigned int __rseq_size __attribute__((weak));
}

namespace xpmem::user {

std::uintptr_t current_thread_pointer() noexcept {
    return reinterpret_cast<std::uintptr_t>(__builtin_thread_pointer());
}

namespace {

// glibc's struct pthread keeps the tid within its first KiB (after the 0x2c0-byte
// tcbhead_t and a list head); the rseq area, when registered, lies __rseq_offset from
// the thread pointer.
constexpr std::uintptr_t kTidWithin = 1024;

void add_descriptor(std::uintptr_t thread_pointer, std::vector<std::uintptr_t> &pages) {
    std::uintptr_t last = thread_pointer + kTidWithin;
    if (&__rseq_offset != nullptr && &__rseq_size != nullptr && __rseq_size != 0)
        last = std::max(last,
                        thread_pointer + static_cast<std::uintptr_t>(__rseq_offset) + __rseq_size);
    for (std::uintptr_t page = util::page_down(thread_pointer); page < last;
         page += util::kPageSize)
        pages.push_back(page);
}

// glibc's default thread stack size: a stack mapping that merged with
// the mapping above it, or was split by a conversion or an mprotect, ends there rather
// than at the end of the mapping right above the guard.
std::size_t default_stack_size() noexcept {
    pthread_attr_t attr;
    std::size_t size = 0;
    if (pthread_getattr_default_np(&attr) != 0) return 0;
    pthread_attr_getstacksize(&attr, &size);
    pthread_attr_destroy(&attr);
    return size;
}

// Adds the pages of every thread descriptor in the two pages below `top`, not below the
// start of `below` (the stack's guard, or the stack's first mapping). A glibc
// thread pointer (x86-64 tcbhead_t) points at itself twice, at offsets 0 and 16: a
// signature ordinary data does not show, so memory merely lying above a PROT_NONE
// mapping is not mistaken for a thread's. The words are read by the kernel
// (process_vm_readv), not loaded: another thread may unmap the mapping after
// /proc/self/maps showed it, and a fault here, in the service thread, which blocks
// every signal, would kill the process.
void add_descriptors_below(std::uintptr_t top, const Vma &below,
                           std::vector<std::uintptr_t> &pages) {
    std::array<std::uintptr_t, 2 * util::kPageSize / sizeof(std::uintptr_t)> words;
    std::uintptr_t from = std::max(below.start, top - 2 * util::kPageSize);
    if (from >= top) return;
    iovec local{words.data(), top - from};
    iovec remote{reinterpret_cast<void *>(from), top - from};
    ssize_t got = ::process_vm_readv(::getpid(), &local, 1, &remote, 1, 0);
    if (got <= 0) return;  // gone already
    std::size_t count = static_cast<std::size_t>(got) / sizeof(std::uintptr_t);
    for (std::size_t i = 0; i + 2 < count; ++i) {
        std::uintptr_t word = from + i * sizeof(std::uintptr_t);
        if (words[i] == word && words[i + 2] == word) add_descriptor(word, pages);
    }
}

}  // namespace

std::vector<std::uintptr_t> descriptor_pages(std::span<const std::uintptr_t> known,
                                             std::span<const Vma> maps) {
    std::vector<std::uintptr_t> pages;
    for (std::uintptr_t thread_pointer : known) add_descriptor(thread_pointer, pages);
    std::size_t stack_size = default_stack_size();
    for (std::size_t i = 1; i < maps.size(); ++i) {
        const Vma &guard = maps[i - 1];
        const Vma &stack = maps[i];
        // The stack may have been made shareable already: then it maps one of our files.
        if (guard.end != stack.start || guard.readable || guard.writable || guard.file_backed() ||
            !stack.readable || !stack.writable)
            continue;
        add_descriptors_below(stack.end, stack, pages);
        if (stack_size == 0) continue;
        // glibc adds the guard to the stack size or takes it from it, depending on version.
        for (std::uintptr_t top : {guard.start + stack_size, guard.end + stack_size})
            if (top != stack.end) add_descriptors_below(top, guard, pages);
    }
    std::sort(pages.begin(), pages.end());
    pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
    pages.erase(std::remove(pages.begin(), pages.end(), 0), pages.end());
    return pages;
}

}  // namespace xpmem::user
