// xpmem-kernel-fuzz: a seeded, reproducible fuzzer for /dev/xpmem.
//
// A supervisor starts --processes workers (odd ones switch to uid 65534), each with a
// sub-seed derived from --seed. Workers issue random sequences of XPMEM ioctls with valid,
// stale, foreign and garbage arguments, interleaved with mmap/munmap/mremap/mprotect/madvise
// on their own memory and on attachments, fork, execve, exit, descriptor passing and more
// (see op_kinds.hpp). Every word read through an attachment is validated against the
// stamp its owner wrote at exactly that address; reads after REMOVE/RELEASE must fault;
// no process may hang; at the end (as root) the module's live-object counters must be zero.
//
//   xpmem-kernel-fuzz [--seed N] [--seconds S | --operations N] [--processes P]
//                     [--disable KIND,...] [--hang-seconds S] [--trace]
#include "fuzz_worker.hpp"
#include "shared_state.hpp"

#include "xpmem_abi.h"

#include <cxxopts.hpp>
#include <fmt/format.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <grp.h>
#include <iostream>
#include <malloc.h>
#include <new>
#include <random>
#include <sstream>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace xpmem_fuzz {

int g_shared_memfd = -1;

namespace {

constexpr const char* kCountersPath = "/sys/kernel/debug/xpmem/counters";
constexpr uid_t kNobody = 65534;

uint64_t monotonic_ns()
{
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<uint64_t>(now.tv_sec) * 1000000000ULL + static_cast<uint64_t>(now.tv_nsec);
}

void say(const std::string& text)
{
    (void)!write(STDOUT_FILENO, text.data(), text.size());
}

SharedState* map_shared(int fd)
{
    void* memory = mmap(nullptr, sizeof(SharedState), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (memory == MAP_FAILED) {
        std::cerr << "mmap of the shared table: " << strerror(errno) << '\n';
        std::exit(2);
    }
    return static_cast<SharedState*>(memory);
}

// --weight KIND=N,...: how often each kind is chosen (the defaults are in op_kinds.hpp).
void parse_weights(const std::vector<std::string>& items, SharedState& shared)
{
    for (size_t kind = 0; kind < kOpKinds; ++kind)
        shared.weights[kind] = kOpKindInfo[kind].weight;
    for (const auto& item : items) {
        const size_t equals = item.find('=');
        bool known = false;
        for (size_t kind = 0; kind < kOpKinds && equals != std::string::npos; ++kind)
            if (kOpKindInfo[kind].name == item.substr(0, equals)) {
                shared.weights[kind] = static_cast<uint32_t>(std::strtoul(item.c_str() + equals + 1, nullptr, 10));
                known = true;
            }
        if (!known) {
            std::cerr << "bad --weight '" << item << "': KIND=N with a kind from --list\n";
            std::exit(2);
        }
    }
}

// --disable: operation kinds, or owner-madvise:ADVICE / attachment-madvise:ADVICE.
void parse_disabled(const std::vector<std::string>& names, SharedState& shared)
{
    const auto advice = advice_names();
    for (const auto& name : names) {
        bool known = false;
        for (size_t kind = 0; kind < kOpKinds; ++kind)
            if (kOpKindInfo[kind].name == name) {
                shared.disabled_mask |= uint64_t{1} << kind;
                known = true;
            }
        for (size_t index = 0; index < advice.size(); ++index) {
            if (name == "owner-madvise:" + advice[index]) {
                shared.disabled_advice_mask |= uint64_t{1} << index;
                known = true;
            }
            if (name == "attachment-madvise:" + advice[index]) {
                shared.disabled_advice_mask |= uint64_t{1} << (index + 32);
                known = true;
            }
        }
        for (size_t index = 0; index < kMremapVariants.size(); ++index)
            if (name == fmt::format("attachment-mremap:{}", kMremapVariants[index])) {
                shared.disabled_mremap_mask |= uint64_t{1} << index;
                known = true;
            }
        if (!known) {
            std::string valid;
            for (const auto& info : kOpKindInfo)
                valid += fmt::format(" {}", info.name);
            for (const auto& item : advice)
                valid += fmt::format(" owner-madvise:{} attachment-madvise:{}", item, item);
            for (const auto& variant : kMremapVariants)
                valid += fmt::format(" attachment-mremap:{}", variant);
            std::cerr << "unknown --disable name '" << name << "'; valid:" << valid << '\n';
            std::exit(2);
        }
    }
}

[[noreturn]] void become_worker(SharedState& shared, uint32_t worker, uint32_t generation, const std::vector<int>& mailboxes,
                                bool as_nobody)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (as_nobody && (setgroups(0, nullptr) != 0 || setresgid(kNobody, kNobody, kNobody) != 0 ||
                      setresuid(kNobody, kNobody, kNobody) != 0)) {
        std::cerr << "worker " << worker << ": cannot switch to uid 65534: " << strerror(errno) << '\n';
        _exit(kFailureExitCode);
    }
    ProcessPlan plan;
    plan.role = Role::worker;
    plan.worker = worker;
    plan.seed = derive_seed(shared.seed, worker, generation);
    plan.mailboxes = mailboxes;
    Worker process(shared, std::move(plan));
    process.run();
}

std::string read_file(const std::string& path)
{
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// The kernel's view of a stuck process: state, wait channel and stack of every thread.
void dump_process(pid_t pid)
{
    const std::string base = fmt::format("/proc/{}/task", pid);
    DIR* tasks = opendir(base.c_str());
    if (tasks == nullptr)
        return;
    while (dirent* task = readdir(tasks)) {
        if (task->d_name[0] == '.')
            continue;
        const std::string dir = base + "/" + task->d_name;
        std::string state;
        std::istringstream status(read_file(dir + "/status"));
        for (std::string line; std::getline(status, line);)
            if (line.rfind("State:", 0) == 0)
                state = line;
        say(fmt::format("    pid {} thread {}: {} wchan {}\n", pid, task->d_name, state, read_file(dir + "/wchan")));
        std::istringstream stack(read_file(dir + "/stack"));
        for (std::string line; std::getline(stack, line);)
            say(fmt::format("      {}\n", line));
    }
    closedir(tasks);
}

std::vector<pid_t> uninterruptible_processes()
{
    std::vector<pid_t> found;
    DIR* proc = opendir("/proc");
    if (proc == nullptr)
        return found;
    while (dirent* entry = readdir(proc)) {
        const pid_t pid = static_cast<pid_t>(std::atoi(entry->d_name));
        if (pid <= 0)
            continue;
        std::istringstream status(read_file(fmt::format("/proc/{}/status", pid)));
        for (std::string line; std::getline(status, line);)
            if (line.rfind("State:", 0) == 0 && line.find('D') != std::string::npos)
                found.push_back(pid);
    }
    closedir(proc);
    return found;
}

void record_failure(SharedState& shared, const std::string& text)
{
    uint32_t expected = 0;
    if (shared.failed.compare_exchange_strong(expected, 1)) {
        const size_t length = std::min(text.size(), sizeof(shared.failure) - 1);
        memcpy(shared.failure, text.data(), length);
        shared.failure[length] = '\0';
    }
    shared.stop.store(1);
}

std::string describe_identity(const Identity& identity)
{
    static constexpr std::array<const char*, 4> kRoles{"worker", "fork child", "exec prelude", "exec continuer"};
    return fmt::format("{} of worker {} (tag {}, pid {}, process seed {})", kRoles[identity.role.load() % 4],
                       identity.worker.load(), identity.tag.load(), identity.pid.load(), identity.seed.load());
}

// Waits up to 10 s for every live-object counter of the module to reach zero.
bool counters_balanced()
{
    std::string text;
    for (int attempt = 0; attempt < 50; ++attempt) {
        text = read_file(kCountersPath);
        if (text.empty()) {
            say(fmt::format("counters: {} not readable; not checked\n", kCountersPath));
            return true;
        }
        bool zero = true;
        std::istringstream lines(text);
        std::string name;
        long value = 0;
        while (lines >> name >> value)
            zero &= value == 0;
        if (zero) {
            say("counters: all zero\n");
            return true;
        }
        usleep(200000);
    }
    say(fmt::format("FAILURE: the module's counters are not zero 10 s after every process ended:\n{}", text));
    return false;
}

struct Options {
    uint64_t seed = 0;
    uint64_t seconds = 0;
    uint64_t operations = 0;
    uint32_t processes = 4;
    uint32_t hang_seconds = 30;
    bool trace = false;
    std::vector<std::string> disabled;
    std::vector<std::string> weights;
};

// The supervisor's heap shares its anon_vma with every worker (fork), and a deadlock in the
// module can leave that lock held: growing the heap (brk) would then block the hang report
// itself. So the heap is grown once, up front, and never trimmed.
void reserve_heap()
{
    constexpr size_t kReserve = size_t{16} << 20;
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    auto* block = static_cast<char*>(malloc(kReserve));
    if (block != nullptr) {
        for (size_t offset = 0; offset < kReserve; offset += kPageSize)
            block[offset] = 1;
        asm volatile("" : : "r"(block) : "memory");  // the compiler may not drop the pair
        free(block);
    }
}

int supervise(const Options& options, const std::string& replay)
{
    reserve_heap();
    if (access(XPMEM_DEVICE_PATH, R_OK | W_OK) != 0) {
        std::cerr << XPMEM_DEVICE_PATH << ": " << strerror(errno) << '\n';
        return 2;
    }
    g_shared_memfd = memfd_create("xpmem-fuzz-state", 0);  // no CLOEXEC: execve passes it on
    if (g_shared_memfd < 0 || ftruncate(g_shared_memfd, sizeof(SharedState)) != 0) {
        std::cerr << "memfd: " << strerror(errno) << '\n';
        return 2;
    }
    SharedState& shared = *map_shared(g_shared_memfd);
    shared.magic = SharedState::kMagic;
    shared.seed = options.seed;
    shared.trace = options.trace;
    shared.hang_seconds = options.hang_seconds;
    shared.processes = options.processes;
    shared.operations_per_worker = options.operations;
    parse_disabled(options.disabled, shared);
    parse_weights(options.weights, shared);
    const uint64_t start = monotonic_ns();
    shared.deadline_ns = options.seconds ? start + options.seconds * 1000000000ULL : 0;

    // Orphans (children of workers that ended first) come back to us to be reaped.
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    std::vector<int> mailboxes;
    for (uint32_t worker = 0; worker < options.processes; ++worker) {
        int pair[2];
        if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, pair) != 0) {
            std::cerr << "socketpair: " << strerror(errno) << '\n';
            return 2;
        }
        mailboxes.push_back(pair[0]);  // send end
        mailboxes.push_back(pair[1]);  // receive end
    }
    const bool root = geteuid() == 0;
    say(fmt::format("xpmem-kernel-fuzz: seed {} | {} processes ({}), {} | replay: {}\n", options.seed, options.processes,
                    root ? "odd ones as uid 65534" : "all as the caller",
                    options.seconds ? fmt::format("{} s", options.seconds) : fmt::format("{} operations each", options.operations),
                    replay));
    const auto spawn = [&](uint32_t worker) {
        const uint32_t generation = shared.workers[worker].generation.load();
        const pid_t pid = fork();
        if (pid == 0)
            become_worker(shared, worker, generation, mailboxes, root && worker % 2 == 1);
        shared.workers[worker].pid.store(pid);
    };
    for (uint32_t worker = 0; worker < options.processes; ++worker)
        spawn(worker);

