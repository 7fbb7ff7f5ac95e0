// Sanitizer builds (XPMEM_SANITIZE): what the code must know about them.
//
// The user backend copies whole pages of the application's memory (ASan's redzones and
// all) while the threads that write them are parked by userfaultfd or a SIGSEGV handler,
// a synchronisation ThreadSanitizer cannot see: it copies through the kernel
// (process_vm_readv, pread), which no sanitizer checks. Everything else stays checked.
#pragma once

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

}  // namespace xpmem::util
