// Two processes talk UCP over whatever transports UCX picks (UCX_TLS), and every byte that
// arrives is checked: tagged messages of 8 B to 64 MiB both ways, RMA put and get on the
// peer's heap and on memory UCX allocated (SysV shared memory by default), and the cache
// pattern, where buffers are freed and allocated again (at the
// same addresses, as glibc's malloc does) between operations. Exits 0 only if no byte was
// wrong and UCX reported no error.
//
//   ucp_verify [ROUNDS]      (ROUNDS of each cache pattern, default 200)
//
// The parent forks the peer; they exchange worker addresses, remote keys and barriers over
// a loopback TCP connection. Each prints which transports its endpoint uses and how many
// of this library's mappings (converted memory or attachments) it has, so a run shows that
// XPMEM carried the data.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "verify.hpp"

namespace {

struct Failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

void check(ucs_status_t status, const char *what) {
    if (status != UCS_OK) throw Failure(std::string(what) + ": " + ucs_status_string(status));
}

void check_errno(bool ok, const char *what) {
    if (!ok) throw Failure(std::string(what) + ": " + std::strerror(errno));
}

// The out-of-band connection to the peer.
class Oob {
  public:
    explicit Oob(int fd) : fd_(fd) {}
    Oob(const Oob &) = delete;
    Oob &operator=(const Oob &) = delete;
    ~Oob() { ::close(fd_); }

    void send(std::span<const std::byte> bytes) {
        std::uint64_t size = bytes.size();
        write_all({reinterpret_cast<const std::byte *>(&size), sizeof size});
        write_all(bytes);
    }
    std::vector<std::byte> receive() {
        std::uint64_t size = 0;
        read_all({reinterpret_cast<std::byte *>(&size), sizeof size});
        std::vector<std::byte> bytes(size);
        read_all(bytes);
        return bytes;
    }
    template <class T>
    void send_value(const T &value) {
        send(std::as_bytes(std::span(&value, 1)));
    }
    template <class T>
    T receive_value() {
        auto bytes = receive();
        if (bytes.size() != sizeof(T)) throw Failure("out-of-band message of the wrong size");
        T value;
        std::memcpy(&value, bytes.data(), sizeof value);
        return value;
    }
    // Whether a message is waiting.
    bool readable() const {
        pollfd poll_fd{fd_, POLLIN, 0};
        return ::poll(&poll_fd, 1, 0) > 0;
    }