    bool hung = false;
    const uint64_t grace = (uint64_t{options.hang_seconds} * 2 + 60) * 1000000000ULL;
    for (;;) {
        int status = 0;
        pid_t pid = 0;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            for (auto& identity : shared.identities)
                if (identity.pid.load() == pid && identity.state.load() == static_cast<uint32_t>(IdentityState::running))
                    identity.state.store(static_cast<uint32_t>(IdentityState::exited));
            const bool clean = WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == kRespawnExitCode);
            const bool reported = WIFEXITED(status) && WEXITSTATUS(status) == kFailureExitCode;
            if (!clean && !reported && !shared.stop.load())
                record_failure(shared, fmt::format("process {} ended with {}", pid,
                                                   WIFSIGNALED(status) ? fmt::format("signal {}", WTERMSIG(status))
                                                                       : fmt::format("exit {}", WEXITSTATUS(status))));
            for (uint32_t worker = 0; worker < options.processes; ++worker) {
                if (shared.workers[worker].pid.load() != pid)
                    continue;
                if (WIFEXITED(status) && WEXITSTATUS(status) == kRespawnExitCode && !shared.stop.load()) {
                    shared.workers[worker].generation.fetch_add(1);
                    spawn(worker);
                } else {
                    shared.workers[worker].finished.store(1);
                }
            }
        }
        if (pid < 0 && errno == ECHILD)
            break;
        const uint64_t now = monotonic_ns();
        std::vector<const Identity*> stuck;
        for (const auto& identity : shared.identities)
            if (identity.state.load() == static_cast<uint32_t>(IdentityState::running) &&
                now - std::min(now, identity.progress_ns.load()) > uint64_t{options.hang_seconds} * 1000000000ULL)
                stuck.push_back(&identity);
        const bool overdue = shared.deadline_ns && now > shared.deadline_ns + grace;
        if (!stuck.empty() || overdue) {
            hung = true;
            std::string report = fmt::format("FAILURE: hang (seed {}): {}\n", options.seed,
                                             stuck.empty() ? "processes still running long after the deadline" : "no progress");
            for (const Identity* identity : stuck)
                report += fmt::format("  {} stuck in op #{} {} for {} s\n", describe_identity(*identity),
                                      identity->op_number.load(), op_name(static_cast<OpKind>(identity->op_kind.load() % kOpKinds)),
                                      (now - identity->progress_ns.load()) / 1000000000ULL);
            say(report);
            record_failure(shared, report);
            say("  kernel stacks of every fuzzing process, and of every other task in D state:\n");
            std::vector<pid_t> dumped;
            for (const auto& identity : shared.identities)
                if (identity.state.load() == static_cast<uint32_t>(IdentityState::running)) {
                    dump_process(identity.pid.load());
                    dumped.push_back(identity.pid.load());
                }
            // A lock holder may be a process that already said it exited (it is in exit_mmap).
            for (pid_t other : uninterruptible_processes())
                if (std::find(dumped.begin(), dumped.end(), other) == dumped.end())
                    dump_process(other);
            for (const auto& identity : shared.identities)
                if (identity.state.load() == static_cast<uint32_t>(IdentityState::running))
                    kill(identity.pid.load(), SIGKILL);
            for (int attempt = 0; attempt < 50 && waitpid(-1, &status, WNOHANG) >= 0; ++attempt)
                usleep(100000);
            break;
        }
        usleep(100000);
    }
    for (int fd : mailboxes)
        close(fd);  // descriptors still in flight in them are released now

    const double elapsed = static_cast<double>(monotonic_ns() - start) / 1e9;
    const auto& counters = shared.counters;
    uint64_t total = 0;
    std::string kinds;
    for (size_t kind = 0; kind < kOpKinds; ++kind) {
        total += counters.attempts[kind].load();
        kinds += fmt::format(" {}={}/{}", kOpKindInfo[kind].name, counters.attempts[kind].load(), counters.successes[kind].load());
    }
    say(fmt::format("summary: seed {} | {:.1f} s | {} operations (kind=executed/succeeded):{} | SIGBUS {} SIGSEGV {} caught | "
                    "{} words validated ({} zero) | {} faults after revocation | {} expected rejections | {} process images\n",
                    options.seed, elapsed, total, kinds, counters.sigbus.load(), counters.sigsegv.load(),
                    counters.words_validated.load(), counters.zero_words.load(), counters.revoked_faults.load(),
                    counters.expected_rejections.load(), counters.processes.load()));
    bool failed = shared.failed.load() != 0;
    if (!hung && root)
        failed |= !counters_balanced();
    if (failed) {
        say(fmt::format("RESULT: FAIL seed {} | replay: {}\nfirst failure:\n{}\n", options.seed, replay,
                        shared.failed.load() ? shared.failure : "(see above)"));
        return 1;
    }
    say(fmt::format("RESULT: PASS seed {}\n", options.seed));
    return 0;
}

