// xpmem-protocol-fuzz: a seeded mutational fuzzer for the user backend's wire protocol.
//
// An owner process (libxpmem, user backend) publishes segments of modes 0600, 0644 and
// 0666 over private memory and over a shared memfd region, all filled with a pattern that
// names segment and offset in every word, and keeps removing and re-making one of them.
// A well-behaved attacher keeps attachments of the others and checks them all along.
// Fuzzing processes (odd ones as uid 65534 when started as root) connect raw to the
// owner's service and send valid, mutated and garbage messages, descriptors, half-closes
// and connection storms, checking every answer against a model of the protocol
// (protocol_fuzz_worker.cpp). At the end the owner's memory must be unchanged, the owner
// alive and serving a fresh attacher, its descriptors and RSS back near where they were,
// and its service idle.
//
//   xpmem-protocol-fuzz [--seed N] [--inputs N | --seconds S] [--fuzzers F]

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <cxxopts.hpp>
#include <fstream>
#include <iostream>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <vector>
#include <xpmem/xpmem.hpp>

#include "fuzz_random.hpp"
#include "protocol_fuzz.hpp"
#include "util/unique_fd.hpp"

namespace protocol_fuzz {
namespace {

using xpmem::util::UniqueFd;

constexpr uid_t kNobody = 65534;
constexpr std::uint64_t kHangNs = 30'000'000'000ULL;
constexpr int kChurnIntervalMs = 5;
constexpr int kFdTolerance = 2;
constexpr long kRssToleranceKib = 4 * 1024;
constexpr long kIdleCpuTicksAllowed = 5;  // of a second, at USER_HZ 100: 50 ms

void say(const std::string &text) {
    (void)!::write(STDOUT_FILENO, text.data(), text.size());
}

// ---- control messages between the supervisor and the owner / the attacher -------------

enum Command : int { kReady = 1, kStartChurn, kStopChurn, kVerify, kExit };

void control_send(int fd, int value) {
    if (::send(fd, &value, sizeof value, MSG_NOSIGNAL) != sizeof value) _exit(2);
}

// The next value, or 0 on timeout (-1: wait forever) or when the other side is gone.
int control_receive(int fd, int timeout_ms) {
    pollfd entry{fd, POLLIN, 0};
    if (::poll(&entry, 1, timeout_ms) != 1) return 0;
    int value = 0;
    return ::recv(fd, &value, sizeof value, 0) == sizeof value ? value : 0;
}

// Words of segment `segment` at `view` that are not its stamp (the hole page is skipped:
// it cannot be read).
std::size_t damaged_words(std::size_t segment, const std::byte *view) {
    const SegmentSpec &spec = kSegments[segment];
    const auto *words = reinterpret_cast<const std::uint64_t *>(view);
    std::size_t damaged = 0;
    for (std::size_t i = 0; i < segment_size(segment) / 8; ++i)
        if (i * 8 / kPage != spec.hole_page && words[i] != stamp(segment, i * 8)) ++damaged;
    return damaged;
}

// ---- the owner -------------------------------------------------------------------------

[[noreturn]] void owner_main(Shared &shared, int control) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    std::vector<std::byte *> memory;
    std::vector<UniqueFd> memfds;  // kept open: the service reopens them through /proc
    for (std::size_t i = 0; i < kSegments.size(); ++i) {
        const SegmentSpec &spec = kSegments[i];
        std::size_t size = segment_size(i);
        void *at;
        if (spec.memfd) {
            UniqueFd &memfd =
                memfds.emplace_back(::memfd_create(spec.name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
            if (!memfd || ::ftruncate(memfd.get(), static_cast<off_t>(size)) < 0 ||
                (spec.file_mode != 0 && ::fchmod(memfd.get(), spec.file_mode) < 0) ||
                (spec.sealed &&
                 ::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) < 0))
                _exit(2);
            at = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.get(), 0);
        } else {
            at = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        }
        if (at == MAP_FAILED) _exit(2);
        auto *words = static_cast<std::uint64_t *>(at);
        for (std::size_t w = 0; w < size / 8; ++w) words[w] = stamp(i, w * 8);
        if (spec.hole_page != kNoHole)
            ::mprotect(static_cast<std::byte *>(at) + spec.hole_page * kPage, kPage, PROT_NONE);
        memory.push_back(static_cast<std::byte *>(at));
    }
    {
        std::vector<xpmem::Segment> segments;
        auto make = [&](std::size_t i) {
            auto segment = xpmem::Segment::make({memory[i], segment_size(i)}, kSegments[i].mode);
            shared.segids[i].store(segment.id());
            return segment;
        };
        for (std::size_t i = 0; i < kSegments.size(); ++i) segments.push_back(make(i));
        control_send(control, kReady);
        bool churning = false;
        for (;;) {
            int command = control_receive(control, churning ? kChurnIntervalMs : -1);
            if (command == 0 && churning) {
                std::int64_t old = segments[kChurn].id();
                segments[kChurn].remove();
                std::uint64_t slot = shared.stale_count.load();
                shared.stale[slot % kStaleSegids].store(old);
                shared.stale_count.store(slot + 1);  // after the slot: readers see it filled
                segments[kChurn] = make(kChurn);
                shared.churns.fetch_add(1);
            } else if (command == kStartChurn || command == kStopChurn) {
                churning = command == kStartChurn;
                control_send(control, kReady);
            } else if (command == kVerify) {
                std::size_t damaged = 0;
                for (std::size_t i = 0; i < kSegments.size(); ++i)
                    damaged += damaged_words(i, memory[i]);
                control_send(control, static_cast<int>(damaged));
            } else {
                break;  // kExit, or the supervisor is gone
            }
        }
    }
    _exit(0);
}

// ---- the well-behaved attacher ---------------------------------------------------------

[[noreturn]] void attacher_main(Shared &shared, int control) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    try {
        {  // converts the churn segment's memory once, before the owner's baseline is taken
            auto permit = xpmem::Permit::get(shared.segids[kChurn].load());
            auto view = permit.attach(0, segment_size(kChurn));
            if (damaged_words(kChurn, view.data()) != 0)
                report_failure(shared, "the well-behaved attacher saw damage in churn-0666");
        }
        std::vector<xpmem::Permit> permits;
        std::vector<xpmem::Attachment> views;
        for (std::size_t i = 0; i < kChurn; ++i) {
            auto access = i % 2 == 0 ? xpmem::Access::read_write : xpmem::Access::read_only;
            permits.push_back(xpmem::Permit::get(shared.segids[i].load(), access));
            views.push_back(permits.back().attach(0, segment_size(i)));
        }
        for (bool first = true;; first = false) {
            for (std::size_t i = 0; i < views.size(); ++i)
                if (std::size_t damaged = damaged_words(i, views[i].data()))
                    report_failure(shared, fmt::format("the well-behaved attacher saw {} damaged "
                                                       "words in {}",
                                                       damaged, kSegments[i].name));
            shared.legit_checks.fetch_add(1);
            if (first) control_send(control, kReady);
            if (control_receive(control, 5) != 0) break;
        }
    } catch (const std::exception &error) {
        report_failure(shared, fmt::format("the well-behaved attacher: {}", error.what()));
        _exit(1);
    }
    _exit(0);
}

