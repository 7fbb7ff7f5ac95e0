/*
 * xpmem.h - the classic XPMEM C API.
 *
 * Source- and link-compatible with the classic libxpmem: programs written for
 * it (UCX, Open MPI, MPICH, OpenSHMEM) build against this header unchanged and
 * link with -lxpmem. Every call is thread-safe and returns -1 ((void *)-1 for
 * xpmem_attach) with errno set on failure; errno is meaningful only then.
 *
 * The first call (any of them, or xpmem_init()) selects the backend: the
 * kernel one when /dev/xpmem answers, else the user one; XPMEM_BACKEND=kernel
 * or XPMEM_BACKEND=user forces one (xpmem(7)). Until a backend works, every
 * call fails with the errno of the selection (see xpmem_init()). Besides the
 * values listed per call, every call may fail with ENOMEM (the library ran out
 * of memory) or EIO (an unexpected internal failure).
 *
 * Manual pages: xpmem(7) and one per call, xpmem_make(3) and so on.
 */
#ifndef XPMEM_H
#define XPMEM_H

#include <linux/types.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* As the classic header has them (long long): printf's %lld and C++ overloads agree. */
typedef __s64 xpmem_segid_t; /* segment id, positive */
typedef __s64 xpmem_apid_t;  /* access permit id, positive */

struct xpmem_addr {
    xpmem_apid_t apid; /* permit to attach through */
    off_t offset;      /* page-aligned offset into the segment */
};

#define XPMEM_MAXADDR_SIZE ((size_t)-1L)

/* xpmem_get() flags */
#define XPMEM_RDONLY 0x1
#define XPMEM_RDWR 0x2

/* permit types */
#define XPMEM_PERMIT_MODE 0x1

/*
 * The kernel module's errno for a descriptor opened by another process (a fork
 * parent, the image before execve); the library then opens /dev/xpmem afresh
 * and retries, so callers do not normally see it.
 */
#define XPMEM_ERRNO_NOPROC 2004

/*
 * xpmem_version() values: the kernel backend returns the module's version
 * (the classic module answers 0x00026005 .. 0x00027011); the user backend
 * returns XPMEM_USER_BACKEND_FLAG | XPMEM_USER_BACKEND_VERSION. Both are >= 0.
 */
#define XPMEM_USER_BACKEND_FLAG 0x40000000
#define XPMEM_USER_BACKEND_VERSION 0x00010000

/*
 * xpmem_version - the version of the backend serving this process.
 *
 * Selects the backend if no call did yet. Returns the module's version
 * (kernel backend, read from /dev/xpmem when it was opened) or
 * XPMEM_USER_BACKEND_FLAG | XPMEM_USER_BACKEND_VERSION (user backend); both
 * are >= 0, which is how clients detect XPMEM. Returns -1 only when no backend
 * can be selected, with errno as for xpmem_init().
 */
int xpmem_version(void);

/*
 * xpmem_init - select the backend now rather than at the first call.
 *
 * Optional; calling it again does nothing. Returns 0, or -1 with errno:
 *   EINVAL   XPMEM_BACKEND is neither empty nor "user" nor "kernel".
 *   ENOENT, EACCES, ...
 *            XPMEM_BACKEND=kernel and /dev/xpmem does not open (the errno of
 *            open(2)) or does not answer its VERSION command (that errno).
 *   EIO      the user backend cannot read /proc/self/stat.
 *   other    the user backend failed to start: the errno of the system call
 *            that failed (socket(2), bind(2), eventfd(2), mmap(2),
 *            pthread_create(3), ...: EMFILE, ENOMEM, EAGAIN, ...).
 * A forced backend that cannot work also prints why on stderr. The selection is
 * not cached while it fails: every later call tries again.
 */
int xpmem_init(void);

/*
 * xpmem_make - publish [vaddr, vaddr + size) of this process as a segment.
 * @vaddr:        page-aligned start; the range may hold holes and memory
 *                mapped later.
 * @size:         page-aligned length > 0, or XPMEM_MAXADDR_SIZE for
 *                everything from @vaddr to the end of user space
 *                (xpmem_make(0, XPMEM_MAXADDR_SIZE, ...) publishes the whole
 *                address space, as UCX, Open MPI and MPICH do).
 * @permit_type:  XPMEM_PERMIT_MODE.
 * @permit_value: the access mode, System V style, as a pointer: (void *)0600.
 *
 * Returns a positive segment id, or -1 with errno:
 *   EINVAL   @permit_type is not XPMEM_PERMIT_MODE; @permit_value has bits
 *            outside 0777; @vaddr or @size is not page-aligned; @size is 0;
 *            the range does not lie inside user space.
 *   ENOSPC   kernel backend: the caller's user holds max_segments_per_user
 *            segments (module parameter, 65536) or no id is free; user
 *            backend: this process holds 2048 segments.
 *   ENOMEM   kernel backend: out of kernel memory.
 */
xpmem_segid_t xpmem_make(void *vaddr, size_t size, int permit_type, void *permit_value);

