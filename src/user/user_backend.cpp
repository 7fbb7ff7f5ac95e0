// The user backend: segments served by a per-process service thread over Unix sockets,
// private memory made shareable in place on attach (user/shareable.hpp).
//
// Locking: `mutex_` guards all tables. It is never held while waiting on another
// process, and never while memory is being converted (a writer blocked by the
// conversion may hold it). A Link's own mutex serialises request/reply pairs on that
// connection and is taken without `mutex_` held. Sessions (connections from peers) are
// created, read and closed only by the service thread; their grants are in `mutex_`.

#include "user/user_backend.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

#include "core/library.hpp"
#include "user/address_space.hpp"
#include "user/channel.hpp"
#include "user/permission.hpp"
#include "user/protocol.hpp"
#include "user/shareable.hpp"
#include "user/threads.hpp"
#include "util/error.hpp"
#include "util/mapping.hpp"
#include "util/sanitizer.hpp"

namespace xpmem::core {
namespace {

using namespace xpmem::user;
using util::Mapping;
using util::throw_errno;
using util::throw_last_errno;
using util::UniqueFd;

// ThreadSanitizer keeps its per-thread state (about 900 KiB) in static TLS, which glibc
// places at the top of a caller-provided stack.
constexpr std::size_t kServiceStackSize = util::kThreadSanitizer ? 8 << 20 : 512 * 1024;
constexpr std::size_t kMaxSessions = 4096;
constexpr std::chrono::milliseconds kRevokeTimeout{2000};
constexpr std::uint64_t kStopTag = 0;
constexpr std::uint64_t kListenTag = 1;
constexpr std::uint64_t kLinkTag = std::uint64_t{1} << 62;  // | owner pid
constexpr std::uint64_t kFirstSessionTag = 2;

// Taken when the library is loaded, by the thread that loads it: the main thread, for a
// program linked with -lxpmem.
const std::uintptr_t loading_thread_rseq_page = current_rseq_page();

struct SegmentRecord {
    std::uintptr_t start;
    std::size_t size;
    mode_t mode;
    Owner owner;
};

struct Grant {
    xpmem_segid_t segid;
    int flags;
};

// A connection from a peer to this process's service.
struct Session {
    UniqueFd socket;
    PeerCredentials peer;
    std::map<std::uint64_t, Grant> grants;  // guarded by mutex_
    std::uint64_t next_grant = 1;
};

// A connection from this process to an owner's service.
struct Link {
    pid_t owner;
    UniqueFd socket;
    std::mutex mutex;  // one request/reply at a time
};

struct PermitRecord {
    xpmem_segid_t segid;
    int flags;
    std::uint64_t grant;
    std::shared_ptr<Link> link;
};

struct AttachmentRecord {
    std::size_t size;
    xpmem_apid_t apid;
    xpmem_segid_t segid;
    int prot;
    bool revoked = false;
};

// Receives a message of exactly type `Message` or throws EPROTO.
template <class Message>
Message receive_exactly(int socket, std::vector<UniqueFd> *fds = nullptr) {
    Message message;
    std::size_t size = receive_message(socket, std::as_writable_bytes(std::span(&message, 1)), fds);
    if (size == 0) throw_errno(ECONNRESET, "peer closed");
    if (size != sizeof message || message.header.magic != protocol::kMagic ||
        message.header.type != Message{}.header.type)
        throw_errno(EPROTO, "unexpected message");
    return message;
}

class UserBackend final : public Backend {
  public:
    UserBackend();
    ~UserBackend() override;

    std::string_view name() const override { return "user"; }
    int version() override { return XPMEM_USER_BACKEND_FLAG | XPMEM_USER_BACKEND_VERSION; }
    xpmem_segid_t make(std::uintptr_t address, std::size_t size, mode_t mode) override;
    void remove(xpmem_segid_t segid) override;
    xpmem_apid_t get(xpmem_segid_t segid, int flags) override;
    void release(xpmem_apid_t apid) override;
    void *attach(xpmem_apid_t apid, std::uint64_t offset, std::size_t size, void *at) override;
    void detach(void *address) override;

    void before_fork() noexcept override { mutex_.lock(); }
    void after_fork_parent() noexcept override { mutex_.unlock(); }
    void after_fork_child() noexcept override;

