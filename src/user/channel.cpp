#include "user/channel.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>

#include "user/protocol.hpp"
#include "util/error.hpp"

namespace xpmem::user {
namespace {

using util::throw_errno;
using util::throw_last_errno;
using util::UniqueFd;

socklen_t abstract_address(const std::string &name, sockaddr_un &address) {
    address = {};
    address.sun_family = AF_UNIX;
    // Abstract namespace: a leading NUL, no file, no permissions; SO_PEERCRED checks all.
    std::memcpy(address.sun_path + 1, name.data(), name.size());
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
}

UniqueFd new_socket(int flags = 0) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | flags, 0));
    if (!fd) throw_last_errno("socket");
    return fd;
}

// A nonblocking connection to the abstract `name`, answered by process `pid` (the pid
// that listens on it, as the kernel recorded it).
UniqueFd connect_to_name(const std::string &name, pid_t pid) {
    UniqueFd fd = new_socket(SOCK_NONBLOCK);
    sockaddr_un address;
    socklen_t length = abstract_address(name, address);
    // A Unix socket connects at once or, when the backlog is full, fails with EAGAIN.
    while (::connect(fd.get(), reinterpret_cast<sockaddr *>(&address), length) < 0) {
        if (errno == EINTR) continue;
        throw_last_errno("connect");
    }
    // Anyone may bind an abstract name; only the process the id names is trusted.
    if (peer_credentials(fd.get()).pid != pid) throw_errno(EACCES, "impostor service");
    return fd;
}

// The names of the services of `pid` that are bound now, from /proc/net/unix (lines end
// with "@<abstract name>").
std::vector<std::string> service_names(pid_t pid) {
    std::vector<std::string> names;
    UniqueFd fd(::open("/proc/net/unix", O_RDONLY | O_CLOEXEC | O_NONBLOCK));
    if (!fd) return names;
    std::string prefix = "@" + protocol::socket_name_prefix(pid);
    std::string text;
    char chunk[65536];
    for (;;) {
        ssize_t got = ::read(fd.get(), chunk, sizeof chunk);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        text.append(chunk, static_cast<std::size_t>(got));
    }
    for (std::size_t at = 0; at < text.size();) {
        std::size_t end = text.find('\n', at);
        if (end == std::string::npos) end = text.size();
        std::string_view line(text.data() + at, end - at);
        std::size_t name = line.rfind(' ');
        if (name != std::string_view::npos && line.substr(name + 1).starts_with(prefix))
            names.emplace_back(line.substr(name + 2));
        at = end + 1;
    }
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    return names;
}

}  // namespace

UniqueFd listen_on(pid_t pid, std::uint32_t key) {
    UniqueFd fd = new_socket(SOCK_NONBLOCK);
    sockaddr_un address;
    socklen_t length = abstract_address(protocol::socket_name(pid, key), address);
    if (::bind(fd.get(), reinterpret_cast<sockaddr *>(&address), length) < 0)
        throw_last_errno("bind service socket");
    if (::listen(fd.get(), 128) < 0) throw_last_errno("listen");
    return fd;
}

UniqueFd connect_to(pid_t pid, std::uint32_t key) {
    return connect_to_name(protocol::socket_name(pid, key), pid);
}

// The number of process `pid` (of our pid namespace) in the pid namespace of the /proc we
// see: they differ when /proc was mounted for another namespace. A pidfd's fdinfo says.
std::optional<pid_t> pid_in_proc(pid_t pid) {
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    if (!pidfd) return std::nullopt;
    std::ifstream info("/proc/self/fdinfo/" + std::to_string(pidfd.get()));
    std::string line;
    while (std::getline(info, line))
        if (line.rfind("Pid:", 0) == 0) {
            pid_t number = 0;
            std::string_view value(line.data() + 4, line.size() - 4);
            while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
                value.remove_prefix(1);
            auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), number);
            if (error != std::errc{} || number <= 0) return std::nullopt;
            return number;
        }
    return pid;  // no Pid line (older kernels): the same namespace is all we can assume
}

std::optional<std::uint64_t> start_time_of(pid_t pid) {
    std::string path = "/proc/self/stat";
    if (pid != 0) {
        std::optional<pid_t> number = pid_in_proc(pid);
        if (!number) return std::nullopt;
        path = "/proc/" + std::to_string(*number) + "/stat";
    }
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return std::nullopt;
    char text[1024];
    ssize_t got = ::read(fd.get(), text, sizeof text - 1);
    if (got <= 0) return std::nullopt;
    std::string_view stat(text, static_cast<std::size_t>(got));
    // "pid (comm) state ppid ...": comm may hold anything; field 22 is the start time, the
    // 20th after the last ')'.
    std::size_t at = stat.rfind(')');
    for (int field = 2; field < 22 && at != std::string_view::npos; ++field)
        at = stat.find(' ', at + 1);
    if (at == std::string_view::npos) return std::nullopt;
    std::uint64_t start = 0;
    auto [end, error] = std::from_chars(stat.data() + at + 1, stat.data() + stat.size(), start);
    if (error != std::errc{}) return std::nullopt;
    return start;
}

bool runs_only_as(pid_t pid, uid_t uid) {
    std::optional<pid_t> number = pid_in_proc(pid);
    if (!number) return false;
    std::string path = "/proc/" + std::to_string(*number) + "/status";
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return false;
    char text[4096];
    ssize_t got = ::read(fd.get(), text, sizeof text - 1);
    if (got <= 0) return false;
    std::string_view status(text, static_cast<std::size_t>(got));
    std::size_t at = status.find("\nUid:");
    if (at == std::string_view::npos) return false;
    const char *cursor = status.data() + at + 5;
    const char *end = status.data() + status.size();
    for (int field = 0; field < 4; ++field) {
        while (cursor < end && (*cursor == ' ' || *cursor == '\t')) ++cursor;
        uid_t value = 0;
        auto [next, error] = std::from_chars(cursor, end, value);
        if (error != std::errc{} || value != uid) return false;
        cursor = next;
    }
    return true;
}

UniqueFd connect_to_owner(std::int64_t segid) {
    pid_t pid = protocol::owner_pid(segid);
    for (const std::string &name : service_names(pid)) {
        try {
            UniqueFd fd = connect_to_name(name, pid);
            // The pid answers; is it still the process that made the segid? A process that
            // got the pid later started later. (If the listener passed its socket on and
            // exited, the pid names another process, or none.)
            std::optional<std::uint64_t> start = start_time_of(pid);
            if (start && (*start & protocol::kStartMask) == protocol::owner_start(segid)) return fd;
        } catch (const std::system_error &error) {
            if (error.code().value() == ENOMEM) throw;
        }
    }
    throw_errno(ENOENT, "no such owner");
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