// A fresh attacher after the fuzzing: every segment still attaches and shows its pattern.
bool fresh_attacher_succeeds(Shared &shared) {
    pid_t pid = ::fork();
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        try {
            for (std::size_t i = 0; i < kSegments.size(); ++i) {
                auto permit = xpmem::Permit::get(shared.segids[i].load(), xpmem::Access::read_only);
                auto view = permit.attach(0, segment_size(i));
                if (std::size_t damaged = damaged_words(i, view.data())) {
                    report_failure(shared, fmt::format("the fresh attacher saw {} damaged words "
                                                       "in {}",
                                                       damaged, kSegments[i].name));
                    _exit(1);
                }
            }
        } catch (const std::exception &error) {
            report_failure(shared, fmt::format("the fresh attacher: {}", error.what()));
            _exit(1);
        }
        _exit(0);
    }
    for (int waited = 0; waited < 3000; ++waited) {
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) && WEXITSTATUS(status) == 0;
        ::usleep(10000);
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    report_failure(shared, "the fresh attacher did not finish within 30 s");
    return false;
}

// ---- looking at the owner from outside ---------------------------------------------------

int open_fds(pid_t pid) {
    std::string path = fmt::format("/proc/{}/fd", pid);
    DIR *directory = ::opendir(path.c_str());
    if (directory == nullptr) return -1;
    int count = 0;
    while (dirent *entry = ::readdir(directory))
        if (entry->d_name[0] != '.') ++count;
    ::closedir(directory);
    return count;
}

long rss_kib(pid_t pid) {
    std::ifstream status(fmt::format("/proc/{}/status", pid));
    for (std::string line; std::getline(status, line);)
        if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
    return -1;
}