  private:
    // service thread
    static void *service_main(void *self);
    void serve();
    void accept_session();
    void serve_session(std::uint64_t tag);
    void handle_get(Session &session, const protocol::GetRequest &request);
    void handle_attach(Session &session, const protocol::AttachRequest &request);
    void handle_revoke(Session &session, const protocol::RevokeRequest &request);
    void close_session(std::uint64_t tag);
    void owner_gone(pid_t owner);
    void build_pieces(std::uintptr_t start, std::uintptr_t end, bool read_only,
                      std::span<const Interval> ours,
                      std::span<const std::uintptr_t> known_rseq_pages,
                      protocol::AttachReply &reply, std::vector<UniqueFd> &fds);

    // attacher side
    std::shared_ptr<Link> link_to(pid_t owner);
    void map_pieces(std::uintptr_t at, const protocol::AttachReply &reply,
                    std::span<const UniqueFd> fds, bool read_only, std::size_t limit,
                    std::size_t &mapped);
    void revoke_locked(xpmem_segid_t segid);
    void map_sigbus(std::uintptr_t start, std::size_t size, int prot);
    void notify_revoke(pid_t attacher, xpmem_segid_t segid);
    std::vector<Interval> library_intervals_locked() const;
    void note_caller_locked() { known_rseq_pages_.insert(current_rseq_page()); }

    const pid_t pid_;
    const Owner self_;
    UniqueFd sigbus_;  // empty sealed memfd: every touch of a mapping of it is SIGBUS
    UniqueFd listen_;
    UniqueFd epoll_;
    UniqueFd stop_;
    Mapping service_stack_;
    pthread_t service_{};
    bool service_running_ = false;

    std::mutex mutex_;
    std::uint32_t next_serial_;
    std::map<xpmem_segid_t, SegmentRecord> segments_;
    std::map<std::uint64_t, std::unique_ptr<Session>> sessions_;
    std::uint64_t next_session_tag_ = kFirstSessionTag;
    std::map<pid_t, std::shared_ptr<Link>> links_;
    std::map<xpmem_apid_t, PermitRecord> permits_;
    std::map<std::uintptr_t, AttachmentRecord> attachments_;
    std::set<xpmem_segid_t> revoked_;
    std::optional<Backing> backing_;  // created by the service thread on first conversion
    std::set<std::uintptr_t> known_rseq_pages_{loading_thread_rseq_page};  // callers' threads
};

UserBackend::UserBackend()
    : pid_(::getpid()),
      self_{::geteuid(), ::getegid()},
      next_serial_(static_cast<std::uint32_t>(
                       std::chrono::steady_clock::now().time_since_epoch().count() & 0xffff) +
                   1) {
    sigbus_.reset(static_cast<int>(::memfd_create("xpmem-hole", MFD_CLOEXEC | MFD_ALLOW_SEALING)));
    if (!sigbus_) throw_last_errno("memfd_create");
    if (::fcntl(sigbus_.get(), F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0)
        throw_last_errno("seal hole file");
    listen_ = listen_on(pid_);
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    stop_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!epoll_ || !stop_) throw_last_errno("epoll/eventfd");
    auto watch = [&](int fd, std::uint64_t tag) {
        epoll_event event{EPOLLIN, {.u64 = tag}};
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) < 0) throw_last_errno("epoll_ctl");
    };
    watch(stop_.get(), kStopTag);
    watch(listen_.get(), kListenTag);

    // Our own stack, so that the thread's TLS lies in memory the library owns and never
    // converts. Fork children must inherit it: glibc's fork unlinks the forking thread
    // from a list whose neighbour is this thread's descriptor, at the top of this stack.
    std::size_t total = kServiceStackSize + util::kPageSize;
    void *stack = ::mmap(nullptr, total, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) throw_last_errno("mmap service stack");
    service_stack_ = Mapping(stack, total);
    ::mprotect(stack, util::kPageSize, PROT_NONE);  // guard page
    pthread_attr_t attr;
    ::pthread_attr_init(&attr);
    ::pthread_attr_setstack(&attr, service_stack_.data() + util::kPageSize, kServiceStackSize);
    // The service thread must not take the application's signals.
    sigset_t all, previous;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &previous);
    int error = ::pthread_create(&service_, &attr, &UserBackend::service_main, this);
    ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    ::pthread_attr_destroy(&attr);
    if (error != 0) throw_errno(error, "pthread_create");
    service_running_ = true;
}

