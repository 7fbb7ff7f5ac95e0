// Runs `xpmem-bench --quick --json FILE` (argv[1] is the tool) and checks that the run
// succeeded and that its JSON has every field: the suite asserts nothing about speed.

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

namespace {

int failures = 0;

void check(bool condition, const std::string &what) {
    if (!condition) {
        std::cerr << "check failed: " << what << "\n";
        ++failures;
    }
}

// Runs the tool and returns its wait status. The tool dies with this process: a test that
// CTest kills at its timeout leaves no benchmark spinning on the CPUs.
int run_tool(const char *tool, const std::string &json_path) {
    pid_t parent = ::getpid();
    pid_t child = ::fork();
    if (child == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(127);  // the parent is gone already
        ::execl(tool, tool, "--quick", "--json", json_path.c_str(), static_cast<char *>(nullptr));
        ::_exit(127);
    }
    int status = -1;
    if (child > 0) ::waitpid(child, &status, 0);
    return status;
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::cerr << "usage: " << argv[0] << " PATH-TO-xpmem-bench\n";
        return 2;
    }
    std::string json_path = "/tmp/xpmem-bench-check-" + std::to_string(getpid()) + ".json";
    int status = run_tool(argv[1], json_path);
    check(status == 0, std::string(argv[1]) + " --quick --json " + json_path +
                           " ended with wait status " + std::to_string(status));
    std::ifstream file(json_path);
    nlohmann::json run = nlohmann::json::parse(file, nullptr, false);
    std::remove(json_path.c_str());
    check(!run.is_discarded(), "the JSON parses");
    if (run.is_discarded()) return 1;
    for (const char *field :
         {"tool", "backend", "command", "cpus", "rotate", "repeats", "units", "figures", "targets"})
        check(run.contains(field), std::string("top-level field ") + field);
    check(run["backend"] == "user" || run["backend"] == "kernel", "backend is user or kernel");

    std::set<std::string> kinds, mechanisms;
    for (const auto &figure : run["figures"]) {
        for (const char *field : {"kind", "mechanism", "size", "median", "min", "max", "runs"})
            check(figure.contains(field), std::string("figure field ") + field);
        double median = figure["median"], low = figure["min"], high = figure["max"];
        check(low > 0 && low <= median && median <= high, "0 < min <= median <= max");
        kinds.insert(figure["kind"]);
        if (figure["kind"] == "bandwidth") mechanisms.insert(figure["mechanism"]);
    }
    for (const char *kind : {"bandwidth", "latency", "pingpong", "attach", "attach-floor",
                             "attach-populate", "attach-faults", "follow", "follow-latency"})
        check(kinds.count(kind) == 1, std::string("figures of kind ") + kind);
    if (run["backend"] == "user")  // only the user backend makes memory shareable
        for (const char *kind : {"convert", "convert-memcpy"})
            check(kinds.count(kind) == 1, std::string("figures of kind ") + kind);
    for (const char *mechanism : {"xpmem", "cma", "shm-2copy", "memcpy"})
        check(mechanisms.count(mechanism) == 1, std::string("bandwidth of ") + mechanism);
    // Seven of transfer and attach, four of the owner's cost of being followed.
    check(run["targets"].size() == 11, "all eleven target figures are reported");
    for (const auto &target : run["targets"])
        for (const char *field : {"figure", "measured", "bound", "at_least", "met"})
            check(target.contains(field), std::string("target field ") + field);
    if (failures == 0) std::cout << "xpmem-bench --quick: ran, JSON complete\n";
    return failures == 0 ? 0 : 1;
}
