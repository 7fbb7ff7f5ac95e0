// One fuzzing process of xpmem-protocol-fuzz: raw connections to the owner's service,
// inputs drawn from a seeded stream, and a model of what the service must answer.
//
// The model is protocol.hpp read as a specification: a datagram that is not exactly one
// request (size, magic and type) or that carries descriptors closes the connection and
// gets no answer; requests are answered in order (RELEASE never); GET checks the segid,
// then the flags, then the mode against the caller's credentials, then the per-connection
// permit limit, and numbers permits 1, 2, ... per connection; ATTACH needs a permit of this
// connection and a non-empty page-aligned range inside the segment, and its descriptors
// reach that segment's memory only, read-only for a read-only permit; REVOKE is refused to
// anyone but the segid's own process. The churn segment may vanish at any moment, so for
// it ENOENT is always a valid answer.

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <xpmem.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <vector>

#include "fuzz_random.hpp"
#include "protocol_fuzz.hpp"
#include "user/protocol.hpp"
#include "util/mapping.hpp"
#include "util/unique_fd.hpp"

namespace protocol_fuzz {

namespace wire = xpmem::user::protocol;

std::uint64_t monotonic_ns() {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<std::uint64_t>(now.tv_sec) * 1000000000ULL +
           static_cast<std::uint64_t>(now.tv_nsec);
}

void report_failure(Shared &shared, const std::string &what) {
    constexpr std::uint64_t kPrinted = 20;
    std::uint64_t number = shared.failures.fetch_add(1);
    std::uint32_t unclaimed = 0;
    if (shared.failure_claimed.compare_exchange_strong(unclaimed, 1)) {
        std::size_t length = std::min(what.size(), sizeof shared.first_failure - 1);
        std::memcpy(shared.first_failure, what.data(), length);
        shared.first_failure[length] = '\0';
    }
    if (number < kPrinted) {
        std::string line = fmt::format("FAILURE: {}\n", what);
        (void)!::write(STDERR_FILENO, line.data(), line.size());
    }
}

std::string find_service(pid_t pid) {
    std::ifstream table("/proc/net/unix");
    std::string prefix = "@" + wire::socket_name_prefix(pid);
    for (std::string line; std::getline(table, line);) {
        std::size_t at = line.rfind(' ');
        if (at != std::string::npos && line.compare(at + 1, prefix.size(), prefix) == 0)
            return line.substr(at + 2);
    }
    return {};
}

namespace {

using xpmem::util::Mapping;
using xpmem::util::UniqueFd;
using xpmem_fuzz::Draws;

constexpr int kReplyTimeoutMs = 10000;
constexpr std::size_t kMaxPermits = 4096;  // the service's permits per connection
constexpr std::size_t kMaxReplyFds = 64;  // room to see more than protocol::kMaxFds

// One datagram as sent: a request, or anything else.
struct Message {
    alignas(8) std::array<std::byte, 256> data{};
    std::size_t size = 0;

    template <class Body>
    static Message of(const Body &body) {
        static_assert(sizeof body <= sizeof data);
        Message message;
        std::memcpy(message.data.data(), &body, sizeof body);
        message.size = sizeof body;
        return message;
    }
    template <class Body>
    Body as() const {
        Body body;
        std::memcpy(&body, data.data(), sizeof body);
        return body;
    }
    wire::Header header() const { return as<wire::Header>(); }
};

template <class Request>
bool is_exactly(const Message &message) {
    return message.size == sizeof(Request) && message.header().type == Request{}.header.type;
}

// The request a datagram is, by the parsing rule of protocol.hpp; nothing if it must close
// the connection.
std::optional<wire::Type> request_type(const Message &message) {
    if (message.size < sizeof(wire::Header) || message.header().magic != wire::kMagic)
        return std::nullopt;
    if (is_exactly<wire::GetRequest>(message)) return wire::Type::get;
    if (is_exactly<wire::AttachRequest>(message)) return wire::Type::attach;
    if (is_exactly<wire::FaultRequest>(message)) return wire::Type::fault;
    if (is_exactly<wire::ReleaseRequest>(message)) return wire::Type::release;
    if (is_exactly<wire::RevokeRequest>(message)) return wire::Type::revoke;
    return std::nullopt;
}

std::string hex(std::span<const std::byte> bytes) {
    std::string text;
    for (std::size_t i = 0; i < bytes.size(); ++i)
        text += fmt::format("{}{:02x}", i % 8 == 0 && i > 0 ? " " : "",
                            static_cast<unsigned>(bytes[i]));
    return text;
}

// What a segid names, as known when the request was sent.
struct Lookup {
    std::optional<std::size_t> segment;  // the segment it is (or may be, for the churn one)
    bool certain = true;                 // false: it may also be gone (ENOENT)
};

struct Permit {
    std::size_t segment;
    int flags;
};

// A request sent and not yet answered (or, for RELEASE and datagrams that must close the
// connection, not yet accounted for), in sending order.
struct Pending {
    Message message;
    std::optional<wire::Type> type;  // nothing: the service must close the connection here
    Lookup lookup;                   // GET: its segid at sending time
    std::uint64_t input = 0;         // the input number, for reports
};

// A connection and the model of the service's session behind it.
struct Connection {
    UniqueFd socket;
    std::deque<Pending> pending;
    std::map<std::uint64_t, Permit> permits;  // live, as far as we know
    std::vector<std::uint64_t> released;
    std::uint64_t next_permit = 1;
    std::size_t fixed_permits = 0;  // permits of segments that cannot vanish: surely live
    bool answered = false;         // the service has answered here: its session exists
    bool doomed = false;           // sent something that must close it
    bool closed = false;           // the service closed it
};

class Fuzzer {
  public:
    Fuzzer(Shared &shared, unsigned index, std::uint64_t seed, const std::string &service)
        : shared_(shared), index_(index), seed_(seed), random_(seed) {
        address_.sun_family = AF_UNIX;
        std::memcpy(address_.sun_path + 1, service.data(), service.size());
        address_length_ =
            static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + service.size());
        uid_ = ::geteuid();
        gid_ = ::getegid();
        groups_.resize(static_cast<std::size_t>(std::max(::getgroups(0, nullptr), 0)));
        groups_.resize(static_cast<std::size_t>(
            std::max(::getgroups(static_cast<int>(groups_.size()), groups_.data()), 0)));
        start_ = wire::owner_start(shared_.segids[0].load());
        for (std::size_t i = 0; i + 1 < kSegments.size(); ++i)
            fixed_serials_.push_back(serial_of(shared_.segids[i].load()));
        make_descriptor_pool();
    }

