// xpmem-info: which backend libxpmem would use in this process and why, the library's and
// the backend's versions, and the kernel facilities the user backend relies on, as text
// or (--json) as one JSON object. Everything comes from the library itself:
// xpmem::system_info() and xpmem_version(). Exit status 0 when a backend is usable, 1 when
// none is (the report still printed), 2 for a wrong command line.

#include <fmt/format.h>
#include <xpmem.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cxxopts.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <xpmem/info.hpp>

namespace {

using Json = nlohmann::ordered_json;

constexpr int kExitUsable = 0;
constexpr int kExitNoBackend = 1;
constexpr int kExitUsage = 2;

// "ENOENT"
std::string errno_name(int error) {
    const char *name = ::strerrorname_np(error);
    return name != nullptr ? name : std::to_string(error);
}

// "ENOENT (No such file or directory)"
std::string errno_text(int error) {
    return fmt::format("{} ({})", errno_name(error), std::strerror(error));
}

Json errno_json(int error) {
    if (error == 0) return nullptr;
    return {{"errno", error}, {"name", errno_name(error)}, {"message", std::strerror(error)}};
}

// The report and what xpmem_version() answered in this process.
struct Report {
    xpmem::SystemInfo info;
    int backend_version = -1;
    int backend_version_error = 0;
    bool usable() const { return backend_version_error == 0; }
};

Json probe_json(const xpmem::UserfaultfdProbe &probe) {
    return {{"error", errno_json(probe.error)},
            {"features", probe.error == 0 ? Json(probe.features) : Json(nullptr)},
            {"features_hex",
             probe.error == 0 ? Json(fmt::format("{:#x}", probe.features)) : Json(nullptr)}};
}

Json to_json(const Report &report) {
    const xpmem::SystemInfo &info = report.info;
    auto text_or_null = [](const std::string &text) {
        return text.empty() ? Json(nullptr) : Json(text);
    };
    Json features = Json::object();
    for (const auto &feature : info.features)
        features[feature.name] = {{"available", feature.available}, {"use", feature.use}};
    Json counters = nullptr;
    if (info.counters_error.empty()) {
        counters = Json::object();
        for (const auto &[name, count] : info.counters) counters[name] = count;
    }
    return {
        {"tool", "xpmem-info"},
        {"usable", report.usable()},
        {"library",
         {{"version", info.library_version},
          {"soname", info.soname},
          {"file", text_or_null(info.library_file)}}},
        {"backend", text_or_null(info.backend)},
        {"reason", info.reason},
        {"forced", text_or_null(info.forced)},
        {"error", errno_json(info.error)},
        {"backend_version", report.usable() ? Json(report.backend_version) : Json(nullptr)},
        {"backend_version_error", errno_json(report.backend_version_error)},
        {"device",
         {{"path", "/dev/xpmem"},
          {"answers", info.device_error == 0},
          {"status", info.device_status},
          {"error", errno_json(info.device_error)},
          {"module_version",
           info.module_version >= 0 ? Json(info.module_version) : Json(nullptr)}}},
        {"kernel",
         {{"release", info.kernel_release},
          {"euid", info.euid},
          {"cap_sys_ptrace", info.cap_sys_ptrace},
          {"unprivileged_userfaultfd", info.unprivileged_userfaultfd >= 0
                                           ? Json(info.unprivileged_userfaultfd)
                                           : Json(nullptr)},
          {"unprivileged_userfaultfd_error", text_or_null(info.unprivileged_userfaultfd_error)}}},
        {"userfaultfd",
         {{"all_faults", probe_json(info.all_faults)},
          {"user_mode_only", probe_json(info.user_mode_only)},
          {"user_mode_only_in_use", info.user_mode_only_in_use}}},
        {"features", features},
        {"counters", counters},
        {"counters_error", text_or_null(info.counters_error)},
    };
}

std::string probe_text(const xpmem::UserfaultfdProbe &probe) {
    if (probe.error != 0) return "fails: " + errno_text(probe.error);
    return fmt::format("features {:#x}", probe.features);
}

void print_text(const Report &report) {
    const xpmem::SystemInfo &info = report.info;
    auto line = [](int indent, std::string_view label, std::string_view value) {
        std::string text = fmt::format("{:{}}{:<{}} {}", "", indent, fmt::format("{}:", label),
                                       30 - indent, value);
        fmt::print("{}\n", text.substr(0, text.find_last_not_of(' ') + 1));
    };
    line(0, "library", fmt::format("libxpmem {} ({})", info.library_version, info.soname));
    if (!info.library_file.empty()) line(2, "file", info.library_file);
    line(0, "backend", info.backend.empty() ? "none" : info.backend);
    line(2, "reason", info.reason);
    line(2, "XPMEM_BACKEND", info.forced.empty() ? "unset" : info.forced);
    if (info.error != 0) line(2, "error", errno_text(info.error));
    if (report.usable())
        line(2, "version", fmt::format("{:#010x} (xpmem_version())", report.backend_version));
    else
        line(2, "version", "xpmem_version() fails: " + errno_text(report.backend_version_error));
    line(0, "/dev/xpmem",
         info.device_error == 0
             ? info.device_status
             : fmt::format("{} ({})", info.device_status, errno_name(info.device_error)));
    line(2, "module version",
         info.module_version >= 0 ? fmt::format("{:#010x}", info.module_version) : "none");
    line(0, "kernel", info.kernel_release);
    line(2, "euid", std::to_string(info.euid));
    line(2, "CAP_SYS_PTRACE", info.cap_sys_ptrace ? "yes" : "no");
    line(2, "vm.unprivileged_userfaultfd",
         info.unprivileged_userfaultfd >= 0
             ? std::to_string(info.unprivileged_userfaultfd)
             : "unreadable (" + info.unprivileged_userfaultfd_error + ")");
    line(0, "userfaultfd", "");
    line(2, "all faults", probe_text(info.all_faults));
    line(2, "user-mode only", probe_text(info.user_mode_only));
    line(2, "UFFD_USER_MODE_ONLY in use", info.user_mode_only_in_use ? "yes" : "no");
    line(0, "kernel features", "(what the user backend relies on)");
    for (const auto &feature : info.features)
        fmt::print("  {:<3} {:<31} {}\n", feature.available ? "yes" : "no", feature.name,
                   feature.use);
    if (info.counters_error.empty()) {
        line(0, "module counters", "");
        for (const auto &[name, count] : info.counters) line(2, name, std::to_string(count));
    } else {
        line(0, "module counters", "not readable (" + info.counters_error + ")");
    }
    if (!report.usable())
        fmt::print("no usable backend: every libxpmem call fails with {}\n",
                   errno_text(report.backend_version_error));
}

}  // namespace

int main(int argc, char **argv) {
    cxxopts::Options options("xpmem-info",
                             "Which backend libxpmem uses in this process and why, and what "
                             "the kernel offers the user backend.");
    options.add_options()("json", "print one JSON object instead of text")("h,help",
                                                                           "print this help");
    bool json = false;
    try {
        auto arguments = options.parse(argc, argv);
        if (arguments.count("help") != 0) {
            fmt::print("{}", options.help());
            return kExitUsable;
        }
        if (!arguments.unmatched().empty())
            throw cxxopts::exceptions::exception("unexpected argument " +
                                                 arguments.unmatched().front());
        json = arguments["json"].as<bool>();
    } catch (const cxxopts::exceptions::exception &error) {
        fmt::print(stderr, "xpmem-info: {}\n", error.what());
        return kExitUsage;
    }

    Report report{xpmem::system_info()};
    // The library's own first call: it selects the backend as any program's would.
    errno = 0;
    report.backend_version = xpmem_version();
    if (report.backend_version < 0) report.backend_version_error = errno;

    if (json)
        fmt::print("{}\n", to_json(report).dump(2));
    else
        print_text(report);
    return report.usable() ? kExitUsable : kExitNoBackend;
}
