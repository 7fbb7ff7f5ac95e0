// docs/contract.md §1, the permission check of xpmem_get, across real uids: owner uid -> user
// bits, owner gid or a supplementary group -> group bits, else other bits; RDONLY needs r,
// RDWR needs r and w; root (CAP_IPC_OWNER) passes. Only the owner removes.

#include <sys/mman.h>
#include <unistd.h>
#include <xpmem.h>

#include <array>
#include <vector>

#include "harness.hpp"

namespace {

constexpr uid_t kOwnerUid = 4001;
constexpr gid_t kOwnerGid = 5001;
constexpr gid_t kOtherGid = 5002;

class Permissions : public xt::BackendTest {
  protected:
    void SetUp() override {
        xt::BackendTest::SetUp();
        if (!xt::running_as_root()) GTEST_SKIP() << "needs root to act as several uids";
    }
};

struct Identity {
    const char *name;
    uid_t uid;
    gid_t gid;
    std::vector<gid_t> groups;
    int class_shift;  // which mode bits apply: 6 user, 3 group, 0 other, -1 root
};

const std::vector<Identity> &identities() {
    static const std::vector<Identity> all{
        {"same uid", kOwnerUid, kOtherGid, {}, 6},
        {"owner's gid", 4002, kOwnerGid, {}, 3},
        {"supplementary group", 4003, kOtherGid, {kOwnerGid}, 3},
        {"other", 4004, kOtherGid, {}, 0},
        {"root", 0, 0, {}, -1},
    };
    return all;
}

constexpr std::array<mode_t, 10> kModes{0600, 0400, 0200, 0060, 0040, 0006, 0004, 0000, 0666, 0777};
using Segids = std::array<xpmem_segid_t, kModes.size()>;

bool expected(const Identity &who, mode_t mode, int flags) {
    if (who.class_shift < 0) return true;
    unsigned bits = (mode >> who.class_shift) & 7;
    unsigned need = flags == XPMEM_RDWR ? 6 : 4;
    return (bits & need) == need;
}

TEST_P(Permissions, Matrix) {
    xt::Channel channel;
    const std::size_t attachers = identities().size();
    xt::Process owner([&] {
        xt::become(kOwnerUid, kOwnerGid);
        void *memory =
            mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        Segids segids;
        for (std::size_t i = 0; i < kModes.size(); ++i) {
            segids[i] = xpmem_make(memory, 4096, XPMEM_PERMIT_MODE,
                                   reinterpret_cast<void *>(std::uintptr_t{kModes[i]}));
            CHILD_CHECK(segids[i] > 0);
        }
        for (std::size_t i = 0; i < attachers; ++i) channel.send_a(segids);  // one message each
        for (std::size_t i = 0; i < attachers; ++i) CHILD_CHECK(channel.receive_a<int>() == 1);
    });
    std::vector<xt::Process> processes;
    for (const Identity &who : identities()) {
        processes.emplace_back([&] {
            auto segids = channel.receive_b<Segids>();
            xt::become(who.uid, who.gid, who.groups);
            for (std::size_t i = 0; i < kModes.size(); ++i) {
                for (int flags : {XPMEM_RDONLY, XPMEM_RDWR}) {
                    errno = 0;
                    xpmem_apid_t apid = xpmem_get(segids[i], flags, XPMEM_PERMIT_MODE, nullptr);
                    bool granted = apid > 0;
                    if (granted != expected(who, kModes[i], flags))
                        xt::fail(
                            __FILE__, __LINE__,
                            std::string(who.name) + ", mode 0" + std::to_string(kModes[i] >> 6) +
                                std::to_string(kModes[i] >> 3 & 7) + std::to_string(kModes[i] & 7) +
                                ", " + (flags == XPMEM_RDWR ? "RDWR" : "RDONLY") + ": " +
                                (granted ? "granted" : "refused"));
                    if (!granted) CHILD_CHECK(errno == EACCES);
                    if (granted) {
                        void *view = xpmem_attach(xpmem_addr{apid, 0}, 4096, nullptr);
                        CHILD_CHECK(view != reinterpret_cast<void *>(-1));
                        CHILD_CHECK(xpmem_release(apid) == 0);
                    }
                }
                // Nobody but the owner removes, whatever the mode says.
                if (who.uid != kOwnerUid) CHILD_CHECK_ERRNO(xpmem_remove(segids[i]), -1, EACCES);
            }
            channel.send_b(1);
        });
    }
    processes.push_back(std::move(owner));
    xt::expect_all_ok(processes);
}

// A read-only permit to another uid attaches read-only even where the owner's memory is
// writable, and the other uid cannot upgrade it.
TEST_P(Permissions, ReadOnlyAcrossUids) {
    xt::Channel channel;
    xt::Process owner([&] {
        xt::become(kOwnerUid, kOwnerGid);
        auto *memory = static_cast<char *>(
            mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        memory[0] = 'o';
        xpmem_segid_t segid = xpmem_make(memory, 4096, XPMEM_PERMIT_MODE, (void *)0644);
        channel.send_a(segid);
        CHILD_CHECK(channel.receive_a<int>() == 1);
        CHILD_CHECK(memory[0] == 'o');
    });
    xt::Process reader([&] {
        auto segid = channel.receive_b<xpmem_segid_t>();
        xt::become(4004, kOtherGid);
        CHILD_CHECK_ERRNO(xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr), -1, EACCES);
        xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDONLY, XPMEM_PERMIT_MODE, nullptr);
        CHILD_CHECK(apid > 0);
        auto *view = static_cast<char *>(xpmem_attach(xpmem_addr{apid, 0}, 4096, nullptr));
        CHILD_CHECK(view != reinterpret_cast<void *>(-1));
        CHILD_CHECK(view[0] == 'o');
        CHILD_CHECK_ERRNO(mprotect(view, 4096, PROT_READ | PROT_WRITE), -1, EACCES);
        channel.send_b(1);
    });
    xt::expect_all_ok({&reader, &owner});
}

INSTANTIATE_BACKENDS(Permissions);

}  // namespace
