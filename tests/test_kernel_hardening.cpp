// The kernel module against a hostile local user: what a process that holds an attachment,
// a descriptor of /dev/xpmem or both can try beyond the API. Moving or inheriting an
// attachment is refused, a descriptor works only in the process that opened it, closing it
// revokes what it held, ids are not handed out again at once, one process attached to its
// own memory (or two attached to each other) never deadlock against mmap, and per-user
// limits give a clear error. Kernel backend only: the user backend's equivalents are in
// test_hostile.cpp.

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <xpmem.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"
#include "xpmem_abi.h"

namespace {

using namespace std::chrono_literals;
using xt::anonymous;
constexpr std::size_t kPage = 4096;
constexpr int kNoproc = 2004;  // XPMEM_ERRNO_NOPROC
constexpr const char *kExecProbe = "XPMEM_TEST_EXEC_PROBE_FD";

// The exec()ed image of DescriptorInheritedAcrossExecGetsNoproc: before gtest starts, it
// uses the descriptor its pre-exec image left open and reports through its exit status.
[[maybe_unused]] const bool exec_probe = [] {
    const char *fd_text = std::getenv(kExecProbe);
    if (fd_text == nullptr) return false;
    auto memory = static_cast<char *>(
        mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    xpmem_cmd_make make{};
    make.vaddr = reinterpret_cast<std::uintptr_t>(memory);
    make.size = kPage;
    make.permit_type = XPMEM_PERMIT_MODE;
    make.permit_value = 0600;
    int result = ioctl(std::atoi(fd_text), XPMEM_CMD_MAKE, &make);
    _exit(result == -1 && errno == kNoproc ? 0 : 1);
}();

class KernelHardening : public xt::BackendTest {
  protected:
    void SetUp() override {
        xt::BackendTest::SetUp();
        if (user_backend()) GTEST_SKIP() << "the kernel module's own rules";
    }
};

// /dev/xpmem opened by hand, for what the library would never do.
class RawDevice {
  public:
    RawDevice() : fd_(open(XPMEM_DEVICE_PATH, O_RDWR)) { CHILD_CHECK(fd_ >= 0); }
    RawDevice(const RawDevice &) = delete;
    ~RawDevice() { close(); }
    int fd() const { return fd_; }
    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

    xpmem_segid_t make(std::span<std::byte> range, int mode = 0600) const {
        xpmem_cmd_make cmd{};
        cmd.vaddr = reinterpret_cast<std::uintptr_t>(range.data());
        cmd.size = range.size();
        cmd.permit_type = XPMEM_PERMIT_MODE;
        cmd.permit_value = static_cast<__u64>(mode);
        CHILD_CHECK(ioctl(fd_, XPMEM_CMD_MAKE, &cmd) == 0);
        return cmd.segid;
    }
    void remove(xpmem_segid_t segid) const {
        xpmem_cmd_remove cmd{segid};
        CHILD_CHECK(ioctl(fd_, XPMEM_CMD_REMOVE, &cmd) == 0);
    }
    xpmem_apid_t get(xpmem_segid_t segid) const {
        xpmem_cmd_get cmd{};
        cmd.segid = segid;
        cmd.flags = XPMEM_RDWR;
        cmd.permit_type = XPMEM_PERMIT_MODE;
        CHILD_CHECK(ioctl(fd_, XPMEM_CMD_GET, &cmd) == 0);
        return cmd.apid;
    }
    void release(xpmem_apid_t apid) const {
        xpmem_cmd_release cmd{apid};
        CHILD_CHECK(ioctl(fd_, XPMEM_CMD_RELEASE, &cmd) == 0);
    }
    std::byte *attach(xpmem_apid_t apid, std::size_t size) const {
        xpmem_cmd_attach cmd{};
        cmd.apid = apid;
        cmd.size = size;
        cmd.fd = -1;
        CHILD_CHECK(ioctl(fd_, XPMEM_CMD_ATTACH, &cmd) == 0);
        return reinterpret_cast<std::byte *>(cmd.vaddr);
    }

  private:
    int fd_;
};

std::byte read_byte(const std::byte *address) {
    return *reinterpret_cast<const volatile std::byte *>(address);
}

sigjmp_buf fault_jump;

void jump_out(int signal) {
    siglongjmp(fault_jump, signal);
}

// The signal the calling process gets reading `address` (SIGBUS or SIGSEGV), 0 if none
// (then the byte read is in `*value`, if given). In-process: attachments are not
// inherited, so a forked reader would see nothing.
int signal_on_read(const std::byte *address, std::byte *value = nullptr) {
    struct sigaction handler {
    }, old_bus{}, old_segv{};
    handler.sa_handler = jump_out;
    sigaction(SIGBUS, &handler, &old_bus);
    sigaction(SIGSEGV, &handler, &old_segv);
    int caught = sigsetjmp(fault_jump, 1);
    if (caught == 0) {
        std::byte seen = read_byte(address);
        if (value != nullptr) *value = seen;
    }
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaction(SIGSEGV, &old_segv, nullptr);
    return caught;
}

// An owner publishing `pages` pages stamped 0x5a, until the attacher is done.
void run_with_owner(std::size_t pages, const std::function<void(xpmem_segid_t)> &attacher) {
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(pages * kPage);
        std::memset(memory.data(), 0x5a, memory.size());
        auto segment = xpmem::Segment::make(memory, 0666);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
    });
    xt::Process user([&] {
        attacher(channel.receive_b<xpmem_segid_t>());
        channel.send_b(1);
    });
    xt::expect_all_ok({&user, &owner});
}

