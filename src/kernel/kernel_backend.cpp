#include "kernel/kernel_backend.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>

#include <cstring>
#include <mutex>

#include "util/error.hpp"
#include "xpmem_abi.h"

namespace xpmem::kernel {
namespace {

class KernelBackend final : public core::Backend {
  public:
    explicit KernelBackend(Probe probe)
        : device_(std::move(probe.device)), version_(probe.version) {}

    std::string_view name() const override { return "kernel"; }
    int version() override { return version_; }

    xpmem_segid_t make(std::uintptr_t address, std::size_t size, mode_t mode) override {
        xpmem_cmd_make cmd{};
        cmd.vaddr = address;
        cmd.size = size;
        cmd.permit_type = XPMEM_PERMIT_MODE;
        cmd.permit_value = mode;
        call(XPMEM_CMD_MAKE, &cmd, "xpmem_make");
        return cmd.segid;
    }
    void remove(xpmem_segid_t segid) override {
        xpmem_cmd_remove cmd{segid};
        call(XPMEM_CMD_REMOVE, &cmd, "xpmem_remove");
    }
    xpmem_apid_t get(xpmem_segid_t segid, Access access) override {
        xpmem_cmd_get cmd{};
        cmd.segid = segid;
        cmd.flags = static_cast<int>(access);
        cmd.permit_type = XPMEM_PERMIT_MODE;
        call(XPMEM_CMD_GET, &cmd, "xpmem_get");
        return cmd.apid;
    }
    void release(xpmem_apid_t apid) override {
        xpmem_cmd_release cmd{apid};
        call(XPMEM_CMD_RELEASE, &cmd, "xpmem_release");
    }
    void *attach(xpmem_apid_t apid, std::uint64_t offset, std::size_t size, void *at) override {
        xpmem_cmd_attach cmd{};
        cmd.apid = apid;
        cmd.offset = static_cast<__s64>(offset);
        cmd.size = size;
        cmd.vaddr = reinterpret_cast<std::uintptr_t>(at);
        cmd.fd = -1;
        call(XPMEM_CMD_ATTACH, &cmd, "xpmem_attach");
        return reinterpret_cast<void *>(cmd.vaddr);
    }
    void detach(void *address) override {
        xpmem_cmd_detach cmd{reinterpret_cast<std::uintptr_t>(address)};
        call(XPMEM_CMD_DETACH, &cmd, "xpmem_detach");
    }

    // The module keys its state by thread group; the atfork child handler drops this
    // backend, so the child reopens the device on its next call (see call() otherwise).
    void before_fork() noexcept override {}
    void after_fork_parent() noexcept override {}
    void after_fork_child() noexcept override {}
    void after_raw_fork_child() noexcept override {}

  private:
    void call(unsigned long command, void *argument, const char *what) {
        int device = current_device();
        if (::ioctl(device, command, argument) >= 0) return;
        // A child made without fork()'s atfork handlers (a raw clone) still holds its
        // parent's descriptor, which the module answers with NOPROC: open afresh, once.
        if (errno == XPMEM_ERRNO_NOPROC && reopen(device) &&
            ::ioctl(current_device(), command, argument) >= 0)
            return;
        util::throw_last_errno(what);
    }

    int current_device() {
        std::lock_guard lock(device_mutex_);
        return device_.get();
    }

    // Replaces `stale` unless another thread already did; false if the device won't open.
    bool reopen(int stale) {
        std::lock_guard lock(device_mutex_);
        if (device_.get() != stale) return true;
        util::UniqueFd fresh(::open(XPMEM_DEVICE_PATH, O_RDWR | O_CLOEXEC));
        if (!fresh) return false;
        device_ = std::move(fresh);
        return true;
    }

    std::mutex device_mutex_;
    util::UniqueFd device_;
    int version_;
};

}  // namespace

Probe probe_device() {
    Probe probe;
    probe.device = util::UniqueFd(::open(XPMEM_DEVICE_PATH, O_RDWR | O_CLOEXEC));
    if (!probe.device) {
        probe.error = errno;
        probe.message = std::string(XPMEM_DEVICE_PATH ": ") + std::strerror(errno);
        return probe;
    }
    probe.version = ::ioctl(probe.device.get(), XPMEM_CMD_VERSION, nullptr);
    if (probe.version < 0) {
        probe.error = errno;
        probe.message =
            std::string(XPMEM_DEVICE_PATH " does not answer VERSION: ") + std::strerror(errno);
    }
    return probe;
}

std::unique_ptr<core::Backend> make_kernel_backend(Probe probe) {
    return std::make_unique<KernelBackend>(std::move(probe));
}

}  // namespace xpmem::kernel
