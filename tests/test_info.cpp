// xpmem-info (tools/info) and xpmem::system_info(): the report names the backend the
// library really selects, says why, and states this machine's facts as the test finds
// them. The tool runs as its own process; its path is XPMEM_INFO_TOOL if set (the VM
// guest), else the build tree's.

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xpmem.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>
#include <xpmem/info.hpp>
#include <xpmem/xpmem.hpp>

#include "harness.hpp"
#include "xpmem_abi.h"

namespace {

using Json = nlohmann::json;

constexpr uid_t kNobody = 65534;

const char *tool() {
    const char *path = std::getenv("XPMEM_INFO_TOOL");
    return path != nullptr ? path : XPMEM_INFO_TOOL_PATH;
}

struct ToolRun {
    int status = -1;  // exit status; -1 if it did not exit
    std::string out;
};

// Runs the tool with `arguments`, XPMEM_BACKEND = `backend` (unset if null), as `uid` if
// given (the test runs as root then).
ToolRun run_tool(std::vector<std::string> arguments, const char *backend,
                 std::optional<uid_t> uid = std::nullopt) {
    int pipe_fds[2];
    EXPECT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipe_fds[1], STDOUT_FILENO);
        if (backend != nullptr)
            setenv("XPMEM_BACKEND", backend, 1);
        else
            unsetenv("XPMEM_BACKEND");
        if (uid) xt::become(*uid, *uid);
        std::vector<char *> argv{const_cast<char *>(tool())};
        for (auto &argument : arguments) argv.push_back(argument.data());
        argv.push_back(nullptr);
        execv(argv[0], argv.data());
        std::perror(tool());
        _exit(127);
    }
    close(pipe_fds[1]);
    ToolRun run;
    char buffer[4096];
    for (ssize_t got; (got = read(pipe_fds[0], buffer, sizeof buffer)) > 0;)
        run.out.append(buffer, static_cast<std::size_t>(got));
    close(pipe_fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status)) run.status = WEXITSTATUS(status);
    return run;
}

Json run_json(const char *backend, int *status = nullptr, std::optional<uid_t> uid = std::nullopt) {
    ToolRun run = run_tool({"--json"}, backend, uid);
    if (status != nullptr) *status = run.status;
    Json report = Json::parse(run.out, nullptr, false);
    EXPECT_FALSE(report.is_discarded()) << "not JSON:\n" << run.out;
    return report;
}

// What the library itself says in a process of its own: "backend version" or "error E".
std::string library_says(const char *backend) {
    int pipe_fds[2];
    EXPECT_EQ(pipe(pipe_fds), 0);
    xt::Process child([&] {
        if (backend != nullptr)
            setenv("XPMEM_BACKEND", backend, 1);
        else
            unsetenv("XPMEM_BACKEND");
        errno = 0;
        int version = xpmem_version();
        std::string answer =
            version < 0 ? "error " + std::to_string(errno)
                        : std::string(xpmem::backend_name()) + " " + std::to_string(version);
        CHILD_CHECK(write(pipe_fds[1], answer.data(), answer.size()) ==
                    static_cast<ssize_t>(answer.size()));
    });
    close(pipe_fds[1]);
    EXPECT_CHILD_OK(child);
    char buffer[256] = {};
    ssize_t got = read(pipe_fds[0], buffer, sizeof buffer - 1);
    close(pipe_fds[0]);
    return got > 0 ? std::string(buffer, static_cast<std::size_t>(got)) : "";
}

bool kernel_device_answers() {
    auto backends = xt::available_backends();
    return std::find(backends.begin(), backends.end(), "kernel") != backends.end();
}

// The errno of opening /dev/xpmem as the library does (0 if it opens).
int device_open_error() {
    int fd = open(XPMEM_DEVICE_PATH, O_RDWR | O_CLOEXEC);
    if (fd < 0) return errno;
    close(fd);
    return 0;
}

std::string file_text(const char *path) {
    std::ifstream file(path);
    std::ostringstream text;
    text << file.rdbuf();
    return text.str();
}

