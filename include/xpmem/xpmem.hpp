// The C++20 API of libxpmem: RAII owners for a segment, a permit and an attachment.
//
// Failures throw std::system_error carrying the errno-valued std::error_code the C API
// would have set (its man pages list them), except that an allocation failure inside the
// library throws std::bad_alloc where the C API sets ENOMEM. A moved-from object owns
// nothing. Destruction gives the resource back (remove / release / detach) and never throws.
//
// ABI: these classes live in libxpmem.so.0 beside the C API, in the inline namespace
// xpmem::v1 and the symbol version XPMEM_CXX_0.1 (docs/library-abi.md). An incompatible
// change moves the API to xpmem::v2 and keeps v1's symbols, so programs built against
// this header keep loading.
#pragma once

#include <sys/types.h>
#include <xpmem.h>

#include <cstddef>
#include <span>
#include <string_view>
#include <utility>

namespace xpmem {
inline namespace v1 {

using SegmentId = xpmem_segid_t;
using PermitId = xpmem_apid_t;

enum class Access : int { read_only = XPMEM_RDONLY, read_write = XPMEM_RDWR };

// Which backend serves this process: "kernel" or "user". Selects it on first use.
std::string_view backend_name();
// The backend's version, as xpmem_version() returns it.
int version();

// A published range of this process's address space.
class Segment {
  public:
    // Publishes `range` (page-aligned) to processes whose credentials pass `mode` (0777 bits).
    static Segment make(std::span<std::byte> range, mode_t mode = 0600);
    // Publishes the whole address space, as UCX, Open MPI and MPICH do.
    static Segment make_whole_address_space(mode_t mode = 0600);
    // Takes ownership of an id made through the C API.
    static Segment adopt(SegmentId id) noexcept { return Segment(id); }

    Segment() noexcept = default;
    Segment(Segment &&other) noexcept : id_(std::exchange(other.id_, 0)) {}
    Segment &operator=(Segment &&other) noexcept;
    Segment(const Segment &) = delete;
    Segment &operator=(const Segment &) = delete;
    ~Segment();

    SegmentId id() const noexcept { return id_; }
    explicit operator bool() const noexcept { return id_ > 0; }
    // Withdraws the segment now; reports failures that the destructor would swallow.
    void remove();
    // Gives up ownership without removing.
    SegmentId release() noexcept { return std::exchange(id_, 0); }

  private:
    explicit Segment(SegmentId id) noexcept : id_(id) {}
    SegmentId id_ = 0;
};

class Attachment;

// Access to another (or this) process's segment.
class Permit {
  public:
    static Permit get(SegmentId segment, Access access = Access::read_write);
    static Permit adopt(PermitId id) noexcept { return Permit(id); }

    Permit() noexcept = default;
    Permit(Permit &&other) noexcept : id_(std::exchange(other.id_, 0)) {}
    Permit &operator=(Permit &&other) noexcept;
    Permit(const Permit &) = delete;
    Permit &operator=(const Permit &) = delete;
    ~Permit();

    PermitId id() const noexcept { return id_; }
    explicit operator bool() const noexcept { return id_ > 0; }

    // Maps `size` bytes of the segment from `offset`; at `at` if given (MAP_FIXED-like).
    Attachment attach(off_t offset, std::size_t size, void *at = nullptr) const;
    // Gives the permit back; every attachment made through it is detached.
    void release();

  private:
    explicit Permit(PermitId id) noexcept : id_(id) {}
    PermitId id_ = 0;
};

// A mapping of a segment into this process.
class Attachment {
  public:
    Attachment() noexcept = default;
    Attachment(void *address, std::size_t size) noexcept
        : bytes_(static_cast<std::byte *>(address), size) {}
    Attachment(Attachment &&other) noexcept : bytes_(std::exchange(other.bytes_, {})) {}
    Attachment &operator=(Attachment &&other) noexcept;
    Attachment(const Attachment &) = delete;
    Attachment &operator=(const Attachment &) = delete;
    ~Attachment();

    std::span<std::byte> bytes() const noexcept { return bytes_; }
    std::byte *data() const noexcept { return bytes_.data(); }
    std::size_t size() const noexcept { return bytes_.size(); }
    explicit operator bool() const noexcept { return bytes_.data() != nullptr; }

    // A typed view of the whole attachment (trailing bytes that do not fill a T are left out).
    template <class T>
    std::span<T> as() const noexcept {
        return {reinterpret_cast<T *>(bytes_.data()), bytes_.size() / sizeof(T)};
    }

    void detach();

  private:
    std::span<std::byte> bytes_;
};

}  // namespace v1
}  // namespace xpmem
