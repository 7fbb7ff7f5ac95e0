// Range description: what an attacher maps for a range of a segment, piece by piece
// (protocol.hpp), making the owner's private memory shareable on the way (shareable.hpp).
// Runs on the owner's service thread with the backing lock held.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <vector>

#include "user/address_space.hpp"
#include "user/permission.hpp"
#include "user/protocol.hpp"
#include "user/shareable.hpp"
#include "util/unique_fd.hpp"

namespace xpmem::user {

// A reply converts at most this much: the attacher asks again for the rest.
inline constexpr std::size_t kMaxConvertPerReply = std::size_t{256} << 20;

struct RangeRequest {
    SegmentRange segment;
    Backing::Holder holder;     // the permit the descriptors go out under
    std::uintptr_t start, end;  // within the segment
    bool read_only;             // the permit's access
    bool populate;              // a FAULT: the page at `start` must be there, if converted
    PeerCredentials peer;       // who asks
    uid_t owner_uid;
    std::span<const Range> ours;                    // the library's own mappings: holes
    std::span<const std::uintptr_t> known_threads;  // their descriptor pages are holes
};

// Describes a prefix of [start, end) into `reply` and `fds`: it stops when the reply runs
// out of pieces or descriptors, or once it has converted kMaxConvertPerReply. Every
// descriptor reaches only memory of the segment (shareable.hpp). Throws EAGAIN if the
// owner changed the memory under a conversion before anything was described (try again),
// EBUSY for private memory pinned by io_uring.
void describe_range(Backing &backing, const RangeRequest &request, protocol::AttachReply &reply,
                    std::vector<util::UniqueFd> &fds);

}  // namespace xpmem::user
