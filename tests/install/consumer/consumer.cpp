#include <sys/mman.h>
#include <xpmem/xpmem.hpp>

#include <cstdio>
#include <string>
#include <type_traits>

// C++ code overloads on the id types as the classic header defines them (long long).
static_assert(std::is_same_v<xpmem_segid_t, long long> && std::is_same_v<xpmem_apid_t, long long>);

int main() {
    void *memory = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    auto segment = xpmem::Segment::make({static_cast<std::byte *>(memory), 4096});
    auto permit = xpmem::Permit::get(segment.id());
    auto view = permit.attach(0, 4096);
    view.as<int>()[0] = 7;
    std::printf("consumer: %s backend, ok\n", std::string(xpmem::backend_name()).c_str());
    return static_cast<int *>(memory)[0] == 7 ? 0 : 1;
}
