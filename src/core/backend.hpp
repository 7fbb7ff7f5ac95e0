// The seam between the API and the mechanisms that implement it.
//
// The library validates every argument before it reaches a backend (core/library.cpp), so
// a backend sees page-aligned, non-empty ranges inside user space, a mode within 0777 and
// an access that is read_only or read_write. Backends report failures by throwing
// std::system_error with an errno value.
#pragma once

#include <sys/types.h>
#include <xpmem.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include <xpmem/xpmem.hpp>

namespace xpmem::core {

class Backend {
  public:
    virtual ~Backend() = default;

    virtual std::string_view name() const = 0;
    virtual int version() = 0;
    virtual xpmem_segid_t make(std::uintptr_t address, std::size_t size, mode_t mode) = 0;
    virtual void remove(xpmem_segid_t segid) = 0;
    virtual xpmem_apid_t get(xpmem_segid_t segid, Access access) = 0;
    virtual void release(xpmem_apid_t apid) = 0;
    virtual void *attach(xpmem_apid_t apid, std::uint64_t offset, std::size_t size, void *at) = 0;
    // `address` lies in an attachment or in no mapping at all; anything else is EINVAL.
    virtual void detach(void *address) = 0;

    // fork() hooks, run by the library's pthread_atfork handlers. In the child the backend
    // is destroyed right after after_fork_child(): the child inherits no segment, permit
    // or attachment, and the next call selects a backend afresh.
    virtual void before_fork() noexcept = 0;
    virtual void after_fork_parent() noexcept = 0;
    virtual void after_fork_child() noexcept = 0;
    // In a child made by a raw fork system call (no atfork handler ran), at its first call
    // into the library: the backend is destroyed right after, as after after_fork_child(),
    // but its locks are in whatever state the parent's threads left them.
    virtual void after_raw_fork_child() noexcept = 0;
};

}  // namespace xpmem::core
