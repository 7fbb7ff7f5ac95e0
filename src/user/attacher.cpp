#include "user/attacher.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "user/channel.hpp"
#include "user/kernel_facilities.hpp"
#include "util/error.hpp"
#include "util/mapping.hpp"

namespace xpmem::user {

using util::Mapping;
using util::throw_errno;
using util::throw_last_errno;
using util::UniqueFd;

namespace {

// A fault asks the owner for at most this much from the page touched.
constexpr std::size_t kFetchWindow = std::size_t{1} << 20;
// How often in a row an owner may answer a fault on one page with "changed, ask again".
constexpr unsigned kMaxChangedInARow = 8;

std::uint32_t random_serial() {
    std::uint32_t number = 0;
    if (::getrandom(&number, sizeof number, 0) != sizeof number) throw_last_errno("getrandom");
    return number;
}

}  // namespace

Attacher::Attacher(Config config, WatchLink watch_link)
    : config_(config), watch_link_(std::move(watch_link)), next_serial_(random_serial()) {
    sigbus_ = sealed_memfd("xpmem-hole", 0);
}

Attacher::~Attacher() = default;

std::shared_ptr<Attacher::Link> Attacher::link_to(xpmem_segid_t segid) {
    std::uint64_t owner = protocol::owner_of(segid);
    {
        std::lock_guard lock(mutex_);
        if (auto it = links_.find(owner); it != links_.end()) return it->second;
    }
    UniqueFd socket;
    try {
        socket = connect_to_owner(segid);
    } catch (const std::system_error &error) {
        if (error.code().value() == ENOMEM) throw;
        throw_errno(ENOENT, "no such owner");
    }
    std::lock_guard lock(mutex_);
    auto [it, inserted] = links_.try_emplace(owner, nullptr);
    if (inserted) {
        it->second = std::make_shared<Link>();
        it->second->owner = owner;
        PeerCredentials peer = peer_credentials(socket.get());
        it->second->pid = peer.pid;
        it->second->uid = peer.uid;
        it->second->socket = std::move(socket);
        // The service thread watches for the owner's end: its exit revokes everything.
        watch_link_(it->second->socket.get(), owner, true);
    }
    return it->second;
}

// One request and its reply on `link`, waiting at most config_.request_timeout for each. An owner
// that does not answer in time is ETIMEDOUT; its reply is owed, and the next request first
// waits for it and throws it away (releasing the permit a late GET reply issued). The
// owner being gone is ENOENT, a broken reply EPROTO; after either the link is dropped and
// the next call connects afresh.
template <class Reply, class Request>
Reply Attacher::ask(Link &link, const Request &request, std::vector<UniqueFd> *fds) {
    std::lock_guard lock(link.mutex);
    int error = ENOENT;
    try {
        for (; link.owed > 0; --link.owed) {
            if (!wait_readable(link.socket.get(), config_.request_timeout))
                throw_errno(ETIMEDOUT, "owner did not answer in time");
            alignas(protocol::AttachReply) std::byte late[sizeof(protocol::AttachReply)];
            std::vector<UniqueFd> late_fds;
            std::size_t size = receive_message(link.socket.get(), late, &late_fds);
            if (size == 0) throw_errno(ECONNRESET, "owner gone");
            protocol::GetReply issued;
            if (size == sizeof issued) {
                std::memcpy(&issued, late, sizeof issued);
                if (issued.header.type == protocol::Type::get_reply && issued.error == 0)
                    send_message(link.socket.get(),
                                 bytes_of(protocol::ReleaseRequest{.permit = issued.permit}), {},
                                 true);
            }
        }
        send_message(link.socket.get(), bytes_of(request), {}, true);
        ++link.owed;
        if (!wait_readable(link.socket.get(), config_.request_timeout))
            throw_errno(ETIMEDOUT, "owner did not answer in time");
        --link.owed;
        return receive_exactly<Reply>(link.socket.get(), fds);
    } catch (const std::system_error &failure) {
        if (failure.code().value() == ETIMEDOUT) throw;
        if (failure.code().value() == EPROTO) error = EPROTO;
    }
    {
        std::lock_guard tables(mutex_);
        auto it = links_.find(link.owner);
        if (it != links_.end() && it->second.get() == &link) {
            watch_link_(link.socket.get(), link.owner, false);
            links_.erase(it);
        }
    }
    throw_errno(error, "owner gone");
}

xpmem_apid_t Attacher::get(xpmem_segid_t segid, int flags) {
    std::shared_ptr<Link> link = link_to(segid);
    auto reply = ask<protocol::GetReply>(
        *link, protocol::GetRequest{.segid = segid, .flags = flags, .attacher_key = config_.key});
    if (reply.error != 0) throw_errno(reply.error, "xpmem_get");
    std::lock_guard lock(mutex_);
    xpmem_apid_t apid = protocol::make_apid(next_serial_++, config_.pid);
    permits_.emplace(apid, PermitRecord{segid, flags, reply.permit, std::move(link)});
    return apid;
}

void Attacher::release(xpmem_apid_t apid) {
    std::shared_ptr<Link> link;
    std::uint64_t owner_permit;
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
            if (fetcher_ != nullptr) fetcher_->wake(it->first, it->first + it->second.size);
            it = attachments_.erase(it);
        }
        link = permit->second.link;
        owner_permit = permit->second.owner_permit;
        xpmem_segid_t segid = permit->second.segid;
        permits_.erase(permit);
        if (std::none_of(permits_.begin(), permits_.end(),
                         [&](const auto &p) { return p.second.segid == segid; }))
            revoked_.erase(segid);
    }
    std::lock_guard lock(link->mutex);
    try {
        send_message(link->socket.get(), bytes_of(protocol::ReleaseRequest{.permit = owner_permit}), {},
                     true);
    } catch (const std::system_error &) {
        // The owner is gone or not reading; it forgets the permit when the link closes.
    }
}

