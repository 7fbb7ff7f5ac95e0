// The user backend's wire protocol between processes.
//
// Every process that uses the user backend runs a service thread listening on the
// abstract Unix socket "xpmem-user/<pid>.<key>" (SOCK_SEQPACKET: one message per
// datagram), where <key> is drawn at random when it binds: nobody can bind a process's
// name before it does. Names are public (/proc/net/unix lists them) and prove nothing. A
// segid carries its owner's pid and start time: an attacher finds the names of that pid,
// checks that the pid really answers (SO_PEERCRED) and that the process with that pid
// started when the segid says (/proc/<pid>/stat). A process that later gets the same pid
// and binds the same name started later, and is not trusted. Then the attacher asks GET,
// ATTACH, FAULT and RELEASE on that connection, one request at a time; an owner that does not
// answer in time is given up. An owner removing a segment connects to each attacher's
// socket (its pid from SO_PEERCRED, its key from its GETs) and sends REVOKE. Every
// message has a fixed size per type; anything else closes the connection. The peer's
// identity always comes from SO_PEERCRED, recorded at connect time.
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
    fault,
};

struct Header {
    std::uint32_t magic = kMagic;
    Type type{};
};

// segid = serial (11 bits) << 52 | owner start time (30 bits) << 22 | owner pid (22 bits:
// Linux pids stay below 2^22). Always positive. The start time is the low bits of the
// owner's start in clock ticks after boot (/proc/<pid>/stat): they repeat only after 124
// days at 100 ticks per second.
inline constexpr unsigned kPidBits = 22;
inline constexpr unsigned kStartBits = 30;
inline constexpr unsigned kSerialBits = 11;
inline constexpr std::uint32_t kStartMask = (1U << kStartBits) - 1;

inline pid_t owner_pid(std::int64_t segid) {
    return static_cast<pid_t>(segid & ((1 << kPidBits) - 1));
}
inline std::uint32_t owner_start(std::int64_t segid) {
    return static_cast<std::uint32_t>(segid >> kPidBits) & kStartMask;
}
// The part of a segid that names its owner (pid and start time).
inline std::uint64_t owner_of(std::int64_t segid) {
    return static_cast<std::uint64_t>(segid) & ((std::uint64_t{1} << (kPidBits + kStartBits)) - 1);
}
inline std::int64_t make_segid(std::uint32_t serial, std::uint64_t start, pid_t pid) {
    return static_cast<std::int64_t>(
        (std::uint64_t{serial & ((1U << kSerialBits) - 1)} << (kPidBits + kStartBits)) |
        ((start & kStartMask) << kPidBits) | static_cast<std::uint32_t>(pid));
}
// apid = serial << 32 | attacher pid (apids never leave the attacher).
inline std::int64_t make_apid(std::uint32_t serial, pid_t pid) {
    return static_cast<std::int64_t>((std::uint64_t{serial & 0x7fffffffU} << 32) |
                                     static_cast<std::uint32_t>(pid));
}

struct GetRequest {
    Header header{kMagic, Type::get};
    std::int64_t segid;
    std::int32_t flags;
    std::uint32_t attacher_key = 0;  // where the owner sends REVOKE: (SO_PEERCRED pid, this key)
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

// An attacher touched a page of its attachment that the owner's memory no longer backs
// (the owner unmapped, moved or removed what was there, or it was a hole): the owner
// describes [offset, offset + size) as for an attach, with the page at `offset` present.
struct FaultRequest {
    Header header{kMagic, Type::fault};
    std::uint64_t permit;
    std::uint64_t offset;  // into the segment, page-aligned: the page touched
    std::uint64_t size;    // page multiple
};

inline constexpr std::uint32_t kPieceWritable = 1;
// The piece is the owner's converted memory: the attacher watches it for faults, which
// come when the owner's memory there changes.
inline constexpr std::uint32_t kPieceFollowed = 2;
// The piece is part of a SysV shared memory segment, which no descriptor can carry: the
// attacher attaches segment `shm_id` itself (shmat(2), with its own IPC permission) and
// keeps [file_offset, file_offset + length) of it.
inline constexpr std::uint32_t kPieceSysv = 4;

// One piece of an attached range: a file range to map, a SysV segment's range, or a hole
// (fd_index < 0 and no kPieceSysv), which the attacher watches too.
struct Piece {
    std::uint64_t length;
    std::uint64_t file_offset;
    std::int32_t fd_index;  // into the descriptors carried by the reply
    std::uint32_t flags;    // kPiece*
    std::int32_t shm_id;    // kPieceSysv only
    std::uint32_t reserved;
};

inline constexpr std::size_t kMaxPieces = 64;
inline constexpr std::size_t kMaxFds = 16;

// Covers a prefix of the requested range; the attacher asks again for the rest.
struct AttachReply {
    Header header{kMagic, Type::attach_reply};
    std::int32_t error;
    std::uint32_t piece_count;
    std::uint64_t ipc_namespace;  // the owner's (inode of /proc/self/ns/ipc): names shm_ids
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

// Every service name of `pid` starts with this; the service of the process that drew
// `key` is socket_name(pid, key).
inline std::string socket_name_prefix(pid_t pid) {
    return "xpmem-user/" + std::to_string(pid) + ".";
}
inline std::string socket_name(pid_t pid, std::uint32_t key) {
    return socket_name_prefix(pid) + std::to_string(key);
}

}  // namespace xpmem::user::protocol