// User plus system time of all of `pid`'s threads, in clock ticks.
long cpu_ticks(pid_t pid) {
    std::ifstream stat(fmt::format("/proc/{}/stat", pid));
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    std::size_t end = text.rfind(')');
    if (end == std::string::npos) return -1;
    std::istringstream fields(text.substr(end + 2));
    std::string field;
    long utime = 0, stime = 0;
    for (int index = 3; fields >> field; ++index) {  // field 3 is the state
        if (index == 14) utime = std::strtol(field.c_str(), nullptr, 10);
        if (index == 15) {
            stime = std::strtol(field.c_str(), nullptr, 10);
            break;
        }
    }
    return utime + stime;
}

// The owner's threads as the kernel sees them, for a hang report.
std::string describe_threads(pid_t pid) {
    std::string text;
    std::string base = fmt::format("/proc/{}/task", pid);
    DIR *tasks = ::opendir(base.c_str());
    if (tasks == nullptr) return "  (gone)\n";
    while (dirent *task = ::readdir(tasks)) {
        if (task->d_name[0] == '.') continue;
        std::ifstream stat(base + "/" + task->d_name + "/stat");
        std::ifstream wchan(base + "/" + task->d_name + "/wchan");
        std::string line, channel;
        std::getline(stat, line);
        std::getline(wchan, channel);
        text += fmt::format("  thread {}: {} | wchan {}\n", task->d_name, line, channel);
    }
    ::closedir(tasks);
    return text;
}

// Waits until `condition` holds, at most `seconds`.
template <class Condition>
bool eventually(Condition condition, int seconds) {
    for (int tenth = 0; tenth < seconds * 100; ++tenth) {
        if (condition()) return true;
        ::usleep(10000);
    }
    return condition();
}

// ---- the supervisor ----------------------------------------------------------------------

struct Options {
    std::uint64_t seed = 0;
    std::uint64_t inputs = 0;
    std::uint64_t seconds = 0;
    unsigned fuzzers = 4;
};

struct Child {
    pid_t pid = -1;
    int status = 0;
    bool done = false;
};

Child spawn(const std::function<void()> &body) {
    std::fflush(nullptr);
    Child child;
    child.pid = ::fork();
    if (child.pid < 0) {
        std::perror("fork");
        std::exit(2);
    }
    if (child.pid == 0) {
        body();
        _exit(0);
    }
    return child;
}