// After execve: "memfd,worker,seed,operations,depth,parent_tag" and "fd:file:pid:tag,...".
[[noreturn]] void continue_after_exec(const std::string& plan_text, const std::string& fds_text)
{
    ProcessPlan plan;
    plan.role = Role::exec_continuer;
    unsigned long long values[6] = {};
    if (std::sscanf(plan_text.c_str(), "%llu,%llu,%llu,%llu,%llu,%llu", &values[0], &values[1], &values[2], &values[3],
                    &values[4], &values[5]) != 6) {
        std::cerr << "bad --exec-continue\n";
        _exit(kFailureExitCode);
    }
    g_shared_memfd = static_cast<int>(values[0]);
    plan.worker = static_cast<uint32_t>(values[1]);
    plan.seed = values[2];
    plan.operations = values[3];
    plan.depth = static_cast<uint32_t>(values[4]);
    plan.parent_tag = static_cast<uint32_t>(values[5]);
    std::istringstream items(fds_text);
    for (std::string item; std::getline(items, item, ',');) {
        InheritedFd inherited{};
        unsigned long long file_id = 0;
        if (std::sscanf(item.c_str(), "%d:%llu:%d:%u", &inherited.fd, &file_id, &inherited.opener_pid, &inherited.opener_tag) == 4) {
            inherited.file_id = file_id;
            plan.inherited.push_back(inherited);
        }
    }
    SharedState& shared = *map_shared(g_shared_memfd);
    if (shared.magic != SharedState::kMagic)
        _exit(kFailureExitCode);
    Worker process(shared, std::move(plan));
    process.run();
}

} // namespace
} // namespace xpmem_fuzz

