#include "guarded_memory.hpp"

#include <atomic>
#include <csetjmp>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <unistd.h>

namespace xpmem_fuzz {
namespace {

thread_local sigjmp_buf* active_guard = nullptr;
const char* (*fault_context)() = nullptr;
int fault_exit_code = 1;

void on_fault(int signal, siginfo_t* info, void*)
{
    if (active_guard != nullptr)
        siglongjmp(*active_guard, signal);
    // Not async-signal-safe formatting, but the process is going down either way.
    char text[1024];
    const int length = std::snprintf(text, sizeof(text), "FAILURE: unexpected %s at address %p outside a guarded access | %s\n",
                                     signal == SIGBUS ? "SIGBUS" : "SIGSEGV", info->si_addr,
                                     fault_context != nullptr ? fault_context() : "");
    if (length > 0)
        (void)!write(STDERR_FILENO, text, static_cast<size_t>(length));
    _exit(fault_exit_code);
}

} // namespace

void install_fault_handlers(const char* (*context)(), int failure_exit_code)
{
    fault_context = context;
    fault_exit_code = failure_exit_code;
    struct sigaction action {};
    action.sa_sigaction = on_fault;
    // NODEFER: the handler leaves by siglongjmp without restoring the mask, so the
    // signal must not stay blocked (sigsetjmp(..., 0) avoids a syscall per access).
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, nullptr);
    sigaction(SIGSEGV, &action, nullptr);
}

Access guarded_load(const void* address, uint64_t& value)
{
    sigjmp_buf environment;
    if (const int signal = sigsetjmp(environment, 0); signal != 0) {
        active_guard = nullptr;
        return signal == SIGBUS ? Access::bus_error : Access::segmentation_fault;
    }
    active_guard = &environment;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    value = *static_cast<const volatile uint64_t*>(address);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    active_guard = nullptr;
    return Access::ok;
}

Access guarded_store(void* address, uint64_t value)
{
    sigjmp_buf environment;
    if (const int signal = sigsetjmp(environment, 0); signal != 0) {
        active_guard = nullptr;
        return signal == SIGBUS ? Access::bus_error : Access::segmentation_fault;
    }
    active_guard = &environment;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    *static_cast<volatile uint64_t*>(address) = value;
    std::atomic_signal_fence(std::memory_order_seq_cst);
    active_guard = nullptr;
    return Access::ok;
}

} // namespace xpmem_fuzz
