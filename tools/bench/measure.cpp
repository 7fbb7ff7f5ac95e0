#include "measure.hpp"

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xpmem.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>
#include <xpmem/xpmem.hpp>

namespace bench {
namespace {

constexpr std::size_t kMiB = 1 << 20;
constexpr double kGiB = 1024.0 * 1024 * 1024;

std::size_t page_up(std::size_t size) {
    return (size + kPage - 1) / kPage * kPage;
}

// Attaches `size` bytes at `offset` of a segment, read-write; dies on failure.
std::byte *attach(xpmem_apid_t apid, std::size_t offset, std::size_t size) {
    xpmem_addr address{apid, static_cast<off_t>(offset)};
    void *view = xpmem_attach(address, page_up(size), nullptr);
    if (view == reinterpret_cast<void *>(-1)) die(std::string("xpmem_attach: ") + strerror(errno));
    return static_cast<std::byte *>(view);
}

xpmem_apid_t get(xpmem_segid_t segid) {
    xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, nullptr);
    if (apid < 0) die(std::string("xpmem_get: ") + strerror(errno));
    return apid;
}

xpmem_segid_t make(std::span<std::byte> memory) {
    xpmem_segid_t segid =
        xpmem_make(memory.data(), memory.size(), XPMEM_PERMIT_MODE, reinterpret_cast<void *>(0600));
    if (segid < 0) die(std::string("xpmem_make: ") + strerror(errno));
    return segid;
}

// Copies `size` bytes out of process `pid` at `remote` with process_vm_readv.
void cma_read(pid_t pid, void *local, std::uintptr_t remote, std::size_t size) {
    iovec to{local, size};
    iovec from{reinterpret_cast<void *>(remote), size};
    while (size > 0) {
        ssize_t got = process_vm_readv(pid, &to, 1, &from, 1, 0);
        if (got <= 0) die(std::string("process_vm_readv: ") + strerror(errno));
        size -= static_cast<std::size_t>(got);
        to = {static_cast<char *>(to.iov_base) + got, size};
        from = {static_cast<char *>(from.iov_base) + got, size};
    }
}

// ---- the sender -------------------------------------------------------------------

struct Sender {
    Shared shared;
    Control &control;
    std::size_t buffer_size;
    std::span<std::byte> buffers;        // rotate * buffer_size
    std::byte *receiver_view = nullptr;  // the receiver's latency buffer, attached
    std::span<std::byte> scratch;        // where pulled messages land

    std::byte *buffer(std::uint64_t i) {
        return buffers.data() + (i % control.rotate) * buffer_size;
    }

    // Announces the messages a window at once, once the previous window was taken.
    void signal_windows() {
        for (std::uint64_t i = 0; i < control.iterations; i += kWindow) {
            control.taken.wait_for(i);
            control.ready.set(std::min(i + kWindow, control.iterations));
        }
    }

    void copy_into_ring() {
        std::uint64_t chunk = 0;
        for (std::uint64_t i = 0; i < control.iterations; ++i) {
            std::byte *source = buffer(i);
            for (std::size_t offset = 0; offset < control.size; offset += kChunk, ++chunk) {
                while (chunk - control.received_chunks.get() >= kSlots) __builtin_ia32_pause();
                std::size_t length = std::min(kChunk, control.size - offset);
                std::memcpy(shared.ring.data() + (chunk % kSlots) * kChunk, source + offset,
                            length);
                control.sent_chunks.set(chunk + 1);
            }
        }
    }

    // The pong side: pull the receiver's message, then offer ours.
    void answer_pings() {
        std::size_t size = control.size;
        for (std::uint64_t i = 1; i <= control.iterations; ++i) {
            control.taken.wait_for(i);
            switch (control.mechanism) {
                case Mechanism::xpmem:
                    std::memcpy(scratch.data(), receiver_view, size);
                    break;
                case Mechanism::cma:
                    cma_read(control_receiver_pid(), scratch.data(), control.receiver_buffer, size);
                    break;
                default:
                    std::memcpy(scratch.data(), shared.to_sender.data(), size);
                    std::memcpy(shared.to_receiver.data(), buffers.data(), size);
                    break;
            }
            control.ready.set(i);
        }
    }

    void answer_words() {
        std::atomic_ref<std::uint64_t> ping(*reinterpret_cast<std::uint64_t *>(receiver_view));
        std::atomic_ref<std::uint64_t> pong(*reinterpret_cast<std::uint64_t *>(buffers.data()));
        for (std::uint64_t i = 1; i <= control.iterations; ++i) {
            while (ping.load(std::memory_order_acquire) < i) __builtin_ia32_pause();
            pong.store(i, std::memory_order_release);
        }
    }