int main(int argc, char** argv)
{
    using namespace xpmem_fuzz;
    cxxopts::Options parser("xpmem-kernel-fuzz", "Seeded, reproducible fuzzer for /dev/xpmem");
    parser.add_options()
        ("seed", "seed (default: random, printed)", cxxopts::value<uint64_t>())
        ("seconds", "run this long (default 60 unless --operations)", cxxopts::value<uint64_t>())
        ("operations", "operations per worker (fork and exec children add their own)", cxxopts::value<uint64_t>())
        ("processes", "worker processes (odd ones run as uid 65534 when started as root)", cxxopts::value<uint32_t>()->default_value("4"))
        ("disable", "operation kinds (or owner-madvise:ADVICE, attachment-madvise:ADVICE) never to use",
         cxxopts::value<std::vector<std::string>>()->default_value(""))
        ("weight", "KIND=N,...: change how often kinds are chosen (defaults: op_kinds.hpp)",
         cxxopts::value<std::vector<std::string>>()->default_value(""))
        ("hang-seconds", "a process without progress this long is a hang", cxxopts::value<uint32_t>()->default_value("30"))
        ("trace", "print every operation")
        ("list", "list the operation kinds and advice names")
        ("exec-continue", "internal: continue after execve", cxxopts::value<std::string>())
        ("exec-fds", "internal: descriptors inherited across execve", cxxopts::value<std::string>()->default_value("-"))
        ("h,help", "this help");
    cxxopts::ParseResult arguments;
    try {
        arguments = parser.parse(argc, argv);
    } catch (const std::exception& error) {
        std::cerr << error.what() << '\n' << parser.help() << '\n';
        return 2;
    }
    if (arguments.count("exec-continue"))
        continue_after_exec(arguments["exec-continue"].as<std::string>(), arguments["exec-fds"].as<std::string>());
    if (arguments.count("help")) {
        std::cout << parser.help() << '\n';
        return 0;
    }
    if (arguments.count("list")) {
        for (const auto& info : kOpKindInfo)
            std::cout << info.name << '\n';
        for (const auto& advice : advice_names())
            std::cout << "owner-madvise:" << advice << "\nattachment-madvise:" << advice << '\n';
        for (const auto& variant : kMremapVariants)
            std::cout << "attachment-mremap:" << variant << '\n';
        return 0;
    }
    Options options;
    options.seed = arguments.count("seed") ? arguments["seed"].as<uint64_t>()
                                           : (uint64_t{std::random_device{}()} << 32 | std::random_device{}());
    options.operations = arguments.count("operations") ? arguments["operations"].as<uint64_t>() : 0;
    options.seconds = arguments.count("seconds") ? arguments["seconds"].as<uint64_t>() : (options.operations ? 0 : 60);
    options.processes = std::clamp<uint32_t>(arguments["processes"].as<uint32_t>(), 1, kMaxWorkers);
    options.hang_seconds = std::max<uint32_t>(arguments["hang-seconds"].as<uint32_t>(), 5);
    options.trace = arguments.count("trace") != 0;
    for (const auto& name : arguments["disable"].as<std::vector<std::string>>())
        if (!name.empty())
            options.disabled.push_back(name);
    for (const auto& item : arguments["weight"].as<std::vector<std::string>>())
        if (!item.empty())
            options.weights.push_back(item);
    std::string replay = fmt::format("xpmem-kernel-fuzz --seed {} --processes {}", options.seed, options.processes);
    if (options.seconds)
        replay += fmt::format(" --seconds {}", options.seconds);
    if (options.operations)
        replay += fmt::format(" --operations {}", options.operations);
    if (!options.disabled.empty()) {
        replay += " --disable ";
        for (size_t index = 0; index < options.disabled.size(); ++index)
            replay += (index ? "," : "") + options.disabled[index];
    }
    if (!options.weights.empty()) {
        replay += " --weight ";
        for (size_t index = 0; index < options.weights.size(); ++index)
            replay += (index ? "," : "") + options.weights[index];
    }
    return supervise(options, replay);
}
