#include "harness.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <liburing.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <xpmem/xpmem.hpp>

#include "user/protocol.hpp"

namespace xt {

void fail(const char *file, int line, const std::string &what) {
    std::fprintf(stderr, "[child %d] %s:%d: check failed: %s\n", getpid(), file, line,
                 what.c_str());
    std::fflush(stderr);
    _exit(100);
}

bool Status::exited_ok() const {
    return WIFEXITED(raw) && WEXITSTATUS(raw) == 0;
}

int Status::signal() const {
    return WIFSIGNALED(raw) ? WTERMSIG(raw) : 0;
}

std::string Status::describe() const {
    if (WIFEXITED(raw)) return "exited with " + std::to_string(WEXITSTATUS(raw));
    if (WIFSIGNALED(raw)) return std::string("killed by ") + strsignal(WTERMSIG(raw));
    return "status " + std::to_string(raw);
}

Process::Process(std::function<void()> body) {
    std::fflush(nullptr);
    pid_ = fork();
    if (pid_ < 0) throw std::system_error(errno, std::generic_category(), "fork");
    if (pid_ == 0) {
        try {
            body();
        } catch (const std::exception &error) {
            std::fprintf(stderr, "[child %d] exception: %s\n", getpid(), error.what());
            _exit(101);
        }
        std::fflush(nullptr);
        _exit(0);
    }
}

Process::Process(Process &&other) noexcept : pid_(std::exchange(other.pid_, -1)) {}

Process::~Process() {
    if (pid_ > 0) {
        kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
    }
}

Status Process::wait(std::chrono::seconds timeout) {
    Status status;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        pid_t done = waitpid(pid_, &status.raw, WNOHANG);
        if (done == pid_) break;
        if (std::chrono::steady_clock::now() > deadline) {
            kill(pid_, SIGKILL);
            waitpid(pid_, &status.raw, 0);
            ADD_FAILURE() << "child " << pid_ << " hung; killed";
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    pid_ = -1;
    return status;
}

namespace {

void wait_all(const std::vector<Process *> &processes) {
    std::vector<bool> done(processes.size());
    bool failed = false;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    for (std::size_t left = processes.size(); left > 0;) {
        for (std::size_t i = 0; i < processes.size(); ++i) {
            if (done[i]) continue;
            Status status;
            pid_t pid = processes[i]->pid();
            if (waitpid(pid, &status.raw, WNOHANG) != pid) {
                if (!failed && std::chrono::steady_clock::now() < deadline) continue;
                kill(pid, SIGKILL);
                waitpid(pid, &status.raw, 0);
                if (!failed) ADD_FAILURE() << "child " << pid << " hung; killed";
                failed = true;
            } else if (!status.exited_ok() && !failed) {
                ADD_FAILURE() << "child " << pid << " " << status.describe();
                failed = true;
            }
            processes[i]->forget();
            done[i] = true;
            --left;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
}

}  // namespace

void expect_all_ok(std::initializer_list<Process *> processes) {
    wait_all(std::vector<Process *>(processes));
}

void expect_all_ok(std::vector<Process> &processes) {
    std::vector<Process *> pointers;
    for (Process &process : processes) pointers.push_back(&process);
    wait_all(pointers);
}

Channel::Channel() {
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, fds_) < 0)
        throw std::system_error(errno, std::generic_category(), "socketpair");
}

Channel::~Channel() {
    close(fds_[0]);
    close(fds_[1]);
}

void Channel::send(bool from_a, const void *data, std::size_t size) {
    if (::send(fds_[from_a ? 0 : 1], data, size, MSG_NOSIGNAL) != static_cast<ssize_t>(size))
        fail(__FILE__, __LINE__, std::string("channel send: ") + std::strerror(errno));
}

void Channel::receive(bool at_a, void *data, std::size_t size) {
    int fd = fds_[at_a ? 0 : 1];
    pollfd entry{fd, POLLIN, 0};
    if (poll(&entry, 1, 60000) != 1) fail(__FILE__, __LINE__, "channel receive timed out");
    if (::recv(fd, data, size, 0) != static_cast<ssize_t>(size))
        fail(__FILE__, __LINE__, "channel receive: peer gone or short message");
}

void become(uid_t uid, gid_t gid, const std::vector<gid_t> &groups) {
    CHILD_CHECK(setgroups(groups.size(), groups.data()) == 0);
    CHILD_CHECK(setresgid(gid, gid, gid) == 0);
    CHILD_CHECK(setresuid(uid, uid, uid) == 0);
}

ssize_t receive(int socket, void *buffer, std::size_t size, std::vector<int> *fds,
                std::chrono::milliseconds timeout) {
    pollfd entry{socket, POLLIN, 0};
    if (poll(&entry, 1, static_cast<int>(timeout.count())) != 1) return -1;
    iovec io{buffer, size};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 64)];
    msghdr header{};
    header.msg_iov = &io;
    header.msg_iovlen = 1;
    header.msg_control = control;
    header.msg_controllen = sizeof control;
    ssize_t got = recvmsg(socket, &header, MSG_CMSG_CLOEXEC);
    if (got < 0) return 0;
    for (cmsghdr *c = CMSG_FIRSTHDR(&header); c != nullptr; c = CMSG_NXTHDR(&header, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
            int received;
            std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
            if (fds != nullptr)
                fds->push_back(received);
            else
                close(received);
        }
    }
    return got;
}

