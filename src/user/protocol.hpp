// The user backend's wire protocol between processes.
//
// Every process that uses the user backend runs a service thread listening on the
// abstract Unix socket "xpmem-user/<pid>" (SOCK_SEQPACKET: one message per datagram).
// Attachers connect to the owner named by a segid and ask GET, ATTACH and RELEASE on that
// connection, one request at a time. An owner removing a segment connects to each
// attacher's socket and sends REVOKE. Every message has a fixed size per type; anything
// else closes the connection. The peer's identity always comes from SO_PEERCRED.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace xpmem::user::protocol {

inline constexpr std::uint32_t kMagic = 0x58504d31;  // "XPM1"

enum class Type : std::uint32_t {
    get = 1,
    get_reply,
    attach,
    attach_reply,
    release,
    revoke,
    revoke_reply,
};

struct Header {
    std::uint32_t magic = kMagic;
    Type type{};
};

// segid = serial << 32 | owner pid; apid = serial << 32 | attacher pid.
inline pid_t pid_of(std::int64_t id) {
    return static_cast<pid_t>(id & 0xffffffff);
}
inline std::int64_t make_id(std::uint32_t serial, pid_t pid) {
    return static_cast<std::int64_t>((std::uint64_t{serial & 0x7fffffffU} << 32) |
                                     static_cast<std::uint32_t>(pid));
}

struct GetRequest {
    Header header{kMagic, Type::get};
    std::int64_t segid;
    std::int32_t flags;
    std::int32_t reserved = 0;
};

struct GetReply {
    Header header{kMagic, Type::get_reply};
    std::int32_t error;  // 0 or an errno value
    std::int32_t reserved = 0;
    std::uint64_t permit;  // the owner's handle for this connection's access
};

struct AttachRequest {
    Header header{kMagic, Type::attach};
    std::uint64_t permit;
    std::uint64_t offset;  // into the segment, page-aligned
    std::uint64_t size;    // page multiple
};

// One piece of an attached range: a file range to map, or a hole (fd_index < 0).
struct Piece {
    std::uint64_t length;
    std::uint64_t file_offset;
    std::int32_t fd_index;  // into the descriptors carried by the reply
    std::uint32_t writable;
};

inline constexpr std::size_t kMaxPieces = 64;
inline constexpr std::size_t kMaxFds = 16;

// Covers a prefix of the requested range; the attacher asks again for the rest.
struct AttachReply {
    Header header{kMagic, Type::attach_reply};
    std::int32_t error;
    std::uint32_t piece_count;
    Piece pieces[kMaxPieces];
};

struct ReleaseRequest {
    Header header{kMagic, Type::release};
    std::uint64_t permit;
};

struct RevokeRequest {
    Header header{kMagic, Type::revoke};
    std::int64_t segid;
};

struct RevokeReply {
    Header header{kMagic, Type::revoke_reply};
    std::int32_t error;
    std::int32_t reserved = 0;
};

inline std::string socket_name(pid_t pid) {
    return "xpmem-user/" + std::to_string(pid);
}

}  // namespace xpmem::user::protocol