std::string hex(int value) {
    char text[16];
    std::snprintf(text, sizeof text, "%#010x", value);
    return text;
}

// The text report's "label: value" lines (the first of each label) and its feature lines
// ("yes NAME use"), by name.
struct TextReport {
    std::map<std::string, std::string> values;
    std::map<std::string, bool> features;
};

TextReport parse_text(const std::string &text) {
    TextReport report;
    std::istringstream lines(text);
    bool in_features = false;  // the lines under "kernel features:"
    for (std::string line; std::getline(lines, line);) {
        std::size_t start = line.find_first_not_of(' ');
        if (start == std::string::npos) continue;
        if (start == 0) in_features = line.rfind("kernel features:", 0) == 0;
        line = line.substr(start);
        for (const char *mark : {"yes ", "no "}) {
            if (in_features && line.rfind(mark, 0) == 0) {
                std::istringstream words(line.substr(std::strlen(mark)));
                std::string name;
                words >> name;
                report.features[name] = mark[0] == 'y';
            }
        }
        std::size_t colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::size_t value = line.find_first_not_of(' ', colon + 1);
        report.values.emplace(line.substr(0, colon),
                              value == std::string::npos ? "" : line.substr(value));
    }
    return report;
}

TEST(Info, JsonNamesTheBackendTheLibrarySelects) {
    int status = -1;
    Json report = run_json(nullptr, &status);
    std::string says = library_says(nullptr);
    ASSERT_FALSE(report.is_discarded());
    EXPECT_EQ(status, 0);
    EXPECT_EQ(report["usable"], true);
    EXPECT_EQ(report["forced"], nullptr);
    EXPECT_EQ(says, report["backend"].get<std::string>() + " " +
                        std::to_string(report["backend_version"].get<int>()));
    EXPECT_EQ(report["backend"], kernel_device_answers() ? "kernel" : "user");
    EXPECT_EQ(report["library"]["version"], XPMEM_PROJECT_VERSION);
#ifndef XPMEM_INFO_STATIC
    // The file the library was loaded from is named by its soname: the dynamic linker
    // looks it up by that. (Linked statically, the library has no file of its own.)
    ASSERT_TRUE(report["library"]["file"].is_string());
    std::string file = report["library"]["file"];
    EXPECT_EQ(file.substr(file.rfind('/') + 1), report["library"]["soname"]);
#endif
}

TEST(Info, ForcedUserBackend) {
    int status = -1;
    Json report = run_json("user", &status);
    ASSERT_FALSE(report.is_discarded());
    EXPECT_EQ(status, 0);
    EXPECT_EQ(report["backend"], "user");
    EXPECT_EQ(report["forced"], "user");
    EXPECT_EQ(report["reason"].get<std::string>().rfind("forced", 0), 0U) << report["reason"];
    EXPECT_EQ(report["backend_version"], XPMEM_USER_BACKEND_FLAG | XPMEM_USER_BACKEND_VERSION);
    EXPECT_EQ(library_says("user"), "user " + std::to_string(report["backend_version"].get<int>()));
}

TEST(Info, ForcedKernelBackend) {
    int status = -1;
    Json report = run_json("kernel", &status);
    ASSERT_FALSE(report.is_discarded());
    EXPECT_EQ(report["forced"], "kernel");
    int error = device_open_error();
    if (kernel_device_answers()) {  // the VM guest, with the module loaded
        EXPECT_EQ(status, 0);
        EXPECT_EQ(report["backend"], "kernel");
        int fd = open(XPMEM_DEVICE_PATH, O_RDWR | O_CLOEXEC);
        ASSERT_GE(fd, 0);
        int version = ioctl(fd, XPMEM_CMD_VERSION, nullptr);
        close(fd);
        EXPECT_EQ(report["device"]["module_version"], version);
        EXPECT_EQ(report["backend_version"], version);
        EXPECT_EQ(library_says("kernel"), "kernel " + std::to_string(version));
    } else {  // no module: every call fails, with the errno of opening the device
        ASSERT_NE(error, 0);
        EXPECT_EQ(status, 1);
        EXPECT_EQ(report["usable"], false);
        EXPECT_EQ(report["backend"], nullptr);
        EXPECT_EQ(report["error"]["errno"], error);
        EXPECT_EQ(report["backend_version_error"]["errno"], error);
        EXPECT_EQ(report["device"]["error"]["errno"], error);
        EXPECT_EQ(report["reason"],
                  std::string("XPMEM_BACKEND=kernel, but " XPMEM_DEVICE_PATH ": ") +
                      std::strerror(error));
        EXPECT_EQ(library_says("kernel"), "error " + std::to_string(error));
    }
}

