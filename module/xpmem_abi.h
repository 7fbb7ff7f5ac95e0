/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * The classic /dev/xpmem ioctl ABI (docs/contract.md, section 3): _IO('x', n) commands
 * carrying a pointer to one of these LP64 structs. Shared by the library's kernel backend and
 * the module, so both speak to the classic counterparts unchanged.
 */
#ifndef XPMEM_ABI_H
#define XPMEM_ABI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define XPMEM_DEVICE_PATH "/dev/xpmem"
#define XPMEM_IOC_MAGIC 'x'

struct xpmem_cmd_make {
	__u64 vaddr;
	__u64 size;
	int permit_type;
	__u64 permit_value;
	__s64 segid; /* out */
};

struct xpmem_cmd_remove {
	__s64 segid;
};

struct xpmem_cmd_get {
	__s64 segid;
	int flags;
	int permit_type;
	__u64 permit_value;
	__s64 apid; /* out */
};

struct xpmem_cmd_release {
	__s64 apid;
};

struct xpmem_cmd_attach {
	__s64 apid;
	__s64 offset;
	__u64 size;
	__u64 vaddr; /* in: wanted (0: any), out: got */
	int fd;      /* unused */
	int flags;   /* unused */
};

struct xpmem_cmd_detach {
	__u64 vaddr;
};

/* The classic LP64 layouts, checked wherever this header is compiled. */
#ifdef __cplusplus
#define XPMEM_ABI_CHECK(what) static_assert(what, #what)
#else
#define XPMEM_ABI_CHECK(what) _Static_assert(what, #what)
#endif
#define XPMEM_ABI_AT(type, field) __builtin_offsetof(struct type, field)
XPMEM_ABI_CHECK(sizeof(struct xpmem_cmd_make) == 40 && XPMEM_ABI_AT(xpmem_cmd_make, size) == 8 &&
		XPMEM_ABI_AT(xpmem_cmd_make, permit_type) == 16 &&
		XPMEM_ABI_AT(xpmem_cmd_make, permit_value) == 24 &&
		XPMEM_ABI_AT(xpmem_cmd_make, segid) == 32);
XPMEM_ABI_CHECK(sizeof(struct xpmem_cmd_get) == 32 && XPMEM_ABI_AT(xpmem_cmd_get, flags) == 8 &&
		XPMEM_ABI_AT(xpmem_cmd_get, permit_type) == 12 &&
		XPMEM_ABI_AT(xpmem_cmd_get, permit_value) == 16 &&
		XPMEM_ABI_AT(xpmem_cmd_get, apid) == 24);
XPMEM_ABI_CHECK(sizeof(struct xpmem_cmd_attach) == 40 &&
		XPMEM_ABI_AT(xpmem_cmd_attach, offset) == 8 &&
		XPMEM_ABI_AT(xpmem_cmd_attach, size) == 16 &&
		XPMEM_ABI_AT(xpmem_cmd_attach, vaddr) == 24 &&
		XPMEM_ABI_AT(xpmem_cmd_attach, fd) == 32 && XPMEM_ABI_AT(xpmem_cmd_attach, flags) == 36);

#define XPMEM_CMD_VERSION _IO(XPMEM_IOC_MAGIC, 0)
#define XPMEM_CMD_MAKE _IO(XPMEM_IOC_MAGIC, 1)
#define XPMEM_CMD_REMOVE _IO(XPMEM_IOC_MAGIC, 2)
#define XPMEM_CMD_GET _IO(XPMEM_IOC_MAGIC, 3)
#define XPMEM_CMD_RELEASE _IO(XPMEM_IOC_MAGIC, 4)
#define XPMEM_CMD_ATTACH _IO(XPMEM_IOC_MAGIC, 5)
#define XPMEM_CMD_DETACH _IO(XPMEM_IOC_MAGIC, 6)
#define XPMEM_CMD_FORK_BEGIN _IO(XPMEM_IOC_MAGIC, 7)
#define XPMEM_CMD_FORK_END _IO(XPMEM_IOC_MAGIC, 8)

#endif /* XPMEM_ABI_H */
