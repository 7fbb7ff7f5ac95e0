// An MPI program whose every received byte is checked: point-to-point messages of 8 B to
// 16 MiB around a ring, the same with send buffers freed and allocated again between
// messages (glibc reuses the addresses), MPI_Alltoall, MPI_Bcast from every root, and
// MPI_Put/MPI_Get on a window of each rank's heap. Run with Open MPI's pml ucx over a UCX
// built with this libxpmem (tests/clients/run.sh). Exits 0 only if no byte was wrong.
//
//   mpirun -np N mpi_verify [ROUNDS]      (ROUNDS of buffer reuse, default 100)
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <span>
#include <string>

#include "verify.hpp"

namespace {

using verify::fill;
using verify::heap;
using verify::wrong_bytes;
using verify::xpmem_mappings;

class Check {
  public:
    Check(int rank, int size) : rank_(rank), size_(size) {}

    void point_to_point() {
        int next = (rank_ + 1) % size_, previous = (rank_ + size_ - 1) % size_;
        std::size_t bytes = 0;
        for (std::size_t size = 8; size <= (std::size_t{16} << 20); size *= 4) {
            for (std::size_t length : {size, size + size / 2 + 1}) {
                auto out = heap(length), in = heap(length);
                std::span<std::byte> sent(out.get(), length), received(in.get(), length);
                fill(sent, seed(rank_, length));
                MPI_Sendrecv(sent.data(), count_of(length), MPI_BYTE, next, 1, received.data(),
                             count_of(length), MPI_BYTE, previous, 1, MPI_COMM_WORLD,
                             MPI_STATUS_IGNORE);
                note(wrong_bytes(received, seed(previous, length)),
                     "point-to-point of " + std::to_string(length) + " B");
                bytes += length;
            }
        }
        report("point-to-point 8 B - 16 MiB", bytes);
    }

    // Each round every rank allocates a send buffer of 1-8 MiB, sends it to the next rank
    // and frees it: the next round's buffer lands where it was.
    void buffer_reuse(int rounds) {
        int next = (rank_ + 1) % size_, previous = (rank_ + size_ - 1) % size_;
        std::mt19937_64 sizes(11);  // the same sizes on every rank
        auto in = heap(std::size_t{8} << 20);
        std::set<std::byte *> seen;
        int reused = 0;
        std::size_t bytes = 0;
        for (int round = 0; round < rounds; ++round) {
            std::size_t length = (std::size_t{1} << 20) + sizes() % (std::size_t{7} << 20);
            auto out = heap(length);
            reused += !seen.insert(out.get()).second;
            fill({out.get(), length}, seed(rank_, 1'000'000 + round));
            MPI_Request requests[2];
            MPI_Irecv(in.get(), count_of(length), MPI_BYTE, previous, 2, MPI_COMM_WORLD,
                      &requests[0]);
            MPI_Isend(out.get(), count_of(length), MPI_BYTE, next, 2, MPI_COMM_WORLD, &requests[1]);
            MPI_Waitall(2, requests, MPI_STATUSES_IGNORE);
            note(wrong_bytes({in.get(), length}, seed(previous, 1'000'000 + round)),
                 "reuse round " + std::to_string(round));
            bytes += length;
        }
        report("buffer reuse, " + std::to_string(rounds) + " rounds, " + std::to_string(reused) +
                   " from a reused address",
               bytes);
    }

    void alltoall() {
        std::size_t bytes = 0;
        for (std::size_t block : {std::size_t{64}, std::size_t{1} << 20}) {
            auto out = heap(block * size_), in = heap(block * size_);
            for (int to = 0; to < size_; ++to)
                fill({out.get() + block * to, block}, seed(rank_ * 100 + to, block));
            MPI_Alltoall(out.get(), count_of(block), MPI_BYTE, in.get(), count_of(block), MPI_BYTE,
                         MPI_COMM_WORLD);
            for (int from = 0; from < size_; ++from)
                note(wrong_bytes({in.get() + block * from, block}, seed(from * 100 + rank_, block)),
                     "alltoall block of " + std::to_string(block) + " B from " +
                         std::to_string(from));
            bytes += block * size_;
        }
        report("MPI_Alltoall 64 B and 1 MiB blocks", bytes);
    }