UserBackend::~UserBackend() {
    // In a fork child the thread does not exist; its stack copy is simply unmapped.
    if (service_running_) {
        std::uint64_t one = 1;
        if (::write(stop_.get(), &one, sizeof one) == sizeof one) ::pthread_join(service_, nullptr);
    }
}

void UserBackend::after_fork_child() noexcept {
    mutex_.unlock();
    if (backing_) make_private_after_fork(backing_->fd());
    // Attachments were not inherited (MADV_DONTFORK): forget them without unmapping.
    // Descriptors close with the tables.
    service_running_ = false;
}

// ---- owner side: the application's calls ------------------------------------------

xpmem_segid_t UserBackend::make(std::uintptr_t address, std::size_t size, mode_t mode) {
    std::lock_guard lock(mutex_);
    note_caller_locked();
    xpmem_segid_t segid = protocol::make_id(next_serial_++, pid_);
    segments_.emplace(segid, SegmentRecord{address, size, mode, self_});
    return segid;
}

void UserBackend::remove(xpmem_segid_t segid) {
    pid_t owner = protocol::pid_of(segid);
    if (owner != pid_) {
        // Not ours: EACCES if some process answers for it, else it is unknown.
        try {
            connect_to(owner);
        } catch (const std::system_error &) {
            throw_errno(EINVAL, "xpmem_remove: unknown segment");
        }
        throw_errno(EACCES, "xpmem_remove: not the owner");
    }
    std::set<pid_t> attachers;
    {
        std::lock_guard lock(mutex_);
        if (segments_.erase(segid) == 0) throw_errno(EINVAL, "xpmem_remove: unknown segment");
        for (auto &[tag, session] : sessions_) {
            for (auto it = session->grants.begin(); it != session->grants.end();) {
                if (it->second.segid != segid) {
                    ++it;
                    continue;
                }
                attachers.insert(session->peer.pid);
                it = session->grants.erase(it);
            }
        }
        if (attachers.erase(pid_) != 0) revoke_locked(segid);
    }
    for (pid_t attacher : attachers) notify_revoke(attacher, segid);
}

void UserBackend::notify_revoke(pid_t attacher, xpmem_segid_t segid) {
    // Best effort: an attacher that is gone has nothing left to revoke; one that does not
    // answer in time keeps what it mapped (see the README's limits).
    try {
        UniqueFd socket = connect_to(attacher);
        send_message(socket.get(), bytes_of(protocol::RevokeRequest{.segid = segid}));
        if (wait_readable(socket.get(), kRevokeTimeout))
            receive_exactly<protocol::RevokeReply>(socket.get());
    } catch (const std::system_error &) {
    }
}

// ---- attacher side: the application's calls ----------------------------------------

std::shared_ptr<Link> UserBackend::link_to(pid_t owner) {
    {
        std::lock_guard lock(mutex_);
        if (auto it = links_.find(owner); it != links_.end()) return it->second;
    }
    UniqueFd socket;
    try {
        socket = connect_to(owner);
    } catch (const std::system_error &error) {
        if (error.code().value() == ENOMEM) throw;
        throw_errno(ENOENT, "no such owner");
    }
    std::lock_guard lock(mutex_);
    auto [it, inserted] = links_.try_emplace(owner, nullptr);
    if (inserted) {
        it->second = std::make_shared<Link>();
        it->second->owner = owner;
        it->second->socket = std::move(socket);
        // The service thread watches for the owner's end: its exit revokes everything.
        epoll_event event{EPOLLRDHUP, {.u64 = kLinkTag | static_cast<std::uint32_t>(owner)}};
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, it->second->socket.get(), &event);
    }
    return it->second;
}

xpmem_apid_t UserBackend::get(xpmem_segid_t segid, int flags) {
    std::shared_ptr<Link> link = link_to(protocol::pid_of(segid));
    protocol::GetReply reply;
    {
        std::lock_guard lock(link->mutex);
        try {
            send_message(link->socket.get(),
                         bytes_of(protocol::GetRequest{.segid = segid, .flags = flags}));
            reply = receive_exactly<protocol::GetReply>(link->socket.get());
        } catch (const std::system_error &) {
            throw_errno(ENOENT, "xpmem_get: owner gone");
        }
    }
    if (reply.error != 0) throw_errno(reply.error, "xpmem_get");
    std::lock_guard lock(mutex_);
    note_caller_locked();
    xpmem_apid_t apid = protocol::make_id(next_serial_++, pid_);
    permits_.emplace(apid, PermitRecord{segid, flags, reply.permit, std::move(link)});
    return apid;
}

