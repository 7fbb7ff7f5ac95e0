/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one place where kernel API differences between the supported kernels
 * (6.1 and newer) are absorbed. Everything else calls these helpers.
 */
#ifndef XPMEM_COMPAT_H
#define XPMEM_COMPAT_H

#include <linux/mm.h>
#include <linux/version.h>

/* 6.3 made vma->vm_flags read-only behind vm_flags_set(). */
static inline void xpmem_vm_flags_set(struct vm_area_struct *vma, vm_flags_t flags)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_set(vma, flags);
#else
	vma->vm_flags |= flags;
#endif
}

static inline void xpmem_vm_flags_clear(struct vm_area_struct *vma, vm_flags_t flags)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_clear(vma, flags);
#else
	vma->vm_flags &= ~flags;
#endif
}

/* 6.5 dropped the vmas argument of get_user_pages_remote(). */
static inline long xpmem_gup_remote(struct mm_struct *mm, unsigned long start,
				    unsigned long nr_pages, unsigned int gup_flags,
				    struct page **pages)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0)
	return get_user_pages_remote(mm, start, nr_pages, gup_flags, pages, NULL);
#else
	return get_user_pages_remote(mm, start, nr_pages, gup_flags, pages, NULL, NULL);
#endif
}

/*
 * 6.4 added faults under a per-VMA lock. The attachment fault handler needs
 * the mmap_lock, so such a fault is retried under it. Returns true (after
 * dropping the VMA lock) when the caller must return VM_FAULT_RETRY.
 */
static inline bool xpmem_fault_needs_mmap_lock(struct vm_fault *vmf)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
	if (vmf->flags & FAULT_FLAG_VMA_LOCK) {
		release_fault_lock(vmf);
		return true;
	}
#endif
	return false;
}

/* Drops the lock the fault was taken under, before returning VM_FAULT_RETRY. */
static inline void xpmem_release_fault_lock(struct vm_fault *vmf)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
	release_fault_lock(vmf);
#else
	mmap_read_unlock(vmf->vma->vm_mm);
#endif
}

#endif /* XPMEM_COMPAT_H */
