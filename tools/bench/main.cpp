// xpmem-bench: single-copy transfers through XPMEM against CMA (process_vm_readv), a
// double copy through a shared bounce buffer, and memcpy, the limit for one copy; plus
// the cost of attaching. Two processes pinned to two CPUs; every figure is the median of
// repeated runs after a warm-up run.

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <cxxopts.hpp>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "follow.hpp"
#include "measure.hpp"
#include "report.hpp"

namespace {

using bench::die;

// "64K", "1M", "2G" or plain bytes.
std::size_t parse_size(const std::string &text) {
    std::size_t consumed = 0;
    unsigned long long value = 0;
    try {
        value = std::stoull(text, &consumed);
    } catch (const std::exception &) {
        die("not a size: " + text);
    }
    std::string suffix = text.substr(consumed);
    if (suffix == "K" || suffix == "KiB")
        value <<= 10;
    else if (suffix == "M" || suffix == "MiB")
        value <<= 20;
    else if (suffix == "G" || suffix == "GiB")
        value <<= 30;
    else if (!suffix.empty() && suffix != "B")
        die("not a size: " + text);
    if (value == 0) die("sizes must be positive: " + text);
    return value;
}

std::vector<std::string> split(const std::string &text) {
    std::vector<std::string> parts;
    std::stringstream stream(text);
    for (std::string part; std::getline(stream, part, ',');) parts.push_back(part);
    return parts;
}

std::vector<std::size_t> parse_sizes(const std::string &text) {
    std::vector<std::size_t> sizes;
    for (const std::string &part : split(text)) sizes.push_back(parse_size(part));
    return sizes;
}

// 8 B, then powers of 4 from 64 B to `largest`.
std::vector<std::size_t> default_sizes(std::size_t largest) {
    std::vector<std::size_t> sizes{8};
    for (std::size_t size = 64; size <= largest; size *= 4) sizes.push_back(size);
    return sizes;
}

}  // namespace

int main(int argc, char **argv) {
    cxxopts::Options options("xpmem-bench",
                             "Single-copy bandwidth, latency and attach cost of XPMEM against "
                             "process_vm_readv, a double copy through shared memory, and memcpy.");
    options.add_options()("sizes", "message sizes, comma-separated (8,64K,1M,...)",
                          cxxopts::value<std::string>())(
        "attach-sizes", "attach-cost sizes (default 1M,4M,16M,64M,256M,1G)",
        cxxopts::value<std::string>())("cpus", "the two CPUs: sender,receiver",
                                       cxxopts::value<std::string>()->default_value("0,1"))(
        "rotate", "cycle through N buffers: caches and the attachment cache miss",
        cxxopts::value<std::size_t>()->default_value("1"))("repeats", "timed runs per figure",
                                                           cxxopts::value<int>())(
        "backend", "user or kernel (default: what the library selects)",
        cxxopts::value<std::string>())("json", "write every figure as JSON to FILE",
                                       cxxopts::value<std::string>())(
        "plot", "draw bandwidth against size into FILE.png (needs gnuplot)",
        cxxopts::value<std::string>())("quick", "fewer sizes and runs: under a minute")(
        "h,help", "this help");
    cxxopts::ParseResult args;
    try {
        args = options.parse(argc, argv);
    } catch (const std::exception &error) {
        die(std::string(error.what()) + " (see --help)");
    }
    if (args.count("help")) {
        std::fputs(options.help().c_str(), stdout);
        return 0;
    }

    bool quick = args.count("quick") > 0;
    bench::Settings settings;
    settings.sizes =
        args.count("sizes") ? parse_sizes(args["sizes"].as<std::string>())
        : quick ? std::vector<std::size_t>{8, 1 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20}
                : default_sizes(256 << 20);
    settings.attach_sizes =
        args.count("attach-sizes") ? parse_sizes(args["attach-sizes"].as<std::string>())
        : quick
            ? std::vector<std::size_t>{1 << 20, 64 << 20, 1 << 30}
            : std::vector<std::size_t>{1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20, 1 << 30};
    for (std::size_t size : settings.attach_sizes)
        if (size % bench::kPage != 0) die("attach sizes must be multiples of 4 KiB");
    settings.rotate = args["rotate"].as<std::size_t>();
    if (settings.rotate < 1 || settings.rotate > bench::kMaxRotate)
        die(fmt::format("--rotate takes 1 to {}", bench::kMaxRotate));
    settings.repeats = args.count("repeats") ? args["repeats"].as<int>() : quick ? 5 : 9;
    if (settings.repeats < 1) die("--repeats must be at least 1");
    if (quick) {
        settings.bytes_per_run = 128 << 20;
        settings.pingpongs = 20000;
    }
    auto cpus = split(args["cpus"].as<std::string>());
    if (cpus.size() != 2) die("--cpus takes two CPU numbers, like 0,1");
    settings.cpu_sender = std::atoi(cpus[0].c_str());
    settings.cpu_receiver = std::atoi(cpus[1].c_str());
    if (args.count("backend"))
        setenv("XPMEM_BACKEND", args["backend"].as<std::string>().c_str(), 1);

    bench::RunInfo info;
    info.settings = settings;
    for (int i = 0; i < argc; ++i) info.command += (i ? " " : "") + std::string(argv[i]);
    std::vector<bench::Figure> figures = bench::run_all(settings, info.backend);
    std::vector<bench::Figure> followed = bench::follow_figures(settings);
    figures.insert(figures.end(), followed.begin(), followed.end());
    std::vector<bench::Target> goals = bench::targets(figures);

    std::fputs(
        fmt::format("xpmem-bench: {} backend, CPUs {},{}, {} buffer(s), median of {} runs\n\n",
                    info.backend, settings.cpu_sender, settings.cpu_receiver, settings.rotate,
                    settings.repeats)
            .c_str(),
        stdout);
    std::fputs(bench::table(figures, goals).c_str(), stdout);
    if (args.count("json")) {
        std::ofstream out(args["json"].as<std::string>());
        out << bench::json(info, figures, goals);
        if (!out) die("cannot write " + args["json"].as<std::string>());
    }
    if (args.count("plot")) bench::plot(figures, info, args["plot"].as<std::string>());
    return 0;
}
