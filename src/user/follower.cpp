#include "user/follower.hpp"

#include <poll.h>

#include <cerrno>

namespace xpmem::user {

Follower::Follower(Backing &backing, std::mutex &backing_lock)
    : backing_(backing), backing_lock_(backing_lock) {
    if (backing_.follow_fd() >= 0)
        thread_.emplace("xpmem-follow", library_stack_size(256 * 1024),
                        [this](int stop) { run(stop); });
}

// Allocates nothing: the thread that waits for a message may hold the allocator's lock.
void Follower::run(int stop) {
    for (;;) {
        pollfd fds[2] = {{backing_.follow_fd(), POLLIN, 0}, {stop, POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return;
        }
        if (fds[1].revents != 0) return;
        if ((fds[0].revents & POLLIN) == 0) continue;
        std::lock_guard lock(backing_lock_);
        backing_.follow_pending();
    }
}

}  // namespace xpmem::user
