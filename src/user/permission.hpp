// The System V IPC permission check of spec section 1, applied to a peer's credentials.
#pragma once

#include <sys/types.h>

#include "user/channel.hpp"

namespace xpmem::user {

struct Owner {
    uid_t uid;
    gid_t gid;
};

// Whether `peer` may get access `flags` (XPMEM_RDONLY or XPMEM_RDWR) to a segment of
// `owner` published with `mode`: owner uid -> user bits, owner gid or a supplementary
// group -> group bits, else other bits; RDONLY needs r, RDWR needs r and w;
// CAP_IPC_OWNER in this user namespace passes.
bool permitted(const PeerCredentials &peer, Owner owner, mode_t mode, int flags);

}  // namespace xpmem::user
