#include "user/channel.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "user/protocol.hpp"
#include "util/error.hpp"

namespace xpmem::user {
namespace {

using util::throw_errno;
using util::throw_last_errno;
using util::UniqueFd;

socklen_t abstract_address(pid_t pid, sockaddr_un &address) {
    std::string name = protocol::socket_name(pid);
    address = {};
    address.sun_family = AF_UNIX;
    // Abstract namespace: a leading NUL, no file, no permissions; SO_PEERCRED checks all.
    std::memcpy(address.sun_path + 1, name.data(), name.size());
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
}

UniqueFd new_socket() {
    UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (!fd) throw_last_errno("socket");
    return fd;
}

}  // namespace

UniqueFd listen_on(pid_t pid) {
    UniqueFd fd = new_socket();
    sockaddr_un address;
    socklen_t length = abstract_address(pid, address);
    if (::bind(fd.get(), reinterpret_cast<sockaddr *>(&address), length) < 0)
        throw_last_errno("bind service socket");
    if (::listen(fd.get(), 128) < 0) throw_last_errno("listen");
    return fd;
}

UniqueFd connect_to(pid_t pid) {
    UniqueFd fd = new_socket();
    sockaddr_un address;
    socklen_t length = abstract_address(pid, address);
    while (::connect(fd.get(), reinterpret_cast<sockaddr *>(&address), length) < 0) {
        if (errno == EINTR) continue;
        throw_last_errno("connect");
    }
    // Anyone may bind an abstract name first; only the process the id names is trusted.
    if (peer_credentials(fd.get()).pid != pid) throw_errno(EACCES, "impostor service");
    return fd;
}

PeerCredentials peer_credentials(int socket) {
    ucred cred{};
    socklen_t length = sizeof cred;
    if (::getsockopt(socket, SOL_SOCKET, SO_PEERCRED, &cred, &length) < 0)
        throw_last_errno("SO_PEERCRED");
    PeerCredentials peer{cred.pid, cred.uid, cred.gid, {}};
    peer.groups.resize(64);
    for (;;) {
        length = static_cast<socklen_t>(peer.groups.size() * sizeof(gid_t));
        if (::getsockopt(socket, SOL_SOCKET, SO_PEERGROUPS, peer.groups.data(), &length) == 0)
            break;
        if (errno != ERANGE) throw_last_errno("SO_PEERGROUPS");
        peer.groups.resize(length / sizeof(gid_t));
    }
    peer.groups.resize(length / sizeof(gid_t));
    return peer;
}

void send_message(int socket, std::span<const std::byte> message, std::span<const int> fds,
                  bool nonblocking) {
    iovec io{const_cast<std::byte *>(message.data()), message.size()};
    msghdr header{};
    header.msg_iov = &io;
    header.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * protocol::kMaxFds)];
    if (!fds.empty()) {
        if (fds.size() > protocol::kMaxFds) throw_errno(EINVAL, "too many descriptors");
        header.msg_control = control;
        header.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
        cmsghdr *cmsg = CMSG_FIRSTHDR(&header);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
    }
    int flags = MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0);
    for (;;) {
        ssize_t sent = ::sendmsg(socket, &header, flags);
        if (sent >= 0) return;
        if (errno != EINTR) throw_last_errno("sendmsg");
    }
}

std::size_t receive_message(int socket, std::span<std::byte> buffer, std::vector<UniqueFd> *fds) {
    iovec io{buffer.data(), buffer.size()};
    msghdr header{};
    header.msg_iov = &io;
    header.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * protocol::kMaxFds)];
    if (fds != nullptr) {
        header.msg_control = control;
        header.msg_controllen = sizeof control;
    }
    ssize_t received;
    do {
        received = ::recvmsg(socket, &header, MSG_CMSG_CLOEXEC);
    } while (received < 0 && errno == EINTR);
    if (received < 0) throw_last_errno("recvmsg");
    if (fds != nullptr) {
        for (cmsghdr *cmsg = CMSG_FIRSTHDR(&header); cmsg != nullptr;
             cmsg = CMSG_NXTHDR(&header, cmsg)) {
            if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
            std::size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < count; ++i) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
                fds->emplace_back(fd);
            }
        }
    }
    if ((header.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0)
        throw_errno(EPROTO, "oversized message");
    return static_cast<std::size_t>(received);
}

bool wait_readable(int socket, std::chrono::milliseconds timeout) {
    pollfd entry{socket, POLLIN, 0};
    for (;;) {
        int ready = ::poll(&entry, 1, static_cast<int>(timeout.count()));
        if (ready >= 0) return ready > 0;
        if (errno != EINTR) throw_last_errno("poll");
    }
}

}  // namespace xpmem::user
