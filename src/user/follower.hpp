// The owner's side of following: a thread that waits on the userfaultfd that reports the
// owner's unmaps, remaps and removes of converted memory, and brings the backing files in
// line before it lets each message go (shareable.hpp, "following the owner").
#pragma once

#include <mutex>
#include <optional>

#include "user/library_thread.hpp"
#include "user/shareable.hpp"

namespace xpmem::user {

class Follower {
  public:
    // Starts the thread if `backing` can follow at all. `backing_lock` guards `backing`.
    Follower(Backing &backing, std::mutex &backing_lock);

    // Where its stack lies (empty if there is no thread).
    Range stack() const { return thread_ ? thread_->stack() : Range{0, 0}; }
    void forget() noexcept {
        if (thread_) thread_->forget();
    }

  private:
    void run(int stop);

    Backing &backing_;
    std::mutex &backing_lock_;
    std::optional<LibraryThread> thread_;
};

}  // namespace xpmem::user