/*
 * xpmem_remove - withdraw a segment this process made.
 * @segid: the id xpmem_make() returned.
 *
 * Every attachment of the segment, in every process, loses access: it stays
 * mapped, but a touch raises SIGBUS. Permits got for it stay until released.
 * Returns 0, or -1 with errno:
 *   EINVAL   @segid <= 0; no such segment (never made, or already removed);
 *            user backend: also a segment of another process that does not
 *            answer (exited).
 *   EACCES   the segment belongs to another process (a fork parent's
 *            included); user backend: any segid naming another live process
 *            that uses the library.
 */
int xpmem_remove(xpmem_segid_t segid);

/*
 * xpmem_get - ask for access to a segment.
 * @segid:        the segment, made by this or another process.
 * @flags:        exactly one of XPMEM_RDONLY, XPMEM_RDWR.
 * @permit_type:  XPMEM_PERMIT_MODE.
 * @permit_value: ignored (clients pass NULL, 0600 or 0666).
 *
 * The System V IPC check against the segment's mode: the owner's uid selects
 * the user bits, its gid or a supplementary group the group bits, else the
 * other bits; XPMEM_RDONLY needs r, XPMEM_RDWR r and w. Kernel backend:
 * CAP_IPC_OWNER in the user namespace of the owner's IPC namespace passes;
 * user backend: uid 0 passes (credentials as recorded when the connection to
 * the owner was made). The permit belongs to the calling process.
 * Returns a positive access permit id, or -1 with errno:
 *   EINVAL   @segid <= 0; @flags is not exactly XPMEM_RDONLY or XPMEM_RDWR;
 *            @permit_type is not XPMEM_PERMIT_MODE.
 *   ENOENT   no such segment: never made, removed, or its owner exited;
 *            user backend: also an owner that cannot be reached (another pid
 *            or network namespace, /proc mounted hidepid=2).
 *   EACCES   the mode does not grant the access asked for.
 *   ENOSPC   kernel backend: the caller's user holds max_permits_per_user
 *            permits (262144) or no id is free; user backend: this process
 *            holds 4096 permits from that owner, or its uid 16384.
 *   ETIMEDOUT user backend: the owner did not answer within
 *            XPMEM_USER_TIMEOUT_MS (10 s by default).
 *   EPROTO   user backend: the owner's reply was malformed.
 *   ENOMEM   out of (kernel) memory.
 */
xpmem_apid_t xpmem_get(xpmem_segid_t segid, int flags, int permit_type, void *permit_value);

/*
 * xpmem_release - give a permit back.
 * @apid: a permit xpmem_get() returned to this process.
 *
 * Detaches every attachment made through it. Returns 0, or -1 with errno:
 *   EINVAL   @apid <= 0; not a permit this process holds (unknown, released,
 *            another process's or a fork parent's).
 */
int xpmem_release(xpmem_apid_t apid);

/*
 * xpmem_attach - map part of a segment into this process.
 * @addr:  @addr.apid, the permit; @addr.offset, page-aligned, >= 0, where in
 *         the segment the mapping starts.
 * @size:  bytes to map, > 0, rounded up to whole pages; offset + size must lie
 *         inside the segment.
 * @vaddr: NULL to let the library choose, else a page-aligned address to map
 *         at, replacing what is mapped there (as MAP_FIXED); a range that
 *         overlaps an attachment is refused.
 *
 * A permit got with XPMEM_RDONLY attaches read-only: a store raises SIGSEGV.
 * Touching a part of the segment where the owner has nothing mapped, or any
 * part after the segment is removed or its owner exits, raises SIGBUS. The
 * same range may be attached many times, also by its owner.
 * Returns the address of the mapping, or (void *)-1 with errno:
 *   EINVAL   @addr.apid <= 0 or not a permit this process holds (also one
 *            released during the call); @addr.offset negative or not
 *            page-aligned; @size is 0 or larger than user space; the range
 *            does not fit inside the segment; @vaddr not page-aligned, its
 *            range not inside user space, or overlapping an attachment.
 *   ENOENT   the segment was removed or its owner exited; user backend: also
 *            an owner that cannot be reached.
 *   ENOMEM   no room in the address space, or out of (kernel) memory.
 *   ENOSPC   kernel backend: the caller's user holds max_attachments_per_user
 *            attachments (1048576).
 *   EBUSY    user backend: private memory of the owner in the range is an
 *            io_uring fixed buffer, which cannot be made shareable.
 *   ETIMEDOUT user backend: the owner did not answer within
 *            XPMEM_USER_TIMEOUT_MS.
 *   EPROTO   user backend: the owner's reply was malformed.
 *   other    user backend: the errno of a system call that failed in the
 *            owner while making its memory shareable (EAGAIN when its memory
 *            kept changing, ENOTSUP without userfaultfd write-protection of
 *            shmem, EMFILE, ...).
 * A refused attach changes nothing at @vaddr. User backend: one that fails
 * after the owner accepted it may leave [@vaddr, @vaddr + @size) unmapped
 * (xpmem_attach(3), BUGS).
 */
void *xpmem_attach(struct xpmem_addr addr, size_t size, void *vaddr);

/*
 * xpmem_detach - remove an attachment.
 * @vaddr: any address inside the attachment; all of it is unmapped.
 *
 * Returns 0 (also when @vaddr lies in no mapping at all), or -1 with errno:
 *   EINVAL   @vaddr lies in a mapping that is not an attachment.
 */
int xpmem_detach(void *vaddr);

#ifdef __cplusplus
}
#endif

#endif /* XPMEM_H */