void UserBackend::release(xpmem_apid_t apid) {
    std::shared_ptr<Link> link;
    std::uint64_t grant;
    {
        std::lock_guard lock(mutex_);
        auto permit = permits_.find(apid);
        if (permit == permits_.end()) throw_errno(EINVAL, "xpmem_release: unknown permit");
        for (auto it = attachments_.begin(); it != attachments_.end();) {
            if (it->second.apid != apid) {
                ++it;
                continue;
            }
            ::munmap(reinterpret_cast<void *>(it->first), it->second.size);
            it = attachments_.erase(it);
        }
        link = permit->second.link;
        grant = permit->second.grant;
        xpmem_segid_t segid = permit->second.segid;
        permits_.erase(permit);
        if (std::none_of(permits_.begin(), permits_.end(),
                         [&](const auto &p) { return p.second.segid == segid; }))
            revoked_.erase(segid);
    }
    std::lock_guard lock(link->mutex);
    try {
        send_message(link->socket.get(), bytes_of(protocol::ReleaseRequest{.permit = grant}), {},
                     true);
    } catch (const std::system_error &) {
        // The owner is gone or not reading; it forgets the grant when the link closes.
    }
}

void UserBackend::map_sigbus(std::uintptr_t start, std::size_t size, int prot) {
    // A raw system call: a revocation replaces pages while the application may be using
    // them, by design (each access sees the old page or SIGBUS). ThreadSanitizer's mmap
    // interceptor would count the mapping as a write racing with those accesses.
    auto *at = reinterpret_cast<void *>(
        ::syscall(SYS_mmap, start, size, prot, MAP_PRIVATE | MAP_FIXED, sigbus_.get(), 0));
    if (at == MAP_FAILED) throw_last_errno("map hole");
}

void UserBackend::map_pieces(std::uintptr_t at, const protocol::AttachReply &reply,
                             std::span<const UniqueFd> fds, bool read_only, std::size_t limit,
                             std::size_t &mapped) {
    if (reply.piece_count == 0 || reply.piece_count > protocol::kMaxPieces)
        throw_errno(EPROTO, "bad attach reply");
    for (std::uint32_t i = 0; i < reply.piece_count; ++i) {
        const protocol::Piece &piece = reply.pieces[i];
        if (piece.length == 0 || !util::page_aligned(piece.length) ||
            !util::page_aligned(piece.file_offset) || piece.length > limit - mapped ||
            piece.fd_index >= static_cast<std::int32_t>(fds.size()))
            throw_errno(EPROTO, "bad attach piece");
        std::uintptr_t start = at + mapped;
        int prot = PROT_READ | (piece.writable != 0 && !read_only ? PROT_WRITE : 0);
        if (piece.fd_index < 0) {
            map_sigbus(start, piece.length, prot);
        } else {
            void *got =
                ::mmap(reinterpret_cast<void *>(start), piece.length, prot, MAP_SHARED | MAP_FIXED,
                       fds[piece.fd_index].get(), static_cast<off_t>(piece.file_offset));
            if (got == MAP_FAILED) throw_last_errno("map attachment");
        }
        mapped += piece.length;
    }
}

