// The user backend: the owner's role (segments, served by a per-process service thread
// over Unix sockets, private memory made shareable in place: user/shareable.hpp, described
// by user/range_description.hpp) and the service thread itself; the attacher's role is
// user/attacher.hpp.
//
// Threads of the library: the service thread answers peers, converts memory and watches
// the links to owners; the follower (user/follower.hpp) follows the owner's unmaps; the
// attacher's fetcher (user/fetcher.hpp) resolves faults on attachments.
//
// Locking, in this order: `busy_` is held by the service thread while it handles an event,
// and by fork. `backing_lock_` guards backing_ (the service thread while it converts or
// takes back, the follower while it follows). `mutex_` guards the owner's tables; it is
// never held while waiting on another process, and never while memory is being converted
// (a writer blocked by the conversion may hold it). The attacher's lock comes last.
// Sessions (connections from peers) are created, read and closed only by the service
// thread; their permits are in `mutex_`.

#include "user/user_backend.hpp"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

#include "core/library.hpp"
#include "user/address_space.hpp"
#include "user/attacher.hpp"
#include "user/channel.hpp"
#include "user/follower.hpp"
#include "user/library_thread.hpp"
#include "user/permission.hpp"
#include "user/protocol.hpp"
#include "user/range_description.hpp"
#include "user/shareable.hpp"
#include "user/threads.hpp"
#include "util/error.hpp"
#include "util/mapping.hpp"

namespace xpmem::user {
namespace {

using core::Backend;
using util::Mapping;
using util::throw_errno;
using util::throw_last_errno;
using util::UniqueFd;

constexpr std::size_t kServiceStackSize = 512 * 1024;
// Peers are bounded so that they can neither exhaust the owner's memory nor starve its
// application of descriptors: sessions take at most a quarter of RLIMIT_NOFILE (within
// these bounds), another uid at most a quarter of those, a session at most
// kMaxPermitsPerSession permits and a uid at most kMaxPermitsPerUid. The owner's own uid is
// bounded only by the total: it could harm the owner in other ways anyway.
constexpr std::size_t kMinSessions = 64;
constexpr std::size_t kMaxSessions = 4096;
constexpr std::size_t kMaxSegments = std::size_t{1} << protocol::kSerialBits;
constexpr std::size_t kMaxPermitsPerSession = 4096;
constexpr std::size_t kMaxPermitsPerUid = 16384;
constexpr std::chrono::milliseconds kRevokeTimeout{2000};
// How long an attacher waits for an owner's reply before giving up with ETIMEDOUT
// (XPMEM_USER_TIMEOUT_MS overrides it).
constexpr std::chrono::milliseconds kDefaultRequestTimeout{10000};
// Memory the owner changes while it is being converted is described again, so many times.
constexpr int kConvertAttempts = 4;
constexpr std::uint64_t kStopTag = 0;
constexpr std::uint64_t kListenTag = 1;
constexpr std::uint64_t kWorkTag = 2;
constexpr std::uint64_t kLinkTag = std::uint64_t{1} << 62;  // | protocol::owner_of(segid)
constexpr std::uint64_t kFirstSessionTag = 3;
constexpr std::uint32_t kMaxKeyDraws = 64;

// Taken when the library is loaded, by the thread that loads it: the main thread, for a
// program linked with -lxpmem.
const std::uintptr_t loading_thread_pointer = current_thread_pointer();

struct SegmentRecord {
    std::uintptr_t start;
    std::size_t size;
    mode_t mode;
    OwnerCredentials owner;
};

struct Permit {
    xpmem_segid_t segid;
    int flags;
};

// A connection from a peer to this process's service.
struct Session {
    std::uint64_t tag;  // its epoll tag, unique for the life of the process
    UniqueFd socket;
    PeerCredentials peer;        // as recorded at connect time; the only identity ever used
    std::uint32_t peer_key = 0;  // the key of the peer's own service, from its GETs
    std::map<std::uint64_t, Permit> permits;  // guarded by mutex_
    std::uint64_t next_permit = 1;
};

class UserBackend final : public Backend {
  public:
    UserBackend();
    ~UserBackend() override;

