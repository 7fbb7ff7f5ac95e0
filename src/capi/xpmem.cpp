// The classic C API: a thin shim that turns the core's exceptions into -1 and errno.

#include <xpmem.h>

#include <cerrno>
#include <new>
#include <system_error>

#include "core/library.hpp"

namespace {

// Runs `operation`; on failure sets errno and returns `failure`.
template <class Result, class Operation>
Result or_errno(Result failure, Operation &&operation) noexcept {
    try {
        return operation();
    } catch (const std::system_error &error) {
        errno = error.code().value();
    } catch (const std::bad_alloc &) {
        errno = ENOMEM;
    } catch (...) {
        errno = EIO;
    }
    return failure;
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
                    [&] { return xpmem::core::make(vaddr, size, permit_type, permit_value); });
}

int xpmem_remove(xpmem_segid_t segid) {
    return or_errno(-1, [&] {
        xpmem::core::remove(segid);
        return 0;
    });
}

xpmem_apid_t xpmem_get(xpmem_segid_t segid, int flags, int permit_type, void *permit_value) {
    return or_errno(xpmem_apid_t{-1},
                    [&] { return xpmem::core::get(segid, flags, permit_type, permit_value); });
}

int xpmem_release(xpmem_apid_t apid) {
    return or_errno(-1, [&] {
        xpmem::core::release(apid);
        return 0;
    });
}

void *xpmem_attach(struct xpmem_addr addr, size_t size, void *vaddr) {
    return or_errno(reinterpret_cast<void *>(-1),
                    [&] { return xpmem::core::attach(addr, size, vaddr); });
}

int xpmem_detach(void *vaddr) {
    return or_errno(-1, [&] {
        xpmem::core::detach(vaddr);
        return 0;
    });
}

}  // extern "C"
