// Multi-process test harness for the conformance suite.
//
// The gtest process itself never calls libxpmem: every test forks real processes that
// do, so each selects the backend under test (XPMEM_BACKEND, set by the fixture) afresh.
// Children report failures through their exit status (with a message on stderr); the
// parent checks exit codes and, for death checks, the exact signal.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

struct io_uring;  // liburing

namespace xt {

// Ends the calling child with a failure report.
[[noreturn]] void fail(const char *file, int line, const std::string &what);

#define CHILD_CHECK(condition)                                        \
    do {                                                              \
        if (!(condition)) ::xt::fail(__FILE__, __LINE__, #condition); \
    } while (0)

// Checks that `expression` failed with `error` as errno.
#define CHILD_CHECK_ERRNO(expression, failure, error)                                    \
    do {                                                                                 \
        errno = 0;                                                                       \
        auto result_ = (expression);                                                     \
        if (result_ != (failure) || errno != (error))                                    \
            ::xt::fail(__FILE__, __LINE__,                                               \
                       std::string(#expression " should fail with " #error ", errno ") + \
                           std::to_string(errno));                                       \
    } while (0)

// How a child ended.
struct Status {
    int raw = 0;
    bool exited_ok() const;
    int signal() const;  // 0 unless killed by a signal
    std::string describe() const;
};

// A forked child process running `body`; killed and reaped if still running when the
// object goes away.
class Process {
  public:
    explicit Process(std::function<void()> body);
    Process(Process &&other) noexcept;
    Process &operator=(Process &&) = delete;
    ~Process();

    pid_t pid() const { return pid_; }
    // Waits at most `timeout`; a child still running then is killed and reported as such.
    Status wait(std::chrono::seconds timeout = std::chrono::seconds(60));
    // Stops tracking a child that has been reaped elsewhere.
    void forget() { pid_ = -1; }

  private:
    pid_t pid_ = -1;
};

// A bidirectional message pipe between processes, created before fork.
class Channel {
  public:
    Channel();
    Channel(const Channel &) = delete;
    ~Channel();

    // Each side uses its own end: the parent side (or first child) `a`, the other `b`.
    void send(bool from_a, const void *data, std::size_t size);
    void receive(bool at_a, void *data, std::size_t size);

    template <class T>
    void send_a(const T &value) {
        send(true, &value, sizeof value);
    }
    template <class T>
    void send_b(const T &value) {
        send(false, &value, sizeof value);
    }
    template <class T>
    T receive_a() {
        T value;
        receive(true, &value, sizeof value);
        return value;
    }
    template <class T>
    T receive_b() {
        T value;
        receive(false, &value, sizeof value);
        return value;
    }

  private:
    int fds_[2];
};

// Drops the calling child to another identity (root only).
void become(uid_t uid, gid_t gid, const std::vector<gid_t> &groups = {});

bool running_as_root();
// Fresh private anonymous read-write memory (never freed: children are short-lived).
std::span<std::byte> anonymous(std::size_t size);
// Backends that work on this machine: "user" always, "kernel" when /dev/xpmem answers.
std::vector<std::string> available_backends();
// Waits until `condition` holds, at most `timeout`; returns whether it did. For effects
// that happen asynchronously (a service noticing a peer's exit), without a fixed sleep.
bool eventually(const std::function<bool()> &condition,
                std::chrono::milliseconds timeout = std::chrono::seconds(10));

// Number of open descriptors of the calling process.
int count_open_fds();
// Sends `fd` over the Unix socket `socket` (SCM_RIGHTS) with `payload` as the message;
// returns what sendmsg returned.
ssize_t send_descriptor(int socket, int fd, std::span<const std::byte> payload);
// Receives one byte of payload and a descriptor sent by send_descriptor().
int receive_descriptor(int socket);
// One io_uring with a buffer registered as fixed buffer 0: a pin the kernel holds for as
// long as it stays registered, which an unprivileged process can set up.
class PinnedBuffer {
  public:
    explicit PinnedBuffer(std::span<std::byte> buffer);
    ~PinnedBuffer();
    PinnedBuffer(const PinnedBuffer &) = delete;
    PinnedBuffer &operator=(const PinnedBuffer &) = delete;
    // 0, or the errno that kept io_uring from being set up (disabled here, say).
    int error() const { return error_; }
    // READ_FIXED of `text` (with its NUL) from a pipe into the start of the buffer: the
    // kernel writes through its pin, not through the process's page tables.
    void read_into(const char *text);

  private:
    std::span<std::byte> buffer_;
    std::unique_ptr<::io_uring> ring_;
    int error_ = 0;
};

// A raw connection (SOCK_SEQPACKET) to the user-backend service of process `pid`, found
// by its name in /proc/net/unix as any local process can; -1 if it has none.
int connect_user_service(pid_t pid);
// Receives one message of at most `size` bytes on `socket` within `timeout`; appends the
// descriptors it carried to `fds` (or closes them). Returns the size, 0 at end of stream
// or on error, -1 on timeout.
ssize_t receive(int socket, void *buffer, std::size_t size, std::vector<int> *fds,
                std::chrono::milliseconds timeout = std::chrono::seconds(10));

// Sends `size` bytes as one datagram; the child fails if they do not go whole.
void send_bytes(int socket, const void *data, std::size_t size);
template <class Message>
void send_raw(int socket, const Message &message) {
    send_bytes(socket, &message, sizeof message);
}

// Sends `request` and returns the reply of exactly `Reply`'s size (the child fails without
// one within 10 s); its descriptors go to `fds`.
template <class Reply, class Request>
Reply ask(int socket, const Request &request, std::vector<int> *fds = nullptr) {
    send_raw(socket, request);
    Reply reply{};
    ssize_t got = receive(socket, &reply, sizeof reply, fds);
    if (got != static_cast<ssize_t>(sizeof reply))
        fail(__FILE__, __LINE__,
             "no reply of " + std::to_string(sizeof reply) + " bytes (got " + std::to_string(got) +
                 ")");
    return reply;
}

// For a process posing as a user-backend owner without the library: binds the service
// name of the calling process under `key` (src/user/protocol.hpp), as any process may for
// its own pid, and listens.
int bind_user_service(std::uint32_t key);
// Serves the connections to `listener` for `limit`: every message (at most 64 bytes, the
// size of every request) goes to `serve` with the connection it came on; a connection that
// ends is dropped.
void serve_user_requests(
    int listener, std::chrono::seconds limit,
    const std::function<void(int connection, std::span<const std::byte> message)> &serve);
// Gets a permit for `segid` with `flags` (the child fails without one) and attaches `size`
// bytes from its start: the attachment, or (void *)-1.
void *get_and_attach(std::int64_t segid, int flags, std::size_t size);

// This process's start time in clock ticks after boot (/proc/self/stat, field 22): what a
// segid carries besides the pid (src/user/protocol.hpp), for tests posing as an owner.
std::uint64_t own_start_time();

// Whether the kernel can read from [address, address+1): false once it faults.
bool readable_by_kernel(const void *address);

// The owner publishes `pages` fresh anonymous pages set up by `prepare`; once the attacher
// has attached them and faulted them in, the owner runs `change` on its memory, then the
// attacher runs `check` on its view. docs/contract.md §2, "owner changes its memory".
void after_owner_change(std::size_t pages, const std::function<void(char *)> &prepare,
                        const std::function<void(char *)> &change,
                        const std::function<void(const std::byte *)> &check);

// The fixture every conformance test derives from: parameterised by backend name. With the
// kernel backend, where the module's counters are readable (root, debugfs mounted), every
// test ends by checking that all its objects are gone again.
class BackendTest : public ::testing::TestWithParam<std::string> {
  protected:
    void SetUp() override;
    void TearDown() override;
    bool user_backend() const { return GetParam() == "user"; }
};

std::string backend_test_name(const ::testing::TestParamInfo<std::string> &info);

#define INSTANTIATE_BACKENDS(Suite)                                                            \
    INSTANTIATE_TEST_SUITE_P(Backends, Suite, ::testing::ValuesIn(::xt::available_backends()), \
                             ::xt::backend_test_name)

// Waits for every process; once one fails, the others are killed instead of being left
// to wait for a peer that will never answer. Adds a test failure naming each failed child
// (those killed after the first failure are not reported).
void expect_all_ok(std::initializer_list<Process *> processes);
void expect_all_ok(std::vector<Process> &processes);

// Skips a test of a hole that is still open, with its reason, unless XPMEM_RUN_OPEN_HOLES=1:
// it fails today, and its page in docs/ says so.
bool run_open_holes();
#define OPEN_HOLE(text)                                                                   \
    do {                                                                                  \
        if (!::xt::run_open_holes())                                                      \
            GTEST_SKIP() << "OPEN HOLE: " << text << " (XPMEM_RUN_OPEN_HOLES=1 runs it)"; \
    } while (0)

// Expects `process` to have exited successfully.
#define EXPECT_CHILD_OK(process)                                \
    do {                                                        \
        ::xt::Status status_ = (process).wait();                \
        EXPECT_TRUE(status_.exited_ok()) << status_.describe(); \
    } while (0)

}  // namespace xt