void send_bytes(int socket, const void *data, std::size_t size) {
    CHILD_CHECK(send(socket, data, size, MSG_NOSIGNAL) == static_cast<ssize_t>(size));
}

bool run_open_holes() {
    const char *value = std::getenv("XPMEM_RUN_OPEN_HOLES");
    return value != nullptr && std::string(value) == "1";
}

bool running_as_root() {
    return geteuid() == 0;
}

std::span<std::byte> anonymous(std::size_t size) {
    void *p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHILD_CHECK(p != MAP_FAILED);
    return {static_cast<std::byte *>(p), size};
}

std::vector<std::string> available_backends() {
    std::vector<std::string> backends{"user"};
    int fd = open("/dev/xpmem", O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        if (ioctl(fd, _IO('x', 0), nullptr) >= 0) backends.emplace_back("kernel");
        close(fd);
    }
    return backends;
}

bool eventually(const std::function<bool()> &condition, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!condition()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
}

namespace {

// A message carrying `payload` and room for one descriptor in `control`.
struct DescriptorMessage {
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    iovec io;
    msghdr header{};

    DescriptorMessage(void *payload, std::size_t size) : io{payload, size} {
        header.msg_iov = &io;
        header.msg_iovlen = 1;
        header.msg_control = control;
        header.msg_controllen = sizeof control;
    }
};

}  // namespace

ssize_t send_descriptor(int socket, int fd, std::span<const std::byte> payload) {
    DescriptorMessage message(const_cast<std::byte *>(payload.data()), payload.size());
    cmsghdr *header = CMSG_FIRSTHDR(&message.header);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(header), &fd, sizeof fd);
    return sendmsg(socket, &message.header, MSG_NOSIGNAL);
}

int receive_descriptor(int socket) {
    char byte;
    DescriptorMessage message(&byte, 1);
    CHILD_CHECK(recvmsg(socket, &message.header, 0) == 1);
    cmsghdr *header = CMSG_FIRSTHDR(&message.header);
    CHILD_CHECK(header != nullptr && header->cmsg_type == SCM_RIGHTS);
    int fd;
    std::memcpy(&fd, CMSG_DATA(header), sizeof fd);
    return fd;
}

int count_open_fds() {
    DIR *directory = opendir("/proc/self/fd");
    int count = 0;
    while (dirent *entry = readdir(directory))
        if (entry->d_name[0] != '.') ++count;
    closedir(directory);
    return count - 1;  // the directory's own descriptor
}

PinnedBuffer::PinnedBuffer(std::span<std::byte> buffer)
    : buffer_(buffer), ring_(std::make_unique<io_uring>()) {
    error_ = -io_uring_queue_init(4, ring_.get(), 0);
    if (error_ != 0) return;
    iovec whole{buffer.data(), buffer.size()};
    CHILD_CHECK(io_uring_register_buffers(ring_.get(), &whole, 1) == 0);
}

PinnedBuffer::~PinnedBuffer() {
    if (error_ == 0) io_uring_queue_exit(ring_.get());
}

void PinnedBuffer::read_into(const char *text) {
    int pipe_fds[2];
    CHILD_CHECK(pipe(pipe_fds) == 0);
    auto length = static_cast<unsigned>(std::strlen(text) + 1);
    CHILD_CHECK(write(pipe_fds[1], text, length) == static_cast<ssize_t>(length));
    io_uring_sqe *sqe = io_uring_get_sqe(ring_.get());
    io_uring_prep_read_fixed(sqe, pipe_fds[0], buffer_.data(), length, 0, 0);
    CHILD_CHECK(io_uring_submit(ring_.get()) == 1);
    io_uring_cqe *cqe = nullptr;
    CHILD_CHECK(io_uring_wait_cqe(ring_.get(), &cqe) == 0 && cqe->res == static_cast<int>(length));
    io_uring_cqe_seen(ring_.get(), cqe);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
}

int connect_user_service(pid_t pid) {
    std::ifstream table("/proc/net/unix");
    std::string line;
    std::string prefix = "@" + xpmem::user::protocol::socket_name_prefix(pid);
    while (std::getline(table, line)) {
        std::size_t at = line.rfind(' ');
        if (at == std::string::npos || line.compare(at + 1, prefix.size(), prefix) != 0) continue;
        std::string name = line.substr(at + 2);
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        std::memcpy(address.sun_path + 1, name.data(), name.size());
        auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
        if (connect(fd, reinterpret_cast<sockaddr *>(&address), length) == 0) return fd;
        close(fd);
    }
    return -1;
}

int bind_user_service(std::uint32_t key) {
    int listener = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    std::string name = xpmem::user::protocol::socket_name(getpid(), key);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path + 1, name.data(), name.size());
    auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    CHILD_CHECK(bind(listener, reinterpret_cast<sockaddr *>(&address), length) == 0);
    CHILD_CHECK(listen(listener, 16) == 0);
    return listener;
}

