#include "user/permission.hpp"

#include <linux/capability.h>
#include <sys/stat.h>
#include <xpmem.h>

#include <algorithm>
#include <fstream>
#include <string>

namespace xpmem::user {
namespace {

ino_t user_namespace_of(const std::string &process) {
    struct stat status {};
    return ::stat(("/proc/" + process + "/ns/user").c_str(), &status) == 0 ? status.st_ino : 0;
}

// Read from /proc: SO_PEERCRED does not carry capabilities. The pid is the one the
// kernel recorded at connect time and the peer is still connected, so it is alive.
bool has_ipc_owner(pid_t pid) {
    std::string process = std::to_string(pid);
    ino_t theirs = user_namespace_of(process);
    if (theirs == 0 || theirs != user_namespace_of("self")) return false;
    std::ifstream status("/proc/" + process + "/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.rfind("CapEff:", 0) != 0) continue;
        unsigned long long effective = std::stoull(line.substr(7), nullptr, 16);
        return (effective >> CAP_IPC_OWNER & 1) != 0;
    }
    return false;
}

}  // namespace

bool permitted(const PeerCredentials &peer, Owner owner, mode_t mode, int flags) {
    unsigned bits;
    if (peer.uid == owner.uid)
        bits = mode >> 6;
    else if (peer.gid == owner.gid ||
             std::find(peer.groups.begin(), peer.groups.end(), owner.gid) != peer.groups.end())
        bits = mode >> 3;
    else
        bits = mode;
    unsigned need = flags == XPMEM_RDWR ? (S_IROTH | S_IWOTH) : S_IROTH;
    if ((bits & need) == need) return true;
    return has_ipc_owner(peer.pid);
}

}  // namespace xpmem::user