    std::string_view name() const override { return "user"; }
    int version() override { return XPMEM_USER_BACKEND_FLAG | XPMEM_USER_BACKEND_VERSION; }
    xpmem_segid_t make(std::uintptr_t address, std::size_t size, mode_t mode) override;
    void remove(xpmem_segid_t segid) override;
    xpmem_apid_t get(xpmem_segid_t segid, Access access) override {
        note_caller();
        return attacher_->get(segid, static_cast<int>(access));
    }
    void release(xpmem_apid_t apid) override { attacher_->release(apid); }
    void *attach(xpmem_apid_t apid, std::uint64_t offset, std::size_t size, void *at) override {
        note_caller();
        return attacher_->attach(apid, offset, size, at);
    }
    void detach(void *address) override { attacher_->detach(address); }

    // A fork waits until the service and the follower are idle: the child gets no
    // half-converted range, and no lock they held mid-way (a sanitizer's allocator lock).
    void before_fork() noexcept override {
        busy_.lock();
        backing_lock_.lock();
        mutex_.lock();
        attacher_->tables_lock().lock();
    }
    void after_fork_parent() noexcept override {
        attacher_->tables_lock().unlock();
        mutex_.unlock();
        backing_lock_.unlock();
        busy_.unlock();
    }
    void after_fork_child() noexcept override;
    void after_raw_fork_child() noexcept override;

  private:
    // service thread
    void serve(int stop);
    void accept_session();
    void serve_session(std::uint64_t tag);
    void handle_get(Session &session, const protocol::GetRequest &request);
    void handle_attach(Session &session, std::uint64_t permit, std::uint64_t offset,
                       std::uint64_t size, bool populate);
    void handle_revoke(Session &session, const protocol::RevokeRequest &request);
    void close_session(std::uint64_t tag);
    void run_work();
    // Runs `work` on the service thread and waits for it: memory is converted there only.
    void on_service(std::function<void()> work);
    bool session_allowed_locked(const PeerCredentials &peer) const;
    std::size_t permits_of_uid_locked(uid_t uid) const;

    std::vector<Range> library_intervals_locked() const;
    void note_caller_locked() { known_threads_.insert(current_thread_pointer()); }
    void note_caller() {
        std::lock_guard lock(mutex_);
        note_caller_locked();
    }

    const pid_t pid_;
    const std::uint64_t start_;  // our start time, carried in our segids
    std::uint32_t key_ = 0;      // drawn at random; names our service together with pid_
    const OwnerCredentials self_;
    const std::chrono::milliseconds request_timeout_;
    const std::size_t max_sessions_;
    UniqueFd listen_;
    UniqueFd epoll_;
    UniqueFd work_;  // eventfd: work_queue_ has something

    // Held by the service thread while it handles an event; taken before the others (by
    // fork), never while holding one.
    std::mutex busy_;
    std::mutex backing_lock_;
    std::mutex mutex_;
    std::uint32_t next_serial_;
    std::map<xpmem_segid_t, SegmentRecord> segments_;
    std::map<std::uint64_t, std::unique_ptr<Session>> sessions_;
    std::uint64_t next_session_tag_ = kFirstSessionTag;
    std::vector<std::function<void()>> work_queue_;
    std::uint64_t work_queued_ = 0, work_done_ = 0;
    std::condition_variable work_finished_;
    Backing backing_;                                                 // guarded by backing_lock_
    std::set<std::uintptr_t> known_threads_{loading_thread_pointer};  // callers' thread pointers
    std::vector<Range> thread_stacks_;  // of our threads; guarded by mutex_
    std::optional<Attacher> attacher_;  // made once our service's key is drawn
    // Last, so that they stop first: they use everything above.
    std::optional<Follower> follower_;  // made on the first conversion, by the service thread
    std::optional<LibraryThread> service_;
};

std::uint32_t random_number() {
    std::uint32_t number = 0;
    if (::getrandom(&number, sizeof number, 0) != sizeof number) throw_last_errno("getrandom");
    return number;
}

std::uint64_t own_start_time() {
    std::optional<std::uint64_t> start = start_time_of(0);
    if (!start) throw_errno(EIO, "cannot read /proc/self/stat");
    return *start;
}

std::chrono::milliseconds request_timeout_from_environment() {
    const char *value = std::getenv("XPMEM_USER_TIMEOUT_MS");
    if (value == nullptr || *value == '\0') return kDefaultRequestTimeout;
    char *end = nullptr;
    long milliseconds = std::strtol(value, &end, 10);
    if (*end != '\0' || milliseconds <= 0) return kDefaultRequestTimeout;
    return std::chrono::milliseconds(milliseconds);
}

std::size_t session_budget() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) < 0) return kMinSessions;
    return std::clamp<std::size_t>(limit.rlim_cur / 4, kMinSessions, kMaxSessions);
}

