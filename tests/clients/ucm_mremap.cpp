// Reproducer of a UCX bug, without libxpmem: once UCX's memory hooks are installed (any
// ucp_init with memory events, the default), mremap(old, n, n, MREMAP_MAYMOVE |
// MREMAP_FIXED, new) does not move the memory to `new`. libucm's replacement takes four
// arguments (ucm_mremap in src/ucm/event/event.c of UCX 1.13) and the kernel gets whatever
// the fifth argument register holds. Prints what happened; exits 1 if the bug shows.
//
//   g++ -std=c++20 ucm_mremap.cpp -lucp -lucs && ./a.out
#include <sys/mman.h>
#include <ucp/api/ucp.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

int main() {
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_TAG;
    ucp_context_h context = nullptr;
    if (ucp_init(&params, nullptr, &context) != UCS_OK) {
        std::fprintf(stderr, "ucp_init failed\n");
        return 2;
    }
    constexpr std::size_t kSize = 1 << 16;
    void *from = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *to = mmap(nullptr, kSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (from == MAP_FAILED || to == MAP_FAILED) return 2;
    std::strcpy(static_cast<char *>(from), "moved");
    void *moved = mremap(from, kSize, kSize, MREMAP_MAYMOVE | MREMAP_FIXED, to);
    int error = errno;
    ucp_cleanup(context);
    if (moved == to && std::strcmp(static_cast<char *>(to), "moved") == 0) {
        std::printf("mremap(MREMAP_FIXED) moved the memory where asked: no bug\n");
        return 0;
    }
    if (moved == MAP_FAILED)
        std::printf("mremap(MREMAP_FIXED) to %p failed: %s (the bug)\n", to, std::strerror(error));
    else
        std::printf("mremap(MREMAP_FIXED) to %p moved the memory to %p instead (the bug)\n", to,
                    moved);
    return 1;
}
