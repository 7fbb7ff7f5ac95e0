// The C++ API: RAII owners over the core operations.

#include <xpmem/xpmem.hpp>

#include "core/library.hpp"

namespace xpmem {
namespace {

// Destructors give resources back and never throw: a failure there has nobody to go to.
template <class Operation>
void ignoring_failure(Operation &&operation) noexcept {
    try {
        operation();
    } catch (...) {
    }
}

}  // namespace

inline namespace v1 {

std::string_view backend_name() {
    return core::backend_name();
}

int version() {
    return core::version();
}

Segment Segment::make(std::span<std::byte> range, mode_t mode) {
    return Segment(core::make(reinterpret_cast<std::uintptr_t>(range.data()), range.size(), mode));
}

Segment Segment::make_whole_address_space(mode_t mode) {
    return Segment(core::make(0, XPMEM_MAXADDR_SIZE, mode));
}

Segment &Segment::operator=(Segment &&other) noexcept {
    if (this != &other) {
        Segment previous(std::move(*this));  // gives the old resource back on scope exit
        id_ = std::exchange(other.id_, 0);
    }
    return *this;
}

Segment::~Segment() {
    if (id_ > 0) ignoring_failure([this] { core::remove(id_); });
}

void Segment::remove() {
    if (id_ > 0) core::remove(std::exchange(id_, 0));
}

Permit Permit::get(SegmentId segment, Access access) {
    return Permit(core::get(segment, access));
}

Permit &Permit::operator=(Permit &&other) noexcept {
    if (this != &other) {
        Permit previous(std::move(*this));  // gives the old resource back on scope exit
        id_ = std::exchange(other.id_, 0);
    }
    return *this;
}

Permit::~Permit() {
    if (id_ > 0) ignoring_failure([this] { core::release(id_); });
}

Attachment Permit::attach(off_t offset, std::size_t size, void *at) const {
    void *address = core::attach(id_, offset, size, at);
    return Attachment(address, size);
}

void Permit::release() {
    if (id_ > 0) core::release(std::exchange(id_, 0));
}

Attachment &Attachment::operator=(Attachment &&other) noexcept {
    if (this != &other) {
        Attachment previous(std::move(*this));  // gives the old resource back on scope exit
        bytes_ = std::exchange(other.bytes_, {});
    }
    return *this;
}

Attachment::~Attachment() {
    if (data() != nullptr) ignoring_failure([this] { core::detach(data()); });
}

void Attachment::detach() {
    if (data() != nullptr) core::detach(std::exchange(bytes_, {}).data());
}

}  // namespace v1
}  // namespace xpmem
