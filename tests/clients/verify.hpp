// What the client programs share: the byte pattern every check expects, heap buffers from
// glibc's malloc, and a count of this library's mappings in the process.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <string_view>

namespace verify {

// The expected bytes: a function of a seed and the position, 8 bytes at a time.
inline std::uint64_t word_at(std::uint64_t seed, std::uint64_t index) {
    std::uint64_t z = seed * 0x9e3779b97f4a7c15ULL + index + 1;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

inline void fill(std::span<std::byte> bytes, std::uint64_t seed) {
    for (std::size_t i = 0; i < bytes.size(); i += 8) {
        std::uint64_t word = word_at(seed, i / 8);
        std::memcpy(bytes.data() + i, &word, std::min<std::size_t>(8, bytes.size() - i));
    }
}

// How many bytes differ from what fill(seed) wrote, `bytes` being its part from byte
// `offset` (a multiple of 8) on.
inline std::size_t wrong_bytes(std::span<const std::byte> bytes, std::uint64_t seed,
                               std::size_t offset = 0) {
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < bytes.size(); i += 8) {
        std::uint64_t word = word_at(seed, (offset + i) / 8);
        std::size_t n = std::min<std::size_t>(8, bytes.size() - i);
        for (std::size_t j = 0; j < n; ++j)
            wrong += bytes[i + j] != reinterpret_cast<const std::byte *>(&word)[j];
    }
    return wrong;
}

// Heap memory from glibc's malloc, given back with free(): the addresses come back.
struct Free {
    void operator()(void *p) const { std::free(p); }
};
using HeapBuffer = std::unique_ptr<std::byte[], Free>;
inline HeapBuffer heap(std::size_t size) {
    auto *p = static_cast<std::byte *>(std::malloc(size));
    if (p == nullptr) throw std::bad_alloc();
    return HeapBuffer(p);
}

// This library's mappings in this process: memory it converted to share (user backend:
// "/memfd:xpmem-segment-rw (deleted)"), or attachments (kernel backend: the device or the
// module's pseudo file); not the libraries themselves (libxpmem, UCX's libuct_xpmem).
inline int xpmem_mappings() {
    std::ifstream maps("/proc/self/maps");
    int count = 0;
    for (std::string line; std::getline(maps, line);) {
        std::size_t slash = line.rfind('/');
        if (slash == std::string::npos) continue;
        std::string_view name = std::string_view(line).substr(slash + 1);  // the file's name
        count += name.find("xpmem") != std::string_view::npos &&
                 name.find(".so") == std::string_view::npos;
    }
    return count;
}

}  // namespace verify