TEST_P(KernelHardening, AttachmentCannotBeMoved) {
    run_with_owner(4, [](xpmem_segid_t segid) {
        auto permit = xpmem::Permit::get(segid);
        auto view = permit.attach(0, 4 * kPage);
        CHILD_CHECK(view.bytes()[0] == std::byte{0x5a});
        void *elsewhere = mmap(nullptr, 4 * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHILD_CHECK(elsewhere != MAP_FAILED);
        CHILD_CHECK_ERRNO(
            mremap(view.data(), 4 * kPage, 4 * kPage, MREMAP_MAYMOVE | MREMAP_FIXED, elsewhere),
            MAP_FAILED, EINVAL);
        CHILD_CHECK_ERRNO(mremap(view.data(), 4 * kPage, 4 * kPage,
                                 MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, elsewhere),
                          MAP_FAILED, EINVAL);
        CHILD_CHECK_ERRNO(mremap(view.data(), 4 * kPage, 8 * kPage, MREMAP_MAYMOVE), MAP_FAILED,
                          EFAULT);  // VM_DONTEXPAND
        // Nothing moved (the failed move unmapped the target): the attachment still works
        // where it was, and detaches.
        CHILD_CHECK(view.bytes()[3 * kPage] == std::byte{0x5a});
        CHILD_CHECK(signal_on_read(static_cast<std::byte *>(elsewhere)) == SIGSEGV);
    });
}

TEST_P(KernelHardening, AttachmentCannotBeInherited) {
    run_with_owner(2, [](xpmem_segid_t segid) {
        auto permit = xpmem::Permit::get(segid);
        auto view = permit.attach(0, 2 * kPage);
        CHILD_CHECK(view.bytes()[0] == std::byte{0x5a});
        CHILD_CHECK_ERRNO(madvise(view.data(), 2 * kPage, MADV_DOFORK), -1, EINVAL);
        xt::Process child([&] {
            unsigned char resident;
            errno = 0;
            CHILD_CHECK(mincore(view.data(), kPage, &resident) == -1 && errno == ENOMEM);
        });
        CHILD_CHECK(child.wait().exited_ok());
    });
}

// The holder's last descriptor goes: every permit it held is released, and what is
// still mapped faults SIGBUS instead of reaching the owner's memory.
TEST_P(KernelHardening, ClosingTheDescriptorRevokesItsAttachments) {
    run_with_owner(2, [](xpmem_segid_t segid) {
        RawDevice device;
        std::byte *view = device.attach(device.get(segid), 2 * kPage);
        CHILD_CHECK(read_byte(view) == std::byte{0x5a});
        device.close();
        CHILD_CHECK(signal_on_read(view) == SIGBUS);
        CHILD_CHECK(signal_on_read(view + kPage) == SIGBUS);
        CHILD_CHECK(munmap(view, 2 * kPage) == 0);
    });
}

// The image after execve() keeps the thread group but not the mm the descriptor was
// opened for: it must open afresh, not act on the old image's state.
TEST_P(KernelHardening, DescriptorInheritedAcrossExecGetsNoproc) {
    xt::Process opener([&] {
        RawDevice device;  // no O_CLOEXEC: the exec()ed image inherits it
        std::string fd_text = std::to_string(device.fd());
        setenv(kExecProbe, fd_text.c_str(), 1);
        execl("/proc/self/exe", "exec-probe", nullptr);
        _exit(127);
    });
    EXPECT_CHILD_OK(opener);
}

// A descriptor sent over a Unix socket acts for nobody: not for its opener's permits,
// not as a way to map anything.
TEST_P(KernelHardening, DescriptorPassedToAnotherProcessGetsNoproc) {
    int sockets[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sockets), 0);
    xt::Channel channel;
    xt::Process opener([&] {
        RawDevice device;
        auto memory = anonymous(kPage);
        xpmem_apid_t apid = device.get(device.make(memory, 0666));
        std::byte byte{};
        CHILD_CHECK(xt::send_descriptor(sockets[0], device.fd(), {&byte, 1}) == 1);
        channel.send_a(apid);
        CHILD_CHECK(channel.receive_a<int>() == 1);
    });
    xt::Process receiver([&] {
        int fd = xt::receive_descriptor(sockets[1]);
        xpmem_cmd_attach attach{};
        attach.apid = channel.receive_b<xpmem_apid_t>();
        attach.size = kPage;
        CHILD_CHECK_ERRNO(ioctl(fd, XPMEM_CMD_ATTACH, &attach), -1, kNoproc);
        xpmem_cmd_release release{attach.apid};
        CHILD_CHECK_ERRNO(ioctl(fd, XPMEM_CMD_RELEASE, &release), -1, kNoproc);
        CHILD_CHECK_ERRNO(mmap(nullptr, kPage, PROT_READ, MAP_SHARED, fd, 0), MAP_FAILED, EINVAL);
        channel.send_b(1);
    });
    xt::expect_all_ok({&receiver, &opener});
    close(sockets[0]);
    close(sockets[1]);
}

