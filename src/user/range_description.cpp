#include "user/range_description.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <xpmem.h>

#include <algorithm>
#include <map>
#include <optional>
#include <utility>

#include "user/threads.hpp"
#include "util/error.hpp"
#include "util/mapping.hpp"

namespace xpmem::user {
namespace {

using util::throw_errno;
using util::UniqueFd;

// Whether a descriptor of the shared object `fd` (with `status`) may go to `peer`, a user
// other than ours and root, under a permit of that access. A descriptor lets its holder do
// more than map the segment: resize the object (with write access), seal it, read what
// the object grows to beyond the segment, or, when the object's mode lets the peer write
// it, reopen a read-only descriptor for writing through /proc/self/fd. So only objects
// sealed against all of that go (a memfd sealed with F_SEAL_GROW, F_SEAL_SHRINK and
// F_SEAL_SEAL), read-only ones only if their mode keeps the peer from writing. Root and
// our own uid could do as much with our own files; they get every object as it is.
bool safe_for_another_user(int fd, const struct stat &status, const PeerCredentials &peer,
                           bool read_only) {
    constexpr int kFixed = F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL;
    int seals = ::fcntl(fd, F_GET_SEALS);
    if (seals < 0 || (seals & kFixed) != kFixed) return false;
    return !read_only ||
           !permitted(peer, OwnerCredentials{status.st_uid, status.st_gid}, status.st_mode & 0777, XPMEM_RDWR);
}

// Whether `vma` is still mapped as it was.
bool still_mapped(const Vma &vma) {
    std::vector<Vma> maps = read_maps();
    return std::any_of(maps.begin(), maps.end(), [&](const Vma &now) {
        return now.start == vma.start && now.end == vma.end && now.inode == vma.inode &&
               now.offset == vma.offset && now.protection() == vma.protection() &&
               now.shared == vma.shared;
    });
}

}  // namespace

void describe_range(Backing &backing, const RangeRequest &request, protocol::AttachReply &reply,
                    std::vector<UniqueFd> &fds) {
    const SegmentRange &segment = request.segment;
    const Backing::Holder &holder = request.holder;
    const std::uintptr_t start = request.start, end = request.end;
    const bool read_only = request.read_only, populate = request.populate;
    const PeerCredentials &peer = request.peer;
    std::span<const Range> ours = request.ours;
    std::span<const std::uintptr_t> known_threads = request.known_threads;
    std::vector<Vma> maps = read_maps();
    reply.ipc_namespace = ipc_namespace();
    // Holes: the library's own mappings, which are not the application's memory, and the
    // pages of thread descriptors, where the kernel writes behind our back (threads.hpp).
    std::vector<Range> holes(ours.begin(), ours.end());
    for (std::uintptr_t page : descriptor_pages(known_threads, maps))
        holes.push_back({page, page + util::kPageSize});
    std::sort(holes.begin(), holes.end(),
              [](const Range &a, const Range &b) { return a.start < b.start; });
    backing.forget_unmapped(maps);
    std::map<std::pair<const Backing::File *, bool>, int> file_index;
    std::uintptr_t cursor = start;
    std::size_t converted = 0;
    std::optional<std::vector<Range>> pinned;  // read when first needed
    auto add = [&](std::uint64_t length, std::uint64_t file_offset, int fd_index,
                   std::uint32_t flags, std::int32_t shm_id = 0) {
        bool in_object = fd_index >= 0 || (flags & protocol::kPieceSysv) != 0;
        if (reply.piece_count > 0) {
            protocol::Piece &last = reply.pieces[reply.piece_count - 1];
            bool contiguous = !in_object || last.file_offset + last.length == file_offset;
            if (last.fd_index == fd_index && last.flags == flags && last.shm_id == shm_id &&
                contiguous) {
                last.length += length;
                return;
            }
        }
        reply.pieces[reply.piece_count++] =
            protocol::Piece{length, in_object ? file_offset : 0, fd_index, flags, shm_id, 0};
    };
    auto hole = [&](std::uint64_t length) { add(length, 0, -1, 0); };
    // The owner's converted memory: the attacher watches it for the owner's changes.
    auto file_piece = [&](Backing::File &file, std::uint64_t length, std::uint64_t file_offset,
                          bool writable) {
        auto [it, inserted] = file_index.try_emplace({&file, writable}, -1);
        if (inserted) {
            fds.push_back(backing.descriptor(file, writable, holder));
            it->second = static_cast<int>(fds.size() - 1);
        }
        // The page a fault touched must be there for the fault to end (a page the owner
        // never touched, or dropped, is not): made as the owner's own touch would.
        if (populate && reply.piece_count == 0) backing.populate(file, file_offset);
        add(length, file_offset, it->second,
            protocol::kPieceFollowed | (writable ? protocol::kPieceWritable : 0));
    };
    // A file is written through only if the owner can write all of it wherever it maps it.
    auto owner_writes_all_of = [&](const Backing::File &file) {
        return file.writable_memory && std::none_of(maps.begin(), maps.end(), [&](const Vma &v) {
                   return backing.file_of(v) == &file && !v.writable;
               });
    };
    auto within_segment = [&](std::uintptr_t from, std::uint64_t length) {
        return from >= segment.start && length <= segment.size &&
               from - segment.start <= segment.size - length;
    };

    while (cursor < end && reply.piece_count < protocol::kMaxPieces &&
           fds.size() + 2 <= protocol::kMaxFds && converted < kMaxConvertPerReply) {
        auto vma = std::upper_bound(maps.begin(), maps.end(), cursor,
                                    [](std::uintptr_t a, const Vma &v) { return a < v.end; });
        if (vma == maps.end() || vma->start >= end) {
            hole(end - cursor);
            break;
        }
        if (vma->start > cursor) {
            hole(vma->start - cursor);
            cursor = vma->start;
            continue;
        }
        std::uintptr_t piece_end = std::min<std::uintptr_t>(vma->end, end);
        auto excluded = std::find_if(holes.begin(), holes.end(), [&](const Range &i) {
            return cursor < i.end && i.start < piece_end;
        });
        if (excluded != holes.end()) {
            if (excluded->start > cursor) {
                piece_end = excluded->start;
            } else {
                piece_end = std::min(piece_end, excluded->end);
                hole(piece_end - cursor);
                cursor = piece_end;
                continue;
            }
        }
        std::uint64_t length = piece_end - cursor;
        std::uint64_t vma_offset = vma->offset + (cursor - vma->start);
        Backing::File *file = backing.file_of(*vma);
        // Read-only file pages nobody wrote to (text, rodata) are the file's own pages.
        bool unmodified_file = file == nullptr && !vma->shared && !vma->writable &&
                               vma->file_backed() && !Pagemap().any_anonymous(cursor, piece_end);
        if (vma->special() || !vma->readable) {
            hole(length);
        } else if (vma->sysv_shm()) {
            // No descriptor reaches a SysV segment: the attacher attaches it by its id, with
            // its own IPC permission, so it gets nothing it could not attach itself.
            add(length, vma_offset, -1,
                protocol::kPieceSysv | (vma->writable && !read_only ? protocol::kPieceWritable : 0),
                static_cast<std::int32_t>(vma->inode));
        } else if (file != nullptr && file->segid == segment.segid) {
            // Converted before for this segment. A file goes out only under permits of its
            // own segment: its revocation must reach every descriptor of it.
            file_piece(*file, length, vma_offset, !read_only && owner_writes_all_of(*file));
        } else if (file != nullptr && file->handed_out) {
            // Another segment's memory, already shared under that segment: it cannot move
            // without its attachers losing sight of it (docs/user-backend.md, limits).
            hole(length);
        } else if (file == nullptr && (vma->shared || unmodified_file)) {
            // Objects go as they are, if all of the object lies in the segment.
            bool writable = vma->shared && vma->writable && !read_only;
            UniqueFd fd = open_mapped_object(*vma, writable);
            if (!fd && writable) {
                writable = false;
                fd = open_mapped_object(*vma, false);
            }
            struct stat status {};
            if (!fd || ::fstat(fd.get(), &status) < 0 || vma->offset != 0 ||
                util::page_up(static_cast<std::uintptr_t>(status.st_size)) >
                    vma->end - vma->start ||
                !within_segment(vma->start,
                                util::page_up(static_cast<std::uintptr_t>(status.st_size)))) {
                hole(length);  // unreachable, or reaching beyond the segment
            } else if (peer.uid != 0 && peer.uid != request.owner_uid &&
                       !safe_for_another_user(fd.get(), status, peer, read_only)) {
                hole(length);
            } else {
                fds.push_back(std::move(fd));
                add(length, vma_offset, static_cast<int>(fds.size() - 1),
                    writable ? protocol::kPieceWritable : 0);
            }
        } else {
            // Private memory, or another segment's file nobody was given: make it this
            // segment's, unless io_uring pinned it (docs/security.md: pinned memory).
            length = std::min<std::uint64_t>(length, kMaxConvertPerReply - converted);
            piece_end = cursor + length;
            if (!pinned) pinned = io_uring_buffers();
            if (std::any_of(pinned->begin(), pinned->end(), [&](const Range &range) {
                    return range.start < piece_end && cursor < range.end;
                }))
                throw_errno(EBUSY, "memory pinned by io_uring");
            Backing::File *made = nullptr;
            try {
                made = &backing.make_shareable(segment, *vma, cursor, piece_end, maps);
            } catch (const std::system_error &error) {
                // Another thread of the owner changed the memory meanwhile (the conversion
                // says so, or the mapping is not what it was): answer what is described so
                // far, or try again from its new mappings (handle_attach).
                if (error.code().value() != EAGAIN && still_mapped(*vma)) throw;
                if (reply.piece_count > 0) break;
                throw_errno(EAGAIN, "memory changed");
            }
            Backing::File &target = *made;
            converted += length;
            file_piece(target, length, cursor - segment.start,
                       !read_only && target.writable_memory);
        }
        cursor = piece_end;
    }
}

}  // namespace xpmem::user
