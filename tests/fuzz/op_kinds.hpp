// The fuzzer's operation kinds: their names (for --disable and the summary) and how often
// each is chosen.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace xpmem_fuzz {

enum class OpKind : uint32_t {
    make, remove, get, release, attach, detach,
    read, write,                                   // through attachments, validated
    restamp, check_own,                            // the owner's own memory
    owner_mmap, owner_munmap, owner_mremap, owner_mprotect, owner_madvise, owner_migrate,
    attachment_munmap, attachment_mremap, attachment_mprotect, attachment_madvise,
    attachment_mmap_over,
    fork, exec, exit,
    open, close, dup, send_fd, receive_fd,
    bad_ioctl, raw_mmap, version, mapper_thread,
    count
};

constexpr size_t kOpKinds = static_cast<size_t>(OpKind::count);

struct OpKindInfo {
    std::string_view name;
    uint32_t weight;
};

constexpr std::array<OpKindInfo, kOpKinds> kOpKindInfo{{
    {"make", 60}, {"remove", 25}, {"get", 80}, {"release", 25}, {"attach", 100},
    {"detach", 35}, {"read", 140}, {"write", 60}, {"restamp", 50}, {"check-own", 25},
    {"owner-mmap", 8}, {"owner-munmap", 8}, {"owner-mremap", 15}, {"owner-mprotect", 15},
    {"owner-madvise", 30}, {"owner-migrate", 10},
    {"attachment-munmap", 20}, {"attachment-mremap", 30}, {"attachment-mprotect", 20},
    {"attachment-madvise", 40}, {"attachment-mmap-over", 8},
    {"fork", 8}, {"exec", 3}, {"exit", 1},
    {"open", 8}, {"close", 8}, {"dup", 8}, {"send-fd", 10}, {"receive-fd", 10},
    {"bad-ioctl", 20}, {"raw-mmap", 4}, {"version", 4}, {"mapper-thread", 6},
}};

// The variants of attachment-mremap, for --disable attachment-mremap:NAME. "part" and "shrink"
// split the attachment's VMA.
constexpr std::array<std::string_view, 6> kMremapVariants{"whole", "part", "anywhere", "shrink", "grow", "dontunmap"};

constexpr std::string_view op_name(OpKind kind)
{
    return kOpKindInfo[static_cast<size_t>(kind)].name;
}

} // namespace xpmem_fuzz