// A stale id must not name the next segment or permit made: a client holding one would
// reach memory it never asked for.
TEST_P(KernelHardening, IdsAreNotReusedAtOnce) {
    xt::Process process([&] {
        RawDevice device;
        auto memory = anonymous(kPage);
        xpmem_segid_t first = device.make(memory);
        xpmem_apid_t first_permit = device.get(first);
        device.release(first_permit);
        device.remove(first);
        xpmem_segid_t second = device.make(memory);
        CHILD_CHECK(second != first);
        CHILD_CHECK(device.get(second) != first_permit);
    });
    EXPECT_CHILD_OK(process);
}

// Threads that keep taking the mmap_lock for writing, against a thread that reads then
// writes attachment pages the owner keeps dropping: read faults map read-only, so every
// write goes through pfn_mkwrite, which must never wait for the owner's mmap_lock while
// holding the attacher's. Runs for `duration` in the calling process.
void fault_against_mmap(std::span<std::byte> owned, std::span<std::byte> view,
                        std::chrono::milliseconds duration) {
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    threads.emplace_back([&] {
        while (!stop) {
            for (std::size_t offset = 0; offset < view.size(); offset += kPage) {
                auto *word = reinterpret_cast<volatile std::byte *>(view.data() + offset);
                std::byte seen = *word;
                *word = seen;
            }
        }
    });
    threads.emplace_back([&] {
        while (!stop) madvise(owned.data(), owned.size(), MADV_DONTNEED);
    });
    for (int mapper = 0; mapper < 2; ++mapper) {
        threads.emplace_back([&] {
            while (!stop) {
                void *p = mmap(nullptr, kPage, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (p != MAP_FAILED) munmap(p, kPage);
            }
        });
    }
    std::this_thread::sleep_for(duration);
    stop = true;
    for (auto &thread : threads) thread.join();
}

TEST_P(KernelHardening, SelfAttachmentNeverDeadlocksAgainstMmap) {
    xt::Process process([&] {
        auto memory = anonymous(32 * kPage);
        auto segment = xpmem::Segment::make(memory);
        auto permit = xpmem::Permit::get(segment.id());
        auto view = permit.attach(0, memory.size());
        fault_against_mmap(memory, view.bytes(), 3s);
    });
    xt::Status status = process.wait(60s);
    EXPECT_TRUE(status.exited_ok()) << status.describe();
}

TEST_P(KernelHardening, MutualAttachmentsNeverDeadlockAgainstMmap) {
    xt::Channel channel;
    auto side = [&](bool first) {
        auto memory = anonymous(32 * kPage);
        auto segment = xpmem::Segment::make(memory, 0666);
        xpmem_segid_t own = segment.id();
        channel.send(first, &own, sizeof own);
        xpmem_segid_t other;
        channel.receive(first, &other, sizeof other);
        auto permit = xpmem::Permit::get(other);
        auto view = permit.attach(0, memory.size());
        fault_against_mmap(memory, view.bytes(), 3s);
        int done = 1;
        channel.send(first, &done, sizeof done);  // keep serving until the peer is done too
        channel.receive(first, &done, sizeof done);
    };
    xt::Process a([&] { side(true); });
    xt::Process b([&] { side(false); });
    xt::Status first = a.wait(60s);
    xt::Status second = b.wait(60s);
    EXPECT_TRUE(first.exited_ok()) << first.describe();
    EXPECT_TRUE(second.exited_ok()) << second.describe();
}

// One thread attaches through fresh permits while another releases each permit as soon
// as it is published and a third detaches: an attachment released while its attach is
// still mapping it must be undone, never used after it was freed (KASAN, or refcount
// warnings in the kernel log, would tell; the counters must come back to zero).
TEST_P(KernelHardening, AttachRacingReleaseAndDetach) {
    xt::Process process([&] {
        RawDevice device;
        auto memory = anonymous(16 * kPage);
        std::memset(memory.data(), 0x5a, memory.size());
        xpmem_segid_t segid = device.make(memory, 0600);
        std::atomic<xpmem_apid_t> published{0};
        std::atomic<std::uintptr_t> mapped{0};
        std::atomic<bool> stop{false};
        std::thread releaser([&] {
            while (!stop) {
                xpmem_cmd_release release{published.exchange(0)};
                if (release.apid != 0) ioctl(device.fd(), XPMEM_CMD_RELEASE, &release);
            }
        });
        std::thread detacher([&] {
            while (!stop) {
                xpmem_cmd_detach detach{mapped.exchange(0)};
                if (detach.vaddr != 0) ioctl(device.fd(), XPMEM_CMD_DETACH, &detach);
            }
        });
        int attached = 0;
        for (auto end = std::chrono::steady_clock::now() + 2s;
             std::chrono::steady_clock::now() < end;) {
            xpmem_apid_t apid = device.get(segid);
            published = apid;
            xpmem_cmd_attach attach{};
            attach.apid = apid;
            attach.size = memory.size();
            attach.fd = -1;
            if (ioctl(device.fd(), XPMEM_CMD_ATTACH, &attach) == 0) {
                ++attached;
                std::byte seen{};
                // SIGBUS once released; SIGSEGV once detached (the detacher may hold an
                // earlier attachment's address, which this one reused).
                int signal = signal_on_read(reinterpret_cast<std::byte *>(attach.vaddr), &seen);
                CHILD_CHECK(signal == SIGBUS || signal == SIGSEGV ||
                            (signal == 0 && seen == std::byte{0x5a}));
                mapped = attach.vaddr;
            }
            xpmem_cmd_release release{published.exchange(0)};
            if (release.apid != 0) ioctl(device.fd(), XPMEM_CMD_RELEASE, &release);
        }
        stop = true;
        releaser.join();
        detacher.join();
        std::printf("attach/release race: %d attaches succeeded\n", attached);
    });
    EXPECT_CHILD_OK(process);
}

// An owner changing its memory from many threads at once cannot hold an attacher in
// an uninterruptible wait: the attacher's faults wait killably, and it dies at once when
// killed, whatever the owner does.
TEST_P(KernelHardening, OwnerInvalidationStormLeavesAttacherKillable) {
    constexpr std::size_t kPages = 64;
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(kPages * kPage);
        auto segment = xpmem::Segment::make(memory, 0666);
        channel.send_a(segment.id());
        std::atomic<bool> stop{false};
        std::vector<std::thread> stormers;
        for (std::size_t slice = 0; slice < 8; ++slice) {
            stormers.emplace_back([&, slice] {
                auto range = memory.subspan(slice * 8 * kPage, 8 * kPage);
                while (!stop) madvise(range.data(), range.size(), MADV_DONTNEED);
            });
        }
        CHILD_CHECK(channel.receive_a<int>() == 1);  // the attacher was killed
        stop = true;
        for (auto &thread : stormers) thread.join();
    });
    xt::Channel ready;
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem_segid_t>());
        auto view = permit.attach(0, kPages * kPage);
        ready.send_b(1);
        for (;;)
            for (std::size_t page = 0; page < kPages; ++page)
                (void)read_byte(view.data() + page * kPage);
    });
    ASSERT_EQ(ready.receive_a<int>(), 1);
    std::this_thread::sleep_for(2s);  // deep in the storm
    ASSERT_EQ(kill(attacher.pid(), SIGKILL), 0);
    auto killed_at = std::chrono::steady_clock::now();
    xt::Status status = attacher.wait(60s);
    auto took = std::chrono::steady_clock::now() - killed_at;
    EXPECT_EQ(status.signal(), SIGKILL) << status.describe();
    EXPECT_LT(took, 10s) << "the killed attacher took "
                         << std::chrono::duration_cast<std::chrono::seconds>(took).count()
                         << " s to die";
    channel.send_b(1);
    EXPECT_CHILD_OK(owner);
}

