// The measurements: the receiver process drives, the sender process answers commands.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "peers.hpp"

namespace bench {

struct Settings {
    std::vector<std::size_t> sizes;         // transfer sizes
    std::vector<std::size_t> attach_sizes;  // attach-cost sizes
    std::size_t rotate = 1;                 // buffers cycled through (cold mode when > 1)
    int repeats = 5;                        // timed runs per figure, after one warm-up run
    std::size_t bytes_per_run = 256 << 20;  // bandwidth: bytes moved per timed run
    std::uint64_t pingpongs = 100000;       // 8-byte ping-pong round trips per run
    int cpu_sender = 0, cpu_receiver = 1;
};

// Median, minimum and maximum of the repeated runs.
struct Stat {
    double median = 0, min = 0, max = 0;
};
Stat summarize(std::vector<double> values);

struct Figure {
    std::string kind;       // "bandwidth" (bytes/s), "latency" (s), "pingpong" (s),
                            // "attach" / "attach-floor" / "attach-populate" (s per
                            // MiB), "convert" / "convert-memcpy" (s per GiB)
    std::string mechanism;  // bandwidth/latency: the mechanism; else what was timed
    std::size_t size = 0;
    Stat value;
    // Every timed run, in order: run i of one figure ran next to run i of the others of the
    // same size, so ratios are taken run by run.
    std::vector<double> runs;
};

// Figures a and b of one size, median of their run-by-run ratios a/b.
double paired_ratio(const Figure &a, const Figure &b);

// Forks the sender, runs every measurement, and returns the figures; the sender is
// reaped before returning. `backend` is what the library selected ("user"/"kernel").
std::vector<Figure> run_all(const Settings &settings, std::string &backend);

}  // namespace bench