    void bcast() {
        constexpr std::size_t kLength = std::size_t{16} << 20;
        auto buffer = heap(kLength);
        std::span<std::byte> bytes(buffer.get(), kLength);
        for (int root = 0; root < size_; ++root) {
            if (rank_ == root)
                fill(bytes, seed(root, 77));
            else
                std::memset(bytes.data(), 0, kLength);
            MPI_Bcast(bytes.data(), count_of(kLength), MPI_BYTE, root, MPI_COMM_WORLD);
            note(wrong_bytes(bytes, seed(root, 77)), "bcast from " + std::to_string(root));
        }
        report("MPI_Bcast of 16 MiB from every root", kLength * size_);
    }

    // Each rank exposes 8 MiB of its heap. Every rank puts its pattern into the next rank's
    // window, then gets the previous rank's window.
    void one_sided() {
        constexpr std::size_t kLength = std::size_t{8} << 20;
        auto memory = heap(kLength);
        std::span<std::byte> window_bytes(memory.get(), kLength);
        fill(window_bytes, seed(rank_, 500));
        MPI_Win window;
        MPI_Win_create(memory.get(), static_cast<MPI_Aint>(kLength), 1, MPI_INFO_NULL,
                       MPI_COMM_WORLD, &window);
        int next = (rank_ + 1) % size_, previous = (rank_ + size_ - 1) % size_;
        auto got = heap(kLength);
        MPI_Win_fence(0, window);
        MPI_Get(got.get(), count_of(kLength), MPI_BYTE, previous, 0, count_of(kLength), MPI_BYTE,
                window);
        MPI_Win_fence(0, window);
        note(wrong_bytes({got.get(), kLength}, seed(previous, 500)), "MPI_Get");
        auto put = heap(kLength);
        fill({put.get(), kLength}, seed(rank_, 600));
        MPI_Put(put.get(), count_of(kLength), MPI_BYTE, next, 0, count_of(kLength), MPI_BYTE,
                window);
        MPI_Win_fence(0, window);
        note(wrong_bytes(window_bytes, seed(previous, 600)), "MPI_Put");
        MPI_Win_free(&window);
        report("MPI_Get and MPI_Put of 8 MiB on each rank's heap", 2 * kLength);
    }

    std::size_t wrong() const { return wrong_; }

  private:
    static std::uint64_t seed(int rank, std::uint64_t what) {
        return what * 1000 + static_cast<std::uint64_t>(rank);
    }
    static int count_of(std::size_t length) { return static_cast<int>(length); }
    void note(std::size_t wrong, const std::string &what) {
        if (wrong == 0) return;
        wrong_ += wrong;
        std::fprintf(stderr, "rank %d: %zu wrong bytes: %s\n", rank_, wrong, what.c_str());
    }
    void report(const std::string &what, std::size_t bytes) {
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank_ == 0) std::printf("%s: %zu bytes checked per rank\n", what.c_str(), bytes);
    }

    int rank_;
    int size_;
    std::size_t wrong_ = 0;
};

}  // namespace

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    int rounds = argc > 1 ? std::atoi(argv[1]) : 100;
    Check check(rank, size);
    check.point_to_point();
    check.buffer_reuse(rounds);
    check.alltoall();
    check.bcast();
    check.one_sided();
    std::printf("rank %d: xpmem mappings in this process: %d\n", rank, xpmem_mappings());
    unsigned long long wrong = check.wrong(), total = 0;
    MPI_Reduce(&wrong, &total, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        if (total == 0)
            std::printf("mpi_verify: PASS, no wrong byte on %d ranks\n", size);
        else
            std::printf("mpi_verify: FAILED, %llu wrong bytes\n", total);
    }
    MPI_Finalize();
    return total == 0 ? 0 : 1;
}
