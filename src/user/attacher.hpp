// The attacher's role in the user backend: permits it holds, connections (links) to the
// owners' services, and its attachments, which follow their owners' memory (fetcher.hpp).
//
// Locking: `mutex_` guards the tables; it is never held while waiting on another process.
// A Link's own mutex serialises request/reply pairs on that connection and is taken
// without `mutex_` held.
#pragma once

#include <sys/types.h>
#include <xpmem.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <vector>

#include "user/address_space.hpp"
#include "user/fetcher.hpp"
#include "user/protocol.hpp"
#include "util/unique_fd.hpp"

namespace xpmem::user {

class Attacher {
  public:
    struct Config {
        pid_t pid;                                  // ours
        std::uint32_t key;                          // of our service: where owners send REVOKE
        std::chrono::milliseconds request_timeout;  // an owner that takes longer is given up
    };
    // Called with a link's socket when it is made (`add`) and dropped: the service thread
    // watches it and calls owner_gone() when the owner's end closes.
    using WatchLink = std::function<void(int socket, std::uint64_t owner, bool add)>;

    Attacher(Config config, WatchLink watch_link);
    Attacher(const Attacher &) = delete;
    Attacher &operator=(const Attacher &) = delete;
    ~Attacher();

    xpmem_apid_t get(xpmem_segid_t segid, int flags);
    void release(xpmem_apid_t apid);
    void *attach(xpmem_apid_t apid, std::uint64_t offset, std::size_t size, void *at);
    void detach(void *address);

    // Every attachment of `segid` raises SIGBUS from now on (its owner removed it).
    void revoke(xpmem_segid_t segid);
    // The owner (protocol::owner_of()) closed its end: everything of it is revoked.
    void owner_gone(std::uint64_t owner);
    // What the attacher maps of its own (attachments, those being made, the fetcher's
    // stack): never the application's memory.
    std::vector<Range> own_ranges() const;

    // fork: the tables' lock, held across it; the child's threads do not exist.
    std::mutex &tables_lock() { return mutex_; }
    void forget_threads() noexcept;

  private:
    struct Link {
        std::uint64_t owner;  // protocol::owner_of() of its segids
        pid_t pid;            // the owner's, from SO_PEERCRED
        uid_t uid;            // the owner's when it listened (SO_PEERCRED)
        util::UniqueFd socket;
        std::mutex mutex;   // one request/reply at a time
        unsigned owed = 0;  // guarded by `mutex`: replies that did not come in time
    };
    struct PermitRecord {
        xpmem_segid_t segid;
        int flags;
        std::uint64_t owner_permit;  // the number the owner issued it under
        std::shared_ptr<Link> link;
    };
    struct AttachmentRecord {
        std::size_t size;
        std::uint64_t offset;  // into the segment
        xpmem_apid_t apid;
        xpmem_segid_t segid;
        int prot;
        bool revoked = false;
    };

    std::shared_ptr<Link> link_to(xpmem_segid_t segid);
    template <class Reply, class Request>
    Reply ask(Link &link, const Request &request, std::vector<util::UniqueFd> *fds = nullptr);
    bool map_pieces(std::uintptr_t at, const protocol::AttachReply &reply,
                    std::span<const util::UniqueFd> fds, const Link &owner, bool read_only,
                    std::size_t limit, std::size_t &mapped,
                    std::optional<std::uintptr_t> touched = {});
    void resolve_fault(const Fault &fault) noexcept;
    void fetch_for(const Fault &fault);
    Fetcher &fetcher();
    void revoke_locked(xpmem_segid_t segid);
    void map_sigbus(std::uintptr_t start, std::size_t size, int prot);

    const Config config_;
    const WatchLink watch_link_;
    util::UniqueFd sigbus_;  // empty sealed memfd: every touch of a mapping of it is SIGBUS
    mutable std::mutex mutex_;
    std::uint32_t next_serial_;
    std::map<std::uint64_t, std::shared_ptr<Link>> links_;  // by protocol::owner_of()
    std::map<xpmem_apid_t, PermitRecord> permits_;
    std::map<std::uintptr_t, AttachmentRecord> attachments_;
    std::map<std::uintptr_t, std::size_t> attaching_;  // ranges being mapped by attach()
    std::set<xpmem_segid_t> revoked_;                  // only segids we hold permits for
    std::unique_ptr<Fetcher> fetcher_;  // made on the first attach; guarded by mutex_
    std::map<std::uintptr_t, unsigned> changed_in_a_row_;  // the fetcher's only
};

}  // namespace xpmem::user
