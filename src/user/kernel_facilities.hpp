// The kernel facilities the user backend relies on, opened the one way the backend opens
// them: the backend uses these functions, and so does xpmem::system_info() to report what
// this kernel offers this process.
#pragma once

#include <linux/userfaultfd.h>

#include <cstddef>
#include <cstdint>

#include "util/unique_fd.hpp"

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)  // Linux 6.7; Debian 12's headers lack it
#endif

namespace xpmem::user {

// userfaultfd(2) with O_CLOEXEC | O_NONBLOCK and `flags` (0 or UFFD_USER_MODE_ONLY); an
// empty descriptor with errno set when the kernel refuses.
util::UniqueFd userfaultfd(int flags) noexcept;

struct Userfaultfd {
    util::UniqueFd fd;
    bool user_mode_only;  // catches faults in user mode only
};

// Catches every fault unless `user_mode_only`, or unless that is all this process may
// catch: without CAP_SYS_PTRACE, vm.unprivileged_userfaultfd = 0 allows no more (EPERM).
// Throws the errno of the system call.
Userfaultfd open_userfaultfd(bool user_mode_only = false);

// The UFFD_FEATURE_* bits the kernel offers on `fd`, a fresh userfaultfd: its UFFDIO_API
// handshake asking for none, after which `fd` takes only the ioctls that need none. Throws.
std::uint64_t offered_features(int fd);

// offered_features() of a userfaultfd from open_userfaultfd(), asked once per process.
std::uint64_t supported_uffd_features();

// A memfd named `name` of `size` bytes whose size is sealed (no grow, no shrink, no further
// seal): whoever holds a descriptor to it cannot resize it under its owner. Throws.
util::UniqueFd sealed_memfd(const char *name, std::size_t size);

}  // namespace xpmem::user