namespace {

// A raw system call: pieces and holes replace pages while the application may be using
// them, by design (each access sees the old page, the new one or SIGBUS). ThreadSanitizer's
// mmap interceptor would count the mapping as a write racing with those accesses.
void map_fixed(std::uintptr_t start, std::size_t size, int prot, int flags, int fd,
               std::uint64_t offset) {
    auto *at = reinterpret_cast<void *>(
        ::syscall(SYS_mmap, start, size, prot, flags | MAP_FIXED, fd, offset));
    if (at == MAP_FAILED) throw_last_errno("map attachment");
    ::madvise(at, size, MADV_DONTFORK);  // fork children inherit no attachment
}

// Whether SysV segment `status` is the user `uid`'s: its owner or creator.
bool owned_by(const struct shmid_ds &status, uid_t uid) {
    return status.shm_perm.uid == uid || status.shm_perm.cuid == uid;
}

// Where the mapping that starts at `base` ends (a hugetlb segment maps whole huge pages).
std::uintptr_t mapping_end(std::uintptr_t base) {
    for (const Vma &vma : read_maps())
        if (vma.start == base) return vma.end;
    return base;
}

// Maps [piece.file_offset, + piece.length) of SysV segment piece.shm_id at `start`: attaches
// the segment with our own IPC permission, moves the piece into place, detaches the rest.
// The owner named the segment, so it must be the owner's, lest an owner aim our stores at a
// third user's segment that we may write and it may not: the segment's owner or creator is
// the user the owner process was when it listened and still is, with every id. Returns
// false if the segment cannot be attached so (another IPC namespace, no permission, not
// the owner's, gone, too small, or a piece that cannot be moved).
bool map_sysv_piece(std::uintptr_t start, const protocol::Piece &piece, bool writable,
                    pid_t owner_pid, uid_t owner_uid, std::uint64_t owner_ipc_namespace) {
    if (owner_ipc_namespace == 0 || owner_ipc_namespace != ipc_namespace()) return false;
    struct shmid_ds status {};
    // Checked before attaching too: a segment not the owner's is left untouched.
    if (::shmctl(piece.shm_id, IPC_STAT, &status) < 0 || !owned_by(status, owner_uid) ||
        !runs_only_as(owner_pid, owner_uid))
        return false;
    void *base = ::shmat(piece.shm_id, nullptr, writable ? 0 : SHM_RDONLY);
    if (base == reinterpret_cast<void *>(-1)) return false;
    // Attached, the id names this segment until we detach it: the check holds for good.
    auto at = reinterpret_cast<std::uintptr_t>(base);
    std::uintptr_t end = mapping_end(at);
    bool fits = ::shmctl(piece.shm_id, IPC_STAT, &status) == 0 && owned_by(status, owner_uid);
    std::size_t size = fits ? std::min<std::size_t>(end - at, util::page_up(status.shm_segsz)) : 0;
    if (!fits || piece.file_offset > size || piece.length > size - piece.file_offset ||
        util::move_mapping(reinterpret_cast<void *>(at + piece.file_offset), piece.length,
                           reinterpret_cast<void *>(start)) == MAP_FAILED) {
        ::shmdt(base);  // all of it, whatever its page size
        return false;
    }
    ::madvise(reinterpret_cast<void *>(start), piece.length, MADV_DONTFORK);
    // The move worked, so what is left is whole pages of the mapping's own size.
    if (piece.file_offset > 0) ::munmap(base, piece.file_offset);
    std::uintptr_t rest = at + piece.file_offset + piece.length;
    if (rest < end) ::munmap(reinterpret_cast<void *>(rest), end - rest);
    return true;
}

}  // namespace

