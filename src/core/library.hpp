// The operations of the API, typed and argument-checked once for every backend, over the
// backend that serves this process. Failures throw std::system_error (an errno value). The
// C API's encodings (permit_type, a mode passed as void *, (void *)-1) are decoded by its
// shim, src/capi/xpmem.cpp; the C++ API calls these directly.
#pragma once

#include <sys/types.h>
#include <xpmem.h>

#include <xpmem/xpmem.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "kernel/kernel_backend.hpp"

namespace xpmem::core {

class Backend;

// The backend serving this process, selected on first use (see decide_backend()).
Backend &backend();

// Which backend this process gets and why, decided without making it: XPMEM_BACKEND=user or
// kernel forces one (a forced kernel backend without a working /dev/xpmem is a failure, any
// other value too); unset, the kernel backend when /dev/xpmem answers, else the user backend.
struct Decision {
    enum class Choice { kernel, user, none } choice;
    std::string reason;  // for none: the message the library prints before failing
    int error;           // for none: the errno every call fails with
    // /dev/xpmem, unless XPMEM_BACKEND ruled it out.
    std::optional<kernel::Probe> device;
};
Decision decide_backend();

// One past the highest user-space address of this process.
std::uintptr_t user_space_end();

int version();
std::string_view backend_name();
// Publishes [address, address + size) to credentials that pass `mode` (bits within 0777);
// size XPMEM_MAXADDR_SIZE runs to the end of user space.
xpmem_segid_t make(std::uintptr_t address, std::size_t size, mode_t mode);
void remove(xpmem_segid_t segid);
xpmem_apid_t get(xpmem_segid_t segid, Access access);
void release(xpmem_apid_t apid);
// Maps `size` bytes (rounded up to pages) of the segment from `offset`; at `at` if not null.
void *attach(xpmem_apid_t apid, off_t offset, std::size_t size, void *at);
void detach(void *address);

}  // namespace xpmem::core
