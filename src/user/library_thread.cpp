#include "user/library_thread.hpp"

#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

#include <cstdint>

#include "util/error.hpp"
#include "util/sanitizer.hpp"

namespace xpmem::user {

using util::throw_errno;
using util::throw_last_errno;

std::size_t library_stack_size(std::size_t wanted) {
    return util::kThreadSanitizer ? std::size_t{8} << 20 : wanted;
}

LibraryThread::LibraryThread(const char *name, std::size_t stack_size,
                             std::function<void(int stop)> body)
    : body_(std::move(body)), stop_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (!stop_) throw_last_errno("eventfd");
    // Fork children must inherit the stack: glibc's fork unlinks the forking thread from a
    // list whose neighbour may be this thread's descriptor, at the top of this stack.
    std::size_t total = stack_size + util::kPageSize;
    void *stack = ::mmap(nullptr, total, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) throw_last_errno("mmap thread stack");
    stack_ = util::Mapping(stack, total);
    ::mprotect(stack, util::kPageSize, PROT_NONE);  // guard page
    pthread_attr_t attr;
    ::pthread_attr_init(&attr);
    ::pthread_attr_setstack(&attr, stack_.data() + util::kPageSize, stack_size);
    sigset_t all, previous;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &previous);
    int error = ::pthread_create(&thread_, &attr, &LibraryThread::main, this);
    ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    ::pthread_attr_destroy(&attr);
    if (error != 0) throw_errno(error, "pthread_create");
    ::pthread_setname_np(thread_, name);
    running_ = true;
}

LibraryThread::~LibraryThread() {
    if (!running_) return;
    std::uint64_t one = 1;
    if (::write(stop_.get(), &one, sizeof one) == sizeof one) ::pthread_join(thread_, nullptr);
}

void *LibraryThread::main(void *self) {
    auto *thread = static_cast<LibraryThread *>(self);
    thread->body_(thread->stop_.get());
    return nullptr;
}

}  // namespace xpmem::user
