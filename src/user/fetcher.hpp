// The attacher's side of following: the parts of an attachment that the owner's memory
// can change under (its converted memory and its holes) are registered for missing-page
// faults with a userfaultfd, and a thread of the library resolves each fault by asking the
// owner what it maps there now (user_backend.cpp). The userfaultfd catches user-mode
// faults only, for every user alike: a system call that touches such a page before the
// attacher did fails with EFAULT.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>

#include "user/library_thread.hpp"
#include "util/unique_fd.hpp"

namespace xpmem::user {

// A thread of this process waiting in a fault on a watched page.
struct Fault {
    std::uintptr_t address;
    pid_t thread;
};

class Fetcher {
  public:
    // Starts the thread that calls `resolve` for each fault; throws if the kernel cannot.
    explicit Fetcher(std::function<void(const Fault &)> resolve);

    // Registers [start, end) for missing-page faults; returns 0 or an errno value.
    int watch(std::uintptr_t start, std::uintptr_t end) const noexcept;
    // Lets the threads waiting in faults on [start, end) try again.
    void wake(std::uintptr_t start, std::uintptr_t end) const noexcept;
    // Raises SIGBUS in `fault`'s thread for its access: si_addr is the page touched, and
    // si_code is SI_QUEUE (only the kernel or the thread itself may send BUS_ADRERR). The
    // signal ends the thread's wait; should the thread return from a handler, its access
    // faults and asks again. False if the thread blocks SIGBUS or the process ignores it:
    // the caller must let the kernel raise it (a page that raises it for good).
    static bool raise_sigbus(const Fault &fault) noexcept;

    Range stack() const { return thread_ ? thread_->stack() : Range{0, 0}; }
    void forget() noexcept {
        if (thread_) thread_->forget();
    }

  private:
    void run(int stop);

    util::UniqueFd uffd_;
    std::function<void(const Fault &)> resolve_;

    std::optional<LibraryThread> thread_;
};

}  // namespace xpmem::user
