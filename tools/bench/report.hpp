// What a run shows: a table for people, JSON for machines, a PNG plot, and the issue's
// targets as ratios measured in this run.
#pragma once

#include <string>
#include <vector>

#include "measure.hpp"

namespace bench {

struct Target {
    std::string figure;  // what is compared
    double measured = 0;
    double bound = 0;
    bool at_least = true;  // measured >= bound (else <=)
    bool met() const { return at_least ? measured >= bound : measured <= bound; }
};

std::vector<Target> targets(const std::vector<Figure> &figures);

std::string table(const std::vector<Figure> &figures, const std::vector<Target> &targets);

struct RunInfo {
    std::string backend;
    std::string command;
    Settings settings;
};

std::string json(const RunInfo &info, const std::vector<Figure> &figures,
                 const std::vector<Target> &targets);

// Bandwidth against size, one line per mechanism, log axes, through gnuplot.
void plot(const std::vector<Figure> &figures, const RunInfo &info, const std::string &png);

}  // namespace bench