UserBackend::UserBackend()
    : pid_(::getpid()),
      start_(own_start_time()),
      self_{::geteuid(), ::getegid()},
      request_timeout_(request_timeout_from_environment()),
      max_sessions_(session_budget()),
      next_serial_(random_number()) {
    // Someone may have bound a name first (by chance or to keep us from starting): draw
    // another key.
    for (std::uint32_t draw = 0; !listen_; ++draw) {
        key_ = random_number();
        try {
            listen_ = listen_on(pid_, key_);
        } catch (const std::system_error &error) {
            if (error.code().value() != EADDRINUSE || draw + 1 == kMaxKeyDraws) throw;
        }
    }
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    attacher_.emplace(Attacher::Config{pid_, key_, request_timeout_},
                      [this](int socket, std::uint64_t owner, bool add) {
                          // The service thread watches for the owner's end: its exit
                          // revokes everything.
                          epoll_event event{EPOLLRDHUP, {.u64 = kLinkTag | owner}};
                          ::epoll_ctl(epoll_.get(), add ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, socket,
                                      &event);
                      });
    work_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!epoll_ || !work_) throw_last_errno("epoll/eventfd");
    auto watch = [&](int fd, std::uint64_t tag) {
        epoll_event event{EPOLLIN, {.u64 = tag}};
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) < 0) throw_last_errno("epoll_ctl");
    };
    watch(listen_.get(), kListenTag);
    watch(work_.get(), kWorkTag);
    service_.emplace("xpmem-service", library_stack_size(kServiceStackSize),
                     [this](int stop) { serve(stop); });
    thread_stacks_.push_back(service_->stack());
}

UserBackend::~UserBackend() = default;

void UserBackend::after_fork_child() noexcept {
    mutex_.unlock();
    backing_lock_.unlock();
    busy_.unlock();
    after_raw_fork_child();
}

// Takes no lock: a thread of the parent may have held any of them at the fork.
void UserBackend::after_raw_fork_child() noexcept {
    backing_.make_private_after_fork();
    // Attachments were not inherited (MADV_DONTFORK): forget them without unmapping.
    // Descriptors close with the tables; our threads do not exist here.
    service_->forget();
    if (follower_) follower_->forget();
    attacher_->forget_threads();
}

// ---- owner side: the application's calls ------------------------------------------

// A segid names its owner by pid and start tick, so the owner must outlive that tick
// before it hands one out: a process that gets the pid after the owner exits then started
// in a later tick. Only a process younger than one tick (10 ms) waits, at most that long.
void wait_past_start_tick(std::uint64_t start) {
    const long ticks_per_second = ::sysconf(_SC_CLK_TCK);
    if (ticks_per_second <= 0) return;
    const long tick_ns = 1000000000L / ticks_per_second;
    for (;;) {
        timespec now{};
        ::clock_gettime(CLOCK_BOOTTIME, &now);
        auto ticks =
            static_cast<std::uint64_t>(now.tv_sec) * static_cast<std::uint64_t>(ticks_per_second) +
            static_cast<std::uint64_t>(now.tv_nsec / tick_ns);
        if (ticks > start) return;
        timespec rest{0, tick_ns - now.tv_nsec % tick_ns};
        ::nanosleep(&rest, nullptr);
    }
}

xpmem_segid_t UserBackend::make(std::uintptr_t address, std::size_t size, mode_t mode) {
    wait_past_start_tick(start_);
    std::lock_guard lock(mutex_);
    note_caller_locked();
    xpmem_segid_t segid;
    if (segments_.size() >= kMaxSegments) throw_errno(ENOSPC, "xpmem_make: too many segments");
    do {  // the serial wraps after kMaxSegments segments; skip those still live
        segid = protocol::make_segid(next_serial_++, start_, pid_);
    } while (segments_.count(segid) != 0);
    segments_.emplace(segid, SegmentRecord{address, size, mode, self_});
    return segid;
}