TEST(Info, UnknownForcedBackend) {
    int status = -1;
    Json report = run_json("bogus", &status);
    ASSERT_FALSE(report.is_discarded());
    EXPECT_EQ(status, 1);
    EXPECT_EQ(report["usable"], false);
    EXPECT_EQ(report["backend"], nullptr);
    EXPECT_EQ(report["forced"], "bogus");
    EXPECT_EQ(report["error"]["name"], "EINVAL");
    EXPECT_NE(report["reason"].get<std::string>().find("XPMEM_BACKEND=bogus"), std::string::npos);
    EXPECT_EQ(library_says("bogus"), "error " + std::to_string(EINVAL));
}

TEST(Info, SysctlAsInProc) {
    Json report = run_json(nullptr);
    ASSERT_FALSE(report.is_discarded());
    std::string value = file_text("/proc/sys/vm/unprivileged_userfaultfd");
    ASSERT_FALSE(value.empty());
    EXPECT_EQ(report["kernel"]["unprivileged_userfaultfd"], std::stoi(value));
}

// The module's counters are there exactly when this process can read them.
TEST(Info, CountersWhenReadable) {
    Json report = run_json(nullptr);
    ASSERT_FALSE(report.is_discarded());
    int fd = open("/sys/kernel/debug/xpmem/counters", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        EXPECT_EQ(report["counters_error"], nullptr);
        for (const char *name : {"processes", "segments", "permits", "attachments", "vmas"})
            EXPECT_TRUE(report["counters"].contains(name)) << name;
    } else {
        EXPECT_EQ(report["counters"], nullptr);
        EXPECT_EQ(report["counters_error"],
                  std::string("/sys/kernel/debug/xpmem/counters: ") + std::strerror(errno));
    }
}

// Without CAP_SYS_PTRACE and with vm.unprivileged_userfaultfd = 0 a process may catch
// user-mode faults only: the library then opens its userfaultfds with UFFD_USER_MODE_ONLY.
TEST(Info, UnprivilegedUserUsesUserModeOnly) {
    std::optional<uid_t> as;
    if (xt::running_as_root()) as = kNobody;
    int status = -1;
    Json report = run_json(nullptr, &status, as);
    ASSERT_FALSE(report.is_discarded());
    EXPECT_EQ(status, 0);  // the user backend needs no privilege
    EXPECT_EQ(report["kernel"]["euid"], as ? *as : geteuid());
    EXPECT_EQ(report["kernel"]["cap_sys_ptrace"], false);
    EXPECT_EQ(report["features"]["UFFD_USER_MODE_ONLY"]["available"], true);
    EXPECT_EQ(report["userfaultfd"]["user_mode_only"]["error"], nullptr);
    if (std::stoi(file_text("/proc/sys/vm/unprivileged_userfaultfd")) == 0) {
        EXPECT_EQ(report["userfaultfd"]["user_mode_only_in_use"], true);
        EXPECT_EQ(report["userfaultfd"]["all_faults"]["error"]["name"], "EPERM");
    } else {
        EXPECT_EQ(report["userfaultfd"]["user_mode_only_in_use"], false);
    }
    ToolRun text = run_tool({}, nullptr, as);
    EXPECT_EQ(parse_text(text.out).values["UFFD_USER_MODE_ONLY in use"],
              report["userfaultfd"]["user_mode_only_in_use"] == true ? "yes" : "no");
}

