// docs/contract.md §2, "owner changes its memory", when someone other than the owner changes it:
// the kernel collapsing pages into a huge page, migrating a page to another NUMA node,
// another process truncating a file the owner maps. An existing attachment must show the
// owner's current memory afterwards, never the pages that were there before. (Changes the
// owner makes itself: test_follow.cpp; copy-on-write after the owner forks: test_fork.cpp.)

#include <fcntl.h>
#include <linux/mempolicy.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <xpmem.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kHugePage = 2 << 20;
constexpr std::size_t kPagesPerHugePage = kHugePage / kPage;

class Invalidation : public xt::BackendTest {};

// A 2 MiB-aligned private range of 512 small pages, each holding "before <i>".
char *small_pages_in_a_huge_page_frame() {
    auto *raw = static_cast<char *>(
        mmap(nullptr, 2 * kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (raw == MAP_FAILED) return nullptr;
    auto aligned = (reinterpret_cast<std::uintptr_t>(raw) + kHugePage - 1) & ~(kHugePage - 1);
    auto *frame = reinterpret_cast<char *>(aligned);
    munmap(raw, static_cast<std::size_t>(frame - raw));  // the unaligned slack
    munmap(frame + kHugePage, static_cast<std::size_t>(raw + kHugePage - frame));
    if (madvise(frame, kHugePage, MADV_NOHUGEPAGE) != 0) return nullptr;
    for (std::size_t i = 0; i < kPagesPerHugePage; ++i)
        std::snprintf(frame + i * kPage, kPage, "before %zu", i);
    return frame;
}

bool collapses(char *frame) {
    return madvise(frame, kHugePage, MADV_HUGEPAGE) == 0 &&
           madvise(frame, kHugePage, MADV_COLLAPSE) == 0;
}

// khugepaged's work, done at once with MADV_COLLAPSE: the 512 small pages are copied into
// one new huge page and freed.
TEST_P(Invalidation, HugePageCollapse) {
    char *probe = small_pages_in_a_huge_page_frame();
    ASSERT_NE(probe, nullptr);
    bool supported = collapses(probe);
    int error = errno;
    munmap(probe, kHugePage);
    if (!supported) GTEST_SKIP() << "MADV_COLLAPSE unavailable: " << strerror(error);

    xt::Channel channel;
    xt::Process owner([&] {
        char *frame = small_pages_in_a_huge_page_frame();
        CHILD_CHECK(frame != nullptr);
        auto segment = xpmem::Segment::make({reinterpret_cast<std::byte *>(frame), kHugePage});
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(collapses(frame));
        for (std::size_t i = 0; i < kPagesPerHugePage; ++i)
            std::snprintf(frame + i * kPage, kPage, "after %zu", i);
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, kHugePage);
        const auto *bytes = reinterpret_cast<const char *>(view.data());
        char expected[32];
        for (std::size_t i = 0; i < kPagesPerHugePage; ++i) {  // every PTE in place
            std::snprintf(expected, sizeof expected, "before %zu", i);
            CHILD_CHECK(std::strcmp(bytes + i * kPage, expected) == 0);
        }
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        for (std::size_t i = 0; i < kPagesPerHugePage; ++i) {
            std::snprintf(expected, sizeof expected, "after %zu", i);
            CHILD_CHECK(std::strcmp(bytes + i * kPage, expected) == 0);
        }
        channel.send_b(3);
    });
    xt::expect_all_ok({&attacher, &owner});
}

int numa_nodes() {
    int nodes = 0;
    struct stat info {};
    while (stat(("/sys/devices/system/node/node" + std::to_string(nodes)).c_str(), &info) == 0)
        ++nodes;
    return nodes;
}

// The NUMA node holding the page at `address` of the calling process.
int node_of(void *address) {
    int status = -1;
    if (syscall(SYS_move_pages, 0, 1, &address, nullptr, &status, 0) != 0) return -1;
    return status;
}

// Page migration (move_pages, as a NUMA balancer or compaction would): the owner's page is
// copied to another node and the old one freed.
TEST_P(Invalidation, PageMigration) {
    if (numa_nodes() < 2) GTEST_SKIP() << "needs two NUMA nodes (the VM harness has them)";
    // In the user backend the attacher maps the same page: moving a page mapped by two
    // processes takes MPOL_MF_MOVE_ALL, which takes CAP_SYS_NICE.
    bool move_all = user_backend();
    if (move_all && !xt::running_as_root()) GTEST_SKIP() << "needs CAP_SYS_NICE here";
    xt::after_owner_change(
        1, [](char *memory) { std::strcpy(memory, "before"); },
        [&](char *memory) {
            void *page = memory;
            int from = node_of(page);
            CHILD_CHECK(from >= 0);
            int to = from == 0 ? 1 : 0;
            int status = -1;
            CHILD_CHECK(syscall(SYS_move_pages, 0, 1, &page, &to, &status,
                                move_all ? MPOL_MF_MOVE_ALL : MPOL_MF_MOVE) == 0);
            CHILD_CHECK(status == to && node_of(page) == to);
            std::strcpy(memory, "after");
        },
        [](const std::byte *view) {
            CHILD_CHECK(std::strcmp(reinterpret_cast<const char *>(view), "after") == 0);
        });
}

// Another process truncates a file the owner maps: the owner's pages beyond the new end
// are gone (SIGBUS for the owner), and so they are for every attacher.
TEST_P(Invalidation, FileTruncatedByAnotherProcess) {
    xt::Channel channel;
    xt::Process owner([&] {
        int file = memfd_create("xpmem-truncated", MFD_CLOEXEC);
        CHILD_CHECK(file >= 0 && ftruncate(file, 2 * kPage) == 0);
        auto *memory = static_cast<char *>(
            mmap(nullptr, 2 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, file, 0));
        CHILD_CHECK(memory != MAP_FAILED);
        std::strcpy(memory, "first");
        std::strcpy(memory + kPage, "second");
        auto segment = xpmem::Segment::make({reinterpret_cast<std::byte *>(memory), 2 * kPage});
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        xt::Process truncater([&] { CHILD_CHECK(ftruncate(file, kPage) == 0); });
        CHILD_CHECK(truncater.wait().exited_ok());
        CHILD_CHECK(!xt::readable_by_kernel(memory + kPage));
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, 2 * kPage);
        const auto *bytes = reinterpret_cast<const char *>(view.data());
        CHILD_CHECK(std::strcmp(bytes + kPage, "second") == 0);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        CHILD_CHECK(std::strcmp(bytes, "first") == 0);
        CHILD_CHECK(!xt::readable_by_kernel(bytes + kPage));
        channel.send_b(3);
    });
    xt::expect_all_ok({&attacher, &owner});
}

INSTANTIATE_BACKENDS(Invalidation);

}  // namespace
