// The owner's cost of being followed: an owner whose memory is attached maps, touches and
// unmaps buffers, timed against a process that never used XPMEM doing the same, side by
// side in one run; and how soon after the owner's munmap an attacher that keeps reading
// sees the memory the owner mapped there instead.
//
// Three processes: a plain one (never calls the library), the owner (a whole-address-space
// segment, as UCX makes) and the attacher (one window around the owner's buffers, attached
// once). They share an anonymous control page made before the fork, not XPMEM memory.
#include "follow.hpp"

#include <malloc.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xpmem.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <new>
#include <xpmem/xpmem.hpp>

#include "peers.hpp"

namespace bench {
namespace {

constexpr std::size_t kBuffer = 1 << 20;    // mmap-backed with glibc's malloc too
constexpr std::size_t kWindow = 256 << 20;  // the attacher's window around the buffers
constexpr std::uint64_t kRoundsPerRun = 400;
constexpr std::uint64_t kLatencyRounds = 200;

enum class Way : std::uint32_t { mmap, malloc };

struct FollowControl {
    std::atomic<std::uint32_t> command{0};  // Command, set by the driver; 0: none
    std::atomic<std::uint32_t> done{0};     // the command's serial, once finished
    std::atomic<std::uint32_t> serial{0};
    Way way{};
    bool attacher_reads = false;  // the attacher reads every page of each round's buffer
    std::uint64_t rounds = 0;
    double seconds = 0;  // result: the timed part, all rounds
    // The owner's segment and window, for the attacher.
    xpmem_segid_t segid = -1;
    std::uintptr_t window = 0;
    // One round's buffer, for the attacher: address and the value written there.
    std::atomic<std::uintptr_t> address{0};
    std::atomic<std::uint64_t> value{0};
    std::atomic<std::uint64_t> read{0};  // the value the attacher saw last
    std::atomic<bool> attached{false};
    double latency_start = 0;  // when the owner called munmap
};

enum Command : std::uint32_t { kRounds = 1, kLatency, kQuit };

FollowControl *make_control() {
    void *page = mmap(nullptr, sizeof(FollowControl), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) die("mmap control");
    return new (page) FollowControl;
}

void touch_pages(char *buffer, std::uint64_t value) {
    for (std::size_t offset = 0; offset < kBuffer; offset += kPage)
        std::memcpy(buffer + offset, &value, sizeof value);
}

char *allocate(Way way) {
    if (way == Way::malloc) return static_cast<char *>(std::malloc(kBuffer));
    void *at = mmap(nullptr, kBuffer, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return at == MAP_FAILED ? nullptr : static_cast<char *>(at);
}

void release(Way way, char *buffer) {
    if (way == Way::malloc)
        std::free(buffer);
    else
        munmap(buffer, kBuffer);
}

// Waits for the attacher to have read `value` (or, without one, does not wait).
void hand_over(FollowControl &control, char *buffer, std::uint64_t value, bool attacher_reads) {
    if (!attacher_reads) return;
    control.address = reinterpret_cast<std::uintptr_t>(buffer);
    control.value = value;
    while (control.read.load() != value) ::sched_yield();  // our service may share the CPU
}

// The timed part of each round: release the last buffer, allocate and touch a new one.
void rounds(FollowControl &control, bool followed) {
    char *buffer = allocate(control.way);
    touch_pages(buffer, 1);
    hand_over(control, buffer, 1, followed && control.attacher_reads);
    double timed = 0;
    for (std::uint64_t round = 2; round < control.rounds + 2; ++round) {
        double start = now_seconds();
        release(control.way, buffer);
        buffer = allocate(control.way);
        if (buffer == nullptr) die("allocate");
        touch_pages(buffer, round);
        timed += now_seconds() - start;
        hand_over(control, buffer, round, followed && control.attacher_reads);
    }
    release(control.way, buffer);
    control.seconds = timed;
}

// The owner replaces the buffer the attacher is reading by a new one at the same address
// (mmap MAP_FIXED: the old one is unmapped with no gap in between) and writes a new value
// there; the attacher notes when it first sees that value.
void latency_rounds(FollowControl &control) {
    char *page = allocate(Way::mmap);
    for (std::uint64_t round = 1; round <= control.rounds; ++round) {
        touch_pages(page, round);
        control.address = reinterpret_cast<std::uintptr_t>(page);
        control.value = round;
        while (control.read.load() != round) ::sched_yield();
        control.latency_start = now_seconds();
        void *fresh = mmap(page, kBuffer, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (fresh != page) die("mmap over the buffer");
        std::uint64_t next = round + kLatencyRounds * 2;
        touch_pages(page, next);
        control.value = next;
        while (control.read.load() != next) ::sched_yield();
    }
    munmap(page, kBuffer);
}

// Serves commands until kQuit. `followed`: this is the owner, whose memory is attached.
void serve(FollowControl &control, bool followed) {
    std::uint32_t seen = 0;
    for (;;) {
        std::uint32_t serial = control.serial.load();
        if (serial == seen) {
            usleep(100);
            continue;
        }
        seen = serial;
        switch (control.command.load()) {
            case kRounds:
                rounds(control, followed);
                break;
            case kLatency:
                latency_rounds(control);
                break;
            default:
                control.done = serial;
                return;
        }
        control.done = serial;
    }
}

void run_owner(FollowControl &control, int cpu) {
    pin_to_cpu(cpu);
    mallopt(M_MMAP_THRESHOLD, 128 << 10);  // fixed: 1 MiB buffers always come from mmap
    auto segment = xpmem::Segment::make_whole_address_space(0600);
    char *probe = allocate(Way::mmap);
    control.window = (reinterpret_cast<std::uintptr_t>(probe) - kWindow / 2) & ~(kPage - 1);
    release(Way::mmap, probe);
    control.segid = segment.id();
    while (!control.attached.load()) usleep(100);
    serve(control, true);
}

// Reads what the owner points at through its one window, for as long as it runs: every
// page of each round's buffer (rounds), or the first word until it changes (latency).
void run_attacher(FollowControl &control, int cpu) {
    pin_to_cpu(cpu);
    while (control.segid < 0) usleep(100);
    auto permit = xpmem::Permit::get(control.segid);
    auto view = permit.attach(static_cast<off_t>(control.window), kWindow);
    control.attached = true;
    std::uint64_t last = 0;
    for (;;) {
        std::uint64_t value = control.value.load();
        if (value == UINT64_MAX) return;
        if (value == last || value == 0) continue;
        std::uintptr_t address = control.address.load();
        const auto *word = reinterpret_cast<const volatile std::uint64_t *>(
            view.data() + (address - control.window));
        if (*word != value) continue;  // not yet: the owner's change is on its way
        if (control.command.load() == kRounds)
            for (std::size_t offset = 0; offset < kBuffer; offset += kPage)
                (void)word[offset / sizeof *word];
        if (control.command.load() == kLatency && value > kLatencyRounds) {
            double seen = now_seconds() - control.latency_start;
            control.seconds += seen;
        }
        last = value;
        control.read = value;
    }
}

pid_t start(void (*body)(FollowControl &, int), FollowControl &control, int cpu) {
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        body(control, cpu);
        _exit(0);
    }
    return pid;
}

double command(FollowControl &control, std::uint32_t what, Way way, bool attacher_reads,
               std::uint64_t rounds) {
    control.command = what;
    control.way = way;
    control.attacher_reads = attacher_reads;
    control.rounds = rounds;
    control.seconds = 0;
    std::uint32_t serial = control.serial.load() + 1;
    control.serial = serial;
    while (control.done.load() != serial) usleep(100);
    return control.seconds;
}

}  // namespace

std::vector<Figure> follow_figures(const Settings &settings) {
    FollowControl *plain = make_control();
    FollowControl *owned = make_control();
    pid_t plain_pid = start(
        [](FollowControl &control, int cpu) {
            pin_to_cpu(cpu);
            mallopt(M_MMAP_THRESHOLD, 128 << 10);
            serve(control, false);
        },
        *plain, settings.cpu_sender);
    pid_t owner = start(run_owner, *owned, settings.cpu_sender);
    pid_t attacher = start(run_attacher, *owned, settings.cpu_receiver);

    struct Case {
        const char *name;
        Way way;
        bool attacher_reads;
    };
    constexpr Case kCases[] = {
        {"mmap+touch+munmap 1M", Way::mmap, false},
        {"malloc+touch+free 1M", Way::malloc, false},
        {"mmap+touch+munmap 1M, attacher reads each", Way::mmap, true},
        {"malloc+touch+free 1M, attacher reads each", Way::malloc, true},
    };
    std::vector<Figure> figures;
    for (const Case &c : kCases) {
        std::vector<double> followed, alone;
        // Turn by turn, so that a slow phase of the machine hits both alike.
        for (int run = -1; run < settings.repeats; ++run) {
            double f = command(*owned, kRounds, c.way, c.attacher_reads, kRoundsPerRun);
            double a = command(*plain, kRounds, c.way, false, kRoundsPerRun);
            if (run < 0) continue;
            followed.push_back(f / kRoundsPerRun);
            alone.push_back(a / kRoundsPerRun);
        }
        figures.push_back({"follow", std::string(c.name) + ", attached owner", kBuffer,
                           summarize(followed), followed});
        figures.push_back(
            {"follow", std::string(c.name) + ", no XPMEM", kBuffer, summarize(alone), alone});
    }
    std::vector<double> latency;
    for (int run = 0; run < settings.repeats; ++run)
        latency.push_back(command(*owned, kLatency, Way::mmap, false, kLatencyRounds) /
                          kLatencyRounds);
    figures.push_back({"follow-latency", "replacement to the attacher seeing the new memory",
                       kBuffer, summarize(latency), latency});

    command(*plain, kQuit, Way::mmap, false, 0);
    owned->value = UINT64_MAX;
    command(*owned, kQuit, Way::mmap, false, 0);
    for (pid_t pid : {plain_pid, owner, attacher}) waitpid(pid, nullptr, 0);
    return figures;
}

}  // namespace bench