// A userfaultfd that also serves the kernel's own accesses (GUP), or -1 where this uid may
// not create one (vm.unprivileged_userfaultfd=0).
int full_userfaultfd() {
    return static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC));
}

// An owner that provides its memory on demand through userfaultfd: an attacher's fault
// waits for the owner's handler (without holding its own mmap_lock) and sees what the
// handler put there, instead of SIGBUS.
TEST_P(KernelHardening, OwnerUserfaultfdHandlerServesAttachers) {
    int probe = full_userfaultfd();
    if (probe < 0) GTEST_SKIP() << "no userfaultfd for kernel faults for this uid";
    close(probe);
    constexpr std::size_t kPages = 8;
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(kPages * kPage);
        int uffd = full_userfaultfd();
        CHILD_CHECK(uffd >= 0);
        uffdio_api api{.api = UFFD_API, .features = 0, .ioctls = 0};
        CHILD_CHECK(ioctl(uffd, UFFDIO_API, &api) == 0);
        uffdio_register range{};
        range.range.start = reinterpret_cast<std::uintptr_t>(memory.data());
        range.range.len = memory.size();
        range.mode = UFFDIO_REGISTER_MODE_MISSING;
        CHILD_CHECK(ioctl(uffd, UFFDIO_REGISTER, &range) == 0);
        std::atomic<int> served{0};
        std::thread handler([&] {
            std::vector<std::byte> page(kPage, std::byte{0x77});
            pollfd waiting{uffd, POLLIN, 0};
            while (served < static_cast<int>(kPages) && poll(&waiting, 1, 20000) == 1) {
                uffd_msg message;
                if (read(uffd, &message, sizeof message) != sizeof message) continue;
                if (message.event != UFFD_EVENT_PAGEFAULT) continue;
                uffdio_copy copy{};
                copy.dst = message.arg.pagefault.address & ~(kPage - 1);
                copy.src = reinterpret_cast<std::uintptr_t>(page.data());
                copy.len = kPage;
                if (ioctl(uffd, UFFDIO_COPY, &copy) == 0) ++served;
            }
        });
        auto segment = xpmem::Segment::make(memory, 0666);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        handler.join();
        CHILD_CHECK(served == static_cast<int>(kPages));
    });
    xt::Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem_segid_t>());
        auto view = permit.attach(0, kPages * kPage);
        for (std::size_t page = 0; page < kPages; ++page)
            CHILD_CHECK(signal_on_read(view.data() + page * kPage) == 0 &&
                        view.bytes()[page * kPage + 5] == std::byte{0x77});
        channel.send_b(1);
    });
    xt::expect_all_ok({&attacher, &owner});
}

