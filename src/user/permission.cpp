#include "user/permission.hpp"

#include <linux/capability.h>
#include <sys/stat.h>
#include <xpmem.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <string>

namespace xpmem::user {
namespace {

std::string read_file(const std::string &path) {
    std::ifstream file(path);
    return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

// Whether `process` lives in our user namespace. Its ns link needs ptrace access (an
// unprivileged owner has none over root); its uid_map is world-readable and tells the
// namespaces apart in practice (the initial one maps all 2^32 ids onto themselves).
bool same_user_namespace(const std::string &process) {
    struct stat theirs {
    }, ours{};
    if (::stat(("/proc/" + process + "/ns/user").c_str(), &theirs) == 0 &&
        ::stat("/proc/self/ns/user", &ours) == 0)
        return theirs.st_ino == ours.st_ino && theirs.st_dev == ours.st_dev;
    std::string map = read_file("/proc/" + process + "/uid_map");
    return !map.empty() && map == read_file("/proc/self/uid_map");
}

// Read from /proc: SO_PEERCRED does not carry capabilities. The pid is the one the
// kernel recorded at connect time and the peer is still connected, so it is alive.
bool has_ipc_owner(pid_t pid) {
    std::string process = std::to_string(pid);
    if (!same_user_namespace(process)) return false;
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