    void run(std::uint64_t quota) {
        while ((quota == 0 || inputs_ < quota) && shared_.stop.load() == 0) {
            Draws draws(random_);
            step(draws);
            shared_.progress_ns[index_].store(monotonic_ns());
        }
    }

  private:
    // ---- choosing an input ------------------------------------------------------------

    void step(Draws &d) {
        if (d.below(100000) == 0) return permit_flood();
        std::uint64_t choice = d.below(1000);
        if (choice < 280) return single(d, Op::get, Message::of(get(d)));
        if (choice < 440) return single(d, Op::attach, Message::of(attach(d)));
        if (choice < 500) return single(d, Op::release, Message::of(release(d)));
        if (choice < 540) return single(d, Op::revoke, Message::of(revoke(d)));
        if (choice < 790) return mutated(d);
        if (choice < 830) return descriptors(d);
        if (choice < 860) return half_close(d);
        if (choice < 920) return burst(d);
        if (choice < 930) return many_connections(d);
        return connect_close(d);
    }

    static std::uint32_t serial_of(std::int64_t segid) {
        return static_cast<std::uint32_t>(static_cast<std::uint64_t>(segid) >>
                                          (wire::kPidBits + wire::kStartBits));
    }

    std::int64_t real_segid(Draws &d) { return shared_.segids[d.below(kSegments.size())].load(); }

    std::int64_t stale_segid(Draws &d) {
        std::uint64_t count = shared_.stale_count.load();
        if (count == 0) return real_segid(d);
        return shared_
            .stale[(count - 1 - d.below(std::min<std::uint64_t>(count, kStaleSegids))) %
                   kStaleSegids]
            .load();
    }

    std::int64_t choose_segid(Draws &d) {
        std::uint64_t choice = d.below(100);
        pid_t owner = shared_.owner;
        std::int64_t real = real_segid(d);
        if (choice < 55) return real;
        if (choice < 65) return stale_segid(d);
        if (choice < 72)
            return wire::make_segid(static_cast<std::uint32_t>(d.raw()), start_, owner);
        if (choice < 78) return real ^ static_cast<std::int64_t>(std::uint64_t{1} << d.below(63));
        if (choice < 84)
            return wire::make_segid(serial_of(real), start_ ^ (1U << d.below(wire::kStartBits)),
                                    owner);
        if (choice < 90) {
            std::array<pid_t, 4> others{::getpid(), shared_.attacher, 1,
                                        static_cast<pid_t>(d.below(1U << wire::kPidBits))};
            return wire::make_segid(serial_of(real), start_, d.pick(others));
        }
        if (choice < 95) return static_cast<std::int64_t>(d.raw());
        static constexpr std::array<std::int64_t, 4> kEdges{
            0, -1, std::numeric_limits<std::int64_t>::max(),
            std::numeric_limits<std::int64_t>::min()};
        return d.pick(kEdges);
    }

    int choose_flags(Draws &d) {
        std::uint64_t choice = d.below(100);
        if (choice < 60) return XPMEM_RDONLY;
        if (choice < 90) return XPMEM_RDWR;
        static constexpr std::array<int, 5> kOdd{0, 3, -1, 4, std::numeric_limits<int>::min()};
        return choice < 97 ? d.pick(kOdd) : static_cast<int>(d.raw());
    }

    // A permit of the main connection (most of the time), one given back, or a guess.
    std::uint64_t choose_permit(Draws &d) {
        Connection &c = main_;
        std::uint64_t choice = d.below(100);
        if (choice < 75 && !c.permits.empty()) {
            auto it = c.permits.begin();
            std::advance(it, static_cast<long>(d.below(c.permits.size())));
            return it->first;
        }
        if (choice < 85 && !c.released.empty()) return c.released[d.below(c.released.size())];
        static constexpr std::array<std::uint64_t, 4> kEdges{0, ~std::uint64_t{0},
                                                             std::uint64_t{1} << 63, 1};
        if (choice < 92) return c.next_permit + d.below(3);
        return choice < 96 ? d.pick(kEdges) : d.raw();
    }

    wire::GetRequest get(Draws &d) {
        return {.segid = choose_segid(d),
                .flags = choose_flags(d),
                .attacher_key = static_cast<std::uint32_t>(d.raw())};
    }