// Sets a module parameter for the life of the object (root in the test VM).
class ModuleParameter {
  public:
    ModuleParameter(const std::string &name, unsigned value)
        : path_("/sys/module/xpmem/parameters/" + name) {
        std::ifstream in(path_);
        in >> saved_;
        ok_ = static_cast<bool>(in) && write(value);
    }
    ModuleParameter(const ModuleParameter &) = delete;
    ~ModuleParameter() {
        if (ok_) write(saved_);
    }
    bool ok() const { return ok_; }

  private:
    bool write(unsigned value) const {
        std::ofstream out(path_);
        out << value << '\n';
        out.flush();
        return static_cast<bool>(out);
    }
    std::string path_;
    unsigned saved_ = 0;
    bool ok_ = false;
};

// One user cannot fill the module's tables: past its limit it gets ENOSPC, clearly, from
// both APIs, and everything it already holds keeps working.
TEST_P(KernelHardening, PerUserLimitsGiveEnospc) {
    if (!xt::running_as_root()) GTEST_SKIP() << "sets module parameters";
    ModuleParameter segments("max_segments_per_user", 2);
    ModuleParameter permits("max_permits_per_user", 2);
    ModuleParameter attachments("max_attachments_per_user", 2);
    ASSERT_TRUE(segments.ok() && permits.ok() && attachments.ok())
        << "no per-user limit parameters in /sys/module/xpmem/parameters";
    xt::Process user([&] {
        xt::become(4242, 4242);
        auto memory = anonymous(2 * kPage);
        auto first = xpmem::Segment::make(memory.subspan(0, kPage));
        auto second = xpmem::Segment::make(memory.subspan(kPage, kPage));
        CHILD_CHECK_ERRNO(
            xpmem_make(memory.data(), kPage, XPMEM_PERMIT_MODE, reinterpret_cast<void *>(0600)), -1,
            ENOSPC);
        try {
            (void)xpmem::Segment::make(memory.subspan(0, kPage));
            CHILD_CHECK(!"a third segment was made");
        } catch (const std::system_error &error) {
            CHILD_CHECK(error.code().value() == ENOSPC);
            CHILD_CHECK(std::string(error.what()).find("xpmem_make") != std::string::npos);
        }
        auto permit = xpmem::Permit::get(first.id());
        auto other_permit = xpmem::Permit::get(second.id());
        CHILD_CHECK_ERRNO(xpmem_get(first.id(), XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr), -1,
                          ENOSPC);
        auto view = permit.attach(0, kPage);
        auto other_view = other_permit.attach(0, kPage);
        xpmem_addr address{permit.id(), 0};
        CHILD_CHECK_ERRNO(xpmem_attach(address, kPage, nullptr), reinterpret_cast<void *>(-1),
                          ENOSPC);
        memory[0] = std::byte{7};
        CHILD_CHECK(view.bytes()[0] == std::byte{7});
    });
    EXPECT_CHILD_OK(user);
}

// CAP_IPC_OWNER counts only in the user namespace that owns the owner's IPC namespace:
// the full capabilities of a namespace any user can make open nothing.
TEST_P(KernelHardening, CapabilityInOwnUserNamespaceOpensNothing) {
    if (!xt::running_as_root()) GTEST_SKIP() << "needs a second uid";
    xt::Channel channel;
    xt::Process owner([&] {
        auto memory = anonymous(kPage);
        auto segment = xpmem::Segment::make(memory, 0600);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
    });
    xt::Process intruder([&] {
        auto segid = channel.receive_b<xpmem_segid_t>();
        xt::become(65534, 65534);
        if (unshare(CLONE_NEWUSER) != 0) {  // unprivileged user namespaces may be off
            CHILD_CHECK(errno == EPERM || errno == EINVAL || errno == ENOSPC);
        }
        CHILD_CHECK_ERRNO(xpmem_get(segid, XPMEM_RDONLY, XPMEM_PERMIT_MODE, nullptr), -1, EACCES);
        channel.send_b(1);
    });
    xt::expect_all_ok({&intruder, &owner});
}

INSTANTIATE_BACKENDS(KernelHardening);

}  // namespace
