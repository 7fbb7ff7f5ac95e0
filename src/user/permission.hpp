// The System V IPC permission check of xpmem_get (docs/contract.md §1), applied to a peer's
// credentials.
#pragma once

#include <sys/types.h>

#include "user/channel.hpp"

namespace xpmem::user {

struct OwnerCredentials {
    uid_t uid;
    gid_t gid;
};

// Whether `peer` may get access `flags` (XPMEM_RDONLY or XPMEM_RDWR) to a segment of
// `owner` published with `mode`: owner uid -> user bits, owner gid or a supplementary
// group -> group bits, else other bits; RDONLY needs r, RDWR needs r and w; root passes.
//
// Every input is what the kernel recorded when the peer connected (SO_PEERCRED,
// SO_PEERGROUPS; uids as seen from this process's user namespace), never read later: a
// peer that execs a setuid program after connecting, or whose pid is reused, gains
// nothing. Capabilities are not recorded with a connection, so CAP_IPC_OWNER is replaced
// by its usual holder: a peer connected as uid 0 passes every check, and a non-root
// process holding CAP_IPC_OWNER gets no more than its uid and groups allow.
bool permitted(const PeerCredentials &peer, OwnerCredentials owner, mode_t mode, int flags);

}  // namespace xpmem::user
