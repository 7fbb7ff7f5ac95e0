// Errors inside the library are std::system_error with an errno value; the C shim turns
// them back into -1/errno, the C++ API lets them through.
#pragma once

#include <cerrno>
#include <system_error>

namespace xpmem::util {

[[noreturn]] inline void throw_errno(int error, const char *what) {
    throw std::system_error(error, std::generic_category(), what);
}

// Throws with the current errno.
[[noreturn]] inline void throw_last_errno(const char *what) {
    throw_errno(errno, what);
}

}  // namespace xpmem::util
