/*
 * xpmem.h - the classic XPMEM C API.
 *
 * Source- and link-compatible with the classic libxpmem: programs written for
 * it (UCX, Open MPI, MPICH, OpenSHMEM) build against this header unchanged and
 * link with -lxpmem. Every call is thread-safe and returns -1 ((void *)-1 for
 * xpmem_attach) with errno set on failure.
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

/* internal errno: the process state belongs to a parent (after fork) */
#define XPMEM_ERRNO_NOPROC 2004

/*
 * xpmem_version() values: the kernel backend returns the module's version
 * (the classic module answers 0x00026005 .. 0x00027011); the user backend
 * returns XPMEM_USER_BACKEND_FLAG | XPMEM_USER_BACKEND_VERSION. Both are >= 0.
 */
#define XPMEM_USER_BACKEND_FLAG 0x40000000
#define XPMEM_USER_BACKEND_VERSION 0x00010000

int xpmem_version(void);
int xpmem_init(void);
xpmem_segid_t xpmem_make(void *vaddr, size_t size, int permit_type, void *permit_value);
int xpmem_remove(xpmem_segid_t segid);
xpmem_apid_t xpmem_get(xpmem_segid_t segid, int flags, int permit_type, void *permit_value);
int xpmem_release(xpmem_apid_t apid);
void *xpmem_attach(struct xpmem_addr addr, size_t size, void *vaddr);
int xpmem_detach(void *vaddr);

#ifdef __cplusplus
}
#endif

#endif /* XPMEM_H */