    // A FAULT has the fields of an ATTACH and is answered the same way.
    wire::FaultRequest fault(Draws &d) {
        wire::AttachRequest request = attach(d);
        return {.permit = request.permit, .offset = request.offset, .size = request.size};
    }

    wire::AttachRequest attach(Draws &d) {
        std::uint64_t permit = choose_permit(d);
        auto held = main_.permits.find(permit);
        std::uint64_t size_of_segment = segment_size(
            held != main_.permits.end() ? held->second.segment : d.below(kSegments.size()));
        std::uint64_t pages = size_of_segment / kPage;
        std::uint64_t offset;
        std::uint64_t choice = d.below(100);
        if (choice < 45)
            offset = kPage * d.small_below(pages + 1);
        else if (choice < 55)
            offset = size_of_segment;
        else if (choice < 60)
            offset = size_of_segment + kPage;
        else if (choice < 67)
            offset = kPage * d.below(pages) + 1 + d.below(kPage - 1);
        else if (choice < 74) {
            static constexpr std::array<std::uint64_t, 4> kHuge{
                std::uint64_t{1} << 63, ~std::uint64_t{0}, ~std::uint64_t{0} - kPage + 1,
                std::uint64_t{1} << 40};
            offset = d.pick(kHuge);
        } else if (choice < 90) {
            offset = 0;
        } else {
            offset = d.raw();
        }
        std::uint64_t left = offset <= size_of_segment ? size_of_segment - offset : 0;
        std::uint64_t size;
        choice = d.below(100);
        if (choice < 45)
            size = kPage * (1 + d.small_below(std::max<std::uint64_t>(left / kPage, 1)));
        else if (choice < 60)
            size = left;
        else if (choice < 64)
            size = 0;
        else if (choice < 70)
            size = left + kPage;
        else if (choice < 76)
            size = left - 1 - d.below(kPage - 1);
        else if (choice < 83)
            size = 0 - offset;  // offset + size wraps to zero
        else if (choice < 90)
            size = ~std::uint64_t{0} & ~std::uint64_t{kPage - 1};
        else
            size = d.raw();
        return {.permit = permit, .offset = offset, .size = size};
    }

    wire::ReleaseRequest release(Draws &d) { return {.permit = choose_permit(d)}; }

    wire::RevokeRequest revoke(Draws &d) {
        std::uint64_t choice = d.below(100);
        if (choice < 40) return {.segid = choose_segid(d)};
        if (choice < 70)  // names this process: the service must accept it (and do nothing)
            return {.segid = wire::make_segid(static_cast<std::uint32_t>(d.raw()),
                                              static_cast<std::uint32_t>(d.raw()), ::getpid())};
        return {.segid = static_cast<std::int64_t>(d.raw())};
    }

    // Any valid request.
    Message any_request(Draws &d, bool with_release = true) {
        switch (d.below(with_release ? 5 : 4)) {
            case 0:
                return Message::of(get(d));
            case 1:
                return Message::of(attach(d));
            case 2:
                return Message::of(revoke(d));
            case 3:
                return Message::of(fault(d));
            default:
                return Message::of(release(d));
        }
    }

    // A request, or a reply sent as if it were one.
    Message any_message(Draws &d) {
        if (d.below(5) != 0) return any_request(d);
        switch (d.below(3)) {
            case 0:
                return Message::of(wire::GetReply{.error = 0, .permit = d.raw()});
            case 1:
                return Message::of(wire::RevokeReply{.error = 0});
            default: {  // an ATTACH reply is too large for the service's buffer: cut it
                Message message;
                wire::AttachReply reply{};
                reply.header = wire::AttachReply{}.header;
                message.size = std::min(sizeof message.data, sizeof reply);
                std::memcpy(message.data.data(), &reply, message.size);
                return message;
            }
        }
    }

    // ---- byte-level mutation ----------------------------------------------------------

    void mutate(Draws &d, Message &m) {
        auto put64 = [&](std::size_t at, std::uint64_t value) {
            if (at + 8 <= m.data.size()) std::memcpy(m.data.data() + at, &value, 8);
        };
        static constexpr std::array<std::uint64_t, 8> kInteresting{
            0,         ~std::uint64_t{0},      1,          kPage,
            kPage - 1, std::uint64_t{1} << 63, 0x7fffffff, 0x80000000};
        switch (d.below(10)) {
            case 0:
                if (m.size > 0) m.data[d.below(m.size)] ^= static_cast<std::byte>(1U << d.below(8));
                break;
            case 1:
                if (m.size > 0) m.data[d.below(m.size)] = static_cast<std::byte>(d.raw());
                break;
            case 2:
                m.size = d.below(m.size + 1);
                break;
            case 3: {
                std::size_t extra = 1 + d.small_below(64);
                for (std::size_t i = 0; i < extra && m.size < m.data.size(); ++i)
                    m.data[m.size++] = static_cast<std::byte>(d.raw());
                break;
            }
            case 4: {  // splice: two messages in one datagram, or the head of one and the
                       // tail of another
                Message other = any_request(d);
                std::size_t cut = d.below(2) == 0 ? m.size : d.below(m.size + 1);
                std::size_t from = d.below(2) == 0 ? 0 : std::min(cut, other.size);
                std::size_t take = std::min(other.size - from, m.data.size() - cut);
                std::memcpy(m.data.data() + cut, other.data.data() + from, take);
                m.size = cut + take;
                break;
            }
            case 5: {
                std::uint32_t magic = d.below(2) == 0 ? static_cast<std::uint32_t>(d.raw())
                                                      : wire::kMagic ^ (1U << d.below(32));
                std::memcpy(m.data.data(), &magic, sizeof magic);
                m.size = std::max(m.size, sizeof magic);
                break;
            }
            case 6: {
                std::uint32_t type = d.below(4) == 0 ? static_cast<std::uint32_t>(d.raw())
                                                     : static_cast<std::uint32_t>(d.below(12));
                std::memcpy(m.data.data() + 4, &type, sizeof type);
                m.size = std::max(m.size, sizeof(wire::Header));
                break;
            }
            case 7:
                put64(8 * (1 + d.below(3)), d.pick(kInteresting));
                break;
            case 8: {  // random bytes, after a valid header half of the time
                m.size = d.small_below(120);
                for (std::size_t i = 0; i < m.size; ++i)
                    m.data[i] = static_cast<std::byte>(d.raw());
                if (d.below(2) == 0 && m.size >= sizeof(wire::Header))
                    std::memcpy(m.data.data(), &wire::kMagic, sizeof wire::kMagic);
                break;
            }
            default:
                m.size = 0;
                break;
        }
    }

