// SOCK_SEQPACKET Unix sockets in the abstract namespace: listen, connect, and exchange
// fixed-size messages with descriptors attached.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "user/protocol.hpp"
#include "util/error.hpp"
#include "util/unique_fd.hpp"

namespace xpmem::user {

struct PeerCredentials {
    pid_t pid;
    uid_t uid;
    gid_t gid;
    std::vector<gid_t> groups;  // supplementary groups at connect time
};

// A nonblocking listening socket at the service address of (`pid`, `key`); EADDRINUSE if
// that name is taken.
util::UniqueFd listen_on(pid_t pid, std::uint32_t key);
// Connects to the service of (`pid`, `key`) without waiting (EAGAIN when its backlog is
// full) and checks that `pid` really is who answers. The socket is nonblocking.
util::UniqueFd connect_to(pid_t pid, std::uint32_t key);
// Connects to the service of the owner of `segid`: the one among the services of its pid
// whose process started when the segid says (protocol.hpp). ENOENT if none. The socket is
// nonblocking.
util::UniqueFd connect_to_owner(std::int64_t segid);
// The start time of process `pid` (0: this process) in clock ticks after boot, if readable.
std::optional<std::uint64_t> start_time_of(pid_t pid);
// Whether every user id of process `pid` (real, effective, saved, filesystem) is `uid` now.
// SO_PEERCRED tells who a peer was when it connected or listened: a process that was root
// then may have become another user since.
bool runs_only_as(pid_t pid, uid_t uid);
PeerCredentials peer_credentials(int socket);

// Sends one message; `nonblocking` fails with EAGAIN instead of waiting for buffer space.
void send_message(int socket, std::span<const std::byte> message, std::span<const int> fds = {},
                  bool nonblocking = false);

// Receives one message into `buffer`; returns its size, 0 at end of stream. Descriptors
// that came with it are appended to `fds` (or closed by the kernel when `fds` is null).
// A message larger than `buffer` or with truncated descriptors is EPROTO.
std::size_t receive_message(int socket, std::span<std::byte> buffer,
                            std::vector<util::UniqueFd> *fds = nullptr);

// Waits at most `timeout` for `socket` to become readable; false on timeout.
bool wait_readable(int socket, std::chrono::milliseconds timeout);

template <class Message>
std::span<const std::byte> bytes_of(const Message &message) {
    return std::as_bytes(std::span(&message, 1));
}

// Receives a message of exactly type `Message` (ECONNRESET at end of stream, else EPROTO).
template <class Message>
Message receive_exactly(int socket, std::vector<util::UniqueFd> *fds = nullptr) {
    Message message;
    std::size_t size = receive_message(socket, std::as_writable_bytes(std::span(&message, 1)), fds);
    if (size == 0) util::throw_errno(ECONNRESET, "peer closed");
    if (size != sizeof message || message.header.magic != protocol::kMagic ||
        message.header.type != Message{}.header.type)
        util::throw_errno(EPROTO, "unexpected message");
    return message;
}

}  // namespace xpmem::user
