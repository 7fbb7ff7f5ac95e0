// The operations of the API, argument-checked once for every backend, over the backend
// that serves this process. Failures throw std::system_error (an errno value).
#pragma once

#include <xpmem.h>

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
xpmem_segid_t make(void *vaddr, std::size_t size, int permit_type, void *permit_value);
void remove(xpmem_segid_t segid);
xpmem_apid_t get(xpmem_segid_t segid, int flags, int permit_type, void *permit_value);
void release(xpmem_apid_t apid);
void *attach(xpmem_addr addr, std::size_t size, void *vaddr);
void detach(void *vaddr);

}  // namespace xpmem::core
