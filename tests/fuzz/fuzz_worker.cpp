#include "fuzz_worker.hpp"

#include "guarded_memory.hpp"
#include "xpmem_abi.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <grp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mm_constants.hpp"

namespace xpmem_fuzz {
namespace {

constexpr int kNoProcessErrno = 2004;  // the module's answer to a descriptor of another process
constexpr size_t kMaxFds = 10;
constexpr size_t kMaxOwnFiles = 3;
constexpr size_t kMaxChildren = 3;
constexpr uint32_t kMaxDepth = 2;

uint64_t now_ns()
{
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    return static_cast<uint64_t>(now.tv_sec) * 1000000000ULL + static_cast<uint64_t>(now.tv_nsec);
}


// Where the SIGBUS/SIGSEGV/SIGALRM handlers find who is failing.
char g_context[512] = "";
SharedState* g_shared = nullptr;
Identity* g_identity = nullptr;
const char* fault_context() { return g_context; }

void on_alarm(int)
{
    static const char prefix[] = "FAILURE: hang: an operation ran past its alarm (SIGALRM) | ";
    (void)!write(STDERR_FILENO, prefix, sizeof(prefix) - 1);
    (void)!write(STDERR_FILENO, g_context, strnlen(g_context, sizeof(g_context)));
    (void)!write(STDERR_FILENO, "\n", 1);
    if (g_shared != nullptr) {
        uint32_t expected = 0;
        if (g_shared->failed.compare_exchange_strong(expected, 1)) {
            const size_t length = std::min(sizeof(g_shared->failure) - 1, strnlen(g_context, sizeof(g_context)));
            memcpy(g_shared->failure, "hang (SIGALRM) | ", 17);
            memcpy(g_shared->failure + 17, g_context, std::min(length, sizeof(g_shared->failure) - 18));
        }
        g_shared->stop.store(1);
    }
    if (g_identity != nullptr)
        g_identity->state.store(static_cast<uint32_t>(IdentityState::exited));
    _exit(kFailureExitCode);
}

// The mmap/munmap thread: write-locks the mmap_lock over and over inside its own reserved
// region (no holes: a hole could receive one of our attachments). No malloc here.
void* mapper_main(void* argument)
{
    auto* control = static_cast<std::atomic<bool>*>(argument);
    uint64_t state = reinterpret_cast<uintptr_t>(argument) ^ static_cast<uint64_t>(now_ns());
    while (!control->load(std::memory_order_relaxed)) {
        const uint64_t choice = split_mix(state);
        const uintptr_t address = kMapperBase + (choice % (kMapperSize / (16 * kPageSize))) * 16 * kPageSize;
        const size_t length = (1 + (choice >> 20) % 16) * kPageSize;
        switch ((choice >> 32) % 4) {
        case 0:
            if (mmap(as_pointer(address), length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED)
                *static_cast<volatile char*>(as_pointer(address)) = 1;
            break;
        case 1:  // an munmap and a new mapping in one step (mmap over)
            mmap(as_pointer(address), length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
            break;
        case 2:
            mprotect(as_pointer(address), length, (choice >> 40) & 1 ? PROT_READ : PROT_READ | PROT_WRITE);
            break;
        default:
            madvise(as_pointer(address), length, MADV_DONTNEED);
            break;
        }
    }
    return nullptr;
}

} // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept
{
    if (this != &other) {
        reset();
        fd_ = other.release();
    }
    return *this;
}

void UniqueFd::reset()
{
    if (fd_ >= 0)
        close(fd_);
    fd_ = -1;
}

// ---- lifecycle --------------------------------------------------------------------------

Worker::Worker(SharedState& shared, ProcessPlan plan)
    : shared_(shared), plan_(std::move(plan)), random_(plan_.seed)
{
    g_shared = &shared_;
    install_fault_handlers(fault_context, kFailureExitCode);
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    pid_ = getpid();
    become_identity(plan_.role, plan_.seed, plan_.parent_tag);
    readonly_page_ = mmap(nullptr, kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mapper_ = static_cast<MapperControl*>(mmap(nullptr, kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (readonly_page_ == MAP_FAILED || mapper_ == MAP_FAILED)
        fail("cannot map the fuzzer's own pages");
    new (mapper_) MapperControl();
    mmap(as_pointer(kMapperBase), kMapperSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    map_arena();
    // After execve: the descriptors this image inherited, with what the table knows of them.
    for (const auto& inherited : plan_.inherited) {
        XpmemFile& file = files_[inherited.file_id];
        file.file_id = inherited.file_id;
        file.opener_pid = inherited.opener_pid;
        file.opener_tag = inherited.opener_tag;
        file.before_exec = true;  // every command through it must get NOPROC now
        if (owns(file)) {
            file.unknown_objects = true;  // the old image may have made objects we never learned
            for (uint32_t index = 0; index < kMaxSegments; ++index) {
                auto segment = shared_.segment(index);
                if (segment && segment->state == SegmentState::live && segment->file_id == file.file_id)
                    file.segments.push_back(segment->ref);
            }
            for (uint32_t index = 0; index < kMaxPermits; ++index) {
                auto permit = shared_.permit(index);
                if (permit && permit->state == PermitState::live && permit->file_id == file.file_id)
                    file.permits.push_back(permit->ref);
            }
        }
        fds_.push_back(FdAlias{UniqueFd(inherited.fd), inherited.file_id});
    }
    if (plan_.role == Role::worker)
        open_device();
}

void Worker::become_identity(Role role, uint64_t seed, uint32_t parent_tag)
{
    identity_ = shared_.claim_identity();
    if (identity_ == nullptr) {
        // Every identity busy: this process cannot be told apart, so it does nothing.
        _exit(0);
    }
    g_identity = identity_;
    tag_ = identity_->tag.load();
    identity_->pid.store(pid_);
    identity_->parent_tag.store(parent_tag);
    identity_->role.store(static_cast<uint32_t>(role));
    identity_->worker.store(plan_.worker);
    identity_->seed.store(seed);
    identity_->op_number.store(0);
    identity_->progress_ns.store(now_ns());
    identity_->state.store(static_cast<uint32_t>(IdentityState::running));
    shared_.counters.processes.fetch_add(1);
}

std::string Worker::describe_self() const
{
    static constexpr std::array<const char*, 4> kRoles{"worker", "fork child", "exec prelude", "exec continuer"};
    return fmt::format("seed {} | {} of worker {} (tag {}, pid {}, uid {}, process seed {}, parent tag {}, depth {}) | op #{} {}",
                       shared_.seed, kRoles[static_cast<size_t>(plan_.role)], plan_.worker, tag_, pid_,
                       geteuid(), plan_.seed, plan_.parent_tag, plan_.depth, op_number_, op_name(kind_));
}

void Worker::run()
{
    loop();
}

void Worker::loop()
{
    while (!should_stop()) {
        ++op_number_;
        Draws draws(random_);
        const OpKind kind = choose_kind(draws);
        begin_op(kind);
        dispatch(kind, draws);
        end_op();
        reap_children(false);
        if (plan_.role == Role::worker)
            shared_.workers[plan_.worker].operations_done.fetch_add(1);
    }
    terminate(0);
}

bool Worker::should_stop() const
{
    if (shared_.stop.load(std::memory_order_relaxed))
        return true;
    if (plan_.role != Role::worker)
        return op_number_ >= plan_.operations;
    if (shared_.deadline_ns != 0 && now_ns() >= shared_.deadline_ns)
        return true;
    return shared_.operations_per_worker != 0 &&
           shared_.workers[plan_.worker].operations_done.load() >= shared_.operations_per_worker;
}

OpKind Worker::choose_kind(Draws& draws) const
{
    const auto allowed = [&](size_t index) {
        if (shared_.disabled_mask & (uint64_t{1} << index))
            return false;
        const auto kind = static_cast<OpKind>(index);
        if ((kind == OpKind::fork || kind == OpKind::exec) && plan_.depth >= kMaxDepth)
            return false;
        return kind != OpKind::exit || plan_.role == Role::worker;
    };
    uint64_t total = 0;
    for (size_t index = 0; index < kOpKinds; ++index)
        total += allowed(index) ? shared_.weights[index] : 0;
    uint64_t choice = draws.below(total);
    for (size_t index = 0; index < kOpKinds; ++index) {
        if (!allowed(index))
            continue;
        if (choice < shared_.weights[index])
            return static_cast<OpKind>(index);
        choice -= shared_.weights[index];
    }
    return OpKind::version;
}

void Worker::begin_op(OpKind kind)
{
    kind_ = kind;
    current_note_.clear();
    identity_->op_kind.store(static_cast<uint32_t>(kind));
    identity_->op_number.store(op_number_);
    identity_->progress_ns.store(now_ns());
    fmt::format_to_n(g_context, sizeof(g_context) - 1, "{}", describe_self()).out[0] = '\0';
    if (shared_.trace) {  // before it runs too: an operation that crashes the kernel never ends
        const std::string traced = fmt::format("trace tag {} pid {}: #{} {} ...\n", tag_, pid_, op_number_, op_name(kind));
        (void)!write(STDERR_FILENO, traced.data(), traced.size());
    }
    alarm(shared_.hang_seconds + 20);
    shared_.counters.attempts[static_cast<size_t>(kind)].fetch_add(1, std::memory_order_relaxed);
}

void Worker::end_op()
{
    alarm(0);
    std::string line = fmt::format("#{} {}: {}", op_number_, op_name(kind_), current_note_);
    if (shared_.trace) {
        std::string traced = fmt::format("trace tag {} pid {}: {}\n", tag_, pid_, line);
        (void)!write(STDERR_FILENO, traced.data(), traced.size());
    }
    recent_[op_number_ % recent_.size()] = std::move(line);
}

void Worker::succeeded()
{
    shared_.counters.successes[static_cast<size_t>(kind_)].fetch_add(1, std::memory_order_relaxed);
}

void Worker::rejected()
{
    shared_.counters.expected_rejections.fetch_add(1, std::memory_order_relaxed);
}

void Worker::fail(const std::string& message)
{
    alarm(0);
    std::string report = fmt::format("FAILURE: {}\n  {}\n  this op: {}\n  last operations of this process:\n", message,
                                     describe_self(), current_note_);
    for (uint64_t back = recent_.size() - 1; back > 0; --back) {
        const uint64_t number = op_number_ - back;
        if (number > 0 && number < op_number_ && !recent_[number % recent_.size()].empty())
            report += fmt::format("    {}\n", recent_[number % recent_.size()]);
    }
    uint32_t expected = 0;
    if (shared_.failed.compare_exchange_strong(expected, 1)) {
        const size_t length = std::min(report.size(), sizeof(shared_.failure) - 1);
        memcpy(shared_.failure, report.data(), length);
        shared_.failure[length] = '\0';
    }
    shared_.stop.store(1);
    (void)!write(STDERR_FILENO, report.data(), report.size());
    if (identity_ != nullptr)
        identity_->state.store(static_cast<uint32_t>(IdentityState::exited));
    _exit(kFailureExitCode);
}

void Worker::terminate(int exit_code)
{
    alarm(0);
    stop_mapper();
    reap_children(true);
    // Whatever this process's files made may go away with them: no strict checks from now.
    for (const auto& [file_id, file] : files_) {
        for (const auto& segment : file.segments)
            shared_.set_segment_state(segment, SegmentState::closing);
        for (const auto& permit : file.permits)
            shared_.set_permit_state(permit, PermitState::closing);
    }
    fds_.clear();
    identity_->state.store(static_cast<uint32_t>(IdentityState::exited));
    _exit(exit_code);
}

void Worker::reap_children(bool wait_all)
{
    while (!children_.empty()) {
        bool reaped_any = false;
        for (auto child = children_.begin(); child != children_.end();) {
            int status = 0;
            const pid_t pid = waitpid(*child, &status, WNOHANG);
            if (pid == 0) {
                ++child;
                continue;
            }
            child = children_.erase(child);
            reaped_any = true;
            if (pid < 0)
                continue;
            for (auto& identity : shared_.identities)  // it may have died before saying so
                if (identity.pid.load() == pid && identity.state.load() == static_cast<uint32_t>(IdentityState::running))
                    identity.state.store(static_cast<uint32_t>(IdentityState::exited));
            if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
                continue;
            if (WIFEXITED(status) && WEXITSTATUS(status) == kFailureExitCode) {
                shared_.stop.store(1);  // the child has reported it
                continue;
            }
            if (!shared_.stop.load())
                fail(fmt::format("child pid {} ended badly: {}", pid,
                                 WIFSIGNALED(status) ? fmt::format("signal {}", WTERMSIG(status))
                                                     : fmt::format("exit {}", WEXITSTATUS(status))));
        }
        if (!wait_all)
            return;
        if (!reaped_any) {
            identity_->progress_ns.store(now_ns());  // waiting, not hung: the children have heartbeats
            usleep(20000);
        }
    }
}

// ---- descriptors --------------------------------------------------------------------------

bool Worker::open_device()
{
    size_t own_files = 0;
    for (const auto& [file_id, file] : files_)
        own_files += owns(file) ? 1 : 0;
    if (own_files >= kMaxOwnFiles || fds_.size() >= kMaxFds)
        return false;
    UniqueFd fd(open(XPMEM_DEVICE_PATH, O_RDWR));  // no O_CLOEXEC: execve inherits it on purpose
    if (fd.get() < 0)
        fail(fmt::format("open {}: {}", XPMEM_DEVICE_PATH, strerror(errno)));
    const uint64_t file_id = shared_.next_file_id.fetch_add(1) + 1;
    XpmemFile& file = files_[file_id];
    file.file_id = file_id;
    file.opener_pid = pid_;
    file.opener_tag = tag_;
    fds_.push_back(FdAlias{std::move(fd), file_id});
    note("opened fd {} file {}", fds_.back().fd.get(), file_id);
    if (kind_ == OpKind::open)
        succeeded();
    return true;
}

Worker::FdAlias* Worker::choose_fd(Draws& draws)
{
    if (fds_.empty())
        return nullptr;
    std::vector<FdAlias*> own;
    for (auto& alias : fds_)
        if (owns(file_of(alias)))
            own.push_back(&alias);
    const uint64_t choice = draws.raw();
    if (!own.empty() && choice % 100 < 85)
        return own[(choice >> 8) % own.size()];
    return &fds_[(choice >> 8) % fds_.size()];
}

// Every command on a descriptor of another process must fail with the module's NOPROC.
void Worker::check_foreign_result(const XpmemFile& file, long result, int error, const char* command)
{
    if (owns(file) || file.opener_pid == 0)
        return;
    if (result >= 0 || error != kNoProcessErrno)
        fail(fmt::format("{} through a descriptor opened by pid {} (not us, pid {}) returned {} errno {} instead of errno {}",
                         command, file.opener_pid, pid_, result, error, kNoProcessErrno));
    rejected();
}

// Forgets a file whose last descriptor here was closed: what it made may be gone soon.
void Worker::forget_file(uint64_t file_id)
{
    auto file = files_.find(file_id);
    if (file == files_.end())
        return;
    if (owns(file->second)) {
        for (const auto& segment : file->second.segments)
            shared_.set_segment_state(segment, SegmentState::closing);
        for (const auto& permit : file->second.permits)
            shared_.set_permit_state(permit, PermitState::closing);
    }
    files_.erase(file);
}

// Usually the command struct itself; sometimes a copy in a page the kernel can read but
// not write back (the object is made, its id lost: EFAULT).
void Worker::prepare_argument(Draws& draws, const void* command, size_t size, void*& argument, bool& read_only)
{
    read_only = draws.percent(3);
    if (!read_only)
        return;
    mprotect(readonly_page_, kPageSize, PROT_READ | PROT_WRITE);
    memcpy(readonly_page_, command, size);
    mprotect(readonly_page_, kPageSize, PROT_READ);
    argument = readonly_page_;
}

// ---- the arena ------------------------------------------------------------------------------

void Worker::may_be_zero(size_t page)
{
    auto& sequence = identity_->page_sequence[page];
    if ((sequence.load() & 1) == 0)
        sequence.fetch_add(1, std::memory_order_seq_cst);
}

void Worker::stamped(size_t page)
{
    auto& sequence = identity_->page_sequence[page];
    if (sequence.load() & 1)
        sequence.fetch_add(1, std::memory_order_seq_cst);
}

void Worker::map_fresh(size_t first, size_t count)
{
    for (size_t page = first; page < first + count; ++page)
        may_be_zero(page);
    if (mmap(as_pointer(arena_address(first)), count * kPageSize, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
        fail(fmt::format("mmap of own arena pages {}+{}: {}", first, count, strerror(errno)));
    for (size_t page = first; page < first + count; ++page)
        arena_[page] = ArenaPage{true, PROT_READ | PROT_WRITE};
}

void Worker::map_arena()
{
    map_fresh(0, kArenaPages);
    stamp_pages(0, kArenaPages);
}

// A fork child's copy of the parent's arena, restamped with the child's tag before anyone can
// attach it: its pages are shared copy-on-write with the parent's until these writes.
void Worker::restamp_whole_arena()
{
    for (size_t page = 0; page < kArenaPages; ++page) {
        identity_->page_sequence[page].store(1);
        // Pages the parent unmapped, or that MADV_DONTFORK kept from us, are not there.
        if (!arena_[page].mapped || mprotect(as_pointer(arena_address(page)), kPageSize, PROT_READ | PROT_WRITE) != 0)
            arena_[page].mapped = false;
        else
            arena_[page].protection = PROT_READ | PROT_WRITE;
    }
    stamp_pages(0, kArenaPages);
}

void Worker::stamp_pages(size_t first, size_t count)
{
    generation_ = static_cast<uint8_t>((generation_ + 1) % kAttacherGeneration);
    for (size_t page = first; page < first + count; ++page) {
        if (!arena_[page].mapped)
            map_fresh(page, 1);
        if (arena_[page].protection != (PROT_READ | PROT_WRITE)) {
            if (mprotect(as_pointer(arena_address(page)), kPageSize, PROT_READ | PROT_WRITE) != 0)
                fail(fmt::format("mprotect of own arena page {}: {}", page, strerror(errno)));
            arena_[page].protection = PROT_READ | PROT_WRITE;
        }
        auto* words = static_cast<uint64_t*>(as_pointer(arena_address(page)));
        for (size_t word = 0; word < kPageSize / 8; ++word)
            words[word] = make_stamp(tag_, arena_address(page) + word * 8, generation_);
        stamped(page);
    }
}

bool Worker::choose_arena_range(Draws& draws, size_t& first, size_t& count, bool mapped_only) const
{
    first = draws.below(kArenaPages);
    count = 1 + draws.small_below(std::min<size_t>(kArenaPages - first, 64));
    if (!mapped_only)
        return true;
    // Shrink to the mapped run starting at `first` (so that mprotect and friends either
    // apply to the whole range or fail without changing anything).
    if (!arena_[first].mapped)
        return false;
    size_t run = 0;
    while (run < count && arena_[first + run].mapped)
        ++run;
    count = run;
    return true;
}

// ---- attachments ------------------------------------------------------------------------------

bool Worker::overlaps_record(uintptr_t start, uintptr_t length) const
{
    return std::any_of(records_.begin(), records_.end(), [&](const AttachRecord& record) {
        return start < record.start + record.length && record.start < start + length;
    });
}

// Drops every part of a record inside [start, start + length).
void Worker::forget_range(uintptr_t start, uintptr_t length)
{
    const uintptr_t end = start + length;
    std::vector<AttachRecord> kept;
    for (const auto& record : records_) {
        const uintptr_t record_end = record.start + record.length;
        if (end <= record.start || record_end <= start) {
            kept.push_back(record);
            continue;
        }
        if (record.start < start) {
            AttachRecord head = record;
            head.length = start - record.start;
            kept.push_back(head);
        }
        if (end < record_end) {
            AttachRecord tail = record;
            tail.start = end;
            tail.length = record_end - end;
            tail.owner_address = record.owner_address + (end - record.start);
            kept.push_back(tail);
        }
    }
    records_ = std::move(kept);
}

void Worker::split_records_at(uintptr_t address)
{
    for (size_t index = 0; index < records_.size(); ++index) {
        AttachRecord& record = records_[index];
        if (address <= record.start || address >= record.start + record.length)
            continue;
        AttachRecord tail = record;
        tail.start = address;
        tail.length = record.start + record.length - address;
        tail.owner_address = record.owner_address + (address - record.start);
        record.length = address - record.start;
        records_.push_back(tail);
        return;
    }
}

// Whether a piece is still mapped at both ends: a VMA that the module unmapped because it
// also reached into the original range can only have cut a piece at one of its edges.
bool Worker::range_mapped(uintptr_t start, uintptr_t length) const
{
    unsigned char residency = 0;
    const auto mapped = [&](uintptr_t page) {
        return mincore(as_pointer(page), kPageSize, &residency) == 0 || errno != ENOMEM;
    };
    return mapped(start) && mapped(start + length - kPageSize);
}

// After DETACH or RELEASE: the module unmaps every VMA of the attachment that intersects its
// original range; pieces moved elsewhere by mremap survive (detached, or revoked).
void Worker::drop_detached_instance(uint64_t instance, bool whole_instance)
{
    std::vector<AttachRecord> kept;
    for (const auto& record : records_) {
        if (record.instance != instance) {
            kept.push_back(record);
            continue;
        }
        const bool in_original = record.start < record.instance_start + record.instance_length &&
                                 record.instance_start < record.start + record.length;
        if (whole_instance || in_original || !range_mapped(record.start, record.length))
            continue;
        kept.push_back(record);
    }
    records_ = std::move(kept);
}

// The part of a piece whose owner addresses lie in the owner's arena (what can be validated).
bool Worker::arena_span(const AttachRecord& record, uintptr_t& first, uintptr_t& end) const
{
    const uintptr_t owner_end = record.owner_address + record.length;
    const uintptr_t start = std::max<uintptr_t>(record.owner_address, kArenaBase);
    const uintptr_t stop = std::min<uintptr_t>(owner_end, kArenaBase + kArenaSize);
    if (record.owner_tag == 0 || start >= stop)
        return false;
    first = record.start + (start - record.owner_address);
    end = record.start + (stop - record.owner_address);
    return true;
}

Worker::AttachRecord* Worker::choose_record(Draws& draws, bool readable_only)
{
    std::vector<AttachRecord*> candidates;
    uintptr_t first = 0, end = 0;
    for (auto& record : records_)
        if (!readable_only || arena_span(record, first, end))
            candidates.push_back(&record);
    if (candidates.empty())
        return nullptr;
    return candidates[draws.below(candidates.size())];
}

// Whether the table says this attachment was revoked before now: then it must fault.
const char* Worker::revocation(const AttachRecord& record)
{
    if (auto segment = shared_.segment(record.segment); segment && segment->state == SegmentState::removed)
        return "its segment was REMOVEd";
    if (auto permit = shared_.permit(record.permit); permit && permit->state == PermitState::released)
        return "its permit was RELEASEd";
    return nullptr;
}

std::string Worker::describe_record(const AttachRecord& record) const
{
    auto segment = shared_.segment(record.segment);
    auto permit = shared_.permit(record.permit);
    Identity* owner = shared_.identity(record.owner_tag);
    return fmt::format("attachment piece [{:#x}, {:#x}) -> owner tag {} (pid {}, {}) address {:#x}; segid {} (state {}), "
                       "apid {} (state {}); attach #{} originally at [{:#x}, {:#x}){}{}",
                       record.start, record.start + record.length, record.owner_tag, owner ? owner->pid.load() : -1,
                       owner ? (owner->state.load() == 1 ? "running" : "exited") : "gone", record.owner_address,
                       segment ? segment->segid : -1, segment ? static_cast<int>(segment->state) : -1,
                       permit ? permit->apid : -1, permit ? static_cast<int>(permit->state) : -1, record.instance,
                       record.instance_start, record.instance_start + record.instance_length,
                       record.read_only ? ", read-only" : "", record.inherit_on_fork ? ", inherited on fork" : "");
}

void Worker::remember(uint64_t instance, const std::string& event)
{
    const std::string line = fmt::format("pid {} op #{}: {}", pid_, op_number_, event);
    std::string& text = histories_[instance];
    if (text.size() < 6000)
        text += "\n      " + line;
    // Shared too, for the reports of other processes holding the same attachment.
    uint32_t origin = tag_;
    for (const auto& record : records_)
        if (record.instance == instance)
            origin = record.origin_tag;
    SharedEvent& slot = shared_.events[shared_.event_cursor.fetch_add(1) % kSharedEvents];
    slot.key.store(0, std::memory_order_release);
    const size_t length = std::min(line.size(), sizeof(slot.text) - 1);
    memcpy(slot.text, line.data(), length);
    slot.text[length] = '\0';
    slot.key.store(uint64_t{origin} << 32 | instance, std::memory_order_release);
}

void Worker::remember_range(uintptr_t start, uintptr_t length, const std::string& event)
{
    for (const auto& record : records_)
        if (start < record.start + record.length && record.start < start + length)
            remember(record.instance, fmt::format("{} [{:#x}, {:#x}) (piece [{:#x}, {:#x}))", event, start, start + length,
                                                  record.start, record.start + record.length));
}

std::string Worker::history(uint64_t instance) const
{
    const auto found = histories_.find(instance);
    std::string text = fmt::format("\n    history of attach #{} (this process's view):{}", instance,
                                   found == histories_.end() ? " (none)" : found->second);
    uint32_t origin = tag_;
    for (const auto& record : records_)
        if (record.instance == instance)
            origin = record.origin_tag;
    const uint64_t key = uint64_t{origin} << 32 | instance;
    const std::string own_pid = fmt::format("pid {} ", pid_);
    std::string others;
    const uint64_t end = shared_.event_cursor.load();
    for (uint64_t index = end > kSharedEvents ? end - kSharedEvents : 0; index < end; ++index) {  // oldest first
        const SharedEvent& event = shared_.events[index % kSharedEvents];
        if (event.key.load(std::memory_order_acquire) == key && std::string_view(event.text).rfind(own_pid, 0) != 0)
            others += fmt::format("\n      {}", event.text);
    }
    if (!others.empty())
        text += fmt::format("\n    what other processes did to it (shared log):{}", others);
    return text;
}

std::string Worker::describe_stamp(uint64_t value) const
{
    Identity* writer = shared_.identity(stamp_tag(value));
    if (stamp_tag(value) == 0 || writer == nullptr)
        return fmt::format("{:#018x} (not a stamp of any known process)", value);
    return fmt::format("{:#018x} = stamp of tag {} (pid {}, {}) for address {:#x}, generation {}", value, stamp_tag(value),
                       writer->pid.load(), writer->state.load() == 1 ? "running" : "exited", stamp_address(value),
                       stamp_generation(value));
}

// One word through an attachment: a fault is fine; a value must be the owner's stamp for
// exactly that owner address, or zero while the owner's page may be zero.
void Worker::check_word(const AttachRecord& record, uintptr_t local, bool write)
{
    const uintptr_t owner_address = record.owner_address + (local - record.start);
    if (!in_arena(owner_address))
        return;
    const size_t page = (owner_address - kArenaBase) / kPageSize;
    const char* revoked = revocation(record);
    Identity* owner = shared_.identity(record.owner_tag);
    const uint32_t before = owner ? owner->page_sequence[page].load(std::memory_order_acquire) : 1;
    uint64_t value = 0;
    const uint64_t written = make_stamp(record.owner_tag, owner_address, kAttacherGeneration);
    const Access access = write ? guarded_store(as_pointer(local), written) : guarded_load(as_pointer(local), value);
    const uint32_t after = owner ? owner->page_sequence[page].load(std::memory_order_acquire) : 1;
    auto& counters = shared_.counters;
    if (access != Access::ok) {
        (access == Access::bus_error ? counters.sigbus : counters.sigsegv).fetch_add(1, std::memory_order_relaxed);
        if (revoked != nullptr)
            counters.revoked_faults.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    if (revoked != nullptr)
        fail(fmt::format("{} through an attachment at {:#x} succeeded after {} (the ioctl had returned before this access): {}{}",
                         write ? "write" : "read", local, revoked, describe_record(record), history(record.instance)));
    if (write) {
        if (record.read_only)
            fail(fmt::format("write through a read-only attachment at {:#x} succeeded: {}{}", local, describe_record(record),
                             history(record.instance)));
        return;
    }
    counters.words_validated.fetch_add(1, std::memory_order_relaxed);
    if (value == 0) {
        counters.zero_words.fetch_add(1, std::memory_order_relaxed);
        const bool owner_running = owner && owner->state.load() == static_cast<uint32_t>(IdentityState::running);
        if (owner_running && (before & 1) == 0 && before == after)
            fail(fmt::format("read zero at {:#x} where the owner's page {} is stamped (sequence {}): {}{}", local, page,
                             before, describe_record(record), history(record.instance)));
        return;
    }
    if (stamp_tag(value) != record.owner_tag || stamp_address(value) != owner_address)
        fail(fmt::format("isolation: read at {:#x} returned {}; expected a stamp of tag {} for address {:#x}: {}{}", local,
                         describe_stamp(value), record.owner_tag, owner_address, describe_record(record),
                         history(record.instance)));
}

// ---- the mapper thread ------------------------------------------------------------------------

void Worker::start_mapper(uint64_t seed)
{
    if (mapper_running_)
        return;
    mapper_->seed = seed;
    mapper_->stop.store(false);
    if (pthread_create(&mapper_thread_, nullptr, mapper_main, &mapper_->stop) == 0)
        mapper_running_ = true;
}

void Worker::stop_mapper()
{
    if (!mapper_running_)
        return;
    mapper_->stop.store(true);
    pthread_join(mapper_thread_, nullptr);
    mapper_running_ = false;
}

// ---- children ----------------------------------------------------------------------------------

void Worker::become_child(Role role, uint64_t seed, uint64_t operations)
{
    const uint32_t parent_tag = tag_;
    pid_ = getpid();
    mapper_running_ = false;  // threads do not survive fork
    children_.clear();
    plan_.role = role;
    plan_.seed = seed;
    plan_.operations = operations;
    plan_.parent_tag = parent_tag;
    ++plan_.depth;
    random_ = Random(seed);
    op_number_ = 0;
    recent_ = {};
    become_identity(role, seed, parent_tag);
    // The parent's descriptors: the module serves them only to the parent.
    for (auto& [file_id, file] : files_) {
        file.segments.clear();
        file.permits.clear();
    }
    // Attachments are not copied by fork, unless MADV_DOFORK said so.
    std::erase_if(records_, [](const AttachRecord& record) { return !record.inherit_on_fork; });
    for (const auto& record : records_)
        remember(record.instance, fmt::format("inherited by fork child (tag {}) at [{:#x}, {:#x})", tag_, record.start,
                                              record.start + record.length));
    restamp_whole_arena();
}

void Worker::op_fork(Draws& draws)
{
    const uint64_t seed = draws.raw();
    const uint64_t operations = 4 + draws.below(40);
    const bool open_own = draws.percent(50);
    if (children_.size() >= kMaxChildren)
        return note("too many children");
    const pid_t pid = fork();
    if (pid < 0)
        return note("fork: {}", strerror(errno));
    if (pid == 0) {
        become_child(Role::fork_child, seed, operations);
        if (open_own)
            open_device();
        loop();
    }
    children_.push_back(pid);
    for (const auto& record : records_)
        if (record.inherit_on_fork)
            remember(record.instance, fmt::format("fork: child pid {} inherits [{:#x}, {:#x})", pid, record.start,
                                                  record.start + record.length));
    note("child pid {} ({} ops, seed {})", pid, operations, seed);
    succeeded();
}

// A child that opens /dev/xpmem itself, works a little, then re-executes this program,
// which carries on with the descriptors it inherited (same process, new memory image).
void Worker::op_exec(Draws& draws)
{
    const uint64_t seed = draws.raw();
    const uint64_t prelude_operations = draws.below(8);
    const uint64_t operations = 4 + draws.below(40);
    const uint64_t continuer_seed = draws.raw();
    if (children_.size() >= kMaxChildren)
        return note("too many children");
    const pid_t pid = fork();
    if (pid < 0)
        return note("fork: {}", strerror(errno));
    if (pid != 0) {
        children_.push_back(pid);
        note("child pid {} execs after {} ops (seed {}), then {} ops (seed {})", pid, prelude_operations, seed, operations,
             continuer_seed);
        succeeded();
        return;
    }
    become_child(Role::exec_prelude, seed, prelude_operations);
    open_device();
    while (op_number_ < prelude_operations && !shared_.stop.load()) {
        ++op_number_;
        Draws prelude_draws(random_);
        OpKind kind = choose_kind(prelude_draws);
        if (kind == OpKind::fork || kind == OpKind::exec || kind == OpKind::mapper_thread)
            kind = OpKind::make;
        begin_op(kind);
        dispatch(kind, prelude_draws);
        end_op();
    }
    reap_children(true);
    std::string fds;
    for (const auto& alias : fds_) {
        const XpmemFile& file = file_of(alias);
        fds += fmt::format("{}{}:{}:{}:{}", fds.empty() ? "" : ",", alias.fd.get(), file.file_id, file.opener_pid,
                           file.opener_tag);
    }
    const std::string plan = fmt::format("{},{},{},{},{},{}", g_shared_memfd, plan_.worker, continuer_seed, operations,
                                         plan_.depth, tag_);
    std::vector<std::string> arguments{"xpmem-kernel-fuzz", "--exec-continue", plan, "--exec-fds", fds.empty() ? "-" : fds};
    std::vector<char*> argv;
    for (auto& argument : arguments)
        argv.push_back(argument.data());
    argv.push_back(nullptr);
    identity_->state.store(static_cast<uint32_t>(IdentityState::exited));  // this image ends here
    execv("/proc/self/exe", argv.data());
    fail(fmt::format("execv /proc/self/exe: {}", strerror(errno)));
}

// ---- dispatch ----------------------------------------------------------------------------------

void Worker::dispatch(OpKind kind, Draws& draws)
{
    switch (kind) {
    case OpKind::make: return op_make(draws);
    case OpKind::remove: return op_remove(draws);
    case OpKind::get: return op_get(draws);
    case OpKind::release: return op_release(draws);
    case OpKind::attach: return op_attach(draws);
    case OpKind::detach: return op_detach(draws);
    case OpKind::read: return op_read(draws);
    case OpKind::write: return op_write(draws);
    case OpKind::restamp: return op_restamp(draws);
    case OpKind::check_own: return op_check_own(draws);
    case OpKind::owner_mmap: return op_owner_mmap(draws);
    case OpKind::owner_munmap: return op_owner_munmap(draws);
    case OpKind::owner_mremap: return op_owner_mremap(draws);
    case OpKind::owner_mprotect: return op_owner_mprotect(draws);
    case OpKind::owner_madvise: return op_owner_madvise(draws);
    case OpKind::owner_migrate: return op_owner_migrate(draws);
    case OpKind::attachment_munmap: return op_attachment_munmap(draws);
    case OpKind::attachment_mremap: return op_attachment_mremap(draws);
    case OpKind::attachment_mprotect: return op_attachment_mprotect(draws);
    case OpKind::attachment_madvise: return op_attachment_madvise(draws);
    case OpKind::attachment_mmap_over: return op_attachment_mmap_over(draws);
    case OpKind::fork: return op_fork(draws);
    case OpKind::exec: return op_exec(draws);
    case OpKind::exit: note("worker exits; the supervisor starts its successor"); end_op(); return terminate(kRespawnExitCode);
    case OpKind::open: return (void)open_device();
    case OpKind::close: return op_close(draws);
    case OpKind::dup: return op_dup(draws);
    case OpKind::send_fd: return op_send_fd(draws);
    case OpKind::receive_fd: return op_receive_fd(draws);
    case OpKind::bad_ioctl: return op_bad_ioctl(draws);
    case OpKind::raw_mmap: return op_raw_mmap(draws);
    case OpKind::version: return op_version(draws);
    case OpKind::mapper_thread: return op_mapper_thread(draws);
    case OpKind::count: break;
    }
}

} // namespace xpmem_fuzz
