#include "user/threads.hpp"

#include <algorithm>
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

std::vector<std::uintptr_t> rseq_pages(std::span<const std::uintptr_t> known,
                                       std::span<const Vma> maps) {
    std::vector<std::uintptr_t> pages(known.begin(), known.end());
    for (std::size_t i = 1; i < maps.size(); ++i) {
        const Vma &guard = maps[i - 1];
        const Vma &stack = maps[i];
        if (guard.end != stack.start || guard.readable || guard.writable || guard.file_backed() ||
            !stack.writable || stack.shared || stack.file_backed() ||
            stack.end - stack.start < 2 * util::kPageSize)
            continue;
        pages.push_back(stack.end - util::kPageSize);
        pages.push_back(stack.end - 2 * util::kPageSize);
    }
    std::sort(pages.begin(), pages.end());
    pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
    pages.erase(std::remove(pages.begin(), pages.end(), 0), pages.end());
    return pages;
}

}  // namespace xpmem::user
