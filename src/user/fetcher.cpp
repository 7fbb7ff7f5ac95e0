#include "user/fetcher.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "user/kernel_facilities.hpp"
#include "util/error.hpp"

namespace xpmem::user {

using util::throw_last_errno;

Fetcher::Fetcher(std::function<void(const Fault &)> resolve) : resolve_(std::move(resolve)) {
    // User-mode faults only, also for root: a kernel-mode access must not wait for the
    // owner, and cannot take the SIGBUS of a hole. The exact address (Linux 5.18) makes
    // that SIGBUS name the byte touched, as the kernel's does.
    for (std::uint64_t features :
         {std::uint64_t{UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_EXACT_ADDRESS},
          std::uint64_t{UFFD_FEATURE_THREAD_ID}}) {
        uffd_ = open_userfaultfd(true).fd;
        uffdio_api api{UFFD_API, features, 0};
        if (::ioctl(uffd_.get(), UFFDIO_API, &api) == 0) break;
        if (errno != EINVAL || features == UFFD_FEATURE_THREAD_ID) throw_last_errno("UFFDIO_API");
    }
    thread_.emplace("xpmem-fetch", library_stack_size(256 * 1024), [this](int stop) { run(stop); });
}

int Fetcher::watch(std::uintptr_t start, std::uintptr_t end) const noexcept {
    uffdio_register reg{{start, end - start}, UFFDIO_REGISTER_MODE_MISSING, 0};
    return ::ioctl(uffd_.get(), UFFDIO_REGISTER, &reg) < 0 ? errno : 0;
}

void Fetcher::wake(std::uintptr_t start, std::uintptr_t end) const noexcept {
    uffdio_range range{start, end - start};
    ::ioctl(uffd_.get(), UFFDIO_WAKE, &range);
}

namespace {

// Whether `thread` of this process blocks `signal`, or the process ignores it.
bool signal_refused(pid_t thread, int signal) noexcept {
    struct sigaction action {};
    if (::sigaction(signal, nullptr, &action) == 0 && action.sa_handler == SIG_IGN) return true;
    char path[64];
    std::snprintf(path, sizeof path, "/proc/self/task/%d/status", static_cast<int>(thread));
    util::UniqueFd fd(::open(path, O_RDONLY | O_CLOEXEC));
    char text[2048] = {};
    if (!fd || ::read(fd.get(), text, sizeof text - 1) <= 0) return false;
    const char *blocked = std::strstr(text, "SigBlk:");
    if (blocked == nullptr) return false;
    unsigned long long mask = std::strtoull(blocked + 7, nullptr, 16);
    return (mask >> (signal - 1) & 1) != 0;
}

}  // namespace

bool Fetcher::raise_sigbus(const Fault &fault) noexcept {
    if (signal_refused(fault.thread, SIGBUS)) return false;
    siginfo_t info{};
    info.si_signo = SIGBUS;
    info.si_code = SI_QUEUE;
    info.si_addr = reinterpret_cast<void *>(fault.address);
    return ::syscall(SYS_rt_tgsigqueueinfo, ::getpid(), fault.thread, SIGBUS, &info) == 0;
}

void Fetcher::run(int stop) {
    for (;;) {
        pollfd fds[2] = {{uffd_.get(), POLLIN, 0}, {stop, POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return;
        }
        if (fds[1].revents != 0) return;
        uffd_msg message{};
        if (::read(uffd_.get(), &message, sizeof message) != sizeof message) continue;
        if (message.event != UFFD_EVENT_PAGEFAULT) continue;
        resolve_(Fault{static_cast<std::uintptr_t>(message.arg.pagefault.address),
                       static_cast<pid_t>(message.arg.pagefault.feat.ptid)});
    }
}

}  // namespace xpmem::user
