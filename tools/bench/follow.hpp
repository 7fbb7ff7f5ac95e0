// The owner's cost of being followed (see follow.cpp).
#pragma once

#include <vector>

#include "measure.hpp"

namespace bench {

// "follow" figures (seconds per round of release + allocate + touch of a 1 MiB buffer, in
// an owner whose memory is attached and in a process that never used XPMEM) and a
// "follow-latency" figure (seconds from the owner replacing a buffer to an attacher
// reading the new one through its attachment).
std::vector<Figure> follow_figures(const Settings &settings);

}  // namespace bench