void *UserBackend::attach(xpmem_apid_t apid, std::uint64_t offset, std::size_t size, void *at) {
    PermitRecord permit;
    {
        std::lock_guard lock(mutex_);
        note_caller_locked();
        auto it = permits_.find(apid);
        if (it == permits_.end()) throw_errno(EINVAL, "xpmem_attach: unknown permit");
        permit = it->second;
        if (revoked_.count(permit.segid) != 0) throw_errno(ENOENT, "xpmem_attach: removed");
        if (at != nullptr) {
            auto start = reinterpret_cast<std::uintptr_t>(at);
            auto next = attachments_.lower_bound(start + size);
            if (next != attachments_.begin() &&
                std::prev(next)->first + std::prev(next)->second.size > start)
                throw_errno(EINVAL, "xpmem_attach: over an attachment");
        }
    }
    bool read_only = permit.flags == XPMEM_RDONLY;
    int prot = read_only ? PROT_READ : PROT_READ | PROT_WRITE;
    Mapping range;
    if (at == nullptr) {
        void *reserved =
            ::mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (reserved == MAP_FAILED) throw_last_errno("xpmem_attach: reserve");
        range = Mapping(reserved, size);
    } else {
        map_sigbus(reinterpret_cast<std::uintptr_t>(at), size, prot);  // MAP_FIXED semantics
        range = Mapping(at, size);
    }
    {
        std::lock_guard lock(permit.link->mutex);
        std::size_t mapped = 0;
        while (mapped < size) {
            protocol::AttachReply reply;
            std::vector<UniqueFd> fds;
            try {
                send_message(
                    permit.link->socket.get(),
                    bytes_of(protocol::AttachRequest{
                        .permit = permit.grant, .offset = offset + mapped, .size = size - mapped}));
                reply = receive_exactly<protocol::AttachReply>(permit.link->socket.get(), &fds);
            } catch (const std::system_error &error) {
                if (error.code().value() == EPROTO) throw;
                throw_errno(ENOENT, "xpmem_attach: owner gone");
            }
            if (reply.error != 0) throw_errno(reply.error, "xpmem_attach");
            map_pieces(range.address(), reply, fds, read_only, size, mapped);
        }
    }
    ::madvise(range.data(), size, MADV_DONTFORK);  // fork children inherit no attachment
    std::lock_guard lock(mutex_);
    std::uintptr_t start = range.address();
    attachments_[start] = AttachmentRecord{size, apid, permit.segid, prot};
    range.release();
    // Removed while we were mapping: revoke what we just made.
    if (revoked_.count(permit.segid) != 0) revoke_locked(permit.segid);
    return reinterpret_cast<void *>(start);
}

void UserBackend::detach(void *address) {
    auto target = reinterpret_cast<std::uintptr_t>(address);
    {
        std::lock_guard lock(mutex_);
        auto it = attachments_.upper_bound(target);
        if (it != attachments_.begin() &&
            target < std::prev(it)->first + std::prev(it)->second.size) {
            --it;
            ::munmap(reinterpret_cast<void *>(it->first), it->second.size);
            attachments_.erase(it);
            return;
        }
    }
    unsigned char resident;
    if (::mincore(reinterpret_cast<void *>(util::page_down(target)), util::kPageSize, &resident) <
            0 &&
        errno == ENOMEM)
        return;  // no mapping at all
    throw_errno(EINVAL, "xpmem_detach: not an attachment");
}

// Every attachment of `segid` now raises SIGBUS on touch.
void UserBackend::revoke_locked(xpmem_segid_t segid) {
    revoked_.insert(segid);
    for (auto &[start, attachment] : attachments_) {
        if (attachment.segid != segid || attachment.revoked) continue;
        map_sigbus(start, attachment.size, attachment.prot);
        ::madvise(reinterpret_cast<void *>(start), attachment.size, MADV_DONTFORK);
        attachment.revoked = true;
    }
}

std::vector<Interval> UserBackend::library_intervals_locked() const {
    std::vector<Interval> ours;
    ours.push_back({service_stack_.address(), service_stack_.address() + service_stack_.size()});
    for (const auto &[start, attachment] : attachments_)
        ours.push_back({start, start + attachment.size});
    return ours;
}

// ---- the service thread ------------------------------------------------------------

void *UserBackend::service_main(void *self) {
    static_cast<UserBackend *>(self)->serve();
    return nullptr;
}

void UserBackend::serve() {
    std::array<epoll_event, 16> events;
    for (;;) {
        int timeout = expire_guard_window() ? 50 : -1;
        int count = ::epoll_wait(epoll_.get(), events.data(), events.size(), timeout);
        if (count < 0) {
            if (errno == EINTR) continue;
            return;
        }
        for (int i = 0; i < count; ++i) {
            std::uint64_t tag = events[i].data.u64;
            try {
                if (tag == kStopTag)
                    return;
                else if (tag == kListenTag)
                    accept_session();
                else if ((tag & kLinkTag) != 0)
                    owner_gone(static_cast<pid_t>(tag & 0xffffffff));
                else
                    serve_session(tag);
            } catch (const std::exception &) {
                // A failure with one peer never stops the service for the others.
                if (tag >= kFirstSessionTag && (tag & kLinkTag) == 0) close_session(tag);
            }
        }
    }
}