    // ---- connections ------------------------------------------------------------------

    Connection connect() {
        Connection c;
        c.socket.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!c.socket) fatal(fmt::format("socket: {}", std::strerror(errno)));
        std::uint64_t deadline = monotonic_ns() + 10000000000ULL;
        while (::connect(c.socket.get(), reinterpret_cast<const sockaddr *>(&address_),
                         address_length_) < 0) {
            // EAGAIN: the backlog is full (the service is busy accepting); wait a little.
            if (errno != EAGAIN && errno != EINTR)
                fatal(fmt::format("connect to the owner's service: {}", std::strerror(errno)));
            if (monotonic_ns() > deadline) fatal("the owner's backlog stayed full for 10 s");
            ::usleep(200);
        }
        ucred peer{};
        socklen_t length = sizeof peer;
        if (::getsockopt(c.socket.get(), SOL_SOCKET, SO_PEERCRED, &peer, &length) < 0 ||
            peer.pid != shared_.owner)
            fatal("the service address is not answered by the owner");
        return c;
    }

    Connection &main_connection() {
        if (!main_.socket) main_ = connect();
        return main_;
    }

    // Sends `message`; false if the service had closed the connection already.
    bool send(Connection &c, const Message &message, std::span<const int> fds = {}) {
        iovec io{const_cast<std::byte *>(message.data.data()), message.size};
        msghdr header{};
        header.msg_iov = &io;
        header.msg_iovlen = 1;
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
        if (!fds.empty()) {
            header.msg_control = control;
            header.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
            cmsghdr *cmsg = CMSG_FIRSTHDR(&header);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
            std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
        }
        for (;;) {
            if (::sendmsg(c.socket.get(), &header, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0) return true;
            if (errno == EPIPE || errno == ECONNRESET) return false;
            if (errno != EAGAIN && errno != EINTR)
                fatal(fmt::format("sendmsg: {}", std::strerror(errno)));
            pollfd entry{c.socket.get(), POLLOUT, 0};
            if (errno == EAGAIN && ::poll(&entry, 1, kReplyTimeoutMs) == 0) {
                failure(fmt::format("the service read nothing for {} ms", kReplyTimeoutMs));
                return false;
            }
        }
    }

    // Queues `message` on `c` as the next thing the service must answer or act on.
    void post(Connection &c, const Message &message, std::span<const int> fds = {}) {
        Pending pending{message, fds.empty() ? request_type(message) : std::nullopt, {}, inputs_};
        if (pending.type == wire::Type::get)
            pending.lookup = look_up(message.as<wire::GetRequest>().segid);
        if (!pending.type) c.doomed = true;
        c.pending.push_back(pending);
        if (!send(c, message, fds)) {
            c.pending.pop_back();
            connection_closed(c);
        }
    }

    // The service closed `c` (or refused it): fine where something that must close it is
    // next in line, and before its first answer (the session limit); anything else, with a
    // request still to be answered, is a failure.
    void connection_closed(Connection &c) {
        if (c.closed) return;
        c.closed = true;
        while (!c.pending.empty() && c.pending.front().type == wire::Type::release)
            c.pending.pop_front();  // never answered anyway
        bool due = c.pending.empty() ? c.doomed : !c.pending.front().type;
        if (due) {
            shared_.closes_checked.fetch_add(1);
        } else if (!c.answered) {
            shared_.sessions_refused.fetch_add(1);
        } else {
            failure(fmt::format("the service closed a connection in good standing{}",
                                c.pending.empty()
                                    ? std::string()
                                    : " before answering " + describe(c.pending.front())));
        }
        c.pending.clear();
    }

    enum class Received { message, closed, timeout };

    Received receive(Connection &c, Message &reply_header, std::vector<std::byte> &reply,
                     std::vector<UniqueFd> &fds) {
        pollfd entry{c.socket.get(), POLLIN, 0};
        for (;;) {
            int ready = ::poll(&entry, 1, kReplyTimeoutMs);
            if (ready == 0) return Received::timeout;
            if (ready > 0) break;
            if (errno != EINTR) fatal(fmt::format("poll: {}", std::strerror(errno)));
        }
        reply.resize(sizeof(wire::AttachReply) + 64);
        iovec io{reply.data(), reply.size()};
        msghdr header{};
        header.msg_iov = &io;
        header.msg_iovlen = 1;
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxReplyFds)];
        header.msg_control = control;
        header.msg_controllen = sizeof control;
        ssize_t got = ::recvmsg(c.socket.get(), &header, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (got < 0 && errno == ECONNRESET) return Received::closed;
        if (got < 0) fatal(fmt::format("recvmsg: {}", std::strerror(errno)));
        for (cmsghdr *cmsg = CMSG_FIRSTHDR(&header); cmsg != nullptr;
             cmsg = CMSG_NXTHDR(&header, cmsg)) {
            if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
            std::size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < count; ++i) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
                fds.emplace_back(fd);
            }
        }
        if (got == 0 && fds.empty()) return Received::closed;
        if ((header.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0)
            failure(fmt::format("a reply of {} bytes with {} descriptors did not fit", got,
                                fds.size()));
        reply.resize(static_cast<std::size_t>(got));
        reply_header.size = std::min(reply.size(), reply_header.data.size());
        std::memcpy(reply_header.data.data(), reply.data(), reply_header.size);
        return Received::message;
    }

    // Accounts for everything pending on `c`, in order: applies RELEASEs, checks replies,
    // and checks that the connection closes after a datagram that must close it.
    void drain(Connection &c) {
        Message head;
        std::vector<std::byte> reply;
        while (!c.pending.empty() && !c.closed) {
            Pending &next = c.pending.front();
            if (next.type == wire::Type::release) {
                apply_release(c, next.message.as<wire::ReleaseRequest>().permit);
                c.pending.pop_front();
                continue;
            }
            std::vector<UniqueFd> fds;
            Received received = receive(c, head, reply, fds);
            if (received == Received::timeout) {
                failure(fmt::format(
                    "no answer within {} ms {}", kReplyTimeoutMs,
                    next.type ? "to " + describe(next) : "and no close after " + describe(next)));
                c.pending.clear();
                c.closed = true;
                return;
            }
            if (received == Received::closed) return connection_closed(c);
            if (!next.type) {
                failure(fmt::format("answered {} after {}, which must close the connection",
                                    hex(reply), describe(next)));
                c.pending.clear();
                c.closed = true;
                return;
            }
            c.answered = true;
            check_reply(c, next, reply, fds);
            shared_.replies_checked.fetch_add(1);
            c.pending.pop_front();
        }
    }

    // ---- the model --------------------------------------------------------------------

    Lookup look_up(std::int64_t segid) const {
        for (std::size_t i = 0; i < kSegments.size(); ++i)
            if (i != kChurn && shared_.segids[i].load() == segid) return {i, true};
        std::uint64_t count = shared_.stale_count.load();
        for (std::uint64_t i = 0; i < std::min<std::uint64_t>(count, kStaleSegids); ++i)
            if (shared_.stale[i].load() == segid) return {std::nullopt, true};  // removed
        // Any other id of the owner may be the churn segment's (now or soon).
        if (wire::owner_of(segid) == wire::owner_of(shared_.segids[0].load()) && segid > 0 &&
            std::find(fixed_serials_.begin(), fixed_serials_.end(), serial_of(segid)) ==
                fixed_serials_.end())
            return {kChurn, false};
        return {std::nullopt, true};
    }

    // Whether System V rules let us have `flags` on something of the owner's with `mode`.
    bool permitted(mode_t mode, int flags) const {
        if (uid_ == 0) return true;
        unsigned bits = mode;
        if (uid_ == shared_.owner_uid)
            bits = mode >> 6;
        else if (gid_ == shared_.owner_gid ||
                 std::find(groups_.begin(), groups_.end(), shared_.owner_gid) != groups_.end())
            bits = mode >> 3;
        unsigned need = flags == XPMEM_RDWR ? (S_IROTH | S_IWOTH) : S_IROTH;
        return (bits & need) == need;
    }

    void apply_release(Connection &c, std::uint64_t permit) {
        auto it = c.permits.find(permit);
        if (it == c.permits.end()) return;
        if (it->second.segment != kChurn) --c.fixed_permits;
        c.permits.erase(it);
        c.released.push_back(permit);
    }

    template <class Reply>
    std::optional<Reply> reply_as(const Pending &request, std::span<const std::byte> reply,
                                  std::span<const UniqueFd> fds, bool fds_allowed = false) {
        Reply body;
        if (reply.size() != sizeof body) {
            failure(fmt::format("a reply of {} bytes to {}", reply.size(), describe(request)));
            return std::nullopt;
        }
        std::memcpy(&body, reply.data(), sizeof body);
        if (body.header.magic != wire::kMagic || body.header.type != Reply{}.header.type) {
            failure(fmt::format("a reply {} to {}", hex(reply.first(8)), describe(request)));
            return std::nullopt;
        }
        if (!fds_allowed && !fds.empty()) {
            failure(
                fmt::format("{} descriptors with the reply to {}", fds.size(), describe(request)));
            return std::nullopt;
        }
        return body;
    }

    void check_reply(Connection &c, const Pending &request, std::span<const std::byte> reply,
                     std::span<const UniqueFd> fds) {
        switch (*request.type) {
            case wire::Type::get: {
                if (auto body = reply_as<wire::GetReply>(request, reply, fds))
                    check_get(c, request, *body);
                return;
            }
            case wire::Type::attach:
            case wire::Type::fault: {
                if (auto body = reply_as<wire::AttachReply>(request, reply, fds, true))
                    check_attach(c, request, *body, fds);
                return;
            }
            case wire::Type::revoke: {
                auto body = reply_as<wire::RevokeReply>(request, reply, fds);
                std::int64_t segid = request.message.as<wire::RevokeRequest>().segid;
                int expected = wire::owner_pid(segid) == ::getpid() ? 0 : EACCES;
                if (body && body->error != expected)
                    failure(fmt::format("REVOKE answered {} (expected {}): {}", body->error,
                                        expected, describe(request)));
                return;
            }
            default:
                failure(fmt::format("a reply to {}", describe(request)));
        }
    }

    void check_get(Connection &c, const Pending &request, const wire::GetReply &reply) {
        auto get_request = request.message.as<wire::GetRequest>();
        const Lookup &lookup = request.lookup;
        int expected = 0;
        if (!lookup.segment)
            expected = ENOENT;
        else if (get_request.flags != XPMEM_RDONLY && get_request.flags != XPMEM_RDWR)
            expected = EINVAL;
        else if (!permitted(kSegments[*lookup.segment].mode, get_request.flags))
            expected = EACCES;
        else if (c.permits.size() >= kMaxPermits)
            // Churn permits may be gone already: ENOSPC is certain only for those that cannot.
            expected = c.fixed_permits >= kMaxPermits ? ENOSPC : -1;
        bool ok = reply.error == expected || (!lookup.certain && reply.error == ENOENT) ||
                  (expected == -1 && (reply.error == ENOSPC || reply.error == 0));
        if (!ok) {
            failure(fmt::format("GET answered {} (expected {}{}; {} permits): {}", reply.error,
                                expected, lookup.certain ? "" : " or ENOENT", c.permits.size(),
                                describe(request)));
            return;
        }
        if (reply.error != 0) return;
        if (reply.permit != c.next_permit) {
            failure(fmt::format("GET granted permit {} (expected {}): {}", reply.permit,
                                c.next_permit, describe(request)));
            c.next_permit = reply.permit;
        }
        ++c.next_permit;
        c.permits[reply.permit] = Permit{*lookup.segment, get_request.flags};
        if (*lookup.segment != kChurn) ++c.fixed_permits;
    }

    void check_attach(Connection &c, const Pending &request, const wire::AttachReply &reply,
                      std::span<const UniqueFd> fds) {
        auto attach_request = request.message.as<wire::AttachRequest>();
        auto permit = c.permits.find(attach_request.permit);
        int expected = 0;
        std::uint64_t size = 0;
        if (permit == c.permits.end()) {
            expected = ENOENT;
        } else {
            size = segment_size(permit->second.segment);
            std::uint64_t offset = attach_request.offset, length = attach_request.size;
            if (length == 0 || offset % kPage != 0 || length % kPage != 0 || offset > size ||
                length > size - offset)
                expected = EINVAL;
        }
        bool may_be_gone = permit != c.permits.end() && permit->second.segment == kChurn;
        if (reply.error != expected && !(may_be_gone && reply.error == ENOENT)) {
            failure(fmt::format("ATTACH answered {} (expected {}{}): {}", reply.error, expected,
                                may_be_gone ? " or ENOENT" : "", describe(request)));
            return;
        }
        if (reply.error != 0) {
            if (reply.piece_count != 0 || !fds.empty())
                failure(fmt::format("ATTACH failed with {} but sent {} pieces, {} descriptors",
                                    reply.error, reply.piece_count, fds.size()));
            return;
        }
        check_pieces(request, reply, permit->second, fds);
    }

    // The pieces cover a prefix of the range: holes only where the owner has one, and file
    // pieces at the file offset of their place in the segment.
    void check_pieces(const Pending &request, const wire::AttachReply &reply, const Permit &permit,
                      std::span<const UniqueFd> fds) {
        auto attach_request = request.message.as<wire::AttachRequest>();
        const SegmentSpec &spec = kSegments[permit.segment];
        bool read_only = permit.flags == XPMEM_RDONLY;
        if (reply.piece_count == 0 || reply.piece_count > wire::kMaxPieces ||
            fds.size() > wire::kMaxFds) {
            failure(fmt::format("ATTACH reply with {} pieces and {} descriptors: {}",
                                reply.piece_count, fds.size(), describe(request)));
            return;
        }
        std::uint64_t at = attach_request.offset;
        std::uint64_t end = attach_request.offset + attach_request.size;
        for (std::uint32_t i = 0; i < reply.piece_count; ++i) {
            const wire::Piece &piece = reply.pieces[i];
            std::string where = fmt::format(
                "piece {} (length {:#x}, file offset {:#x}, fd {}, "
                "flags {}) of {}",
                i, piece.length, piece.file_offset, piece.fd_index, piece.flags, describe(request));
            if (piece.length == 0 || piece.length % kPage != 0 || piece.length > end - at ||
                piece.fd_index >= static_cast<std::int32_t>(fds.size()) || piece.fd_index < -1) {
                failure("malformed " + where);
                return;
            }
            if (read_only && (piece.flags & wire::kPieceWritable) != 0)
                failure("writable " + where + " for RDONLY");
            if (piece.fd_index < 0) {
                bool in_hole = spec.hole_page != kNoHole && at >= spec.hole_page * kPage &&
                               at + piece.length <= (spec.hole_page + 1) * kPage;
                // Another user gets a memfd only if it is sealed, and for a read-only permit
                // only if its mode keeps that user from reopening it for writing (root and
                // the owner's uid get everything of the owner's anyway).
                bool foreign = uid_ != 0 && uid_ != shared_.owner_uid;
                bool withheld =
                    spec.memfd && foreign &&
                    (!spec.sealed ||
                     (read_only &&
                      permitted(spec.file_mode != 0 ? spec.file_mode : 0777, XPMEM_RDWR)));
                if (!in_hole && !withheld) failure("a hole where the owner has memory: " + where);
            } else if (piece.file_offset != at) {
                failure("a file piece away from its place in the segment: " + where);
            }
            at += piece.length;
        }
        for (const UniqueFd &fd : fds) check_descriptor(request, permit, fd.get());
        shared_.attaches_checked.fetch_add(1);
    }

    // A descriptor may reach bytes of the granted segment only, and only read them if the
    // permit was read-only.
    void check_descriptor(const Pending &request, const Permit &permit, int fd) {
        std::size_t limit = segment_size(permit.segment);
        struct stat status {};
        if (::fstat(fd, &status) < 0 || !S_ISREG(status.st_mode) ||
            static_cast<std::uint64_t>(status.st_size) > limit) {
            failure(fmt::format("a descriptor of {} bytes (mode {:o}) for a segment of {}: {}",
                                status.st_size, status.st_mode, limit, describe(request)));
            return;
        }
        std::size_t size = static_cast<std::size_t>(status.st_size);
        if (size > 0) {
            void *view = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
            if (view == MAP_FAILED) {
                failure(fmt::format("mmap of a received descriptor: {}", std::strerror(errno)));
                return;
            }
            Mapping mapping(view, size);
            const auto *words = reinterpret_cast<const std::uint64_t *>(mapping.data());
            for (std::size_t i = 0; i < size / 8; ++i) {
                if (words[i] == 0 || words[i] == stamp(permit.segment, i * 8)) continue;
                failure(
                    fmt::format("word {:#x} at file offset {:#x} of a descriptor for segment "
                                "{} (expected {:#x} or 0): {}",
                                words[i], i * 8, kSegments[permit.segment].name,
                                stamp(permit.segment, i * 8), describe(request)));
                return;
            }
            shared_.words_checked.fetch_add(size / 8);
        }
        if (permit.flags == XPMEM_RDONLY) {
            if ((::fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDONLY)
                failure("a writable descriptor for a read-only permit: " + describe(request));
            void *writable = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (writable != MAP_FAILED) {
                ::munmap(writable, kPage);
                failure("a read-only permit's descriptor maps writable: " + describe(request));
            }
            // Root may reopen anything, and the owner's uid may chmod the owner's files back;
            // anyone else must not get write access this way.
            std::string path = fmt::format("/proc/self/fd/{}", fd);
            UniqueFd reopened(::open(path.c_str(), O_RDWR | O_CLOEXEC));
            if (uid_ != 0 && uid_ != shared_.owner_uid && reopened)
                failure(
                    fmt::format("uid {} reopened a read-only permit's descriptor ({}) for "
                                "writing: {}",
                                uid_, kSegments[permit.segment].name, describe(request)));
        }
        shared_.descriptors_checked.fetch_add(1);
    }

    // ---- the inputs -------------------------------------------------------------------

    void count(Op op, std::uint64_t inputs = 1) {
        shared_.inputs[static_cast<std::size_t>(op)].fetch_add(inputs);
        inputs_ += inputs;
    }

    // Main connection: dropped once the service closed it, reconnected on next use.
    void settle_main() {
        if (main_.closed) main_ = Connection{};
    }

    void single(Draws &, Op op, const Message &message) {
        Connection &c = main_connection();
        count(op);
        post(c, message);
        if (op != Op::release) drain(c);
        settle_main();
    }

    void mutated(Draws &d) {
        Connection &c = main_connection();
        Message message = any_message(d);
        for (std::uint64_t n = 1 + d.below(3); n > 0; --n) mutate(d, message);
        count(Op::mutated);
        post(c, message);
        if (c.doomed && !c.closed && d.below(4) == 0) {  // after it: must not be answered
            count(Op::mutated);
            post(c, any_request(d));
        }
        drain(c);
        settle_main();
    }

    void descriptors(Draws &d) {
        Connection &c = main_connection();
        std::vector<int> fds;
        for (std::uint64_t n = 1 + d.small_below(12); n > 0; --n) {
            std::uint64_t which = d.below(pool_.size() + 1);
            fds.push_back(which == pool_.size() ? c.socket.get() : pool_[which].get());
        }
        Message message = d.below(4) == 0 ? any_message(d) : any_request(d);
        if (d.below(4) == 0) mutate(d, message);
        count(Op::descriptors);
        post(c, message, fds);
        drain(c);
        settle_main();
    }

    void half_close(Draws &d) {
        Connection c = connect();
        count(Op::half_close);
        if (d.below(3) == 0) {
            // We stop reading: the service's answer cannot be delivered, so it must close.
            ::shutdown(c.socket.get(), SHUT_RD);
            count(Op::half_close);
            if (!send(c, Message::of(get(d)))) return;
            pollfd entry{c.socket.get(), POLLHUP, 0};
            if (::poll(&entry, 1, kReplyTimeoutMs) != 1 || (entry.revents & POLLHUP) == 0)
                failure("the service kept a connection whose answer it could not deliver");
            else
                shared_.closes_checked.fetch_add(1);
            return;
        }
        for (std::uint64_t n = 1 + d.below(3); n > 0; --n) {
            count(Op::half_close);
            post(c, any_request(d, false));
        }
        // We stop writing: the service answers what it got, then closes. Should the kernel
        // still let a message through after SHUT_WR, it must be answered like any other.
        ::shutdown(c.socket.get(), SHUT_WR);
        count(Op::half_close);
        Message late = Message::of(get(d));
        if (::send(c.socket.get(), late.data.data(), late.size, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0)
            c.pending.push_back(Pending{late, wire::Type::get, {}, inputs_});
        else if (errno != EPIPE)
            failure(fmt::format("send after shutdown(SHUT_WR): {}", std::strerror(errno)));
        c.doomed = true;
        c.pending.push_back(Pending{Message{}, std::nullopt, {}, inputs_});
        drain(c);
    }

    void burst(Draws &d) {
        Connection &c = main_connection();
        for (std::uint64_t n = 2 + d.below(15); n > 0 && !c.closed; --n) {
            count(Op::burst);
            post(c, any_request(d));
        }
        drain(c);
        settle_main();
    }

    void many_connections(Draws &d) {
        // Another uid's share of the sessions is a quarter of a quarter of RLIMIT_NOFILE
        // (at least 64 / 4); stay below it so that refusals stay rare.
        std::size_t most = uid_ == shared_.owner_uid ? 40 : 12;
        std::vector<Connection> connections;
        for (std::uint64_t n = 2 + d.below(most - 1); n > 0; --n) {
            connections.push_back(connect());
            count(Op::many_connections, 2);
            post(connections.back(), Message::of(get(d)));
        }
        for (Connection &c : connections) drain(c);
    }

    void connect_close(Draws &d) {
        Connection c = connect();
        count(Op::connect_close);
        switch (d.below(3)) {
            case 0:
                return;  // closed at once
            case 1:      // a request whose answer nobody reads
                count(Op::connect_close);
                send(c, any_request(d));
                return;
            default:
                count(Op::connect_close);
                send(c, any_request(d));
                ::shutdown(c.socket.get(), SHUT_RDWR);
                return;
        }
    }

    // Fills one connection with permits up to the limit: one more is ENOSPC, and a RELEASE
    // makes room again.
    void permit_flood() {
        Connection c = connect();
        count(Op::permit_flood);
        wire::GetRequest request{.segid = shared_.segids[2].load(), .flags = XPMEM_RDONLY};
        for (std::size_t sent = 0; sent <= kMaxPermits && !c.closed; ++sent) {
            count(Op::permit_flood);
            post(c, Message::of(request));
            if (sent % 16 == 15) drain(c);
        }
        drain(c);
        if (c.closed) return;
        if (c.permits.size() != kMaxPermits)
            failure(fmt::format("{} permits on one connection (expected {})", c.permits.size(),
                                kMaxPermits));
        count(Op::permit_flood, 2);
        post(c, Message::of(wire::ReleaseRequest{.permit = 1}));
        post(c, Message::of(request));
        drain(c);
    }

    // ---- reporting --------------------------------------------------------------------

    std::string describe(const Pending &pending) const {
        return fmt::format("input #{} of fuzzer {} (seed {:#x}, uid {}): {} bytes [{}]",
                           pending.input, index_, seed_, uid_, pending.message.size,
                           hex(std::span(pending.message.data).first(pending.message.size)));
    }

    void failure(const std::string &what) { report_failure(shared_, what); }

    [[noreturn]] void fatal(const std::string &what) {
        std::string text = fmt::format("fuzzer {} (seed {:#x}): {}{}", index_, seed_, what,
                                       ::kill(shared_.owner, 0) == 0 ? "" : " (the owner is gone)");
        report_failure(shared_, text);
        shared_.stop.store(1);
        ::_exit(1);
    }

    void make_descriptor_pool() {
        int pipe_fds[2];
        if (::pipe2(pipe_fds, O_CLOEXEC) < 0) fatal("pipe");
        pool_.emplace_back(pipe_fds[0]);
        pool_.emplace_back(pipe_fds[1]);
        pool_.emplace_back(static_cast<int>(::memfd_create("protocol-fuzz", MFD_CLOEXEC)));
        pool_.emplace_back(::open("/dev/null", O_RDWR | O_CLOEXEC));
        pool_.emplace_back(::eventfd(0, EFD_CLOEXEC));
        for (const UniqueFd &fd : pool_)
            if (!fd) fatal("descriptor pool");
    }

    Shared &shared_;
    const unsigned index_;
    const std::uint64_t seed_;
    xpmem_fuzz::Random random_;
    sockaddr_un address_{};
    socklen_t address_length_ = 0;
    uid_t uid_;
    gid_t gid_;
    std::vector<gid_t> groups_;
    std::uint32_t start_;
    std::vector<std::uint32_t> fixed_serials_;
    std::vector<UniqueFd> pool_;  // descriptors to attach to messages
    Connection main_;
    std::uint64_t inputs_ = 0;
};

}  // namespace

void run_fuzzer(Shared &shared, unsigned index, std::uint64_t seed, std::uint64_t inputs,
                const std::string &service) {
    Fuzzer(shared, index, seed, service).run(inputs);
}

}  // namespace protocol_fuzz
