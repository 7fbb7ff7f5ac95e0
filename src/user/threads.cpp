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

std::uintptr_t current_rseq_page() noexcept {
    if (&__rseq_offset == nullptr || &__rseq_size == nullptr || __rseq_size == 0) return 0;
    auto area = reinterpret_cast<std::uintptr_t>(__builtin_thread_pointer()) +
                static_cast<std::uintptr_t>(__rseq_offset);
    return util::page_down(area);
}

namespace {

// glibc's default thread stack size: a stack mapping that merged with the mapping above
// it ends there rather than at the end of the merged mapping.
std::size_t default_stack_size() noexcept {
    pthread_attr_t attr;
    std::size_t size = 0;
    if (pthread_getattr_default_np(&attr) != 0) return 0;
    pthread_attr_getstacksize(&attr, &size);
    pthread_attr_destroy(&attr);
    return size;
}

// Adds the rseq page of every thread descriptor in the two pages below `top`. A glibc
// thread pointer (x86-64 tcbhead_t) points at itself twice, at offsets 0 and 16: a
// signature ordinary data does not show, so memory merely lying above a PROT_NONE
// mapping is not mistaken for a thread's. The words are read by the kernel
// (process_vm_readv), not loaded: another thread may unmap the mapping after
// /proc/self/maps showed it, and a fault here, in the service thread, which blocks
// every signal, would kill the process.
void add_descriptors_below(std::uintptr_t top, const Vma &stack,
                           std::vector<std::uintptr_t> &pages) {
    std::array<std::uintptr_t, 2 * util::kPageSize / sizeof(std::uintptr_t)> words;
    std::uintptr_t from = std::max(stack.start, top - 2 * util::kPageSize);
    if (from >= top) return;
    iovec local{words.data(), top - from};
    iovec remote{reinterpret_cast<void *>(from), top - from};
    ssize_t got = ::process_vm_readv(::getpid(), &local, 1, &remote, 1, 0);
    if (got <= 0) return;  // gone already
    std::size_t count = static_cast<std::size_t>(got) / sizeof(std::uintptr_t);
    for (std::size_t i = 0; i + 2 < count; ++i) {
        std::uintptr_t word = from + i * sizeof(std::uintptr_t);
        if (words[i] == word && words[i + 2] == word)
            pages.push_back(util::page_down(word + static_cast<std::uintptr_t>(__rseq_offset)));
    }
}

}  // namespace

std::vector<std::uintptr_t> rseq_pages(std::span<const std::uintptr_t> known,
                                       std::span<const Vma> maps) {
    std::vector<std::uintptr_t> pages(known.begin(), known.end());
    if (current_rseq_page() == 0) return pages;  // glibc registered no rseq areas
    std::size_t stack_size = default_stack_size();
    for (std::size_t i = 1; i < maps.size(); ++i) {
        const Vma &guard = maps[i - 1];
        const Vma &stack = maps[i];
        if (guard.end != stack.start || guard.readable || guard.writable || guard.file_backed() ||
            !stack.readable || !stack.writable || stack.shared || stack.file_backed())
            continue;
        add_descriptors_below(stack.end, stack, pages);
        if (stack_size != 0 && guard.start + stack_size < stack.end)
            add_descriptors_below(guard.start + stack_size, stack, pages);
    }
    std::sort(pages.begin(), pages.end());
    pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
    pages.erase(std::remove(pages.begin(), pages.end(), 0), pages.end());
    return pages;
}

}  // namespace xpmem::user
