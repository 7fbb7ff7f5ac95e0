// The classic C API: a thin shim over the core. It decodes the C encodings (a permit type,
// a mode passed as void *, flags as int) and turns the core's exceptions into -1 and errno.

#include <xpmem.h>

#include <cerrno>
#include <cstdint>
#include <limits>
#include <new>
#include <system_error>

#include "core/library.hpp"
#include "util/error.hpp"

namespace {

// Runs `operation`; on failure sets errno and returns `failure`. A success leaves errno as
// the caller had it, whatever system calls failed on the way (the /dev/xpmem probe).
template <class Result, class Operation>
Result or_errno(Result failure, Operation &&operation) noexcept {
    int caller_errno = errno;
    try {
        Result result = operation();
        errno = caller_errno;
        return result;
    } catch (const std::system_error &error) {
        errno = error.code().value();
    } catch (const std::bad_alloc &) {
        errno = ENOMEM;
    } catch (...) {
        errno = EIO;
    }
    return failure;
}

void check_permit_type(int permit_type) {
    if (permit_type != XPMEM_PERMIT_MODE) xpmem::util::throw_errno(EINVAL, "permit type");
}

// The mode a permit value carries; bits outside 0777 are refused by the core.
mode_t permit_mode(int permit_type, void *permit_value) {
    check_permit_type(permit_type);
    auto value = reinterpret_cast<std::uintptr_t>(permit_value);
    if (value > std::numeric_limits<mode_t>::max()) xpmem::util::throw_errno(EINVAL, "permit mode");
    return static_cast<mode_t>(value);
}

}  // namespace

extern "C" {

int xpmem_version(void) {
    return or_errno(-1, [] { return xpmem::core::version(); });
}

int xpmem_init(void) {
    return or_errno(-1, [] {
        xpmem::core::backend();
        return 0;
    });
}

xpmem_segid_t xpmem_make(void *vaddr, size_t size, int permit_type, void *permit_value) {
    return or_errno(xpmem_segid_t{-1},
                    [&] {
                        return xpmem::core::make(reinterpret_cast<std::uintptr_t>(vaddr), size,
                                                 permit_mode(permit_type, permit_value));
                    });
}

int xpmem_remove(xpmem_segid_t segid) {
    return or_errno(-1, [&] {
        xpmem::core::remove(segid);
        return 0;
    });
}

// permit_value is ignored, as in the classic library (clients pass 0, 0600 or 0666).
xpmem_apid_t xpmem_get(xpmem_segid_t segid, int flags, int permit_type, void * /*permit_value*/) {
    return or_errno(xpmem_apid_t{-1}, [&] {
        check_permit_type(permit_type);
        return xpmem::core::get(segid, static_cast<xpmem::Access>(flags));
    });
}

int xpmem_release(xpmem_apid_t apid) {
    return or_errno(-1, [&] {
        xpmem::core::release(apid);
        return 0;
    });
}

void *xpmem_attach(struct xpmem_addr addr, size_t size, void *vaddr) {
    return or_errno(reinterpret_cast<void *>(-1),
                    [&] { return xpmem::core::attach(addr.apid, addr.offset, size, vaddr); });
}

int xpmem_detach(void *vaddr) {
    return or_errno(-1, [&] {
        xpmem::core::detach(vaddr);
        return 0;
    });
}

}  // extern "C"
