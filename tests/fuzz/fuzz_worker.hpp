// One fuzzing process image: a worker started by the supervisor, a fork child, or a
// process re-executed with an inherited /dev/xpmem descriptor. It owns an arena of stamped
// memory, makes segments over it, attaches other processes' segments and validates every
// word it reads through them, while mixing in the memory-management calls, process
// lifecycle events and garbage arguments that the module must survive.
#pragma once

#include "fuzz_random.hpp"
#include "shared_state.hpp"

#include <fmt/format.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <pthread.h>
#include <string>
#include <sys/types.h>
#include <vector>

namespace xpmem_fuzz {

inline uintptr_t page_align_up(uint64_t value) { return (value + kPageSize - 1) & ~(uint64_t{kPageSize} - 1); }
inline uintptr_t arena_address(size_t page) { return kArenaBase + page * kPageSize; }
inline void* as_pointer(uintptr_t address) { return reinterpret_cast<void*>(address); }

// The shared table's memfd: execve passes its number on.
extern int g_shared_memfd;

constexpr size_t kMaxRecords = 48;  // attachment pieces tracked per process
constexpr int kFailureExitCode = 3;  // a failure was found and reported
constexpr int kRespawnExitCode = 42; // a worker's "exit" operation: start its successor

// A descriptor inherited across execve, as described on the command line.
struct InheritedFd {
    int fd;
    uint64_t file_id;
    int opener_pid;
    uint32_t opener_tag;
};

struct ProcessPlan {
    Role role = Role::worker;
    uint32_t worker = 0;
    uint64_t seed = 0;
    uint64_t operations = 0;  // for children; workers follow the shared budget and deadline
    uint32_t depth = 0;
    uint32_t parent_tag = 0;
    std::vector<int> mailboxes;  // SCM_RIGHTS sockets, one per worker (none after execve)
    std::vector<InheritedFd> inherited;
};

class UniqueFd {
public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) : fd_(fd) {}
    UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
    UniqueFd& operator=(UniqueFd&& other) noexcept;
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd() { reset(); }
    int get() const { return fd_; }
    int release() { const int fd = fd_; fd_ = -1; return fd; }
    void reset();
private:
    int fd_ = -1;
};

class Worker {
public:
    Worker(SharedState& shared, ProcessPlan plan);
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;
    // Runs operations until the budget, the deadline or a stop; never returns.
    [[noreturn]] void run();

private:
    // One open file description of /dev/xpmem known to this process.
    struct XpmemFile {
        uint64_t file_id = 0;
        int opener_pid = 0;     // the module binds the file to this thread group
        bool before_exec = false;  // and to its mm: after execve the file is another's
        uint32_t opener_tag = 0;// whose memory (mm) its segments map
        bool unknown_objects = false;  // made something whose id we never learned
        std::vector<EntryRef> segments;  // live, owned through this file
        std::vector<EntryRef> permits;   // live, held through this file
    };
    struct FdAlias {
        UniqueFd fd;
        uint64_t file_id = 0;
    };
    // A piece of an attachment in this address space.
    struct AttachRecord {
        uintptr_t start = 0, length = 0;
        uintptr_t owner_address = 0;  // owner address mapped at `start`
        uint32_t owner_tag = 0;       // 0: unknown owner, never read
        EntryRef segment, permit;
        uint64_t instance = 0;        // the ATTACH that made it (numbered per attaching process)
        uint32_t origin_tag = 0;      // the attaching process
        uintptr_t instance_start = 0, instance_length = 0;
        bool read_only = false, inherit_on_fork = false;
    };
    struct ArenaPage {
        bool mapped = false;
        int protection = 0;
    };
    struct MapperControl {
        std::atomic<bool> stop{false};
        uint64_t seed = 0;
    };

    // The operation loop and its bookkeeping.
    [[noreturn]] void loop();
    bool should_stop() const;
    OpKind choose_kind(Draws& draws) const;
    void dispatch(OpKind kind, Draws& draws);
    void begin_op(OpKind kind);
    void end_op();
    // Adds to the description of the current operation (kept for failure reports).
    template <typename... Args> void note(const char* format, const Args&... args)
    {
        if (!current_note_.empty())
            current_note_ += "; ";
        current_note_ += fmt::format(fmt::runtime(format), args...);
    }
    [[noreturn]] void fail(const std::string& message);
    [[noreturn]] void terminate(int exit_code);
    void succeeded();
    void rejected();
    void reap_children(bool wait_all);
    void become_identity(Role role, uint64_t seed, uint32_t parent_tag);
    void become_child(Role role, uint64_t seed, uint64_t operations);
    std::string describe_self() const;