    pid_t control_receiver_pid() const { return getppid(); }

    void serve() {
        for (std::uint64_t n = 1;; ++n) {
            control.command.wait_idle_for(n);
            switch (control.op) {
                case Op::quit:
                    control.done.set(n);
                    return;
                case Op::bandwidth_signal:
                    signal_windows();
                    break;
                case Op::bandwidth_2copy:
                    copy_into_ring();
                    break;
                case Op::latency:
                    answer_pings();
                    break;
                case Op::pingpong_word:
                    answer_words();
                    break;
            }
            control.done.set(n);
        }
    }
};

void run_sender(Shared shared, const Settings &settings, std::size_t buffer_size,
                std::size_t attach_size) {
    pin_to_cpu(settings.cpu_sender);
    Control &control = *shared.control;
    Sender sender{shared,      control,
                  buffer_size, populated(settings.rotate * buffer_size),
                  nullptr,     populated(kLatencyMax)};
    for (std::uint64_t word = 0; word < 8; ++word)
        reinterpret_cast<std::uint64_t *>(sender.buffers.data())[word] = 0;
    control.sender_pid = getpid();
    control.rotate = settings.rotate;
    control.sender_base = reinterpret_cast<std::uintptr_t>(sender.buffers.data());
    for (std::size_t i = 0; i < settings.rotate; ++i)
        control.sender_buffers[i] = reinterpret_cast<std::uintptr_t>(sender.buffer(i));
    control.sender_segment = make(sender.buffers);
    if (attach_size > 0) {
        auto range = populated(attach_size);
        control.attach_buffer = reinterpret_cast<std::uintptr_t>(range.data());
        control.attach_segment = make(range);
    }
    control.setup.set(1);
    control.setup.wait_for(2);
    sender.receiver_view = attach(get(control.receiver_segment), 0, kLatencyMax);
    sender.serve();
}

// ---- the receiver -----------------------------------------------------------------

class Receiver {
  public:
    Receiver(Shared shared, const Settings &settings, std::size_t buffer_size)
        : shared_(shared),
          control_(*shared.control),
          settings_(settings),
          buffer_size_(buffer_size) {
        destinations_ = populated(settings.rotate * buffer_size);
        sources_ = populated(settings.rotate * buffer_size);
        latency_buffer_ = populated(kLatencyMax);
        std::memset(latency_buffer_.data(), 0, 64);
        control_.receiver_buffer = reinterpret_cast<std::uintptr_t>(latency_buffer_.data());
        control_.receiver_segment = make(latency_buffer_);
        control_.setup.wait_for(1);
        sender_apid_ = get(control_.sender_segment);
        sender_view_ = attach(sender_apid_, 0, settings.rotate * buffer_size);
        control_.setup.set(2);
    }

    ~Receiver() { command(Op::quit, Mechanism::xpmem, 0, 0); }

    // Seconds per message, for one run.
    double bandwidth(Mechanism mechanism, std::size_t size) {
        std::uint64_t iterations =
            std::clamp<std::uint64_t>(settings_.bytes_per_run / size, 3, 200000);
        return transfer(mechanism, size, iterations) / static_cast<double>(iterations);
    }

    // Half a round trip, for one run.
    double latency(Mechanism mechanism, std::size_t size) {
        std::uint64_t iterations = std::clamp<std::uint64_t>((64 * kMiB) / size, 20, 20000);
        return ping_pong(mechanism, size, iterations) / static_cast<double>(iterations) / 2;
    }

    // 8-byte ping-pong through attachments (each side writes its own page, reads the
    // other's through an attachment), and the same between two threads of this process
    // sharing one cache line.
    std::pair<std::vector<double>, std::vector<double>> word_ping_pong() {
        std::vector<double> attached, threads;
        std::uint64_t iterations = settings_.pingpongs;
        for (int run = -1; run < settings_.repeats; ++run) {
            std::memset(latency_buffer_.data(), 0, 8);
            std::memset(sender_view_, 0, 8);  // the sender's word, through the attachment
            auto *pong_word = reinterpret_cast<std::uint64_t *>(sender_view_);
            std::atomic_ref<std::uint64_t> ping(
                *reinterpret_cast<std::uint64_t *>(latency_buffer_.data()));
            std::atomic_ref<std::uint64_t> pong(*pong_word);
            double start = start_command(Op::pingpong_word, Mechanism::xpmem, 8, iterations);
            for (std::uint64_t i = 1; i <= iterations; ++i) {
                ping.store(i, std::memory_order_release);
                while (pong.load(std::memory_order_acquire) < i) __builtin_ia32_pause();
            }
            double seconds = now_seconds() - start;
            finish_command();
            if (run >= 0) attached.push_back(seconds / static_cast<double>(iterations) / 2);
            if (run >= 0)
                threads.push_back(thread_ping_pong(iterations) / static_cast<double>(iterations) /
                                  2);
        }
        return {attached, threads};
    }

