// Seeded random streams for the /dev/xpmem fuzzer. Own generators rather than <random>:
// the distributions there differ between standard libraries, and a seed must replay the
// same choices wherever the fuzzer was built.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace xpmem_fuzz {

// SplitMix64: turns one seed into independent-looking streams.
constexpr uint64_t split_mix(uint64_t& state)
{
    uint64_t mixed = (state += 0x9e3779b97f4a7c15ULL);
    mixed = (mixed ^ (mixed >> 30)) * 0xbf58476d1ce4e5b9ULL;
    mixed = (mixed ^ (mixed >> 27)) * 0x94d049bb133111ebULL;
    return mixed ^ (mixed >> 31);
}

// The sub-seed of one process (worker index, respawn generation, ...).
constexpr uint64_t derive_seed(uint64_t seed, uint64_t first, uint64_t second = 0)
{
    uint64_t state = seed ^ (first * 0xd1342543de82ef95ULL);
    state = split_mix(state) ^ (second * 0x9e3779b97f4a7c15ULL);
    return split_mix(state);
}

// xoshiro256**.
class Random {
public:
    explicit Random(uint64_t seed)
    {
        for (auto& word : state_)
            word = split_mix(seed);
    }

    uint64_t next()
    {
        const uint64_t result = rotate(state_[1] * 5, 7) * 9;
        const uint64_t shifted = state_[1] << 17;
        state_[2] ^= state_[0];
        state_[3] ^= state_[1];
        state_[1] ^= state_[2];
        state_[0] ^= state_[3];
        state_[2] ^= shifted;
        state_[3] = rotate(state_[3], 45);
        return result;
    }

private:
    static constexpr uint64_t rotate(uint64_t value, int bits)
    {
        return (value << bits) | (value >> (64 - bits));
    }
    std::array<uint64_t, 4> state_{};
};

// The raw random values of one operation, drawn before the operation looks at any state.
// Every operation takes the same number from the process's stream, so the sequence of
// choices is a function of the seed alone, whatever the outcomes (which depend on the
// other processes' timing). An operation needing more values extends its own copy.
class Draws {
public:
    static constexpr size_t kCount = 16;

    explicit Draws(Random& random)
    {
        for (auto& value : values_)
            value = random.next();
        extension_ = values_[kCount - 1];
    }

    uint64_t raw() { return used_ < kCount ? values_[used_++] : split_mix(extension_); }
    uint64_t below(uint64_t bound) { return bound ? raw() % bound : 0; }
    bool percent(unsigned chance) { return below(100) < chance; }
    // Biased toward small values: half the time below bound/8.
    uint64_t small_below(uint64_t bound)
    {
        const uint64_t choice = raw();
        const uint64_t limit = (choice & 1) && bound > 8 ? bound / 8 : bound;
        return limit ? (choice >> 1) % limit : 0;
    }
    template <typename Item, size_t N> const Item& pick(const std::array<Item, N>& items)
    {
        return items[below(N)];
    }

private:
    std::array<uint64_t, kCount> values_{};
    size_t used_ = 0;
    uint64_t extension_ = 0;
};

} // namespace xpmem_fuzz