TEST(Info, PrivilegedUserCatchesAllFaults) {
    if (!xt::running_as_root()) GTEST_SKIP() << "needs root";
    Json report = run_json(nullptr);
    ASSERT_FALSE(report.is_discarded());
    EXPECT_EQ(report["kernel"]["cap_sys_ptrace"], true);
    EXPECT_EQ(report["userfaultfd"]["user_mode_only_in_use"], false);
    EXPECT_EQ(report["userfaultfd"]["all_faults"]["error"], nullptr);
}

// The text report states every fact of the JSON one, for each way of selecting.
TEST(Info, TextSaysWhatJsonSays) {
    for (const char *backend : {static_cast<const char *>(nullptr), "user", "kernel", "bogus"}) {
        SCOPED_TRACE(backend != nullptr ? backend : "(unset)");
        int json_status = -1;
        Json report = run_json(backend, &json_status);
        ASSERT_FALSE(report.is_discarded());
        ToolRun run = run_tool({}, backend);
        EXPECT_EQ(run.status, json_status);
        TextReport text = parse_text(run.out);
        auto &values = text.values;
        EXPECT_EQ(values["library"], "libxpmem " + report["library"]["version"].get<std::string>() +
                                         " (" + report["library"]["soname"].get<std::string>() +
                                         ")");
        EXPECT_EQ(values["backend"],
                  report["backend"].is_null() ? "none" : report["backend"].get<std::string>());
        EXPECT_EQ(values["reason"], report["reason"]);
        EXPECT_EQ(values["XPMEM_BACKEND"],
                  report["forced"].is_null() ? "unset" : report["forced"].get<std::string>());
        if (report["usable"] == true)
            EXPECT_EQ(values["version"].substr(0, 10), hex(report["backend_version"]));
        else
            EXPECT_NE(values["version"].find(report["backend_version_error"]["name"]),
                      std::string::npos);
        EXPECT_EQ(values["/dev/xpmem"].rfind(report["device"]["status"], 0), 0U);
        EXPECT_EQ(values["module version"], report["device"]["module_version"].is_null()
                                                ? "none"
                                                : hex(report["device"]["module_version"]));
        EXPECT_EQ(values["kernel"], report["kernel"]["release"]);
        EXPECT_EQ(values["euid"], std::to_string(report["kernel"]["euid"].get<int>()));
        EXPECT_EQ(values["CAP_SYS_PTRACE"],
                  report["kernel"]["cap_sys_ptrace"] == true ? "yes" : "no");
        EXPECT_EQ(values["vm.unprivileged_userfaultfd"],
                  std::to_string(report["kernel"]["unprivileged_userfaultfd"].get<int>()));
        for (const auto &[label, key] : {std::pair{"all faults", "all_faults"},
                                         std::pair{"user-mode only", "user_mode_only"}}) {
            const Json &probe = report["userfaultfd"][key];
            EXPECT_EQ(values[label], probe["error"].is_null()
                                         ? "features " + probe["features_hex"].get<std::string>()
                                         : "fails: " + probe["error"]["name"].get<std::string>() +
                                               " (" + probe["error"]["message"].get<std::string>() +
                                               ")");
        }
        EXPECT_EQ(values["UFFD_USER_MODE_ONLY in use"],
                  report["userfaultfd"]["user_mode_only_in_use"] == true ? "yes" : "no");
        EXPECT_EQ(text.features.size(), report["features"].size());
        for (const auto &[name, feature] : report["features"].items()) {
            std::string first_word = name.substr(0, name.find(' '));  // "memfd seals"
            ASSERT_TRUE(text.features.count(first_word)) << name;
            EXPECT_EQ(text.features[first_word], feature["available"].get<bool>()) << name;
        }
        if (report["counters"].is_null()) {
            EXPECT_EQ(values["module counters"],
                      "not readable (" + report["counters_error"].get<std::string>() + ")");
        } else {
            for (const auto &[name, count] : report["counters"].items())
                EXPECT_EQ(values[name], std::to_string(count.get<long long>())) << name;
        }
    }
}

}  // namespace
