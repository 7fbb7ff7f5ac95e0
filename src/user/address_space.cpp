#include "user/address_space.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string_view>

#include "util/error.hpp"
#include "util/mapping.hpp"

namespace xpmem::user {
namespace {

using util::UniqueFd;

bool same_object(int fd, const Vma &vma) {
    struct stat status {};
    return ::fstat(fd, &status) == 0 && status.st_ino == vma.inode && status.st_dev == vma.device;
}

// O_NONBLOCK: the path may name a FIFO by now, whose open would wait for a writer.
UniqueFd open_verified(const std::string &path, const Vma &vma, bool writable) {
    int flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NONBLOCK;
    UniqueFd fd(::open(path.c_str(), flags | O_NOFOLLOW));
    if (!fd && path.rfind("/proc/", 0) == 0)  // /proc links must be followed
        fd.reset(::open(path.c_str(), flags));
    if (fd && !same_object(fd.get(), vma)) fd.reset();
    return fd;
}

}  // namespace

bool Vma::special() const {
    return path == "[vdso]" || path == "[vvar]" || path == "[vsyscall]" ||
           path == "[vvar_vclock]" || path == "[uprobes]" || path.rfind("/anon_hugepage", 0) == 0 ||
           path.rfind("/SYSV", 0) == 0;
}

int Vma::protection() const {
    return (readable ? PROT_READ : 0) | (writable ? PROT_WRITE : 0) | (executable ? PROT_EXEC : 0);
}

std::vector<Vma> read_maps() {
    std::ifstream maps("/proc/self/maps");
    if (!maps) util::throw_errno(EIO, "/proc/self/maps");
    std::vector<Vma> result;
    std::string line;
    while (std::getline(maps, line)) {
        Vma vma;
        char perms[5] = {};
        unsigned major = 0, minor = 0;
        unsigned long long inode = 0;
        int path_at = 0;
        if (std::sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR " %4s %" SCNx64 " %x:%x %llu %n",
                        &vma.start, &vma.end, perms, &vma.offset, &major, &minor, &inode,
                        &path_at) < 7)
            util::throw_errno(EIO, "/proc/self/maps format");
        vma.readable = perms[0] == 'r';
        vma.writable = perms[1] == 'w';
        vma.executable = perms[2] == 'x';
        vma.shared = perms[3] == 's';
        vma.device = makedev(major, minor);
        vma.inode = static_cast<ino_t>(inode);
        if (path_at > 0 && static_cast<std::size_t>(path_at) < line.size())
            vma.path = line.substr(static_cast<std::size_t>(path_at));
        result.push_back(std::move(vma));
    }
    return result;
}

// A process that changed its uids is not dumpable and cannot open its own pagemap; every
// page then counts as holding data, which costs copying but loses nothing.
Pagemap::Pagemap() : fd_(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)) {}

void Pagemap::read(std::uintptr_t start, std::span<std::uint64_t> entries) const {
    auto offset = static_cast<off_t>(start / util::kPageSize * sizeof(std::uint64_t));
    std::size_t want = entries.size_bytes();
    auto *out = reinterpret_cast<char *>(entries.data());
    std::size_t done = 0;
    while (fd_ && done < want) {
        ssize_t got =
            ::pread(fd_.get(), out + done, want - done, offset + static_cast<off_t>(done));
        if (got <= 0) break;
        done += static_cast<std::size_t>(got);
    }
    // Unreadable entries count as present: copying a page too many is harmless.
    std::fill(entries.begin() + static_cast<std::ptrdiff_t>(done / sizeof(std::uint64_t)),
              entries.end(), kPresent);
}

bool Pagemap::any_anonymous(std::uintptr_t start, std::uintptr_t end) const {
    std::array<std::uint64_t, 512> entries;
    for (std::uintptr_t cursor = start; cursor < end;) {
        std::size_t pages = std::min<std::size_t>(entries.size(), (end - cursor) / util::kPageSize);
        read(cursor, std::span(entries.data(), pages));
        for (std::size_t i = 0; i < pages; ++i)
            if ((entries[i] & kPresent) != 0 && (entries[i] & kFileOrShared) == 0) return true;
        cursor += pages * util::kPageSize;
    }
    return false;
}

std::vector<Range> io_uring_buffers() {
    std::vector<Range> buffers;
    DIR *fds = ::opendir("/proc/self/fd");
    if (fds == nullptr) return buffers;
    while (dirent *entry = ::readdir(fds)) {
        if (entry->d_name[0] == '.') continue;
        char target[64] = {};
        std::string link = std::string("/proc/self/fd/") + entry->d_name;
        if (::readlink(link.c_str(), target, sizeof target - 1) < 0 ||
            std::string_view(target) != "anon_inode:[io_uring]")
            continue;
        std::ifstream info(std::string("/proc/self/fdinfo/") + entry->d_name);
        std::string line;
        bool in_buffers = false;
        while (std::getline(info, line)) {
            if (!in_buffers) {  // "UserBufs: N", then one "index: 0xaddress/length" each
                in_buffers = line.rfind("UserBufs:", 0) == 0;
                continue;
            }
            unsigned long long address = 0;
            unsigned length = 0;
            unsigned index = 0;
            if (std::sscanf(line.c_str(), " %u: 0x%llx/%u", &index, &address, &length) != 3) break;
            buffers.push_back({util::page_down(address), util::page_up(address + length)});
        }
    }
    ::closedir(fds);
    std::sort(buffers.begin(), buffers.end(),
              [](const Range &a, const Range &b) { return a.start < b.start; });
    return buffers;
}

UniqueFd open_mapped_object(const Vma &vma, bool writable) {
    // map_files reaches every shared object, deleted or anonymous, but needs privilege.
    char path[64];
    std::snprintf(path, sizeof path, "/proc/self/map_files/%" PRIxPTR "-%" PRIxPTR, vma.start,
                  vma.end);
    if (UniqueFd fd = open_verified(path, vma, writable)) return fd;
    static constexpr std::string_view kDeleted = " (deleted)";
    bool deleted =
        vma.path.size() >= kDeleted.size() &&
        vma.path.compare(vma.path.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0;
    if (!deleted && !vma.path.empty() && vma.path.front() == '/')
        if (UniqueFd fd = open_verified(vma.path, vma, writable)) return fd;
    // A memfd or unlinked file may still be open in this process.
    DIR *fds = ::opendir("/proc/self/fd");
    if (fds == nullptr) return {};
    UniqueFd found;
    while (dirent *entry = ::readdir(fds)) {
        if (entry->d_name[0] == '.') continue;
        std::string link = std::string("/proc/self/fd/") + entry->d_name;
        struct stat status {};
        if (::stat(link.c_str(), &status) != 0 || status.st_ino != vma.inode ||
            status.st_dev != vma.device)
            continue;
        found = open_verified(link, vma, writable);
        if (found) break;
    }
    ::closedir(fds);
    return found;
}

}  // namespace xpmem::user
