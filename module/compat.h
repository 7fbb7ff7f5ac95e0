/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one place where kernel API differences between the supported kernels
 * (6.1 and newer) are absorbed. Everything else calls these helpers. The
 * XPMEM_HAVE_* and XPMEM_GUP_* macros come from the feature probes in Kbuild,
 * which look for the interfaces themselves rather than at version numbers.
 */
#ifndef XPMEM_COMPAT_H
#define XPMEM_COMPAT_H

#include <linux/mm.h>

/* vma->vm_flags became read-only behind vm_flags_set() (6.3). */
static inline void xpmem_vm_flags_set(struct vm_area_struct *vma, vm_flags_t flags)
{
#ifdef XPMEM_HAVE_VM_FLAGS_SET
	vm_flags_set(vma, flags);
#else
	vma->vm_flags |= flags;
#endif
}

static inline void xpmem_vm_flags_clear(struct vm_area_struct *vma, vm_flags_t flags)
{
#ifdef XPMEM_HAVE_VM_FLAGS_SET
	vm_flags_clear(vma, flags);
#else
	vma->vm_flags &= ~flags;
#endif
}

/*
 * get_user_pages_remote() lost its vmas argument (6.5). With @locked, it may
 * drop the mmap_lock to wait (userfaultfd) and clears *@locked if it did.
 */
static inline long xpmem_gup_remote(struct mm_struct *mm, unsigned long start,
				    unsigned long nr_pages, unsigned int gup_flags,
				    struct page **pages, int *locked)
{
#ifdef XPMEM_GUP_REMOTE_TAKES_VMAS
	return get_user_pages_remote(mm, start, nr_pages, gup_flags, pages, NULL, locked);
#else
	return get_user_pages_remote(mm, start, nr_pages, gup_flags, pages, locked);
#endif
}

/*
 * Kernels with release_fault_lock() (6.4 on) may fault under a per-VMA lock.
 * The attachment fault handler needs the mmap_lock, so such a fault is
 * retried under it. Returns true (after dropping the VMA lock) when the
 * caller must return VM_FAULT_RETRY.
 */
static inline bool xpmem_fault_needs_mmap_lock(struct vm_fault *vmf)
{
#ifdef XPMEM_HAVE_RELEASE_FAULT_LOCK
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
#ifdef XPMEM_HAVE_RELEASE_FAULT_LOCK
	release_fault_lock(vmf);
#else
	mmap_read_unlock(vmf->vma->vm_mm);
#endif
}

#endif /* XPMEM_COMPAT_H */
