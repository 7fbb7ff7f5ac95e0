#include "user/kernel_facilities.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "util/error.hpp"

namespace xpmem::user {

using util::throw_last_errno;
using util::UniqueFd;

UniqueFd userfaultfd(int flags) noexcept {
    return UniqueFd(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | flags)));
}

Userfaultfd open_userfaultfd(bool user_mode_only) {
    Userfaultfd uffd{user_mode_only ? UniqueFd() : userfaultfd(0), user_mode_only};
    if (!uffd.fd && (errno == EPERM || user_mode_only)) {
        uffd.fd = userfaultfd(UFFD_USER_MODE_ONLY);
        uffd.user_mode_only = true;
    }
    if (!uffd.fd) throw_last_errno("userfaultfd");
    return uffd;
}

std::uint64_t offered_features(int fd) {
    uffdio_api api{UFFD_API, 0, 0};
    if (::ioctl(fd, UFFDIO_API, &api) < 0) throw_last_errno("UFFDIO_API");
    return static_cast<std::uint64_t>(api.features);
}

std::uint64_t supported_uffd_features() {
    static const std::uint64_t features = offered_features(open_userfaultfd().fd.get());
    return features;
}

UniqueFd sealed_memfd(const char *name, std::size_t size) {
    UniqueFd fd(static_cast<int>(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)));
    if (!fd) throw_last_errno("memfd_create");
    if (::ftruncate(fd.get(), static_cast<off_t>(size)) < 0) throw_last_errno("ftruncate");
    if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
        throw_last_errno("F_ADD_SEALS");
    return fd;
}

}  // namespace xpmem::user
