// Loads and stores that may fault: SIGBUS and SIGSEGV inside them become results (the
// attachment was revoked, the owner's page is gone), anywhere else a fault is a failure.
#pragma once

#include <cstdint>

namespace xpmem_fuzz {

enum class Access { ok, bus_error, segmentation_fault };

// Installs the SIGBUS/SIGSEGV handlers (per process; the guard itself is per thread).
// A fault outside a guarded access writes `context()` and the fault address to stderr and
// exits with `failure_exit_code`.
void install_fault_handlers(const char* (*context)(), int failure_exit_code);

Access guarded_load(const void* address, uint64_t& value);
Access guarded_store(void* address, uint64_t value);

} // namespace xpmem_fuzz