void UserBackend::accept_session() {
    UniqueFd socket(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!socket) return;
    auto session = std::make_unique<Session>();
    session->peer = peer_credentials(socket.get());
    session->socket = std::move(socket);
    std::lock_guard lock(mutex_);
    if (sessions_.size() >= kMaxSessions) return;  // closes it
    std::uint64_t tag = next_session_tag_++;
    epoll_event event{EPOLLIN, {.u64 = tag}};
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, session->socket.get(), &event) < 0) return;
    sessions_.emplace(tag, std::move(session));
}

void UserBackend::close_session(std::uint64_t tag) {
    std::lock_guard lock(mutex_);
    auto it = sessions_.find(tag);
    if (it == sessions_.end()) return;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, it->second->socket.get(), nullptr);
    sessions_.erase(it);  // and with it every grant the peer held
}

void UserBackend::owner_gone(pid_t owner) {
    std::lock_guard lock(mutex_);
    auto link = links_.find(owner);
    if (link == links_.end()) return;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, link->second->socket.get(), nullptr);
    links_.erase(link);  // the next get() connects afresh
    std::set<xpmem_segid_t> segids;
    for (const auto &[apid, permit] : permits_)
        if (protocol::pid_of(permit.segid) == owner) segids.insert(permit.segid);
    for (xpmem_segid_t segid : segids) revoke_locked(segid);
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
    protocol::ReleaseRequest release;
    protocol::RevokeRequest revoke;
    if (header.magic != protocol::kMagic) {
        close_session(tag);
    } else if (parse(get)) {
        handle_get(*session, get);
    } else if (parse(attach)) {
        handle_attach(*session, attach);
    } else if (parse(release)) {
        std::lock_guard lock(mutex_);
        session->grants.erase(release.permit);
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
        auto segment = segments_.find(request.segid);
        if (segment == segments_.end())
            reply.error = ENOENT;
        else if (request.flags != XPMEM_RDONLY && request.flags != XPMEM_RDWR)
            reply.error = EINVAL;
        else if (!permitted(session.peer, segment->second.owner, segment->second.mode,
                            request.flags))
            reply.error = EACCES;
        else {
            reply.permit = session.next_grant++;
            session.grants.emplace(reply.permit, Grant{request.segid, request.flags});
        }
    }
    send_message(session.socket.get(), bytes_of(reply), {}, true);
}