std::string describe_status(int status) {
    if (WIFSIGNALED(status))
        return fmt::format("signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
    return fmt::format("exit {}", WEXITSTATUS(status));
}

int supervise(const Options &options, const std::string &replay) {
    ::setenv("XPMEM_BACKEND", "user", 1);
    void *table =
        ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (table == MAP_FAILED) {
        std::perror("mmap");
        return 2;
    }
    Shared &shared = *new (table) Shared;
    shared.seed = options.seed;
    shared.owner_uid = ::geteuid();
    shared.owner_gid = ::getegid();
    const bool root = ::geteuid() == 0;
    say(fmt::format("xpmem-protocol-fuzz: seed {} | {} fuzzers ({}) | {} | replay: {}\n",
                    options.seed, options.fuzzers,
                    root ? "odd ones as uid 65534" : "all as the caller",
                    options.inputs ? fmt::format("{} inputs", options.inputs)
                                   : fmt::format("{} s", options.seconds),
                    replay));

    int owner_pair[2], attacher_pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, owner_pair) < 0 ||
        ::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, attacher_pair) < 0) {
        std::perror("socketpair");
        return 2;
    }
    UniqueFd owner_control(owner_pair[0]), attacher_control(attacher_pair[0]);
    Child owner = spawn([&] { owner_main(shared, owner_pair[1]); });
    ::close(owner_pair[1]);
    shared.owner = owner.pid;
    if (control_receive(owner_control.get(), 30000) != kReady) {
        say("FAILURE: the owner did not publish its segments\nRESULT: FAIL\n");
        return 1;
    }
    Child attacher = spawn([&] { attacher_main(shared, attacher_pair[1]); });
    ::close(attacher_pair[1]);
    shared.attacher = attacher.pid;
    if (control_receive(attacher_control.get(), 30000) != kReady) {
        say("FAILURE: the well-behaved attacher did not attach\nRESULT: FAIL\n");
        return 1;
    }
    std::string service = find_service(owner.pid);
    if (service.empty()) {
        say("FAILURE: no service of the owner in /proc/net/unix\nRESULT: FAIL\n");
        return 1;
    }
    // The service notices the warm-up attacher's end asynchronously: let the count settle.
    int baseline_fds = open_fds(owner.pid);
    while (eventually([&] { return open_fds(owner.pid) != baseline_fds; }, 1))
        baseline_fds = open_fds(owner.pid);
    long baseline_rss = rss_kib(owner.pid);

    control_send(owner_control.get(), kStartChurn);
    control_receive(owner_control.get(), 30000);
    const std::uint64_t start = monotonic_ns();
    const std::uint64_t deadline = options.seconds ? start + options.seconds * 1'000'000'000ULL : 0;
    std::vector<Child> fuzzers;
    for (unsigned index = 0; index < options.fuzzers; ++index) {
        std::uint64_t quota =
            options.inputs / options.fuzzers + (index < options.inputs % options.fuzzers ? 1 : 0);
        shared.progress_ns[index].store(monotonic_ns());
        fuzzers.push_back(spawn([&, index, quota] {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (root && index % 2 == 1 &&
                (::setgroups(0, nullptr) != 0 || ::setresgid(kNobody, kNobody, kNobody) != 0 ||
                 ::setresuid(kNobody, kNobody, kNobody) != 0)) {
                report_failure(shared, fmt::format("fuzzer {}: cannot become uid 65534: {}", index,
                                                   std::strerror(errno)));
                _exit(1);
            }
            run_fuzzer(shared, index, xpmem_fuzz::derive_seed(options.seed, index), quota, service);
        }));
    }

    // Until every fuzzer is done: the owner and the attacher must live, no fuzzer may stall.
    bool hung = false;
    for (std::size_t left = fuzzers.size(); left > 0;) {
        ::usleep(20000);
        if (deadline && monotonic_ns() > deadline) shared.stop.store(1);
        int status = 0;
        for (pid_t pid; (pid = ::waitpid(-1, &status, WNOHANG)) > 0;) {
            for (std::size_t index = 0; index < fuzzers.size(); ++index) {
                if (fuzzers[index].pid != pid) continue;
                fuzzers[index] = {pid, status, true};
                --left;
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                    report_failure(shared, fmt::format("fuzzer {} ended with {}", index,
                                                       describe_status(status)));
            }
            if (pid == owner.pid || pid == attacher.pid) {
                (pid == owner.pid ? owner : attacher) = {pid, status, true};
                report_failure(shared, fmt::format("the {} died during the fuzzing: {}",
                                                   pid == owner.pid ? "owner" : "attacher",
                                                   describe_status(status)));
                shared.stop.store(1);
            }
        }
        std::uint64_t now = monotonic_ns();
        for (std::size_t index = 0; index < fuzzers.size() && !hung; ++index) {
            if (fuzzers[index].done || now < shared.progress_ns[index].load() + kHangNs) continue;
            hung = true;
            report_failure(shared, fmt::format("fuzzer {} made no progress for {} s; the owner's "
                                               "threads:\n{}",
                                               index, kHangNs / 1'000'000'000ULL,
                                               describe_threads(owner.pid)));
            shared.stop.store(1);
            for (const Child &fuzzer : fuzzers)
                if (!fuzzer.done) ::kill(fuzzer.pid, SIGKILL);
        }
    }
    const double elapsed = static_cast<double>(monotonic_ns() - start) / 1e9;

    // The owner after the storm.
    std::string health;
    if (!owner.done) {
        control_send(owner_control.get(), kStopChurn);
        if (control_receive(owner_control.get(), 30000) != kReady)
            report_failure(shared, "the owner did not stop churning");
        if (!fresh_attacher_succeeds(shared))
            report_failure(shared, "the owner does not serve a fresh well-behaved attacher");
        if (!attacher.done) {
            control_send(attacher_control.get(), kExit);
            int status = 0;
            ::waitpid(attacher.pid, &status, 0);
            attacher = {attacher.pid, status, true};
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                report_failure(shared, fmt::format("the well-behaved attacher ended with {}",
                                                   describe_status(status)));
        }
        // Sessions close as the service notices their ends.
        eventually([&] { return open_fds(owner.pid) <= baseline_fds + kFdTolerance; }, 10);
        int final_fds = open_fds(owner.pid);
        long final_rss = rss_kib(owner.pid);
        long before = cpu_ticks(owner.pid);
        ::sleep(1);
        long idle_ticks = cpu_ticks(owner.pid) - before;
        health =
            fmt::format("owner descriptors {} -> {} | RSS {} -> {} KiB | CPU over 1 s idle {} ms",
                        baseline_fds, final_fds, baseline_rss, final_rss, idle_ticks * 10);
        if (final_fds > baseline_fds + kFdTolerance)
            report_failure(shared, fmt::format("the owner holds {} descriptors, {} before the "
                                               "fuzzing",
                                               final_fds, baseline_fds));
        if (final_rss > baseline_rss + kRssToleranceKib)
            report_failure(shared, fmt::format("the owner's RSS grew from {} to {} KiB",
                                               baseline_rss, final_rss));
        if (idle_ticks > kIdleCpuTicksAllowed)
            report_failure(shared, fmt::format("the owner used {} ms of CPU in an idle second",
                                               idle_ticks * 10));
        control_send(owner_control.get(), kVerify);
        int damaged = control_receive(owner_control.get(), 30000);
        if (damaged != 0)
            report_failure(shared, fmt::format("the owner's memory has {} damaged words", damaged));
        control_send(owner_control.get(), kExit);
        int status = 0;
        ::waitpid(owner.pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            report_failure(shared, fmt::format("the owner ended with {}", describe_status(status)));
    }
    if (!attacher.done) {
        ::kill(attacher.pid, SIGKILL);
        ::waitpid(attacher.pid, nullptr, 0);
    }
    if (shared.legit_checks.load() < 2)
        report_failure(shared, "the well-behaved attacher checked nothing during the fuzzing");

    std::uint64_t total = 0;
    std::string kinds;
    for (std::size_t op = 0; op < kOpNames.size(); ++op) {
        total += shared.inputs[op].load();
        kinds += fmt::format(" {}={}", kOpNames[op], shared.inputs[op].load());
    }
    say(fmt::format(
        "summary: seed {} | {:.1f} s | {} inputs ({:.0f}/s):{} | {} replies checked | "
        "{} closes checked | {} sessions refused | {} attaches mapped, {} descriptors, "
        "{} words checked | {} churns | {} attacher passes | {} | {} failures\n",
        options.seed, elapsed, total, static_cast<double>(total) / elapsed, kinds,
        shared.replies_checked.load(), shared.closes_checked.load(), shared.sessions_refused.load(),
        shared.attaches_checked.load(), shared.descriptors_checked.load(),
        shared.words_checked.load(), shared.churns.load(), shared.legit_checks.load(), health,
        shared.failures.load()));
    if (options.inputs != 0 && total < options.inputs && !shared.failures.load())
        report_failure(shared, fmt::format("only {} of {} inputs ran", total, options.inputs));
    if (shared.failures.load() != 0) {
        say(fmt::format("RESULT: FAIL seed {} | replay: {}\nfirst failure: {}\n", options.seed,
                        replay, shared.first_failure));
        return 1;
    }
    say(fmt::format("RESULT: PASS seed {}\n", options.seed));
    return 0;
}

}  // namespace
}  // namespace protocol_fuzz