    // Seconds per MiB for xpmem_attach + first touch of every page (a fresh attachment each
    // time), and for mmap(MAP_POPULATE) of a memfd of the same size, with and without the
    // same first touch.
    struct AttachCost {
        std::vector<double> attached, floor, populate_only;
        std::vector<double> faults;  // page faults taken by this process, per MiB
    };
    AttachCost attach_cost(std::size_t size) {
        AttachCost cost;
        auto &[attached, floor, populate_only, faults] = cost;
        double mib = static_cast<double>(size) / kMiB;
        int memfd = memfd_create("xpmem-bench-floor", MFD_CLOEXEC);
        if (memfd < 0 || ftruncate(memfd, static_cast<off_t>(size)) != 0) die("memfd");
        void *warm = mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_POPULATE, memfd, 0);
        munmap(warm, size);  // the pages exist now, as the owner's do
        for (int run = -1; run < settings_.repeats; ++run) {
            long faults_before = page_faults();
            double start = now_seconds();
            std::byte *view = attach(attach_apid(), 0, size);
            touch(view, size);
            double seconds = now_seconds() - start;
            long faulted = page_faults() - faults_before;
            xpmem_detach(view);
            if (run >= 0) attached.push_back(seconds / mib);
            if (run >= 0) faults.push_back(static_cast<double>(faulted) / mib);

            // The floor touches every page too: on this kind of machine the TLB misses of
            // the first pass cost more than building the page tables.
            start = now_seconds();
            void *mapped = mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_POPULATE, memfd, 0);
            if (mapped == MAP_FAILED) die("mmap floor");
            double populated_at = now_seconds();
            touch(static_cast<std::byte *>(mapped), size);
            seconds = now_seconds() - start;
            munmap(mapped, size);
            if (run >= 0) floor.push_back(seconds / mib);
            if (run >= 0) populate_only.push_back((populated_at - start) / mib);
        }
        close(memfd);
        return cost;
    }

    // The first attach of the whole attach range: the user backend makes the owner's
    // private memory shareable there. Returns seconds per GiB, and a memcpy of the same
    // size into fresh memory (which also has to allocate every page), per GiB.
    std::pair<double, double> first_attach(std::size_t size) {
        double start = now_seconds();
        std::byte *view = attach(attach_apid(), 0, size);
        double seconds = now_seconds() - start;
        xpmem_detach(view);
        auto source = populated(size);
        void *fresh =
            mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        start = now_seconds();
        std::memcpy(fresh, source.data(), size);
        double copy = now_seconds() - start;
        munmap(fresh, size);
        munmap(source.data(), size);
        double gib = static_cast<double>(size) / kGiB;
        return {seconds / gib, copy / gib};
    }

  private:
    static long page_faults() {
        rusage usage{};
        getrusage(RUSAGE_SELF, &usage);
        return usage.ru_minflt + usage.ru_majflt;
    }

    xpmem_apid_t attach_apid() {
        if (attach_apid_ < 0) attach_apid_ = get(control_.attach_segment);
        return attach_apid_;
    }

    static void touch(const std::byte *view, std::size_t size) {
        std::uint64_t sum = 0;
        for (std::size_t offset = 0; offset < size; offset += kPage)
            sum += static_cast<std::uint64_t>(
                *reinterpret_cast<const volatile std::byte *>(view + offset));
        asm volatile("" : : "r"(sum));
    }

    double start_command(Op op, Mechanism mechanism, std::size_t size, std::uint64_t iterations) {
        control_.ready.set(0);
        control_.taken.set(0);
        control_.sent_chunks.set(0);
        control_.received_chunks.set(0);
        control_.op = op;
        control_.mechanism = mechanism;
        control_.size = size;
        control_.iterations = iterations;
        control_.command.set(++commands_);
        return now_seconds();
    }
    void finish_command() { control_.done.wait_for(commands_); }
    void command(Op op, Mechanism mechanism, std::size_t size, std::uint64_t iterations) {
        start_command(op, mechanism, size, iterations);
        finish_command();
    }

    std::byte *destination(std::uint64_t i) {
        return destinations_.data() + (i % settings_.rotate) * buffer_size_;
    }

    // Moves `iterations` messages of `size` bytes from the sender; returns the seconds.
    double transfer(Mechanism mechanism, std::size_t size, std::uint64_t iterations) {
        bool cold = settings_.rotate > 1;
        if (mechanism == Mechanism::memcpy_local) {
            double start = now_seconds();
            for (std::uint64_t i = 0; i < iterations; ++i)
                std::memcpy(destination(i), sources_.data() + (i % settings_.rotate) * buffer_size_,
                            size);
            return now_seconds() - start;
        }
        if (mechanism == Mechanism::shm_2copy) {
            double start = start_command(Op::bandwidth_2copy, mechanism, size, iterations);
            std::uint64_t chunk = 0;
            for (std::uint64_t i = 0; i < iterations; ++i) {
                std::byte *target = destination(i);
                for (std::size_t offset = 0; offset < size; offset += kChunk, ++chunk) {
                    control_.sent_chunks.wait_for(chunk + 1);
                    std::size_t length = std::min(kChunk, size - offset);
                    std::memcpy(target + offset, shared_.ring.data() + (chunk % kSlots) * kChunk,
                                length);
                    control_.received_chunks.set(chunk + 1);
                }
            }
            double seconds = now_seconds() - start;
            finish_command();
            return seconds;
        }
        double start = start_command(Op::bandwidth_signal, mechanism, size, iterations);
        for (std::uint64_t i = 0; i < iterations; ++i) {
            if (i % kWindow == 0) control_.ready.wait_for(std::min(i + kWindow, iterations));
            std::size_t slot = i % settings_.rotate;
            if (mechanism == Mechanism::cma) {
                cma_read(control_.sender_pid, destination(i), control_.sender_buffers[slot], size);
            } else if (cold) {  // a different buffer each time: the attachment cache misses
                std::byte *view = attach(sender_apid_, slot * buffer_size_, size);
                std::memcpy(destination(i), view, size);
                xpmem_detach(view);
            } else {
                std::memcpy(destination(i), sender_view_, size);
            }
            if ((i + 1) % kWindow == 0 || i + 1 == iterations) control_.taken.set(i + 1);
        }
        double seconds = now_seconds() - start;
        finish_command();
        return seconds;
    }

    double ping_pong(Mechanism mechanism, std::size_t size, std::uint64_t iterations) {
        std::byte *scratch = destinations_.data();
        double start = start_command(Op::latency, mechanism, size, iterations);
        for (std::uint64_t i = 1; i <= iterations; ++i) {
            if (mechanism == Mechanism::shm_2copy)
                std::memcpy(shared_.to_sender.data(), latency_buffer_.data(), size);
            control_.taken.set(i);
            control_.ready.wait_for(i);
            switch (mechanism) {
                case Mechanism::xpmem:
                    std::memcpy(scratch, sender_view_, size);
                    break;
                case Mechanism::cma:
                    cma_read(control_.sender_pid, scratch, control_.sender_base, size);
                    break;
                default:
                    std::memcpy(scratch, shared_.to_receiver.data(), size);
                    break;
            }
        }
        double seconds = now_seconds() - start;
        finish_command();
        return seconds;
    }

    double thread_ping_pong(std::uint64_t iterations) {
        struct alignas(64) Line {
            std::atomic<std::uint64_t> ping{0}, pong{0};
        } line;
        std::thread partner([&] {
            pin_to_cpu(settings_.cpu_sender);
            for (std::uint64_t i = 1; i <= iterations; ++i) {
                while (line.ping.load(std::memory_order_acquire) < i) __builtin_ia32_pause();
                line.pong.store(i, std::memory_order_release);
            }
        });
        double start = now_seconds();
        for (std::uint64_t i = 1; i <= iterations; ++i) {
            line.ping.store(i, std::memory_order_release);
            while (line.pong.load(std::memory_order_acquire) < i) __builtin_ia32_pause();
        }
        double seconds = now_seconds() - start;
        partner.join();
        return seconds;
    }

    Shared shared_;
    Control &control_;
    const Settings &settings_;
    std::size_t buffer_size_;
    std::span<std::byte> destinations_, sources_, latency_buffer_;
    xpmem_apid_t sender_apid_ = -1, attach_apid_ = -1;
    std::byte *sender_view_ = nullptr;
    std::uint64_t commands_ = 0;
};

}  // namespace

