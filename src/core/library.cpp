// Backend selection, argument checks and fork handling: the one place that holds the
// library's process-wide state (the selected backend), guarded by one mutex.

#include "core/library.hpp"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

#include "core/backend.hpp"
#include "kernel/kernel_backend.hpp"
#include "user/user_backend.hpp"
#include "util/error.hpp"
#include "util/mapping.hpp"
#include "xpmem_abi.h"  // XPMEM_DEVICE_PATH

namespace xpmem::core {
namespace {

using util::throw_errno;

// A forced backend that cannot work fails loudly: errno alone would not say why.
[[noreturn]] void fail_selection(int error, const std::string &why) {
    std::fprintf(stderr, "libxpmem: %s\n", why.c_str());
    throw_errno(error, "backend selection");
}

std::unique_ptr<Backend> select_backend() {
    Decision decision = decide_backend();
    switch (decision.choice) {
        case Decision::Choice::kernel:
            return kernel::make_kernel_backend(std::move(*decision.device));
        case Decision::Choice::user:
            return user::make_user_backend();
        case Decision::Choice::none:
            break;
    }
    fail_selection(decision.error, decision.reason);
}

class Library {
  public:
    Backend &backend() {
        std::lock_guard lock(mutex_);
        if (backend_ && backend_pid_ != ::getpid()) {
            // A raw fork system call's child: no atfork handler dropped the parent's backend.
            backend_->after_raw_fork_child();
            backend_.reset();
        }
        if (!backend_) {
            backend_ = select_backend();
            backend_pid_ = ::getpid();
            std::call_once(atfork_registered_, [] {
                ::pthread_atfork(&Library::prepare, &Library::parent, &Library::child);
            });
        }
        return *backend_;
    }

    static Library &instance() {
        static Library library;
        return library;
    }

  private:
    static void prepare() {
        Library &self = instance();
        self.mutex_.lock();
        if (self.backend_) self.backend_->before_fork();
    }
    static void parent() {
        Library &self = instance();
        if (self.backend_) self.backend_->after_fork_parent();
        self.mutex_.unlock();
    }
    static void child() {
        Library &self = instance();
        if (self.backend_) {
            self.backend_->after_fork_child();
            self.backend_.reset();
        }
        self.mutex_.unlock();
    }

    std::mutex mutex_;
    std::unique_ptr<Backend> backend_;
    pid_t backend_pid_ = 0;  // the process backend_ was made in
    std::once_flag atfork_registered_;
};

// Highest address a page can be mapped at, probed once: TASK_SIZE differs between
// 4- and 5-level paging and between architectures. Raw system calls: ThreadSanitizer's
// mmap interceptor replaces an address outside the ranges it models (those probed above
// 2^47) by 0, which fails, or as root maps page 0 and makes it abort the process.
std::uintptr_t probe_user_space_end() {
    for (unsigned bits : {56U, 52U, 48U, 47U}) {
        std::uintptr_t top = std::uintptr_t{1} << bits;
        for (std::uintptr_t end : {top, top - util::kPageSize}) {
            void *want = reinterpret_cast<void *>(end - util::kPageSize);
            auto *got = reinterpret_cast<void *>(
                ::syscall(SYS_mmap, want, util::kPageSize, PROT_NONE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0));
            if (got == MAP_FAILED) {
                if (errno == EEXIST) return end;  // something is mapped there: it is valid
                continue;
            }
            ::syscall(SYS_munmap, got, util::kPageSize);
            if (got == want) return end;
        }
    }
    return (std::uintptr_t{1} << 47) - util::kPageSize;
}

bool in_user_space(std::uintptr_t address, std::size_t size) {
    std::uintptr_t end = user_space_end();
    return address < end && size <= end - address;
}

}  // namespace

Decision decide_backend() {
    const char *forced = std::getenv("XPMEM_BACKEND");
    std::string choice = forced != nullptr ? forced : "";
    if (choice == "user") return {Decision::Choice::user, "forced by XPMEM_BACKEND=user", 0, {}};
    if (!choice.empty() && choice != "kernel")
        return {Decision::Choice::none,
                "XPMEM_BACKEND=" + choice + " is neither 'user' nor 'kernel'",
                EINVAL,
                {}};
    kernel::Probe probe = kernel::probe_device();
    if (choice == "kernel") {
        if (probe.error != 0)  // (a braced list is evaluated in order: error before the move)
            return {Decision::Choice::none, "XPMEM_BACKEND=kernel, but " + probe.message,
                    probe.error, std::move(probe)};
        return {Decision::Choice::kernel, "forced by XPMEM_BACKEND=kernel", 0, std::move(probe)};
    }
    if (probe.error == 0)
        return {Decision::Choice::kernel, XPMEM_DEVICE_PATH " answers", 0, std::move(probe)};
    std::string reason = "no usable kernel module (" + probe.message + ")";
    return {Decision::Choice::user, std::move(reason), 0, std::move(probe)};
}

Backend &backend() {
    return Library::instance().backend();
}

std::uintptr_t user_space_end() {
    static const std::uintptr_t end = probe_user_space_end();
    return end;
}

int version() {
    return backend().version();
}

std::string_view backend_name() {
    return backend().name();
}

xpmem_segid_t make(std::uintptr_t address, std::size_t size, mode_t mode) {
    if ((mode & ~mode_t{0777}) != 0) throw_errno(EINVAL, "xpmem_make: mode");
    if (!util::page_aligned(address)) throw_errno(EINVAL, "xpmem_make: address");
    if (size == XPMEM_MAXADDR_SIZE) {
        if (address >= user_space_end()) throw_errno(EINVAL, "xpmem_make: address");
        size = user_space_end() - address;
    }
    if (size == 0 || !util::page_aligned(size) || !in_user_space(address, size))
        throw_errno(EINVAL, "xpmem_make: range");
    return backend().make(address, size, mode);
}

void remove(xpmem_segid_t segid) {
    if (segid <= 0) throw_errno(EINVAL, "xpmem_remove: segid");
    backend().remove(segid);
}

xpmem_apid_t get(xpmem_segid_t segid, Access access) {
    if (segid <= 0) throw_errno(EINVAL, "xpmem_get: segid");
    if (access != Access::read_only && access != Access::read_write)
        throw_errno(EINVAL, "xpmem_get: flags");
    return backend().get(segid, access);
}

void release(xpmem_apid_t apid) {
    if (apid <= 0) throw_errno(EINVAL, "xpmem_release: apid");
    backend().release(apid);
}

void *attach(xpmem_apid_t apid, off_t offset, std::size_t size, void *at) {
    if (apid <= 0) throw_errno(EINVAL, "xpmem_attach: apid");
    if (offset < 0 || !util::page_aligned(static_cast<std::uintptr_t>(offset)))
        throw_errno(EINVAL, "xpmem_attach: offset");
    if (size == 0 || size > user_space_end()) throw_errno(EINVAL, "xpmem_attach: size");
    size = util::page_up(size);
    auto address = reinterpret_cast<std::uintptr_t>(at);
    if (at != nullptr && (!util::page_aligned(address) || !in_user_space(address, size)))
        throw_errno(EINVAL, "xpmem_attach: address");
    return backend().attach(apid, static_cast<std::uint64_t>(offset), size, at);
}

void detach(void *address) {
    backend().detach(address);
}

}  // namespace xpmem::core