void UserBackend::remove(xpmem_segid_t segid) {
    if (protocol::owner_of(segid) != protocol::owner_of(protocol::make_segid(0, start_, pid_))) {
        // Not ours: EACCES if its owner answers, else it is unknown.
        try {
            connect_to_owner(segid);
        } catch (const std::system_error &) {
            throw_errno(EINVAL, "xpmem_remove: unknown segment");
        }
        throw_errno(EACCES, "xpmem_remove: not the owner");
    }
    std::map<pid_t, std::uint32_t> attachers;  // pid -> key of its service
    std::set<Backing::Holder> revoked_permits;
    bool ours = false;
    {
        std::lock_guard lock(mutex_);
        if (segments_.erase(segid) == 0) throw_errno(EINVAL, "xpmem_remove: unknown segment");
        for (auto &[tag, session] : sessions_) {
            for (auto it = session->permits.begin(); it != session->permits.end();) {
                if (it->second.segid != segid) {
                    ++it;
                    continue;
                }
                if (session->peer.pid == pid_)
                    ours = true;
                else
                    attachers[session->peer.pid] = session->peer_key;
                revoked_permits.insert({session->tag, it->first});
                it = session->permits.erase(it);
            }
        }
    }
    if (ours) attacher_->revoke(segid);
    // The owner takes its memory back from every file handed out under these permits only,
    // before it returns: a peer that kept descriptors reaches none of it any more.
    on_service([&] {
        std::lock_guard lock(backing_lock_);
        backing_.forget_holders(
            [&](const Backing::Holder &holder) { return revoked_permits.count(holder) != 0; });
    });
    // Tell every attacher's service at once and wait at most kRevokeTimeout for them all.
    // Best effort: an attacher that is gone has nothing left to revoke; one that does not
    // answer in time keeps what it mapped (see docs/security.md).
    std::vector<UniqueFd> notified;
    for (auto [attacher, key] : attachers) {
        try {
            UniqueFd socket = connect_to(attacher, key);
            send_message(socket.get(), bytes_of(protocol::RevokeRequest{.segid = segid}), {}, true);
            notified.push_back(std::move(socket));
        } catch (const std::system_error &) {
        }
    }
    auto deadline = std::chrono::steady_clock::now() + kRevokeTimeout;
    for (const UniqueFd &socket : notified) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0 || !wait_readable(socket.get(), left)) break;
        try {
            receive_exactly<protocol::RevokeReply>(socket.get());
        } catch (const std::system_error &) {
        }
    }
}

// The library's own mappings; `mutex_` is held (and, inside, the attacher's lock is taken).
std::vector<Range> UserBackend::library_intervals_locked() const {
    std::vector<Range> ours = attacher_->own_ranges();
    ours.insert(ours.end(), thread_stacks_.begin(), thread_stacks_.end());
    std::sort(ours.begin(), ours.end(),
              [](const Range &a, const Range &b) { return a.start < b.start; });
    return ours;
}

// ---- the service thread ------------------------------------------------------------

void UserBackend::serve(int stop) {
    epoll_event stop_event{EPOLLIN, {.u64 = kStopTag}};
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, stop, &stop_event) < 0) return;
    std::array<epoll_event, 16> events;
    bool listening = true;
    for (;;) {
        int timeout = expire_guard_window() || !listening ? 50 : -1;
        int count = ::epoll_wait(epoll_.get(), events.data(), events.size(), timeout);
        if (count < 0) {
            if (errno == EINTR) continue;
            return;
        }
        if (!listening) {  // descriptors ran out a moment ago: try accepting again
            epoll_event event{EPOLLIN, {.u64 = kListenTag}};
            listening = ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listen_.get(), &event) == 0;
        }
        for (int i = 0; i < count; ++i) {
            std::uint64_t tag = events[i].data.u64;
            std::lock_guard busy(busy_);
            try {
                if (tag == kStopTag) {
                    return;
                } else if (tag == kListenTag) {
                    accept_session();
                } else if (tag == kWorkTag) {
                    run_work();
                } else if ((tag & kLinkTag) != 0) {
                    attacher_->owner_gone(tag & ~kLinkTag);
                } else {
                    serve_session(tag);
                }
            } catch (const std::system_error &error) {
                // Out of descriptors: stop watching the listening socket for a moment
                // rather than spin on a connection that cannot be accepted.
                if (tag == kListenTag &&
                    (error.code().value() == EMFILE || error.code().value() == ENFILE)) {
                    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listen_.get(), nullptr);
                    listening = false;
                }
                // A failure with one peer never stops the service for the others.
                if (tag >= kFirstSessionTag && (tag & kLinkTag) == 0) close_session(tag);
            } catch (const std::exception &) {
                if (tag >= kFirstSessionTag && (tag & kLinkTag) == 0) close_session(tag);
            }
        }
    }
}

