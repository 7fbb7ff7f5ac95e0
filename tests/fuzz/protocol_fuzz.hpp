// xpmem-protocol-fuzz: what its processes share. The supervisor maps one Shared table
// (MAP_SHARED, before fork) that the owner, the well-behaved attacher and the fuzzing
// processes all use: the owner's segment ids, counters, progress stamps and the first
// failure.
#pragma once

#include <sys/types.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace protocol_fuzz {

inline constexpr std::size_t kPage = 4096;
inline constexpr std::size_t kNoHole = ~std::size_t{0};

// The owner's segments. Their pattern tells them apart (stamp()), so a descriptor that
// reaches another segment's memory shows it.
struct SegmentSpec {
    const char *name;
    std::size_t pages;
    mode_t mode;
    bool memfd;             // a MAP_SHARED memfd region (handed out as it is) or private memory
    mode_t file_mode;       // the memfd's mode: 0 leaves memfd_create's 0777
    bool sealed;            // the memfd is sealed against growing, shrinking and more seals
    std::size_t hole_page;  // a PROT_NONE page inside the segment (served as a hole)
};

inline constexpr std::array<SegmentSpec, 6> kSegments{{
    {"private-0600", 16, 0600, false, 0, false, kNoHole},
    {"private-0644", 16, 0644, false, 0, false, kNoHole},
    {"private-0666-with-hole", 16, 0666, false, 0, false, 5},
    {"memfd-0644", 8, 0644, true, 0, false, kNoHole},
    {"memfd-0666-file-0644-sealed", 8, 0666, true, 0644, true, kNoHole},
    {"churn-0666", 8, 0666, false, 0, false, kNoHole},
}};
// The owner removes this segment and makes it again over the same memory every few
// milliseconds: its ids go stale while fuzzers hold permits and attach. It comes last.
inline constexpr std::size_t kChurn = kSegments.size() - 1;

inline std::size_t segment_size(std::size_t segment) {
    return kSegments[segment].pages * kPage;
}

// Every 8-byte word of the owner's memory names its segment and its offset in it.
constexpr std::uint64_t stamp(std::size_t segment, std::uint64_t offset) {
    return 0x7870000000000000ULL | (std::uint64_t{segment + 1} << 40) | offset;
}

// What fuzzing processes send. Every message sent and every connection opened for its
// own sake is one input.
enum class Op : unsigned {
    get,               // GET: real, stale, forged and garbage ids; all flags
    attach,            // ATTACH: own, released and forged permits; offsets/sizes at bounds
    release,           // RELEASE of own, released and forged permits
    revoke,            // REVOKE of the owner's segids and ids naming the fuzzer itself
    mutated,           // a message after bit flips, truncation, extension, splicing, ...
    descriptors,       // a message with SCM_RIGHTS descriptors attached
    half_close,        // requests, then shutdown(SHUT_WR) or shutdown(SHUT_RD)
    burst,             // up to 16 requests before reading any reply
    many_connections,  // up to 40 connections open at once
    connect_close,     // connect, then close at once (perhaps with a request unread)
    permit_flood,       // 4096 permits on one connection, then one more: ENOSPC
    count
};
inline constexpr std::array kOpNames{
    "get",        "attach", "release",          "revoke",        "mutated",    "descriptors",
    "half_close", "burst",  "many_connections", "connect_close", "permit_flood"};
static_assert(kOpNames.size() == static_cast<std::size_t>(Op::count));

inline constexpr unsigned kMaxFuzzers = 16;
inline constexpr std::size_t kStaleSegids = 64;

struct Shared {
    std::uint64_t seed = 0;
    pid_t owner = 0;
    uid_t owner_uid = 0;
    gid_t owner_gid = 0;
    pid_t attacher = 0;
    std::atomic<std::int64_t> segids[kSegments.size()];
    std::atomic<std::int64_t> stale[kStaleSegids];  // churn ids removed before (a ring)
    std::atomic<std::uint64_t> stale_count;
    std::atomic<std::uint32_t> stop;  // fuzzers: finish now

    std::atomic<std::uint64_t> inputs[static_cast<std::size_t>(Op::count)];
    std::atomic<std::uint64_t> replies_checked;
    std::atomic<std::uint64_t> closes_checked;    // connections the service had to close
    std::atomic<std::uint64_t> sessions_refused;  // closed before a first reply
    std::atomic<std::uint64_t> attaches_checked;  // successful ATTACH replies mapped
    std::atomic<std::uint64_t> descriptors_checked;
    std::atomic<std::uint64_t> words_checked;
    std::atomic<std::uint64_t> legit_checks;  // passes of the well-behaved attacher
    std::atomic<std::uint64_t> churns;
    std::atomic<std::uint64_t> progress_ns[kMaxFuzzers];

    std::atomic<std::uint64_t> failures;
    std::atomic<std::uint32_t> failure_claimed;
    char first_failure[2048];
};

std::uint64_t monotonic_ns();
// Counts a failure, keeps the first one's text and prints the first few.
void report_failure(Shared &shared, const std::string &what);

// The abstract address of `pid`'s service, found in /proc/net/unix as any local process
// can find it; empty if it has none.
std::string find_service(pid_t pid);

// One fuzzing process: `inputs` inputs (0: until Shared::stop) from `seed`.
void run_fuzzer(Shared &shared, unsigned index, std::uint64_t seed, std::uint64_t inputs,
                const std::string &service);

}  // namespace protocol_fuzz
