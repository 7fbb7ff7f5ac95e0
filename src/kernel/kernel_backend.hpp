// The kernel backend: the classic /dev/xpmem ioctl ABI, served by xpmem.ko (this
// project's module or the classic one).
#pragma once

#include <memory>
#include <string>

#include "core/backend.hpp"
#include "util/unique_fd.hpp"

namespace xpmem::kernel {

// The outcome of opening /dev/xpmem and asking it for its version.
struct Probe {
    util::UniqueFd device;
    int version = -1;
    int error = 0;        // errno when the device does not answer
    std::string message;  // why, for a forced backend's failure message
};

Probe probe_device();
std::unique_ptr<core::Backend> make_kernel_backend(Probe probe);

}  // namespace xpmem::kernel