void UserBackend::handle_attach(Session &session, const protocol::AttachRequest &request) {
    protocol::AttachReply reply{};
    reply.header = protocol::AttachReply{}.header;
    std::vector<UniqueFd> fds;
    std::uintptr_t start = 0, end = 0;
    bool read_only = true;
    std::vector<Interval> ours;
    std::vector<std::uintptr_t> known_rseq_pages;
    {
        std::lock_guard lock(mutex_);
        auto grant = session.grants.find(request.permit);
        auto segment =
            grant == session.grants.end() ? segments_.end() : segments_.find(grant->second.segid);
        if (segment == segments_.end()) {
            reply.error = ENOENT;
        } else if (request.size == 0 || !util::page_aligned(request.offset) ||
                   !util::page_aligned(request.size) || request.offset > segment->second.size ||
                   request.size > segment->second.size - request.offset) {
            reply.error = EINVAL;
        } else {
            start = segment->second.start + request.offset;
            end = start + request.size;
            read_only = grant->second.flags == XPMEM_RDONLY;
            ours = library_intervals_locked();
            known_rseq_pages.assign(known_rseq_pages_.begin(), known_rseq_pages_.end());
        }
    }
    if (reply.error == 0) {
        try {
            build_pieces(start, end, read_only, ours, known_rseq_pages, reply, fds);
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
    if (protocol::pid_of(request.segid) != session.peer.pid) {
        reply.error = EACCES;  // only the owner revokes its segment
    } else {
        std::lock_guard lock(mutex_);
        revoke_locked(request.segid);
    }
    send_message(session.socket.get(), bytes_of(reply), {}, true);
}

// Describes [start, end) of this process as pieces an attacher maps, converting private
// memory on the way. Fills a prefix when the reply runs out of pieces or descriptors.
void UserBackend::build_pieces(std::uintptr_t start, std::uintptr_t end, bool read_only,
                               std::span<const Interval> ours,
                               std::span<const std::uintptr_t> known_rseq_pages,
                               protocol::AttachReply &reply, std::vector<UniqueFd> &fds) {
    std::vector<Vma> maps = read_maps();
    std::vector<std::uintptr_t> unprotectable = rseq_pages(known_rseq_pages, maps);
    int backing_index[2] = {-1, -1};  // read-only, writable descriptor of the backing
    auto add = [&](std::uint64_t length, std::uint64_t file_offset, int fd_index, bool writable) {
        if (reply.piece_count > 0) {
            protocol::Piece &last = reply.pieces[reply.piece_count - 1];
            bool contiguous = fd_index < 0 || last.file_offset + last.length == file_offset;
            if (last.fd_index == fd_index && last.writable == writable && contiguous) {
                last.length += length;
                return;
            }
        }
        reply.pieces[reply.piece_count++] =
            protocol::Piece{length, fd_index < 0 ? 0 : file_offset, fd_index, writable};
    };
    auto backing_piece = [&](std::uint64_t length, std::uint64_t file_offset, bool writable) {
        int &index = backing_index[writable ? 1 : 0];
        if (index < 0) {
            int fd = writable ? backing_->fd() : backing_->read_only_fd();
            fds.emplace_back(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
            if (!fds.back()) throw_last_errno("dup backing");
            index = static_cast<int>(fds.size() - 1);
        }
        add(length, file_offset, index, writable);
    };
    std::uintptr_t cursor = start;
    while (cursor < end && reply.piece_count < protocol::kMaxPieces &&
           fds.size() < protocol::kMaxFds) {
        auto vma = std::upper_bound(maps.begin(), maps.end(), cursor,
                                    [](std::uintptr_t a, const Vma &v) { return a < v.end; });
        if (vma == maps.end() || vma->start >= end) {
            add(end - cursor, 0, -1, false);
            break;
        }
        if (vma->start > cursor) {
            add(vma->start - cursor, 0, -1, false);
            cursor = vma->start;
            continue;
        }
        std::uintptr_t piece_end = std::min<std::uintptr_t>(vma->end, end);
        auto own = std::find_if(ours.begin(), ours.end(), [&](const Interval &i) {
            return cursor < i.end && i.start < piece_end;
        });
        if (own != ours.end()) {
            if (own->start > cursor) {
                piece_end = own->start;
            } else {  // the library's own mappings are not the application's memory
                piece_end = std::min(piece_end, own->end);
                add(piece_end - cursor, 0, -1, false);
                cursor = piece_end;
                continue;
            }
        }
        std::uint64_t length = piece_end - cursor;
        bool writable = vma->writable && !read_only;
        UniqueFd fd;
        if (vma->special() || !vma->readable) {
            add(length, 0, -1, false);
        } else if (!vma->shared && !vma->writable && vma->file_backed() &&
                   !Pagemap().any_anonymous(cursor, piece_end) &&
                   (fd = open_mapped_object(*vma, false))) {
            // Read-only file pages nobody wrote to (text, rodata): the file itself.
            fds.push_back(std::move(fd));
            add(length, vma->offset + (cursor - vma->start), static_cast<int>(fds.size() - 1),
                false);
        } else if (backing_ && backing_->backs(*vma)) {
            backing_piece(length, vma->offset + (cursor - vma->start), writable);
        } else if (vma->shared) {
            fd = open_mapped_object(*vma, writable);
            if (!fd && writable) {
                writable = false;
                fd = open_mapped_object(*vma, false);
            }
            if (!fd) {
                add(length, 0, -1, false);  // unreachable object: see the README's limits
            } else {
                fds.push_back(std::move(fd));
                add(length, vma->offset + (cursor - vma->start), static_cast<int>(fds.size() - 1),
                    writable);
            }
        } else {
            if (!backing_) backing_.emplace();
            std::uint64_t offset =
                backing_->make_shareable(*vma, cursor, piece_end, maps, ours, unprotectable);
            backing_piece(length, offset, writable);
        }
        cursor = piece_end;
    }
}

}  // namespace

std::unique_ptr<Backend> make_user_backend() {
    return std::make_unique<UserBackend>();
}

}  // namespace xpmem::core