    // Operations.
    void op_make(Draws& draws);
    void op_remove(Draws& draws);
    void op_get(Draws& draws);
    void op_release(Draws& draws);
    void op_attach(Draws& draws);
    void op_detach(Draws& draws);
    void op_read(Draws& draws);
    void op_write(Draws& draws);
    void op_restamp(Draws& draws);
    void op_check_own(Draws& draws);
    void op_owner_mmap(Draws& draws);
    void op_owner_munmap(Draws& draws);
    void op_owner_mremap(Draws& draws);
    void op_owner_mprotect(Draws& draws);
    void op_owner_madvise(Draws& draws);
    void op_owner_migrate(Draws& draws);
    void op_attachment_munmap(Draws& draws);
    void op_attachment_mremap(Draws& draws);
    void op_attachment_mprotect(Draws& draws);
    void op_attachment_madvise(Draws& draws);
    void op_attachment_mmap_over(Draws& draws);
    void op_fork(Draws& draws);
    void op_exec(Draws& draws);
    void op_open(Draws& draws);
    void op_close(Draws& draws);
    void op_dup(Draws& draws);
    void op_send_fd(Draws& draws);
    void op_receive_fd(Draws& draws);
    void op_bad_ioctl(Draws& draws);
    void op_raw_mmap(Draws& draws);
    void op_version(Draws& draws);
    void op_mapper_thread(Draws& draws);

    // Descriptors and files.
    FdAlias* choose_fd(Draws& draws);
    XpmemFile& file_of(const FdAlias& alias) { return files_.at(alias.file_id); }
    bool owns(const XpmemFile& file) const { return file.opener_pid == pid_ && !file.before_exec; }
    bool open_device();
    void forget_file(uint64_t file_id);
    void check_foreign_result(const XpmemFile& file, long result, int error, const char* command);
    void prepare_argument(Draws& draws, const void* command, size_t size, void*& argument, bool& read_only);

    // The arena.
    void map_arena();
    void restamp_whole_arena();
    void stamp_pages(size_t first, size_t count);
    void map_fresh(size_t first, size_t count);
    void may_be_zero(size_t page);
    void stamped(size_t page);
    bool choose_arena_range(Draws& draws, size_t& first, size_t& count, bool mapped_only) const;

    // Attachments.
    AttachRecord* choose_record(Draws& draws, bool readable_only);
    bool arena_span(const AttachRecord& record, uintptr_t& first, uintptr_t& end) const;
    void forget_range(uintptr_t start, uintptr_t length);
    void split_records_at(uintptr_t address);
    void drop_detached_instance(uint64_t instance, bool whole_instance);
    bool range_mapped(uintptr_t start, uintptr_t length) const;
    bool overlaps_record(uintptr_t start, uintptr_t length) const;
    const char* revocation(const AttachRecord& record);
    void check_word(const AttachRecord& record, uintptr_t local, bool write);
    std::string describe_record(const AttachRecord& record) const;
    // What happened to an attachment (ATTACH, mremap, DETACH, fork...), for failure reports.
    void remember(uint64_t instance, const std::string& event);
    std::string history(uint64_t instance) const;
    void remember_range(uintptr_t start, uintptr_t length, const std::string& event);
    std::string describe_stamp(uint64_t value) const;

    // The mmap/munmap thread.
    void start_mapper(uint64_t seed);
    void stop_mapper();

    SharedState& shared_;
    ProcessPlan plan_;
    Identity* identity_ = nullptr;
    uint32_t tag_ = 0;
    pid_t pid_ = 0;
    Random random_;
    uint64_t op_number_ = 0;
    OpKind kind_ = OpKind::version;
    std::string current_note_;
    std::array<std::string, 16> recent_;
    std::map<uint64_t, XpmemFile> files_;
    std::vector<FdAlias> fds_;
    std::vector<AttachRecord> records_;
    uint64_t next_instance_ = 1;
    std::map<uint64_t, std::string> histories_;
    std::array<ArenaPage, kArenaPages> arena_{};
    uint8_t generation_ = 0;
    std::vector<pid_t> children_;
    void* readonly_page_ = nullptr;  // command structs the kernel can read but not write
    MapperControl* mapper_ = nullptr;  // separately mapped: the thread must not malloc
    pthread_t mapper_thread_{};
    bool mapper_running_ = false;
};

// The advice names for --disable owner-madvise:NAME / attachment-madvise:NAME.
std::vector<std::string> advice_names();

} // namespace xpmem_fuzz