  private:
    void write_all(std::span<const std::byte> bytes) {
        while (!bytes.empty()) {
            ssize_t done = ::write(fd_, bytes.data(), bytes.size());
            check_errno(done > 0, "out-of-band write");
            bytes = bytes.subspan(static_cast<std::size_t>(done));
        }
    }
    void read_all(std::span<std::byte> bytes) {
        while (!bytes.empty()) {
            ssize_t done = ::read(fd_, bytes.data(), bytes.size());
            if (done == 0) throw Failure("the peer closed the out-of-band connection");
            check_errno(done > 0, "out-of-band read");
            bytes = bytes.subspan(static_cast<std::size_t>(done));
        }
    }
    int fd_;
};

// A connected pair of loopback TCP sockets: the parent keeps one, the forked peer the other.
std::pair<int, int> loopback_pair() {
    int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    check_errno(listener >= 0, "socket");
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    check_errno(::bind(listener, reinterpret_cast<sockaddr *>(&address), length) == 0 &&
                    ::listen(listener, 1) == 0 &&
                    ::getsockname(listener, reinterpret_cast<sockaddr *>(&address), &length) == 0,
                "listen on loopback");
    int connecting = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    check_errno(connecting >= 0 &&
                    ::connect(connecting, reinterpret_cast<sockaddr *>(&address), length) == 0,
                "connect on loopback");
    int accepted = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    check_errno(accepted >= 0, "accept");
    ::close(listener);
    return {accepted, connecting};
}

using verify::fill;
using verify::heap;
using verify::HeapBuffer;
using verify::wrong_bytes;
using verify::xpmem_mappings;

class Peer {
  public:
    Peer(int rank, int oob_fd) : rank_(rank), oob_(oob_fd) {
        ucp_config_t *config = nullptr;
        check(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read");
        ucp_params_t params{};
        params.field_mask = UCP_PARAM_FIELD_FEATURES;
        params.features = UCP_FEATURE_TAG | UCP_FEATURE_RMA;
        ucs_status_t status = ucp_init(&params, config, &context_);
        ucp_config_release(config);
        check(status, "ucp_init");
        ucp_worker_params_t worker_params{};
        worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
        worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;
        check(ucp_worker_create(context_, &worker_params, &worker_), "ucp_worker_create");
        ucp_address_t *address = nullptr;
        std::size_t length = 0;
        check(ucp_worker_get_address(worker_, &address, &length), "ucp_worker_get_address");
        oob_.send({reinterpret_cast<const std::byte *>(address), length});
        ucp_worker_release_address(worker_, address);
        auto remote = oob_.receive();
        ucp_ep_params_t ep_params{};
        ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
        ep_params.address = reinterpret_cast<const ucp_address_t *>(remote.data());
        check(ucp_ep_create(worker_, &ep_params, &ep_), "ucp_ep_create");
    }
    Peer(const Peer &) = delete;
    Peer &operator=(const Peer &) = delete;
    ~Peer() {
        if (ep_ != nullptr) {
            ucp_request_param_t param{};
            param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
            param.flags = UCP_EP_CLOSE_FLAG_FORCE;
            ucs_status_ptr_t request = ucp_ep_close_nbx(ep_, &param);
            if (UCS_PTR_IS_PTR(request)) {
                while (ucp_request_check_status(request) == UCS_INPROGRESS)
                    ucp_worker_progress(worker_);
                ucp_request_free(request);
            }
        }
        if (worker_ != nullptr) ucp_worker_destroy(worker_);
        if (context_ != nullptr) ucp_cleanup(context_);
    }

    void run(int rounds) {
        if (rank_ == 0) {
            std::printf("rank 0 endpoint:\n");
            std::fflush(stdout);
            ucp_ep_print_info(ep_, stdout);
        }
        barrier();
        tagged_sizes();
        tagged_cache_pattern(rounds);
        rma_on_the_peers(Memory::heap);
        rma_on_the_peers(Memory::ucx_allocated);
        rma_cache_pattern(rounds / 4);
        std::printf("rank %d: xpmem mappings in this process: %d\n", rank_, xpmem_mappings());
        barrier();
    }

    std::size_t wrong() const { return wrong_; }

  private:
    // Waits for `request` of a non-blocking call; returns its status.
    ucs_status_t wait(ucs_status_ptr_t request) {
        if (request == nullptr) return UCS_OK;
        if (UCS_PTR_IS_ERR(request)) return UCS_PTR_STATUS(request);
        while (ucp_request_check_status(request) == UCS_INPROGRESS) ucp_worker_progress(worker_);
        ucs_status_t status = ucp_request_check_status(request);
        ucp_request_free(request);
        return status;
    }

    // Both processes got here. Progresses UCX while it waits: without one-sided hardware
    // UCX serves the peer's puts and gets in our progress calls.
    void barrier() {
        oob_.send_value(1);
        while (!oob_.readable()) ucp_worker_progress(worker_);
        oob_.receive_value<int>();
    }

    void send(std::span<const std::byte> bytes, ucp_tag_t tag) {
        ucp_request_param_t param{};
        check(wait(ucp_tag_send_nbx(ep_, bytes.data(), bytes.size(), tag, &param)), "tag send");
    }
    void receive(std::span<std::byte> bytes, ucp_tag_t tag) {
        ucp_request_param_t param{};
        check(
            wait(ucp_tag_recv_nbx(worker_, bytes.data(), bytes.size(), tag, ~ucp_tag_t{0}, &param)),
            "tag receive");
    }
    void flush() {
        ucp_request_param_t param{};
        check(wait(ucp_ep_flush_nbx(ep_, &param)), "flush");
    }

    void count(std::size_t wrong, const std::string &what) {
        if (wrong == 0) return;
        wrong_ += wrong;
        std::fprintf(stderr, "rank %d: %zu wrong bytes: %s\n", rank_, wrong, what.c_str());
    }

    // Every power of two from 8 B to 64 MiB and an odd size between each two, each way.
    void tagged_sizes() {
        std::vector<std::size_t> sizes;
        for (std::size_t size = 8; size <= (std::size_t{64} << 20); size *= 2) {
            sizes.push_back(size);
            if (size < (std::size_t{64} << 20)) sizes.push_back(size + size / 2 + 1);
        }
        std::uint64_t tag = 1;
        std::size_t bytes = 0;
        for (int sender : {0, 1}) {
            for (std::size_t size : sizes) {
                std::uint64_t seed = tag * 1000 + static_cast<std::uint64_t>(sender);
                auto buffer = heap(size);
                std::span<std::byte> bytes_of(buffer.get(), size);
                if (rank_ == sender) {
                    fill(bytes_of, seed);
                    send(bytes_of, tag);
                } else {
                    std::memset(bytes_of.data(), 0xee, size);
                    receive(bytes_of, tag);
                    count(wrong_bytes(bytes_of, seed), "tag of " + std::to_string(size) + " B");
                    bytes += size;
                }
                ++tag;
            }
        }
        barrier();
        std::printf("rank %d: tagged 8 B - 64 MiB both ways: received %zu bytes\n", rank_, bytes);
    }

    // The sender allocates a buffer of 1-8 MiB, fills it, sends it, frees it; again and
    // again, so that buffers land where freed ones were.
    void tagged_cache_pattern(int rounds) {
        std::mt19937_64 sizes(42);  // the same sizes in both processes
        std::set<std::byte *> seen;
        int reused = 0;
        std::size_t bytes = 0;
        for (int round = 0; round < rounds; ++round) {
            int sender = round % 2;
            std::size_t size = (std::size_t{1} << 20) + sizes() % (std::size_t{7} << 20);
            std::uint64_t seed = 5'000'000 + static_cast<std::uint64_t>(round);
            auto tag = static_cast<ucp_tag_t>(1'000'000 + round);
            auto buffer = heap(size);
            std::span<std::byte> span(buffer.get(), size);
            if (rank_ == sender) {
                reused += !seen.insert(buffer.get()).second;
                fill(span, seed);
                send(span, tag);
            } else {
                receive(span, tag);
                count(wrong_bytes(span, seed), "cache pattern round " + std::to_string(round));
                bytes += size;
            }
        }
        barrier();
        std::printf(
            "rank %d: tagged cache pattern: %d rounds, %d sends from a reused address, "
            "received %zu bytes\n",
            rank_, rounds, reused, bytes);
    }

    // Memory of this process the peer may put into and get from: from the heap, or
    // allocated by UCX (ucp_mem_map with UCP_MEM_MAP_ALLOCATE, which takes SysV shared
    // memory first by default: UCX_ALLOC_PRIO).
    struct Exposed {
        HeapBuffer heap;
        std::span<std::byte> bytes;
        ucp_mem_h memh = nullptr;
    };
    enum class Memory { heap, ucx_allocated };
    Exposed expose(std::size_t size, Memory memory = Memory::heap) {
        Exposed exposed;
        ucp_mem_map_params_t params{};
        params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
        params.length = size;
        if (memory == Memory::heap) {
            exposed.heap = heap(size);
            params.address = exposed.heap.get();
        } else {
            params.field_mask |= UCP_MEM_MAP_PARAM_FIELD_FLAGS;
            params.flags = UCP_MEM_MAP_ALLOCATE;
        }
        check(ucp_mem_map(context_, &params, &exposed.memh), "ucp_mem_map");
        ucp_mem_attr_t attributes{};
        attributes.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
        check(ucp_mem_query(exposed.memh, &attributes), "ucp_mem_query");
        exposed.bytes = {static_cast<std::byte *>(attributes.address), size};
        void *packed = nullptr;
        std::size_t packed_size = 0;
        check(ucp_rkey_pack(context_, exposed.memh, &packed, &packed_size), "ucp_rkey_pack");
        oob_.send_value(reinterpret_cast<std::uint64_t>(exposed.bytes.data()));
        oob_.send({static_cast<const std::byte *>(packed), packed_size});
        ucp_rkey_buffer_release(packed);
        return exposed;
    }
    void unexpose(Exposed &exposed) { check(ucp_mem_unmap(context_, exposed.memh), "unmap"); }
    struct Remote {
        std::uint64_t address;
        ucp_rkey_h rkey;
    };
    Remote remote() {
        auto address = oob_.receive_value<std::uint64_t>();
        auto packed = oob_.receive();
        ucp_rkey_h rkey = nullptr;
        check(ucp_ep_rkey_unpack(ep_, packed.data(), &rkey), "ucp_ep_rkey_unpack");
        return {address, rkey};
    }

    void put(std::span<const std::byte> bytes, std::uint64_t address, ucp_rkey_h rkey) {
        ucp_request_param_t param{};
        check(wait(ucp_put_nbx(ep_, bytes.data(), bytes.size(), address, rkey, &param)), "put");
    }
    void get(std::span<std::byte> bytes, std::uint64_t address, ucp_rkey_h rkey) {
        ucp_request_param_t param{};
        check(wait(ucp_get_nbx(ep_, bytes.data(), bytes.size(), address, rkey, &param)), "get");
    }

    // Each process exposes 16 MiB, filled with its own pattern; the other gets pieces of it
    // and checks them, then puts its own pattern into it, which the owner checks. Then each
    // sends all of it as one tagged message, which the peer receives into its own.
    void rma_on_the_peers(Memory memory) {
        constexpr std::size_t kHeap = std::size_t{16} << 20;
        Exposed mine = expose(kHeap, memory);
        std::span<std::byte> my_heap = mine.bytes;
        fill(my_heap, 100 + static_cast<std::uint64_t>(rank_));
        Remote theirs = remote();
        barrier();
        std::uint64_t their_seed = 100 + static_cast<std::uint64_t>(1 - rank_);
        std::size_t bytes = 0;
        for (std::size_t size = 8; size <= kHeap; size *= 4) {
            std::size_t offset = (kHeap - size) / 3 / 8 * 8;  // word-aligned, off the start
            auto local = heap(size);
            std::span<std::byte> span(local.get(), size);
            get(span, theirs.address + offset, theirs.rkey);
            count(wrong_bytes(span, their_seed, offset), "get of " + std::to_string(size) + " B");
            bytes += size;
        }
        barrier();  // both got everything: now each puts into the other's heap
        std::uint64_t put_seed = 200 + static_cast<std::uint64_t>(rank_);
        std::size_t at = 0;
        for (std::size_t size = 8; size <= kHeap / 2 && at + size <= kHeap; size *= 4) {
            auto local = heap(size);
            std::span<std::byte> span(local.get(), size);
            fill(span, put_seed + size);
            put(span, theirs.address + at, theirs.rkey);
            at += size;
        }
        flush();
        barrier();
        at = 0;
        for (std::size_t size = 8; size <= kHeap / 2 && at + size <= kHeap; size *= 4) {
            std::uint64_t peer_seed = 200 + static_cast<std::uint64_t>(1 - rank_) + size;
            count(wrong_bytes(my_heap.subspan(at, size), peer_seed),
                  "put of " + std::to_string(size) + " B");
            at += size;
            bytes += size;
        }
        barrier();
        ucp_rkey_destroy(theirs.rkey);
        auto tag = static_cast<ucp_tag_t>(3'000'000 + static_cast<int>(memory));
        for (int sender : {0, 1}) {
            if (rank_ == sender) {
                fill(my_heap, 300 + static_cast<std::uint64_t>(sender));
                send(my_heap, tag + static_cast<ucp_tag_t>(sender));
            } else {
                receive(my_heap, tag + static_cast<ucp_tag_t>(sender));
                count(wrong_bytes(my_heap, 300 + static_cast<std::uint64_t>(sender)),
                      "tag of the exposed memory");
                bytes += kHeap;
            }
        }
        barrier();
        unexpose(mine);
        std::printf("rank %d: put, get and tag on the peer's %s memory: %zu bytes checked\n", rank_,
                    memory == Memory::heap ? "heap" : "UCX-allocated", bytes);
    }

    // Each round the target frees its exposed heap buffer and allocates a new one (often
    // at the same address), the origin does the same with its source: puts and gets must
    // reach the new memory, never what a cached mapping of the old one shows.
    void rma_cache_pattern(int rounds) {
        std::mt19937_64 sizes(7);
        std::size_t bytes = 0;
        for (int round = 0; round < rounds; ++round) {
            int target = round % 2;
            std::size_t size = (std::size_t{1} << 20) + sizes() % (std::size_t{7} << 20);
            std::uint64_t seed = 9'000'000 + static_cast<std::uint64_t>(round);
            if (rank_ == target) {
                Exposed mine = expose(size);
                std::span<std::byte> span = mine.bytes;
                fill(span, seed);  // what the origin gets
                barrier();         // filled
                barrier();         // the origin got it and put its own
                count(wrong_bytes(span, seed + 1), "put, cache round " + std::to_string(round));
                bytes += size;
                unexpose(mine);
            } else {
                Remote theirs = remote();
                auto local = heap(size);
                std::span<std::byte> span(local.get(), size);
                barrier();
                get(span, theirs.address, theirs.rkey);
                count(wrong_bytes(span, seed), "get, cache round " + std::to_string(round));
                bytes += size;
                fill(span, seed + 1);
                put(span, theirs.address, theirs.rkey);
                flush();
                ucp_rkey_destroy(theirs.rkey);
                barrier();
            }
        }
        barrier();
        std::printf("rank %d: RMA cache pattern: %d rounds, %zu bytes checked\n", rank_, rounds,
                    bytes);
    }

    int rank_;
    Oob oob_;
    ucp_context_h context_ = nullptr;
    ucp_worker_h worker_ = nullptr;
    ucp_ep_h ep_ = nullptr;
    std::size_t wrong_ = 0;
};

int run(int rank, int fd, int rounds) {
    try {
        Peer peer(rank, fd);
        peer.run(rounds);
        if (peer.wrong() != 0) {
            std::fprintf(stderr, "rank %d: FAILED: %zu wrong bytes\n", rank, peer.wrong());
            return 1;
        }
        return 0;
    } catch (const std::exception &error) {
        std::fprintf(stderr, "rank %d: FAILED: %s\n", rank, error.what());
        return 1;
    }
}

}  // namespace

int main(int argc, char **argv) {
    int rounds = argc > 1 ? std::atoi(argv[1]) : 200;
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    auto [parent_fd, child_fd] = loopback_pair();
    pid_t child = ::fork();
    if (child < 0) {
        std::perror("fork");
        return 1;
    }
    if (child == 0) {
        ::close(parent_fd);
        std::_Exit(run(1, child_fd, rounds));
    }
    ::close(child_fd);
    int result = run(0, parent_fd, rounds);
    int status = 0;
    ::waitpid(child, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        std::fprintf(stderr, "rank 1 ended with status %#x\n", status);
        result = 1;
    }
    if (result == 0) std::printf("ucp_verify: PASS, no wrong byte\n");
    return result;
}