void Attacher::map_sigbus(std::uintptr_t start, std::size_t size, int prot) {
    map_fixed(start, size, prot, MAP_PRIVATE, sigbus_.get(), 0);
}

Fetcher &Attacher::fetcher() {
    std::lock_guard lock(mutex_);
    if (!fetcher_) {
        fetcher_ = std::make_unique<Fetcher>([this](const Fault &fault) { resolve_fault(fault); });
    }
    return *fetcher_;
}

// Maps the pieces of `reply` from `at` + `mapped` on, at most up to `at` + `limit`. Holes
// and the owner's converted memory are watched for faults (user/fetcher.hpp). Returns, if
// `touched` lies in what it mapped, whether it lies in a hole.
bool Attacher::map_pieces(std::uintptr_t at, const protocol::AttachReply &reply,
                          std::span<const UniqueFd> fds, const Link &owner, bool read_only,
                          std::size_t limit, std::size_t &mapped,
                          std::optional<std::uintptr_t> touched) {
    if (reply.piece_count == 0 || reply.piece_count > protocol::kMaxPieces)
        throw_errno(EPROTO, "bad attach reply");
    bool touched_hole = false;
    for (std::uint32_t i = 0; i < reply.piece_count; ++i) {
        const protocol::Piece &piece = reply.pieces[i];
        if (piece.length == 0 || !util::page_aligned(piece.length) ||
            !util::page_aligned(piece.file_offset) || piece.length > limit - mapped ||
            piece.fd_index >= static_cast<std::int32_t>(fds.size()))
            throw_errno(EPROTO, "bad attach piece");
        std::uintptr_t start = at + mapped;
        std::uintptr_t end = start + piece.length;
        bool sysv = (piece.flags & protocol::kPieceSysv) != 0;
        bool hole = piece.fd_index < 0 && !sysv;
        bool writable = !hole && (piece.flags & protocol::kPieceWritable) != 0;
        int prot = read_only ? PROT_READ : PROT_READ | PROT_WRITE;
        // A segment we cannot attach is a hole, as an object the owner cannot open is.
        if (sysv && !map_sysv_piece(start, piece, writable && !read_only, owner.pid, owner.uid,
                                    reply.ipc_namespace))
            hole = true;
        if (sysv && !hole) {
            // Mapped: like any shared object the owner maps, it is not followed.
        } else if (hole) {
            // Loads and stores alike ask the owner again, and get SIGBUS while nothing is
            // there (resolve_fault).
            map_fixed(start, piece.length, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                      0);
            if (fetcher_ == nullptr || fetcher_->watch(start, end) != 0)
                map_sigbus(start, piece.length, prot);
            if (touched && *touched >= start && *touched < end) touched_hole = true;
        } else {
            map_fixed(start, piece.length, writable ? prot : PROT_READ, MAP_SHARED,
                      fds[piece.fd_index].get(), piece.file_offset);
            // userfaultfd registers only mappings that could be made writable: a read-only
            // piece does not follow the owner (docs/user-backend.md, limits).
            bool watched = (piece.flags & protocol::kPieceFollowed) != 0 && writable &&
                           fetcher_ != nullptr && fetcher_->watch(start, end) == 0;
            // A watched page the owner left out of its file would fault again for ever: the
            // owner makes the page touched present before it answers, or it is a hole.
            if (watched && touched && *touched >= start && *touched < end) {
                auto file_offset =
                    static_cast<off_t>(piece.file_offset + (util::page_down(*touched) - start));
                if (::lseek(fds[piece.fd_index].get(), file_offset, SEEK_DATA) != file_offset)
                    touched_hole = true;
            }
        }
        mapped += piece.length;
    }
    return touched_hole;
}

// A thread touched a watched page of an attachment: what the owner maps there changed, or
// it was a hole. Asks the owner for what it maps there now and maps it, or raises SIGBUS in
// the thread if it is still a hole (or the owner fails to answer); then lets the thread
// try again.
void Attacher::resolve_fault(const Fault &fault) noexcept {
    try {
        fetch_for(fault);
    } catch (const std::exception &) {
        // Out of memory, say: the thread tries again.
        std::lock_guard lock(mutex_);
        fetcher_->wake(util::page_down(fault.address), util::page_down(fault.address) + 4096);
    }
}