bool UserBackend::session_allowed_locked(const PeerCredentials &peer) const {
    if (sessions_.size() >= max_sessions_) return false;
    if (peer.uid == self_.uid) return true;
    std::size_t same_uid = static_cast<std::size_t>(
        std::count_if(sessions_.begin(), sessions_.end(),
                      [&](const auto &entry) { return entry.second->peer.uid == peer.uid; }));
    return same_uid < max_sessions_ / 4;
}

std::size_t UserBackend::permits_of_uid_locked(uid_t uid) const {
    std::size_t permits = 0;
    for (const auto &[tag, session] : sessions_)
        if (session->peer.uid == uid) permits += session->permits.size();
    return permits;
}

void UserBackend::accept_session() {
    UniqueFd socket(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!socket) {
        if (errno == EAGAIN || errno == ECONNABORTED || errno == EINTR) return;
        throw_last_errno("accept");
    }
    auto session = std::make_unique<Session>();
    session->peer = peer_credentials(socket.get());
    session->socket = std::move(socket);
    std::lock_guard lock(mutex_);
    if (!session_allowed_locked(session->peer)) return;  // closes it
    std::uint64_t tag = next_session_tag_++;
    session->tag = tag;
    epoll_event event{EPOLLIN, {.u64 = tag}};
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, session->socket.get(), &event) < 0) return;
    sessions_.emplace(tag, std::move(session));
}

void UserBackend::close_session(std::uint64_t tag) {
    {
        std::lock_guard lock(mutex_);
        auto it = sessions_.find(tag);
        if (it == sessions_.end()) return;
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->socket.get(), nullptr);
        sessions_.erase(it);  // and with it every permit the peer held
    }
    std::lock_guard lock(backing_lock_);
    backing_.forget_holders([&](const Backing::Holder &holder) { return holder.first == tag; });
}

void UserBackend::on_service(std::function<void()> work) {
    std::unique_lock lock(mutex_);
    std::uint64_t ticket = ++work_queued_;
    work_queue_.push_back(std::move(work));
    std::uint64_t one = 1;
    if (::write(work_.get(), &one, sizeof one) != sizeof one) throw_last_errno("wake service");
    work_finished_.wait(lock, [&] { return work_done_ >= ticket; });
}

void UserBackend::run_work() {
    std::uint64_t count;
    if (::read(work_.get(), &count, sizeof count) < 0) return;  // EAGAIN: nothing new
    std::vector<std::function<void()>> work;
    {
        std::lock_guard lock(mutex_);
        work.swap(work_queue_);
    }
    for (auto &item : work) {
        try {
            item();
        } catch (const std::exception &) {
            // Best effort, like every revocation step: the caller does not wait for more.
        }
    }
    std::lock_guard lock(mutex_);
    work_done_ += work.size();
    work_finished_.notify_all();
}

void UserBackend::serve_session(std::uint64_t tag) {
    Session *session;
    {
        std::lock_guard lock(mutex_);
        auto it = sessions_.find(tag);
        if (it == sessions_.end()) return;
        session = it->second.get();  // only this thread closes sessions
    }
    alignas(8) std::byte buffer[sizeof(protocol::AttachRequest) + 8];
    std::size_t size = receive_message(session->socket.get(), buffer);
    protocol::Header header;
    if (size < sizeof header) return close_session(tag);
    std::memcpy(&header, buffer, sizeof header);
    // Copies the message into `body` if it is exactly of that type.
    auto parse = [&](auto &body) {
        if (size != sizeof body || header.type != body.header.type) return false;
        std::memcpy(&body, buffer, sizeof body);
        return true;
    };
    protocol::GetRequest get;
    protocol::AttachRequest attach;
    protocol::FaultRequest fault;
    protocol::ReleaseRequest release;
    protocol::RevokeRequest revoke;
    if (header.magic != protocol::kMagic) {
        close_session(tag);
    } else if (parse(get)) {
        handle_get(*session, get);
    } else if (parse(attach)) {
        handle_attach(*session, attach.permit, attach.offset, attach.size, false);
    } else if (parse(fault)) {
        handle_attach(*session, fault.permit, fault.offset, fault.size, true);
    } else if (parse(release)) {
        {
            std::lock_guard lock(mutex_);
            session->permits.erase(release.permit);
        }
        std::lock_guard lock(backing_lock_);
        backing_.forget_holders([&](const Backing::Holder &holder) {
            return holder == Backing::Holder{tag, release.permit};
        });
    } else if (parse(revoke)) {
        handle_revoke(*session, revoke);
    } else {
        close_session(tag);
    }
}

