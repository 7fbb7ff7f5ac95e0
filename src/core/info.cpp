// xpmem::system_info(): the library's own selection and probes, reported (include/xpmem/info.hpp).

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <system_error>
#include <xpmem/info.hpp>

#include "core/library.hpp"
#include "user/kernel_facilities.hpp"

namespace xpmem {
namespace {

constexpr int kCapSysPtrace = 19;  // linux/capability.h

// The text of a small /proc, /sys or debugfs file, or the errno of opening it.
// The whole of a small kernel file, or the errno of opening or reading it. Close-on-exec: a
// thread that forks and execs meanwhile passes no descriptor on (debugfs is root's).
std::pair<std::string, int> read_file(const char *path) {
    util::UniqueFd file(::open(path, O_RDONLY | O_CLOEXEC));
    if (!file) return {"", errno};
    std::string text;
    char chunk[4096];
    for (;;) {
        ssize_t got = ::read(file.get(), chunk, sizeof chunk);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return {"", errno};
        if (got == 0) return {text, 0};
        text.append(chunk, static_cast<std::size_t>(got));
    }
}

std::string describe(const char *path, int error) {
    return std::string(path) + ": " + std::strerror(error);
}

bool has_cap_sys_ptrace() {
    std::istringstream status(read_file("/proc/self/status").first);
    for (std::string line; std::getline(status, line);)
        if (line.rfind("CapEff:", 0) == 0)
            return (std::stoull(line.substr(7), nullptr, 16) >> kCapSysPtrace & 1) != 0;
    return false;
}

UserfaultfdProbe probe_userfaultfd(int flags) {
    util::UniqueFd fd = user::userfaultfd(flags);
    if (!fd) return {errno, 0};
    try {
        return {0, user::offered_features(fd.get())};
    } catch (const std::system_error &error) {
        return {error.code().value(), 0};
    }
}

void add_kernel_facts(SystemInfo &info) {
    utsname names{};
    if (::uname(&names) == 0) info.kernel_release = names.release;
    info.euid = ::geteuid();
    info.cap_sys_ptrace = has_cap_sys_ptrace();
    const char *sysctl = "/proc/sys/vm/unprivileged_userfaultfd";
    auto [value, error] = read_file(sysctl);
    if (error == 0)
        info.unprivileged_userfaultfd = std::stoi(value);
    else
        info.unprivileged_userfaultfd_error = describe(sysctl, error);

    info.all_faults = probe_userfaultfd(0);
    info.user_mode_only = probe_userfaultfd(UFFD_USER_MODE_ONLY);
    std::uint64_t offered = 0;  // on the userfaultfd the library's write-protection uses
    bool usable = false;
    try {
        info.user_mode_only_in_use = user::open_userfaultfd().user_mode_only;
        offered = user::supported_uffd_features();
        usable = true;
    } catch (const std::system_error &) {
        // Reported as the probes' errors above: nothing is available.
    }
    auto feature = [&](const char *name, std::uint64_t bit, const char *use) {
        info.features.push_back({name, usable && (offered & bit) == bit, use});
    };
    info.features.push_back(
        {"UFFD_USER_MODE_ONLY", info.user_mode_only.error == 0,
         "Linux 5.11: the fetcher's and the follower's userfaultfds always, and every one "
         "of a process without CAP_SYS_PTRACE while vm.unprivileged_userfaultfd = 0"});
    feature("UFFD_FEATURE_THREAD_ID", UFFD_FEATURE_THREAD_ID,
            "the fetcher: which thread touched a page of an attachment (required)");
    feature("UFFD_FEATURE_EXACT_ADDRESS", UFFD_FEATURE_EXACT_ADDRESS,
            "Linux 5.18: the SIGBUS of a hole in an attachment names the byte touched");
    feature("UFFD_FEATURE_WP_UNPOPULATED", UFFD_FEATURE_WP_UNPOPULATED,
            "Linux 6.7: conversion write-protects untouched pages; without it, it populates "
            "them first");
    feature("UFFD_FEATURE_WP_HUGETLBFS_SHMEM", UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
            "Linux 5.19: conversion write-protects the library's own files; without it a "
            "SIGSEGV guard parks writers");
    feature("UFFD_FEATURE_MINOR_SHMEM", UFFD_FEATURE_MINOR_SHMEM,
            "Linux 5.14: attachments follow the owner's unmaps in order with its stores "
            "(else with WP_HUGETLBFS_SHMEM, unordered)");
    feature("UFFD_FEATURE_EVENT_UNMAP", UFFD_FEATURE_EVENT_UNMAP,
            "attachments follow the owner's munmap (all three events needed)");
    feature("UFFD_FEATURE_EVENT_REMAP", UFFD_FEATURE_EVENT_REMAP,
            "attachments follow the owner's mremap (all three events needed)");
    feature("UFFD_FEATURE_EVENT_REMOVE", UFFD_FEATURE_EVENT_REMOVE,
            "attachments follow the owner's madvise(MADV_DONTNEED) (all three events needed)");
    bool sealed = true;
    try {
        user::sealed_memfd("xpmem-info", 4096);
    } catch (const std::system_error &) {
        sealed = false;
    }
    info.features.push_back(
        {"memfd seals", sealed,
         "memfd_create(MFD_ALLOW_SEALING) and F_ADD_SEALS: the files of converted memory"});
}

void add_counters(SystemInfo &info) {
    const char *path = "/sys/kernel/debug/xpmem/counters";
    auto [text, error] = read_file(path);
    if (error != 0) {
        info.counters_error = describe(path, error);
        return;
    }
    std::istringstream lines(text);
    std::string name;
    for (long long count = 0; lines >> name >> count;) info.counters.emplace_back(name, count);
}

}  // namespace

inline namespace v1 {

SystemInfo system_info() {
    SystemInfo info;
    info.library_version = XPMEM_LIBRARY_VERSION;
    info.soname = XPMEM_SONAME;
    Dl_info loaded{};
    if (::dladdr(reinterpret_cast<const void *>(&system_info), &loaded) != 0 &&
        loaded.dli_fname != nullptr)
        info.library_file = loaded.dli_fname;

    const char *forced = std::getenv("XPMEM_BACKEND");
    info.forced = forced != nullptr ? forced : "";
    core::Decision decision = core::decide_backend();
    using Choice = core::Decision::Choice;
    info.backend = decision.choice == Choice::kernel ? "kernel"
                   : decision.choice == Choice::user ? "user"
                                                     : "";
    info.reason = decision.reason;
    info.error = decision.error;

    kernel::Probe device = decision.device ? std::move(*decision.device) : kernel::probe_device();
    info.device_error = device.error;
    info.device_status = device.error == 0 ? "answers" : device.message;
    if (device.error == 0) info.module_version = device.version;

    add_kernel_facts(info);
    add_counters(info);
    return info;
}

}  // namespace v1
}  // namespace xpmem