void Attacher::fetch_for(const Fault &fault) {
    std::uintptr_t page = util::page_down(fault.address);
    PermitRecord permit;
    std::uintptr_t start = 0;
    AttachmentRecord attachment{};
    std::unique_lock lock(mutex_);
    Fetcher &fetch = *fetcher_;
    {
        auto it = attachments_.upper_bound(page);
        if (it == attachments_.begin() ||
            page >= std::prev(it)->first + std::prev(it)->second.size ||
            std::prev(it)->second.revoked || permits_.count(std::prev(it)->second.apid) == 0) {
            fetch.wake(page, page + util::kPageSize);  // detached meanwhile: fault again
            return;
        }
        --it;
        start = it->first;
        attachment = it->second;
        permit = permits_.at(attachment.apid);
    }
    lock.unlock();
    std::uintptr_t end = std::min(start + attachment.size, page + kFetchWindow);
    std::vector<UniqueFd> fds;
    protocol::AttachReply reply{};
    int error = 0;
    try {
        reply = ask<protocol::AttachReply>(
            *permit.link,
            protocol::FaultRequest{.permit = permit.owner_permit,
                                   .offset = attachment.offset + (page - start),
                                   .size = end - page},
            &fds);
        error = reply.error;
    } catch (const std::system_error &failure) {
        error = failure.code().value();
    }
    // The owner's memory changed under its conversion: the thread faults again, a few
    // times (an owner that says so for ever gets SIGBUS for it).
    if (error == EAGAIN && ++changed_in_a_row_[page] <= kMaxChangedInARow)
        return fetch.wake(page, page + util::kPageSize);
    changed_in_a_row_.erase(page);
    bool hole = true;
    std::size_t mapped = 0;
    lock.lock();
    auto it = attachments_.find(start);
    if (it == attachments_.end() || it->second.apid != attachment.apid || it->second.revoked) {
        fetch.wake(page, end);  // detached or revoked meanwhile: fault again
        return;
    }
    if (error == 0) {
        try {
            hole = map_pieces(page, reply, fds, *permit.link, attachment.prot == PROT_READ,
                              end - page, mapped, fault.address);
        } catch (const std::system_error &) {
            // A broken reply: the access fails.
        }
    }
    // The thread would never take a signal of ours: let the kernel raise it, for good.
    if (hole && !Fetcher::raise_sigbus(fault)) map_sigbus(page, util::kPageSize, attachment.prot);
    lock.unlock();
    fetch.wake(page, std::max(end, page + util::kPageSize));
}

