// Sanitizer builds (XPMEM_SANITIZE): what the code must know about them.
//
// The user backend copies whole pages of the application's memory (ASan's redzones and
// all) while the threads that write them are parked by userfaultfd or a SIGSEGV handler,
// a synchronisation ThreadSanitizer cannot see. Only that copy opts out of
// instrumentation; everything else stays checked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__SANITIZE_ADDRESS__)  // GCC
#define XPMEM_ADDRESS_SANITIZER 1
#endif
#if defined(__SANITIZE_THREAD__)  // GCC
#define XPMEM_THREAD_SANITIZER 1
#endif
#if defined(__has_feature)  // clang
#if __has_feature(address_sanitizer)
#define XPMEM_ADDRESS_SANITIZER 1
#endif
#if __has_feature(thread_sanitizer)
#define XPMEM_THREAD_SANITIZER 1
#endif
#endif

// The function's own loads and stores are not instrumented. Calls it makes to intercepted
// functions (memcpy) still are: copy with copy_pages_unchecked() instead.
#define XPMEM_NO_SANITIZE_MEMORY __attribute__((no_sanitize("address", "thread")))

namespace xpmem::util {

#if defined(XPMEM_ADDRESS_SANITIZER)
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif
#if defined(XPMEM_THREAD_SANITIZER)
inline constexpr bool kThreadSanitizer = true;
#else
inline constexpr bool kThreadSanitizer = false;
#endif
inline constexpr bool kSanitizer = kAddressSanitizer || kThreadSanitizer;

// Copies `bytes` (a multiple of 8) from `from` to `to`. Sanitizers intercept memcpy and
// check the whole range, so under one this is a loop they do not see; otherwise memcpy.
#if defined(XPMEM_ADDRESS_SANITIZER) || defined(XPMEM_THREAD_SANITIZER)
XPMEM_NO_SANITIZE_MEMORY inline void copy_pages_unchecked(void *to, const void *from,
                                                          std::size_t bytes) noexcept {
    auto *out = static_cast<unsigned char *>(to);
    const auto *in = static_cast<const unsigned char *>(from);
    for (std::size_t at = 0; at < bytes; at += sizeof(std::uint64_t)) {
        std::uint64_t word;
        __builtin_memcpy(&word, in + at, sizeof word);  // constant size: inlined, no call
        // The value passes through an empty asm, so the compiler cannot turn the loop back
        // into a (intercepted) memcpy call.
        asm("" : "+r"(word));
        __builtin_memcpy(out + at, &word, sizeof word);
    }
}
#else
inline void copy_pages_unchecked(void *to, const void *from, std::size_t bytes) noexcept {
    std::memcpy(to, from, bytes);
}
#endif

}  // namespace xpmem::util
