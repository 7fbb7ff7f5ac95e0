#include "user/permission.hpp"

#include <sys/stat.h>
#include <xpmem.h>

#include <algorithm>

namespace xpmem::user {

bool permitted(const PeerCredentials &peer, OwnerCredentials owner, mode_t mode, int flags) {
    if (peer.uid == 0) return true;
    unsigned bits;
    if (peer.uid == owner.uid)
        bits = mode >> 6;
    else if (peer.gid == owner.gid ||
             std::find(peer.groups.begin(), peer.groups.end(), owner.gid) != peer.groups.end())
        bits = mode >> 3;
    else
        bits = mode;
    unsigned need = flags == XPMEM_RDWR ? (S_IROTH | S_IWOTH) : S_IROTH;
    return (bits & need) == need;
}

}  // namespace xpmem::user