void UserBackend::handle_get(Session &session, const protocol::GetRequest &request) {
    protocol::GetReply reply{.error = 0, .permit = 0};
    {
        std::lock_guard lock(mutex_);
        session.peer_key = request.attacher_key;
        auto segment = segments_.find(request.segid);
        if (segment == segments_.end())
            reply.error = ENOENT;
        else if (request.flags != XPMEM_RDONLY && request.flags != XPMEM_RDWR)
            reply.error = EINVAL;
        else if (!permitted(session.peer, segment->second.owner, segment->second.mode,
                            request.flags))
            reply.error = EACCES;
        else if (session.permits.size() >= kMaxPermitsPerSession ||
                 permits_of_uid_locked(session.peer.uid) >= kMaxPermitsPerUid)
            reply.error = ENOSPC;
        else {
            reply.permit = session.next_permit++;
            session.permits.emplace(reply.permit, Permit{request.segid, request.flags});
        }
    }
    send_message(session.socket.get(), bytes_of(reply), {}, true);
}

// ATTACH and FAULT: describes [offset, offset + size) of the permit's segment; for a FAULT
// (`populate`) with the page at `offset` present in the file, if it is the owner's
// converted memory.
void UserBackend::handle_attach(Session &session, std::uint64_t permit, std::uint64_t offset,
                                std::uint64_t size, bool populate) {
    protocol::AttachReply reply{};
    reply.header = protocol::AttachReply{}.header;
    std::vector<UniqueFd> fds;
    SegmentRange segment_range{};
    std::uintptr_t start = 0, end = 0;
    bool read_only = true;
    std::vector<Range> ours;
    std::vector<std::uintptr_t> known_threads;
    {
        std::lock_guard lock(mutex_);
        auto issued = session.permits.find(permit);
        auto segment =
            issued == session.permits.end() ? segments_.end() : segments_.find(issued->second.segid);
        if (segment == segments_.end()) {
            reply.error = ENOENT;
        } else if (size == 0 || !util::page_aligned(offset) || !util::page_aligned(size) ||
                   offset > segment->second.size || size > segment->second.size - offset) {
            reply.error = EINVAL;
        } else {
            segment_range = {segment->first, segment->second.start, segment->second.size};
            start = segment->second.start + offset;
            end = start + size;
            read_only = issued->second.flags == XPMEM_RDONLY;
            ours = library_intervals_locked();
            known_threads.assign(known_threads_.begin(), known_threads_.end());
        }
    }
    if (reply.error == 0) {
        try {
            std::lock_guard lock(backing_lock_);
            if (!follower_) {
                follower_.emplace(backing_, backing_lock_);
                std::lock_guard tables(mutex_);
                thread_stacks_.push_back(follower_->stack());
            }
            for (int attempt = 1;; ++attempt) {
                try {
                    describe_range(backing_,
                                   RangeRequest{segment_range,
                                                {session.tag, permit},
                                                start,
                                                end,
                                                read_only,
                                                populate,
                                                session.peer,
                                                self_.uid,
                                                ours,
                                                known_threads},
                                   reply, fds);
                    break;
                } catch (const std::system_error &error) {
                    if (error.code().value() != EAGAIN || attempt == kConvertAttempts) throw;
                }
            }
        } catch (const std::system_error &error) {
            reply.error = error.code().value();
            reply.piece_count = 0;
            fds.clear();
        }
    }
    std::vector<int> raw;
    for (const UniqueFd &fd : fds) raw.push_back(fd.get());
    send_message(session.socket.get(), bytes_of(reply), raw, true);
}

void UserBackend::handle_revoke(Session &session, const protocol::RevokeRequest &request) {
    protocol::RevokeReply reply{.error = 0};
    if (protocol::owner_pid(request.segid) != session.peer.pid) {
        reply.error = EACCES;  // only the owner revokes its segment
    } else {
        attacher_->revoke(request.segid);
    }
    send_message(session.socket.get(), bytes_of(reply), {}, true);
}

}  // namespace

std::unique_ptr<core::Backend> make_user_backend() {
    return std::make_unique<UserBackend>();
}

}  // namespace xpmem::user