void *Attacher::attach(xpmem_apid_t apid, std::uint64_t offset, std::size_t size, void *at) {
    PermitRecord permit;
    {
        std::lock_guard lock(mutex_);
        auto it = permits_.find(apid);
        if (it == permits_.end()) throw_errno(EINVAL, "xpmem_attach: unknown permit");
        permit = it->second;
        if (revoked_.count(permit.segid) != 0) throw_errno(ENOENT, "xpmem_attach: removed");
    }
    bool read_only = permit.flags == XPMEM_RDONLY;
    int prot = read_only ? PROT_READ : PROT_READ | PROT_WRITE;
    try {
        fetcher();
    } catch (const std::system_error &) {
        // No userfaultfd here: the attachment shows what the owner had when it was made.
    }
    std::size_t mapped = 0;
    std::vector<UniqueFd> fds;
    auto ask_owner = [&] {
        fds.clear();
        auto reply = ask<protocol::AttachReply>(
            *permit.link,
            protocol::AttachRequest{
                .permit = permit.owner_permit, .offset = offset + mapped, .size = size - mapped},
            &fds);
        if (reply.error != 0) throw_errno(reply.error, "xpmem_attach");
        return reply;
    };
    // The owner checks the offset and size: a refused attach at a fixed address leaves what
    // was mapped there.
    protocol::AttachReply reply = ask_owner();
    // Until it is recorded, the range is ours all the same: our service must never hand
    // it out as the application's memory. A fixed range is claimed before it is replaced,
    // in one step with the check that no attachment, made or being made, lies there.
    std::uintptr_t start = reinterpret_cast<std::uintptr_t>(at);
    Mapping range;
    if (at == nullptr) {
        void *reserved =
            ::mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (reserved == MAP_FAILED) throw_last_errno("xpmem_attach: reserve");
        range = Mapping(reserved, size);
        start = range.address();
        std::lock_guard lock(mutex_);
        attaching_[start] = size;
    } else {
        {
            std::lock_guard lock(mutex_);
            auto meets = [&](const auto &ranges, auto end_of) {
                auto next = ranges.lower_bound(start + size);
                return next != ranges.begin() && end_of(*std::prev(next)) > start;
            };
            if (meets(attachments_, [](const auto &made) { return made.first + made.second.size; }) ||
                meets(attaching_, [](const auto &being) { return being.first + being.second; }))
                throw_errno(EINVAL, "xpmem_attach: over an attachment");
            attaching_[start] = size;
        }
        try {
            map_sigbus(start, size, prot);  // MAP_FIXED semantics
        } catch (...) {
            std::lock_guard lock(mutex_);
            attaching_.erase(start);
            throw;
        }
        range = Mapping(at, size);
    }
    struct Unlist {
        Attacher &self;
        std::uintptr_t start;
        ~Unlist() {
            std::lock_guard lock(self.mutex_);
            self.attaching_.erase(start);
        }
    } unlist{*this, start};
    map_pieces(start, reply, fds, *permit.link, read_only, size, mapped);
    while (mapped < size) {
        reply = ask_owner();
        map_pieces(start, reply, fds, *permit.link, read_only, size, mapped);
    }
    ::madvise(range.data(), size, MADV_DONTFORK);  // fork children inherit no attachment
    std::lock_guard lock(mutex_);
    // Released while we were mapping: the attachment has no permit to live by.
    if (permits_.count(apid) == 0) throw_errno(EINVAL, "xpmem_attach: permit released");
    attachments_[start] = AttachmentRecord{size, offset, apid, permit.segid, prot};
    range.release();
    // Removed while we were mapping: revoke what we just made.
    if (revoked_.count(permit.segid) != 0) revoke_locked(permit.segid);
    return reinterpret_cast<void *>(start);
}

void Attacher::detach(void *address) {
    auto target = reinterpret_cast<std::uintptr_t>(address);
    {
        std::lock_guard lock(mutex_);
        auto it = attachments_.upper_bound(target);
        if (it != attachments_.begin() &&
            target < std::prev(it)->first + std::prev(it)->second.size) {
            --it;
            ::munmap(reinterpret_cast<void *>(it->first), it->second.size);
            if (fetcher_ != nullptr) fetcher_->wake(it->first, it->first + it->second.size);
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
void Attacher::revoke_locked(xpmem_segid_t segid) {
    // Only segids we hold permits for are remembered: a forged REVOKE grows nothing.
    if (std::none_of(permits_.begin(), permits_.end(),
                     [&](const auto &permit) { return permit.second.segid == segid; }))
        return;
    revoked_.insert(segid);
    for (auto &[start, attachment] : attachments_) {
        if (attachment.segid != segid || attachment.revoked) continue;
        map_sigbus(start, attachment.size, attachment.prot);
        ::madvise(reinterpret_cast<void *>(start), attachment.size, MADV_DONTFORK);
        attachment.revoked = true;
        // Threads waiting in a fault there take the SIGBUS now.
        if (fetcher_ != nullptr) fetcher_->wake(start, start + attachment.size);
    }
}

void Attacher::revoke(xpmem_segid_t segid) {
    std::lock_guard lock(mutex_);
    revoke_locked(segid);
}

void Attacher::owner_gone(std::uint64_t owner) {
    std::lock_guard lock(mutex_);
    auto link = links_.find(owner);
    if (link == links_.end()) return;
    watch_link_(link->second->socket.get(), owner, false);
    links_.erase(link);  // the next get() connects afresh
    std::set<xpmem_segid_t> segids;
    for (const auto &[apid, permit] : permits_)
        if (protocol::owner_of(permit.segid) == owner) segids.insert(permit.segid);
    for (xpmem_segid_t segid : segids) revoke_locked(segid);
}

std::vector<Range> Attacher::own_ranges() const {
    std::lock_guard lock(mutex_);
    std::vector<Range> ours;
    if (fetcher_ != nullptr) ours.push_back(fetcher_->stack());
    for (const auto &[start, attachment] : attachments_)
        ours.push_back({start, start + attachment.size});
    for (const auto &[start, size] : attaching_) ours.push_back({start, start + size});
    return ours;
}

void Attacher::forget_threads() noexcept {
    if (fetcher_) fetcher_->forget();
}

}  // namespace xpmem::user
