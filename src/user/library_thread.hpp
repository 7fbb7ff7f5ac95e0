// A thread of the library's own: its stack (and so its thread descriptor and TLS) lies in
// memory the library owns and never converts, it takes none of the application's signals,
// and it runs until the object goes away.
#pragma once

#include <pthread.h>

#include <cstddef>
#include <functional>

#include "user/address_space.hpp"
#include "util/mapping.hpp"
#include "util/unique_fd.hpp"

namespace xpmem::user {

class LibraryThread {
  public:
    // Runs `body(stop)` on a new thread named `name` (at most 15 characters, as `ps`
    // shows it); `stop` is an eventfd that becomes readable when the object is destroyed,
    // and the body must then return.
    LibraryThread(const char *name, std::size_t stack_size, std::function<void(int stop)> body);
    LibraryThread(const LibraryThread &) = delete;
    LibraryThread &operator=(const LibraryThread &) = delete;
    ~LibraryThread();

    Range stack() const { return {stack_.address(), stack_.address() + stack_.size()}; }
    // In a fork child, where the thread does not exist: nothing is joined, and its stack
    // stays mapped. After a raw fork system call glibc's list of threads still links to the
    // thread's descriptor at the top of that stack, and the child's next pthread_create
    // writes there.
    void forget() noexcept {
        running_ = false;
        stack_.release();
    }

  private:
    static void *main(void *self);

    std::function<void(int)> body_;
    util::UniqueFd stop_;
    util::Mapping stack_;
    pthread_t thread_{};
    bool running_ = false;
};

// The stack size for library threads: ThreadSanitizer keeps its per-thread state (about
// 900 KiB) in static TLS, which glibc places at the top of a caller-provided stack.
std::size_t library_stack_size(std::size_t wanted);

}  // namespace xpmem::user