Stat summarize(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    if (values.empty()) return {};
    std::size_t n = values.size();
    double median = n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
    return {median, values.front(), values.back()};
}

double paired_ratio(const Figure &a, const Figure &b) {
    std::vector<double> ratios;
    for (std::size_t i = 0; i < std::min(a.runs.size(), b.runs.size()); ++i)
        ratios.push_back(a.runs[i] / b.runs[i]);
    if (ratios.empty()) return a.value.median / b.value.median;
    return summarize(ratios).median;
}

std::vector<Figure> run_all(const Settings &settings, std::string &backend) {
    std::size_t buffer_size =
        page_up(*std::max_element(settings.sizes.begin(), settings.sizes.end()));
    buffer_size = std::max(buffer_size, kLatencyMax);
    std::size_t attach_size =
        settings.attach_sizes.empty()
            ? 0
            : *std::max_element(settings.attach_sizes.begin(), settings.attach_sizes.end());
    Shared shared = make_shared_area();
    pid_t sender = fork();
    if (sender < 0) die("fork");
    if (sender == 0) {
        run_sender(shared, settings, buffer_size, attach_size);
        _exit(0);
    }
    // The sender reads this process with process_vm_readv (cma latency); Yama allows
    // that only to a declared tracer.
    prctl(PR_SET_PTRACER, sender, 0, 0, 0);
    pin_to_cpu(settings.cpu_receiver);
    backend = std::string(xpmem::backend_name());
    std::vector<Figure> figures;
    {
        Receiver receiver(shared, settings, buffer_size);
        // Every buffer once through every mechanism first: the first measurements after
        // setting up were several times slower without it (with buffers of 16 MiB and more).
        for (Mechanism mechanism : kMechanisms) receiver.bandwidth(mechanism, buffer_size);
        // The mechanisms take turns within each run, so that a slow phase of this machine
        // hits them alike; run -1 warms up.
        for (std::size_t size : settings.sizes) {
            std::vector<double> seconds[std::size(kMechanisms)];
            for (int run = -1; run < settings.repeats; ++run)
                for (std::size_t m = 0; m < std::size(kMechanisms); ++m) {
                    double one = receiver.bandwidth(kMechanisms[m], size);
                    if (run >= 0) seconds[m].push_back(static_cast<double>(size) / one);
                }
            for (std::size_t m = 0; m < std::size(kMechanisms); ++m)
                figures.push_back(
                    {"bandwidth", name(kMechanisms[m]), size, summarize(seconds[m]), seconds[m]});
        }
        constexpr Mechanism kPingPongers[] = {Mechanism::xpmem, Mechanism::cma,
                                              Mechanism::shm_2copy};
        for (std::size_t size : settings.sizes) {
            if (size > kLatencyMax) continue;
            std::vector<double> seconds[std::size(kPingPongers)];
            for (int run = -1; run < settings.repeats; ++run)
                for (std::size_t m = 0; m < std::size(kPingPongers); ++m) {
                    double one = receiver.latency(kPingPongers[m], size);
                    if (run >= 0) seconds[m].push_back(one);
                }
            for (std::size_t m = 0; m < std::size(kPingPongers); ++m)
                figures.push_back(
                    {"latency", name(kPingPongers[m]), size, summarize(seconds[m]), seconds[m]});
        }
        auto [attached, threads] = receiver.word_ping_pong();
        figures.push_back({"pingpong", "xpmem", 8, summarize(attached), attached});
        figures.push_back({"pingpong", "threads", 8, summarize(threads), threads});
        if (attach_size > 0) {
            // The first attach of the range: where the user backend makes it shareable.
            auto [convert, copy] = receiver.first_attach(attach_size);
            if (backend == "user") {
                figures.push_back({"convert",
                                   "first attach",
                                   attach_size,
                                   {convert, convert, convert},
                                   {convert}});
                figures.push_back({"convert-memcpy",
                                   "memcpy into fresh memory",
                                   attach_size,
                                   {copy, copy, copy},
                                   {copy}});
            }
            for (std::size_t size : settings.attach_sizes) {
                auto cost = receiver.attach_cost(size);
                figures.push_back({"attach", "xpmem_attach + touch", size, summarize(cost.attached),
                                   cost.attached});
                figures.push_back({"attach-floor", "mmap(MAP_POPULATE) + touch", size,
                                   summarize(cost.floor), cost.floor});
                figures.push_back({"attach-populate", "mmap(MAP_POPULATE)", size,
                                   summarize(cost.populate_only), cost.populate_only});
                figures.push_back({"attach-faults", "page faults in the attacher", size,
                                   summarize(cost.faults), cost.faults});
            }
        }
    }
    int status = 0;
    waitpid(sender, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die("the sender process failed");
    return figures;
}

}  // namespace bench
