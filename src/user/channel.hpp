// SOCK_SEQPACKET Unix sockets in the abstract namespace: listen, connect, and exchange
// fixed-size messages with descriptors attached.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <span>
#include <vector>

#include "util/unique_fd.hpp"

namespace xpmem::user {

struct PeerCredentials {
    pid_t pid;
    uid_t uid;
    gid_t gid;
    std::vector<gid_t> groups;  // supplementary groups at connect time
};

util::UniqueFd listen_on(pid_t pid);
// Connects to the service of `pid` and checks that `pid` really is who answers.
util::UniqueFd connect_to(pid_t pid);
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

}  // namespace xpmem::user
