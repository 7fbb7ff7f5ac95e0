// Diagnostics, for tools such as xpmem-info: which backend this process would use and why,
// and the kernel facilities the user backend relies on, as found at the call.
//
// system_info() decides through the code the library selects its backend with, and probes
// through the code the backend opens those facilities with, but selects no backend and
// changes nothing in the library: it opens and closes /dev/xpmem, userfaultfds and a memfd
// to see whether they work. It does not throw for what it finds missing: it reports it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace xpmem {
inline namespace v1 {

// userfaultfd(2) opened one way, then asked which features it offers (UFFDIO_API).
struct UserfaultfdProbe {
    int error = 0;               // 0, or the errno of userfaultfd(2) or of UFFDIO_API
    std::uint64_t features = 0;  // the UFFD_FEATURE_* bits offered
};

// A kernel facility the user backend relies on.
struct KernelFeature {
    std::string name;  // "UFFD_FEATURE_MINOR_SHMEM", "memfd seals", ...
    bool available = false;
    std::string use;  // what the user backend does with it, and without it
};

struct SystemInfo {
    // This library.
    std::string library_version;  // the project's version, "0.1.0"
    std::string soname;           // "libxpmem.so.0"
    std::string library_file;     // the file it was loaded from (the program, if linked statically)

    // The backend, as the library selects it on first use.
    std::string forced;   // XPMEM_BACKEND, empty when unset
    std::string backend;  // "kernel", "user", or empty: none can serve this process
    std::string reason;   // why this backend; without one, the message the library prints
    int error = 0;        // without a backend: the errno every call fails with

    // /dev/xpmem, the kernel backend's device (probed even when XPMEM_BACKEND=user).
    int device_error = 0;       // 0 when it answers the VERSION command, else the errno
    std::string device_status;  // "answers", or why not ("/dev/xpmem: No such file ...")
    int module_version = -1;    // its answer; -1 unless it answers

    // What the user backend finds in this kernel, for this process.
    std::string kernel_release;  // uname -r
    uid_t euid = 0;
    bool cap_sys_ptrace = false;        // lets userfaultfd catch kernel-mode faults too
    int unprivileged_userfaultfd = -1;  // the vm.unprivileged_userfaultfd sysctl; -1: unreadable
    std::string unprivileged_userfaultfd_error;  // why it is unreadable
    UserfaultfdProbe all_faults;                 // userfaultfd(2) without flags
    UserfaultfdProbe user_mode_only;             // with UFFD_USER_MODE_ONLY (Linux 5.11)
    // The library's write-protection catches only user-mode faults (UFFD_USER_MODE_ONLY):
    // this process may not catch kernel-mode ones.
    bool user_mode_only_in_use = false;
    std::vector<KernelFeature> features;

    // The module's live objects (debugfs xpmem/counters): name and count, in its order.
    std::vector<std::pair<std::string, long long>> counters;
    std::string counters_error;  // why they are not readable; empty when they are
};

SystemInfo system_info();

}  // namespace v1
}  // namespace xpmem
