// Two processes share one buffer through XPMEM.
//
//   xpmem-example                 publishes a buffer, starts `xpmem-example attach SEGID`,
//                                 and prints what the other process wrote into it
//   xpmem-example attach SEGID    attaches the segment, reads it, writes a reply
//
// The second process is started with posix_spawnp (this program again), so the two are unrelated
// except for the segment id passed on the command line: that is all XPMEM needs.

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>
#include <xpmem/xpmem.hpp>

extern char **environ;

namespace {

constexpr std::size_t kSize = 1 << 20;

int publish(const char *self) {
    // Any page-aligned private memory can be published; here, one MiB from the heap.
    auto *buffer = static_cast<char *>(std::aligned_alloc(4096, kSize));
    std::snprintf(buffer, kSize, "hello from the publisher, pid %d", getpid());

    xpmem::Segment segment =
        xpmem::Segment::make(std::as_writable_bytes(std::span(buffer, kSize)), 0600);
    std::printf("publisher: backend %s, segment %lld, buffer says \"%s\"\n",
                std::string(xpmem::backend_name()).c_str(), static_cast<long long>(segment.id()),
                buffer);
    std::fflush(stdout);

    std::string id = std::to_string(segment.id());
    char *argv[] = {const_cast<char *>(self), const_cast<char *>("attach"), id.data(), nullptr};
    pid_t child;
    if (int error = posix_spawnp(&child, self, nullptr, nullptr, argv, environ)) {
        std::fprintf(stderr, "posix_spawn: %s\n", std::strerror(error));
        return 1;
    }
    int status = 0;
    waitpid(child, &status, 0);
    // The attacher's store landed in our own buffer: no copy, no message.
    std::printf("publisher: buffer now says \"%s\"\n", buffer);
    segment.remove();
    std::free(buffer);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

int attach(const char *segid) {
    xpmem::Permit permit = xpmem::Permit::get(std::strtoll(segid, nullptr, 10));
    xpmem::Attachment attachment = permit.attach(0, kSize);
    auto text = attachment.as<char>();
    std::printf("attacher:  pid %d read \"%s\"\n", getpid(), text.data());
    std::snprintf(text.data(), text.size(), "hello back from the attacher, pid %d", getpid());
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    try {
        if (argc == 3 && std::strcmp(argv[1], "attach") == 0) return attach(argv[2]);
        if (argc == 1) return publish(argv[0]);
        std::fprintf(stderr, "usage: %s [attach SEGID]\n", argv[0]);
        return 2;
    } catch (const std::system_error &error) {
        std::fprintf(stderr, "%s: %s\n", argv[0], error.what());
        return 1;
    }
}
