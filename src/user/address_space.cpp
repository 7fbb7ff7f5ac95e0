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
           path == "[vvar_vclock]" || path == "[uprobes]" || path.rfind("/anon_hugepage", 0) == 0;
}

bool Vma::sysv_shm() const {
    constexpr std::string_view kDeleted = " (deleted)";  // a segment's file is never linked
    return shared && path.rfind("/SYSV", 0) == 0 && path.size() > kDeleted.size() &&
           path.compare(path.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0;
}

std::uint64_t ipc_namespace() {
    struct stat status {};
    if (::stat("/proc/self/ns/ipc", &status) < 0) return 0;
    return status.st_ino;
}

int Vma::protection() const {
    return (readable ? PROT_READ : 0) | (writable ? PROT_WRITE : 0) | (executable ? PROT_EXEC : 0);
}

namespace {

// Parses a hexadecimal number at `text`, advancing it past the number and one separator.
std::uint64_t hex_field(const char *&text, const char *end) {
    std::uint64_t value = 0;
    for (; text < end; ++text) {
        char c = *text;
        int digit = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
        if (digit < 0) break;
        value = value << 4 | static_cast<unsigned>(digit);
    }
    if (text < end) ++text;
    return value;
}

std::uint64_t decimal_field(const char *&text, const char *end) {
    std::uint64_t value = 0;
    for (; text < end && *text >= '0' && *text <= '9'; ++text)
        value = value * 10 + static_cast<unsigned>(*text - '0');
    return value;
}

// One line "start-end perms offset major:minor inode   path" (without its newline); returns
// where the path starts (or `end`). Allocates nothing.
const char *parse_maps_line(const char *text, const char *end, MapEntry &entry) {
    entry.start = hex_field(text, end);
    entry.end = hex_field(text, end);
    if (end - text < 5) util::throw_errno(EIO, "/proc/self/maps format");
    entry.readable = text[0] == 'r';
    entry.writable = text[1] == 'w';
    entry.executable = text[2] == 'x';
    entry.shared = text[3] == 's';
    text += 5;
    entry.offset = hex_field(text, end);
    auto major = static_cast<unsigned>(hex_field(text, end));
    auto minor = static_cast<unsigned>(hex_field(text, end));
    entry.device = makedev(major, minor);
    entry.inode = static_cast<ino_t>(decimal_field(text, end));
    while (text < end && *text == ' ') ++text;
    return text;
}

}  // namespace

std::vector<Vma> read_maps() {
    std::ifstream maps("/proc/self/maps");
    if (!maps) util::throw_errno(EIO, "/proc/self/maps");
    std::vector<Vma> result;
    std::string line;
    while (std::getline(maps, line)) {
        Vma vma;
        const char *end = line.data() + line.size();
        const char *path = parse_maps_line(line.data(), end, vma);
        vma.path.assign(path, end);
        result.push_back(std::move(vma));
    }
    return result;
}

// A buffer twice as large as `buffer` (1 MiB at first), with its contents.
void MapsSnapshot::grow(util::Mapping &buffer) {
    std::size_t size = buffer ? buffer.size() * 2 : std::size_t{1} << 20;
    void *at = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (at == MAP_FAILED) util::throw_last_errno("mmap maps buffer");
    ::madvise(at, size, MADV_DONTFORK);
    if (buffer) std::memcpy(at, buffer.data(), buffer.size());
    buffer = util::Mapping(at, size);
}

std::span<const MapEntry> MapsSnapshot::read() {
    if (!text_) grow(text_);
    std::size_t length = 0;
    for (;;) {  // the whole file in one buffer, or a bigger buffer and again
        UniqueFd fd(::open("/proc/self/maps", O_RDONLY | O_CLOEXEC));
        if (!fd) util::throw_last_errno("/proc/self/maps");
        length = 0;
        ssize_t got;
        while (length < text_.size() &&
               (got = ::read(fd.get(), text_.data() + length, text_.size() - length)) > 0)
            length += static_cast<std::size_t>(got);
        if (length < text_.size()) break;
        grow(text_);  // copies what was read for nothing; rare
    }
    const char *text = reinterpret_cast<const char *>(text_.data());
    const char *end = text + length;
    std::size_t count = 0;
    while (text < end) {
        const char *line_end = static_cast<const char *>(std::memchr(text, '\n', end - text));
        if (line_end == nullptr) line_end = end;
        if ((count + 1) * sizeof(MapEntry) > entries_.size()) grow(entries_);
        parse_maps_line(text, line_end, reinterpret_cast<MapEntry *>(entries_.data())[count++]);
        text = line_end + 1;
    }
    return {reinterpret_cast<const MapEntry *>(entries_.data()), count};
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