int main(int argc, char **argv) {
    using namespace protocol_fuzz;
    cxxopts::Options parser("xpmem-protocol-fuzz",
                            "Seeded mutational fuzzer for the user backend's wire protocol");
    // clang-format off
    parser.add_options()
        ("seed", "seed (default: random, printed)", cxxopts::value<std::uint64_t>())
        ("inputs", "inputs in all (default: --seconds 60)", cxxopts::value<std::uint64_t>())
        ("seconds", "run this long", cxxopts::value<std::uint64_t>())
        ("fuzzers", "fuzzing processes (odd ones as uid 65534 when started as root)",
         cxxopts::value<unsigned>()->default_value("4"))
        ("h,help", "this help");
    // clang-format on
    cxxopts::ParseResult arguments;
    try {
        arguments = parser.parse(argc, argv);
    } catch (const std::exception &error) {
        std::cerr << error.what() << '\n' << parser.help() << '\n';
        return 2;
    }
    if (arguments.count("help")) {
        std::cout << parser.help() << '\n';
        return 0;
    }
    Options options;
    options.seed = arguments.count("seed")
                       ? arguments["seed"].as<std::uint64_t>()
                       : (std::uint64_t{std::random_device{}()} << 32 | std::random_device{}());
    options.inputs = arguments.count("inputs") ? arguments["inputs"].as<std::uint64_t>() : 0;
    options.seconds = arguments.count("seconds") ? arguments["seconds"].as<std::uint64_t>()
                                                 : (options.inputs ? 0 : 60);
    options.fuzzers = std::clamp(arguments["fuzzers"].as<unsigned>(), 1U, kMaxFuzzers);
    std::string replay =
        fmt::format("xpmem-protocol-fuzz --seed {} --fuzzers {}", options.seed, options.fuzzers);
    if (options.inputs) replay += fmt::format(" --inputs {}", options.inputs);
    if (options.seconds) replay += fmt::format(" --seconds {}", options.seconds);
    return supervise(options, replay);
}
