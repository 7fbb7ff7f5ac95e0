#include "report.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

namespace bench {
namespace {

std::string human_size(std::size_t size) {
    if (size >= (1UL << 30) && size % (1UL << 30) == 0) return fmt::format("{} GiB", size >> 30);
    if (size >= (1UL << 20) && size % (1UL << 20) == 0) return fmt::format("{} MiB", size >> 20);
    if (size >= (1UL << 10) && size % (1UL << 10) == 0) return fmt::format("{} KiB", size >> 10);
    return fmt::format("{} B", size);
}

const Figure *find(const std::vector<Figure> &figures, const std::string &kind,
                   const std::string &mechanism, std::size_t size) {
    for (const Figure &figure : figures)
        if (figure.kind == kind && figure.mechanism == mechanism && figure.size == size)
            return &figure;
    return nullptr;
}

std::set<std::size_t> sizes_of(const std::vector<Figure> &figures, const std::string &kind) {
    std::set<std::size_t> sizes;
    for (const Figure &figure : figures)
        if (figure.kind == kind) sizes.insert(figure.size);
    return sizes;
}

// The worst ratio of `kind` figures a/b over sizes in [from, to]; nullopt if none.
std::optional<double> worst_ratio(const std::vector<Figure> &figures, const std::string &a,
                                  const std::string &b, std::size_t from, std::size_t to) {
    std::optional<double> worst;
    for (std::size_t size : sizes_of(figures, "bandwidth")) {
        if (size < from || size > to) continue;
        auto x = find(figures, "bandwidth", a, size);
        auto y = find(figures, "bandwidth", b, size);
        if (!x || !y) continue;
        double ratio = paired_ratio(*x, *y);
        worst = worst ? std::min(*worst, ratio) : ratio;
    }
    return worst;
}

std::string gbps(const Figure *figure) {
    return figure ? fmt::format("{:.2f}", figure->value.median / 1e9) : "-";
}

std::string ratio(const Figure *a, const Figure *b) {
    return a && b ? fmt::format("{:.2f}", paired_ratio(*a, *b)) : "-";
}

}  // namespace

std::vector<Target> targets(const std::vector<Figure> &figures) {
    constexpr std::size_t KiB = 1 << 10, MiB = 1 << 20;
    constexpr std::size_t all = std::numeric_limits<std::size_t>::max();
    std::vector<Target> result;
    auto add = [&](std::string what, std::optional<double> measured, double bound, bool at_least) {
        if (measured) result.push_back({std::move(what), *measured, bound, at_least});
    };
    add("xpmem / memcpy bandwidth, 64 KiB to 256 MiB (worst size)",
        worst_ratio(figures, "xpmem", "memcpy", 64 * KiB, 256 * MiB), 0.95, true);
    add("xpmem / cma bandwidth, 64 KiB", worst_ratio(figures, "xpmem", "cma", 64 * KiB, 64 * KiB),
        3, true);
    add("xpmem / cma bandwidth, 1 MiB to 256 MiB (worst size)",
        worst_ratio(figures, "xpmem", "cma", MiB, 256 * MiB), 1.5, true);
    add("xpmem / shm-2copy bandwidth, 1 MiB and up (worst size)",
        worst_ratio(figures, "xpmem", "shm-2copy", MiB, all), 1.5, true);
    auto attached = find(figures, "pingpong", "xpmem", 8);
    auto threads = find(figures, "pingpong", "threads", 8);
    if (attached && threads)
        add("8-byte ping-pong: attachment / two threads sharing a cache line",
            paired_ratio(*attached, *threads), 1.5, false);
    auto attach = find(figures, "attach", "xpmem_attach + touch", 1UL << 30);
    auto populate = find(figures, "attach-populate", "mmap(MAP_POPULATE)", 1UL << 30);
    if (attach && populate)
        add("attach + first touch of 1 GiB / mmap(MAP_POPULATE)", paired_ratio(*attach, *populate),
            1.5, false);
    // The same, against a floor that touches every page too (see docs/performance.md).
    auto floor = find(figures, "attach-floor", "mmap(MAP_POPULATE) + touch", 1UL << 30);
    if (attach && floor)
        add("attach + first touch of 1 GiB / mmap(MAP_POPULATE) + touch",
            paired_ratio(*attach, *floor), 1.5, false);
    // The owner's rate of allocating and freeing while followed, against a process that never
    // used XPMEM: the ratio of rates is alone / followed of the times.
    for (const Figure &followed : figures) {
        static const std::string kSuffix = ", attached owner";
        if (followed.kind != "follow" || !followed.mechanism.ends_with(kSuffix)) continue;
        std::string what = followed.mechanism.substr(0, followed.mechanism.size() - kSuffix.size());
        if (auto alone = find(figures, "follow", what + ", no XPMEM", followed.size))
            add("rate while followed / no XPMEM: " + what, paired_ratio(*alone, followed), 0.5,
                true);
    }
    return result;
}

std::string table(const std::vector<Figure> &figures, const std::vector<Target> &goals) {
    std::string out;
    out +=
        "Bandwidth, GB/s (median; receiver copies a message of this size); ratios are\n"
        "medians of run-by-run ratios, the mechanisms taking turns within each run\n";
    out +=
        fmt::format("{:>9} {:>8} {:>8} {:>10} {:>8} | {:>13} {:>10} {:>16}\n", "size", "xpmem",
                    "cma", "shm-2copy", "memcpy", "xpmem/memcpy", "xpmem/cma", "xpmem/shm-2copy");
    for (std::size_t size : sizes_of(figures, "bandwidth")) {
        auto x = find(figures, "bandwidth", "xpmem", size);
        auto c = find(figures, "bandwidth", "cma", size);
        auto s = find(figures, "bandwidth", "shm-2copy", size);
        auto m = find(figures, "bandwidth", "memcpy", size);
        out +=
            fmt::format("{:>9} {:>8} {:>8} {:>10} {:>8} | {:>13} {:>10} {:>16}\n", human_size(size),
                        gbps(x), gbps(c), gbps(s), gbps(m), ratio(x, m), ratio(x, c), ratio(x, s));
    }
    out += "\nPing-pong latency, microseconds (median half round trip)\n";
    out += fmt::format("{:>9} {:>8} {:>8} {:>10} | {:>10} {:>16}\n", "size", "xpmem", "cma",
                       "shm-2copy", "cma/xpmem", "shm-2copy/xpmem");
    for (std::size_t size : sizes_of(figures, "latency")) {
        auto x = find(figures, "latency", "xpmem", size);
        auto c = find(figures, "latency", "cma", size);
        auto s = find(figures, "latency", "shm-2copy", size);
        auto us = [](const Figure *figure) {
            return figure ? fmt::format("{:.2f}", figure->value.median * 1e6) : std::string("-");
        };
        out += fmt::format("{:>9} {:>8} {:>8} {:>10} | {:>10} {:>16}\n", human_size(size), us(x),
                           us(c), us(s), ratio(c, x), ratio(s, x));
    }
    auto attached = find(figures, "pingpong", "xpmem", 8);
    auto threads = find(figures, "pingpong", "threads", 8);
    if (attached && threads)
        out += fmt::format(
            "\n8-byte ping-pong, half round trip: through attachments {:.0f} ns, two threads "
            "sharing a cache line {:.0f} ns (ratio {:.2f})\n",
            attached->value.median * 1e9, threads->value.median * 1e9,
            paired_ratio(*attached, *threads));

    auto attach_sizes = sizes_of(figures, "attach");
    if (!attach_sizes.empty()) {
        out +=
            "\nAttach + first touch of every page (cold), ms per MiB (median); the floor is a\n"
            "memfd of the same size mapped with MAP_POPULATE, touched the same way\n";
        out += fmt::format("{:>9} {:>14} {:>14} {:>20} | {:>12} {:>15}\n", "size", "xpmem + touch",
                           "floor + touch", "floor, no touch", "xpmem/floor", "faults per MiB");
        for (std::size_t size : attach_sizes) {
            auto a = find(figures, "attach", "xpmem_attach + touch", size);
            auto f = find(figures, "attach-floor", "mmap(MAP_POPULATE) + touch", size);
            auto p = find(figures, "attach-populate", "mmap(MAP_POPULATE)", size);
            auto faults = find(figures, "attach-faults", "page faults in the attacher", size);
            out += fmt::format("{:>9} {:>14.3f} {:>14.3f} {:>20.3f} | {:>12} {:>15.0f}\n",
                               human_size(size), a->value.median * 1e3, f->value.median * 1e3,
                               p->value.median * 1e3, ratio(a, f), faults->value.median);
        }
    }
    for (const Figure &figure : figures)
        if (figure.kind == "convert")
            if (auto copy =
                    find(figures, "convert-memcpy", "memcpy into fresh memory", figure.size))
                out += fmt::format(
                    "First attach of {} of private memory (user backend: made shareable): {:.0f} "
                    "ms per GiB; memcpy into fresh memory: {:.0f} ms per GiB (ratio {:.2f})\n",
                    human_size(figure.size), figure.value.median * 1e3, copy->value.median * 1e3,
                    figure.value.median / copy->value.median);

    if (!sizes_of(figures, "follow").empty()) {
        out +=
            "\nThe owner's cost of being followed, microseconds per round (median): release a\n"
            "buffer, allocate and touch a new one, in an owner whose memory is attached and in\n"
            "a process that never used XPMEM, taking turns\n";
        for (const Figure &followed : figures) {
            static const std::string kSuffix = ", attached owner";
            if (followed.kind != "follow" || !followed.mechanism.ends_with(kSuffix)) continue;
            std::string what =
                followed.mechanism.substr(0, followed.mechanism.size() - kSuffix.size());
            auto alone = find(figures, "follow", what + ", no XPMEM", followed.size);
            if (alone == nullptr) continue;
            out += fmt::format("  {:<46} {:>9.1f} attached {:>9.1f} alone (rate ratio {:.2f})\n",
                               what, followed.value.median * 1e6, alone->value.median * 1e6,
                               paired_ratio(*alone, followed));
        }
    }
    if (auto latency = find(figures, "follow-latency",
                            "replacement to the attacher seeing the new memory", 1 << 20))
        out += fmt::format(
            "Owner replaces a 1 MiB buffer (mmap MAP_FIXED) -> attacher reads the new bytes "
            "through its attachment: {:.1f} us (median)\n",
            latency->value.median * 1e6);

    out += "\nTargets (ratios from this run)\n";
    for (const Target &goal : goals)
        out += fmt::format("  {:<66} {:>7.2f}  (target {} {:.2f}) {}\n", goal.figure, goal.measured,
                           goal.at_least ? ">=" : "<=", goal.bound, goal.met() ? "met" : "MISSED");
    return out;
}

std::string json(const RunInfo &info, const std::vector<Figure> &figures,
                 const std::vector<Target> &goals) {
    nlohmann::json document;
    document["tool"] = "xpmem-bench";
    document["backend"] = info.backend;
    document["command"] = info.command;
    document["cpus"] = {info.settings.cpu_sender, info.settings.cpu_receiver};
    document["rotate"] = info.settings.rotate;
    document["repeats"] = info.settings.repeats;
    document["units"] = {{"bandwidth", "bytes/s"},
                         {"latency", "s"},
                         {"pingpong", "s"},
                         {"attach", "s/MiB"},
                         {"attach-floor", "s/MiB"},
                         {"attach-populate", "s/MiB"},
                         {"attach-faults", "faults/MiB"},
                         {"convert", "s/GiB"},
                         {"convert-memcpy", "s/GiB"},
                         {"follow", "s/round"},
                         {"follow-latency", "s"}};
    nlohmann::json list = nlohmann::json::array();
    for (const Figure &figure : figures)
        list.push_back({{"kind", figure.kind},
                        {"mechanism", figure.mechanism},
                        {"size", figure.size},
                        {"median", figure.value.median},
                        {"min", figure.value.min},
                        {"max", figure.value.max},
                        {"runs", figure.runs}});
    document["figures"] = list;
    nlohmann::json goal_list = nlohmann::json::array();
    for (const Target &goal : goals)
        goal_list.push_back({{"figure", goal.figure},
                             {"measured", goal.measured},
                             {"bound", goal.bound},
                             {"at_least", goal.at_least},
                             {"met", goal.met()}});
    document["targets"] = goal_list;
    return document.dump(2) + "\n";
}

void plot(const std::vector<Figure> &figures, const RunInfo &info, const std::string &png) {
    char data_path[] = "/tmp/xpmem-bench-plot-XXXXXX";
    int fd = mkstemp(data_path);
    if (fd < 0) die("cannot create the plot's data file");
    close(fd);
    std::ofstream data(data_path);
    std::string lines;
    int index = 0;
    for (Mechanism mechanism : kMechanisms) {
        data << "# " << name(mechanism) << "\n";
        for (std::size_t size : sizes_of(figures, "bandwidth"))
            if (const Figure *figure = find(figures, "bandwidth", name(mechanism), size))
                data << size << " " << figure->value.median / 1e9 << " " << figure->value.min / 1e9
                     << " " << figure->value.max / 1e9 << "\n";
        data << "\n\n";
        lines += fmt::format("{}'{}' index {} using 1:2:3:4 with yerrorlines title '{}'",
                             index ? ", " : "", data_path, index, name(mechanism));
        ++index;
    }
    data.close();
    std::string script = fmt::format(
        "set terminal pngcairo size 900,560\nset output '{}'\nset logscale xy\n"
        "set xlabel 'message size (bytes)'\nset ylabel 'bandwidth (GB/s)'\n"
        "set title 'xpmem-bench, {} backend, CPUs {},{}'\nset key left top\nset grid\n"
        "set format x '%.0s%cB'\nplot {}\n",
        png, info.backend, info.settings.cpu_sender, info.settings.cpu_receiver, lines);
    FILE *gnuplot = popen("gnuplot", "w");
    if (gnuplot == nullptr) die("cannot run gnuplot (apt-get install gnuplot-nox)");
    std::fputs(script.c_str(), gnuplot);
    int status = pclose(gnuplot);
    std::remove(data_path);
    if (status != 0) die("gnuplot failed (apt-get install gnuplot-nox)");
}

}  // namespace bench