void serve_user_requests(
    int listener, std::chrono::seconds limit,
    const std::function<void(int connection, std::span<const std::byte> message)> &serve) {
    std::vector<pollfd> fds{{listener, POLLIN, 0}};
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
        if (poll(fds.data(), fds.size(), 100) <= 0) continue;
        if (fds[0].revents & POLLIN) {
            int connection = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
            if (connection >= 0) fds.push_back({connection, POLLIN, 0});
        }
        for (std::size_t i = 1; i < fds.size(); ++i) {
            if ((fds[i].revents & (POLLIN | POLLHUP)) == 0) continue;
            alignas(8) std::byte buffer[64];
            ssize_t got = recv(fds[i].fd, buffer, sizeof buffer, 0);
            if (got <= 0) {
                fds[i].fd = -1;  // poll ignores it from now on
                continue;
            }
            serve(fds[i].fd, std::span(buffer, static_cast<std::size_t>(got)));
        }
    }
}

void *get_and_attach(std::int64_t segid, int flags, std::size_t size) {
    xpmem_apid_t apid = xpmem_get(segid, flags, XPMEM_PERMIT_MODE, nullptr);
    CHILD_CHECK(apid > 0);
    xpmem_addr addr{apid, 0};
    return xpmem_attach(addr, size, nullptr);
}

std::uint64_t own_start_time() {
    std::ifstream stat("/proc/self/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    std::istringstream fields(text.substr(text.rfind(')') + 2));
    std::string field;
    for (int i = 3; i <= 22 && fields >> field; ++i)
        if (i == 22) return std::stoull(field);
    return 0;
}

bool readable_by_kernel(const void *address) {
    int pipe_fds[2];
    if (pipe(pipe_fds) < 0) return false;
    bool readable = ::write(pipe_fds[1], address, 1) == 1;
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    return readable;
}

void after_owner_change(std::size_t pages, const std::function<void(char *)> &prepare,
                        const std::function<void(char *)> &change,
                        const std::function<void(const std::byte *)> &check) {
    constexpr std::size_t page = 4096;
    Channel channel;
    Process owner([&] {
        auto memory = anonymous(pages * page);
        auto *bytes = reinterpret_cast<char *>(memory.data());
        prepare(bytes);
        auto segment = xpmem::Segment::make(memory);
        channel.send_a(segment.id());
        CHILD_CHECK(channel.receive_a<int>() == 1);
        change(bytes);
        channel.send_a(2);
        CHILD_CHECK(channel.receive_a<int>() == 3);
    });
    Process attacher([&] {
        auto permit = xpmem::Permit::get(channel.receive_b<xpmem::SegmentId>());
        auto view = permit.attach(0, pages * page);
        // Fault every page in first, so that a change must invalidate what is mapped.
        for (std::size_t offset = 0; offset < pages * page; offset += page)
            (void)readable_by_kernel(view.data() + offset);
        channel.send_b(1);
        CHILD_CHECK(channel.receive_b<int>() == 2);
        check(view.data());
        channel.send_b(3);
    });
    expect_all_ok({&attacher, &owner});
}

namespace {

constexpr const char *kModuleCounters = "/sys/kernel/debug/xpmem/counters";

// The module's live-object counters ("name value" lines), or "" when unreadable.
std::string module_counters() {
    std::string text;
    if (FILE *file = std::fopen(kModuleCounters, "r")) {
        char line[128];
        while (std::fgets(line, sizeof line, file) != nullptr) text += line;
        std::fclose(file);
    }
    return text;
}

bool all_zero(const std::string &counters) {
    std::size_t at = 0;
    while ((at = counters.find(' ', at)) != std::string::npos) {
        if (counters.compare(at, 3, " 0\n") != 0) return false;
        ++at;
    }
    return true;
}

}  // namespace

void BackendTest::SetUp() {
    setenv("XPMEM_BACKEND", GetParam().c_str(), 1);
}

void BackendTest::TearDown() {
    if (GetParam() != "kernel" || module_counters().empty()) return;
    // Objects die when the last descriptor of a process closes: shortly after exit.
    bool clean = eventually([] { return all_zero(module_counters()); });
    EXPECT_TRUE(clean) << "the module still holds objects after this test:\n" << module_counters();
}

std::string backend_test_name(const ::testing::TestParamInfo<std::string> &info) {
    return info.param;
}

}  // namespace xt

// Under a sanitizer: tests expect children to die of SIGSEGV or SIGBUS (revoked
// attachments, read-only permits, holes), so the sanitizers must leave those signals to
// the kernel instead of reporting them and exiting with an error. Memory and race checks
// are unchanged. Compiled into every test program; ignored without a sanitizer.
extern "C" const char *__asan_default_options() {
    return "handle_segv=0:handle_sigbus=0";
}
// die_after_fork=0: the library starts its service thread afresh in a fork child of a
// process that already ran one (tests fork owners and attachers from such processes).
extern "C" const char *__tsan_default_options() {
    return "handle_segv=0:handle_sigbus=0:die_after_fork=0";
}
