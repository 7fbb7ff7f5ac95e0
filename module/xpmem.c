// SPDX-License-Identifier: GPL-2.0
/*
 * xpmem.c - cross-process memory through /dev/xpmem, speaking the classic
 * XPMEM ioctl ABI (src/kernel/xpmem_abi.h).
 *
 * A process (a thread group, "tg") opens /dev/xpmem; its state lives as long
 * as that open file, so closing a dup()ed descriptor tears nothing down.
 *
 * An attachment is a VM_PFNMAP mapping of /dev/xpmem whose file offset encodes
 * the owner's slot and the owner's virtual address:
 *	pgoff = slot << XPMEM_SLOT_SHIFT | owner_address >> PAGE_SHIFT
 * All open files share one address_space (a private pseudo-fs inode), so the
 * attachments of every process hang in one i_mmap tree. Faults look the owner's
 * pages up with get_user_pages_remote() at fault time, several at a time.
 * Each owner has an mmu_interval_notifier over its address space: any change
 * to the owner's mappings, whoever makes it (munmap, mremap, MADV_DONTNEED,
 * COW, THP collapse, migration, exit), zaps the matching file range with
 * unmap_mapping_range(), which reaches every attacher's PTEs without taking
 * any mm's mmap_lock.
 *
 * Locking:
 *	xpmem_lock		ids, slots, lists; segment, permit and attachment
 *				state. Never held while an mmap_lock is taken.
 *	owner->notifier_lock	PTE insertion (fault) against invalidation: the
 *				mmu_interval_read_begin()/read_retry() pattern.
 *	Fault: attacher mmap_lock -> owner mmap_lock (dropped) -> notifier_lock.
 *	Invalidate: [owner mmap_lock] -> notifier_lock -> i_mmap_rwsem -> PTL.
 * Zapping an attacher's PTEs invokes that attacher's own notifiers; when the
 * attacher is itself an owner, that nested invalidation only covers
 * attachment VMAs, which nobody maps further, and is skipped (zap markers).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/cred.h>
#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/fs_context.h>
#include <linux/kref.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/pseudo_fs.h>
#include <linux/sched/mm.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/user_namespace.h>
#include <linux/xarray.h>

#include "compat.h"
#include "xpmem_abi.h"

#define XPMEM_VERSION 0x00030001	/* above every classic version */
#define XPMEM_ERRNO_NOPROC 2004
#define XPMEM_PERMIT_MODE 0x1
#define XPMEM_RDONLY 0x1
#define XPMEM_RDWR 0x2
#define XPMEM_SLOT_SHIFT 35		/* owner addresses below 2^47 */
#define XPMEM_MAX_ADDRESS (1UL << (XPMEM_SLOT_SHIFT + PAGE_SHIFT))
#define XPMEM_MAX_SLOTS BIT(16)		/* keeps file offsets below 2^63 */
#define XPMEM_FAULT_PAGES 16
#define XPMEM_MAGIC 0x58504d4d

struct xpmem_tg {
	struct kref kref;
	pid_t tgid;
	struct mm_struct *mm;		/* mmgrab()ed */
	u32 slot;			/* 0 until it makes a segment */
	struct mmu_interval_notifier notifier;
	struct mutex notifier_lock;	/* faults against invalidations */
	struct mutex attach_lock;	/* one attach mmap at a time */
	struct xpmem_attachment *pending;	/* being mapped by attach */
	struct task_struct *pending_task;
};

struct xpmem_segment {
	struct kref kref;
	s64 segid;
	struct xpmem_tg *owner;		/* kref */
	unsigned long vaddr;
	unsigned long size;
	umode_t mode;
	kuid_t uid;
	kgid_t gid;
	struct user_namespace *user_ns;	/* get_user_ns() */
	bool removed;
};

struct xpmem_permit {
	s64 apid;
	struct xpmem_segment *seg;	/* kref */
	struct xpmem_tg *holder;
	bool read_only;
};

struct xpmem_attachment {
	struct kref kref;		/* the table's, and one per VMA */
	struct list_head link;		/* xpmem_attachments */
	struct xpmem_tg *owner;		/* kref: faults use its mm */
	struct xpmem_tg *holder;	/* not counted: the table entry dies first */
	s64 segid;
	s64 apid;
	unsigned long owner_start;	/* the owner range it may reach */
	unsigned long owner_end;
	unsigned long address;		/* where it was mapped, for detach */
	unsigned long size;
	bool read_only;
	bool revoked;			/* READ_ONCE in faults */
};

/* Pages mapped per fault; 1 behaves like the classic module (for comparisons). */
static unsigned int fault_pages = XPMEM_FAULT_PAGES;
module_param(fault_pages, uint, 0644);
MODULE_PARM_DESC(fault_pages, "pages mapped per attachment fault (1-16)");

static DEFINE_MUTEX(xpmem_lock);
static DEFINE_XARRAY_ALLOC1(xpmem_segments);
static DEFINE_XARRAY_ALLOC1(xpmem_permits);
static DEFINE_XARRAY_ALLOC1(xpmem_slots);
static LIST_HEAD(xpmem_attachments);
static struct vfsmount *xpmem_mnt;
static struct inode *xpmem_inode;
static struct dentry *xpmem_debugfs;

/* Live objects, for leak checks (debugfs xpmem/counters). */
static atomic_t xpmem_nr_tgs, xpmem_nr_segments, xpmem_nr_permits,
	xpmem_nr_attachments, xpmem_nr_vmas;

/* Tasks inside unmap_mapping_range() on our behalf (see the top comment). */
struct xpmem_zap_marker {
	struct list_head link;
	struct task_struct *task;
};

static LIST_HEAD(xpmem_zappers);
static DEFINE_SPINLOCK(xpmem_zappers_lock);

static bool xpmem_current_is_zapping(void)
{
	struct xpmem_zap_marker *marker;
	bool found = false;

	spin_lock(&xpmem_zappers_lock);
	list_for_each_entry(marker, &xpmem_zappers, link)
		found |= marker->task == current;
	spin_unlock(&xpmem_zappers_lock);
	return found;
}

static loff_t xpmem_file_offset(u32 slot, unsigned long address)
{
	return ((loff_t)slot << (XPMEM_SLOT_SHIFT + PAGE_SHIFT)) | address;
}

/* Zaps every attacher's PTEs for [start, end) of the owner in @slot. */
static void xpmem_zap(u32 slot, unsigned long start, unsigned long end)
{
	struct xpmem_zap_marker marker = { .task = current };

	end = min(end, XPMEM_MAX_ADDRESS);
	if (start >= end)
		return;
	spin_lock(&xpmem_zappers_lock);
	list_add(&marker.link, &xpmem_zappers);
	spin_unlock(&xpmem_zappers_lock);
	unmap_mapping_range(xpmem_inode->i_mapping, xpmem_file_offset(slot, start),
			    end - start, 1);
	spin_lock(&xpmem_zappers_lock);
	list_del(&marker.link);
	spin_unlock(&xpmem_zappers_lock);
}

/*
 * Zaps after a revocation. Under the owner's notifier_lock, so that a fault
 * that saw the attachment live cannot insert a PTE after this zap.
 */
static void xpmem_revoke_zap(struct xpmem_tg *owner, unsigned long start,
			     unsigned long end)
{
	mutex_lock(&owner->notifier_lock);
	xpmem_zap(owner->slot, start, end);
	mutex_unlock(&owner->notifier_lock);
}

/* ---- thread groups ---------------------------------------------------- */

static void xpmem_tg_free(struct kref *kref)
{
	struct xpmem_tg *tg = container_of(kref, struct xpmem_tg, kref);

	mmdrop(tg->mm);
	kfree(tg);
	atomic_dec(&xpmem_nr_tgs);
}

static void xpmem_tg_put(struct xpmem_tg *tg)
{
	kref_put(&tg->kref, xpmem_tg_free);
}

static bool xpmem_invalidate(struct mmu_interval_notifier *notifier,
			     const struct mmu_notifier_range *range,
			     unsigned long cur_seq)
{
	struct xpmem_tg *owner = container_of(notifier, struct xpmem_tg, notifier);

	/*
	 * Nested in one of our own zaps: the range is attachment VMAs, which no
	 * fault can look up, and our caller may hold this notifier_lock.
	 */
	if (xpmem_current_is_zapping())
		return true;
	if (!mmu_notifier_range_blockable(range))
		return false;
	mutex_lock(&owner->notifier_lock);
	mmu_interval_set_seq(notifier, cur_seq);
	xpmem_zap(owner->slot, range->start, range->end);
	mutex_unlock(&owner->notifier_lock);
	return true;
}

static const struct mmu_interval_notifier_ops xpmem_notifier_ops = {
	.invalidate = xpmem_invalidate,
};

/* Gives the calling owner a slot and a notifier, once. Under xpmem_lock. */
static int xpmem_become_owner(struct xpmem_tg *tg)
{
	u32 slot;
	int ret;

	if (tg->slot)
		return 0;
	ret = xa_alloc(&xpmem_slots, &slot, tg, XA_LIMIT(1, XPMEM_MAX_SLOTS - 1),
		       GFP_KERNEL);
	if (ret)
		return ret == -EBUSY ? -ENOSPC : ret;
	ret = mmu_interval_notifier_insert(&tg->notifier, tg->mm, 0, XPMEM_MAX_ADDRESS,
					   &xpmem_notifier_ops);
	if (ret) {
		xa_erase(&xpmem_slots, slot);
		return ret;
	}
	tg->slot = slot;
	return 0;
}

/* ---- segments and permits ----------------------------------------------- */

static void xpmem_segment_free(struct kref *kref)
{
	struct xpmem_segment *seg = container_of(kref, struct xpmem_segment, kref);

	put_user_ns(seg->user_ns);
	xpmem_tg_put(seg->owner);
	kfree(seg);
	atomic_dec(&xpmem_nr_segments);
}

/* Every attachment of @segid faults SIGBUS from now on. Under xpmem_lock. */
static void xpmem_revoke_attachments(s64 segid, bool by_permit, s64 apid)
{
	struct xpmem_attachment *att;

	list_for_each_entry(att, &xpmem_attachments, link) {
		if (by_permit ? att->apid != apid : att->segid != segid)
			continue;
		WRITE_ONCE(att->revoked, true);
	}
}

static void xpmem_segment_remove(struct xpmem_segment *seg)
{
	seg->removed = true;
	xa_erase(&xpmem_segments, seg->segid);
	xpmem_revoke_attachments(seg->segid, false, 0);
}

/* Under xpmem_lock: the caller zaps and puts outside it. */
static void xpmem_permit_release(struct xpmem_permit *permit)
{
	xa_erase(&xpmem_permits, permit->apid);
	xpmem_revoke_attachments(0, true, permit->apid);
	kref_put(&permit->seg->kref, xpmem_segment_free);
	kfree(permit);
	atomic_dec(&xpmem_nr_permits);
}

/* System V IPC rules: spec section 1. */
static bool xpmem_permitted(struct xpmem_segment *seg, bool read_only)
{
	const struct cred *cred = current_cred();
	umode_t granted, wanted = read_only ? 04 : 06;

	if (uid_eq(cred->euid, seg->uid))
		granted = seg->mode >> 6;
	else if (in_group_p(seg->gid))
		granted = seg->mode >> 3;
	else
		granted = seg->mode;
	if ((granted & wanted) == wanted)
		return true;
	return ns_capable(seg->user_ns, CAP_IPC_OWNER);
}

/* ---- attachments -------------------------------------------------------- */

static void xpmem_attachment_free(struct kref *kref)
{
	struct xpmem_attachment *att = container_of(kref, struct xpmem_attachment, kref);

	if (att->owner)
		xpmem_tg_put(att->owner);
	kfree(att);
	atomic_dec(&xpmem_nr_attachments);
}

static void xpmem_vma_open(struct vm_area_struct *vma)
{
	struct xpmem_attachment *att = vma->vm_private_data;

	kref_get(&att->kref);
	atomic_inc(&xpmem_nr_vmas);
}

static void xpmem_vma_close(struct vm_area_struct *vma)
{
	struct xpmem_attachment *att = vma->vm_private_data;

	atomic_dec(&xpmem_nr_vmas);
	kref_put(&att->kref, xpmem_attachment_free);
}

/*
 * Locks the owner's mmap_lock for reading. Two processes attached to each
 * other could otherwise deadlock on each other's mmap_lock behind waiting
 * writers, so on contention the fault is retried without holding ours.
 */
static bool xpmem_lock_owner_mm(struct vm_fault *vmf, struct mm_struct *mm, bool may_retry)
{
	if (mmap_read_trylock(mm))
		return true;
	if (may_retry && (vmf->flags & FAULT_FLAG_ALLOW_RETRY) &&
	    !(vmf->flags & FAULT_FLAG_RETRY_NOWAIT)) {
		xpmem_release_fault_lock(vmf);
		mmap_read_lock(mm);	/* wait for the owner, then retry */
		mmap_read_unlock(mm);
		return false;
	}
	mmap_read_lock(mm);
	return true;
}

/*
 * Maps the owner's pages from the faulting address on, writable if @write.
 * @may_retry: the caller can take VM_FAULT_RETRY (->fault can, ->pfn_mkwrite
 * cannot).
 */
static vm_fault_t xpmem_map(struct vm_fault *vmf, bool write, bool may_retry)
{
	struct vm_area_struct *vma = vmf->vma;
	struct xpmem_attachment *att = vma->vm_private_data;
	struct xpmem_tg *owner = att->owner;
	struct page *pages[XPMEM_FAULT_PAGES];
	unsigned long address, nr, seq, i;
	unsigned int noreclaim;
	vm_fault_t ret = VM_FAULT_NOPAGE;
	pgprot_t prot;
	long got;

	address = (vmf->pgoff & ((1UL << XPMEM_SLOT_SHIFT) - 1)) << PAGE_SHIFT;
	if (READ_ONCE(att->revoked) || address < att->owner_start ||
	    address >= att->owner_end)
		return VM_FAULT_SIGBUS;
	nr = min3((unsigned long)clamp_val(READ_ONCE(fault_pages), 1, XPMEM_FAULT_PAGES),
		  (vma->vm_end - vmf->address) >> PAGE_SHIFT,
		  (att->owner_end - address) >> PAGE_SHIFT);
	/*
	 * A read maps read-only: a later write faults again and breaks COW. Not
	 * vma->vm_page_prot: having pfn_mkwrite makes it write-protected.
	 */
	prot = vm_get_page_prot(write ? vma->vm_flags : vma->vm_flags & ~VM_WRITE);
	if (!mmget_not_zero(owner->mm))
		return VM_FAULT_SIGBUS;
again:
	seq = mmu_interval_read_begin(&owner->notifier);
	if (!xpmem_lock_owner_mm(vmf, owner->mm, may_retry)) {
		mmput(owner->mm);
		return VM_FAULT_RETRY;
	}
	got = xpmem_gup_remote(owner->mm, address, nr, write ? FOLL_WRITE : 0, pages);
	if (got <= 0 && write && xpmem_gup_remote(owner->mm, address, 1, 0, pages) == 1) {
		/* The owner maps it read-only: never writable through us either. */
		put_page(pages[0]);
		ret = VM_FAULT_SIGSEGV;
	}
	mmap_read_unlock(owner->mm);
	if (got <= 0) {
		mmput(owner->mm);
		return ret == VM_FAULT_SIGSEGV ? ret : VM_FAULT_SIGBUS;	/* or a hole */
	}
	mutex_lock(&owner->notifier_lock);
	if (mmu_interval_read_retry(&owner->notifier, seq) || READ_ONCE(att->revoked)) {
		bool revoked = READ_ONCE(att->revoked);

		mutex_unlock(&owner->notifier_lock);
		for (i = 0; i < got; i++)
			put_page(pages[i]);
		if (!revoked)
			goto again;
		mmput(owner->mm);
		return VM_FAULT_SIGBUS;
	}
	/* Page-table allocation must not recurse into reclaim and our notifier. */
	noreclaim = memalloc_noreclaim_save();
	for (i = 0; i < got; i++) {
		vm_fault_t one = vmf_insert_pfn_prot(vma, vmf->address + i * PAGE_SIZE,
						     page_to_pfn(pages[i]), prot);
		if (one & VM_FAULT_ERROR) {
			if (i == 0)
				ret = one;
			break;
		}
	}
	memalloc_noreclaim_restore(noreclaim);
	mutex_unlock(&owner->notifier_lock);
	for (i = 0; i < got; i++)
		put_page(pages[i]);
	mmput(owner->mm);
	return ret;
}

static vm_fault_t xpmem_fault(struct vm_fault *vmf)
{
	if (xpmem_fault_needs_mmap_lock(vmf))
		return VM_FAULT_RETRY;
	return xpmem_map(vmf, vmf->flags & FAULT_FLAG_WRITE, true);
}

/*
 * A write to a page mapped read-only: map it for writing right here. Only
 * dropping the PTE is not enough: a CPU that retries a read-modify-write
 * instruction load first (QEMU's TCG does) would read-fault it back in
 * read-only, forever.
 */
static vm_fault_t xpmem_pfn_mkwrite(struct vm_fault *vmf)
{
	zap_vma_ptes(vmf->vma, vmf->address & PAGE_MASK, PAGE_SIZE);
	return xpmem_map(vmf, true, false);
}

static const struct vm_operations_struct xpmem_vm_ops = {
	.open = xpmem_vma_open,
	.close = xpmem_vma_close,
	.fault = xpmem_fault,
	.pfn_mkwrite = xpmem_pfn_mkwrite,
};

/* Only mappings made by the attach ioctl, in the thread making them. */
static int xpmem_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct xpmem_tg *tg = file->private_data;
	struct xpmem_attachment *att = tg->pending;

	if (!att || tg->pending_task != current)
		return -EINVAL;
	vma->vm_ops = &xpmem_vm_ops;
	vma->vm_private_data = att;
	xpmem_vm_flags_set(vma, VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP | VM_DONTCOPY);
	if (att->read_only)
		xpmem_vm_flags_clear(vma, VM_MAYWRITE);
	xpmem_vma_open(vma);
	return 0;
}

/* ---- ioctls ------------------------------------------------------------- */

static long xpmem_detach_all(struct xpmem_tg *tg, s64 apid);

static long xpmem_make(struct xpmem_tg *tg, struct xpmem_cmd_make __user *arg)
{
	struct xpmem_cmd_make cmd;
	struct xpmem_segment *seg;
	u32 id;
	int ret;

	if (copy_from_user(&cmd, arg, sizeof(cmd)))
		return -EFAULT;
	if (cmd.permit_type != XPMEM_PERMIT_MODE || cmd.permit_value & ~0777ULL)
		return -EINVAL;
	if (cmd.size == (u64)-1)
		cmd.size = TASK_SIZE - cmd.vaddr;
	if (!PAGE_ALIGNED(cmd.vaddr) || !PAGE_ALIGNED(cmd.size) || !cmd.size ||
	    cmd.vaddr >= TASK_SIZE || cmd.size > TASK_SIZE - cmd.vaddr)
		return -EINVAL;
	seg = kzalloc(sizeof(*seg), GFP_KERNEL);
	if (!seg)
		return -ENOMEM;
	kref_init(&seg->kref);
	seg->vaddr = cmd.vaddr;
	seg->size = cmd.size;
	seg->mode = cmd.permit_value;
	seg->uid = current_euid();
	seg->gid = current_egid();
	seg->user_ns = get_user_ns(current_user_ns());
	kref_get(&tg->kref);
	seg->owner = tg;
	atomic_inc(&xpmem_nr_segments);

	mutex_lock(&xpmem_lock);
	ret = xpmem_become_owner(tg);
	if (!ret)
		ret = xa_alloc(&xpmem_segments, &id, seg, xa_limit_31b, GFP_KERNEL);
	if (!ret)
		seg->segid = id;
	mutex_unlock(&xpmem_lock);
	if (ret) {
		kref_put(&seg->kref, xpmem_segment_free);
		return ret;
	}
	return put_user(seg->segid, &arg->segid);
}

static long xpmem_remove(struct xpmem_tg *tg, struct xpmem_cmd_remove __user *arg)
{
	struct xpmem_segment *seg;
	s64 segid;

	if (get_user(segid, &arg->segid))
		return -EFAULT;
	if (segid <= 0 || segid > INT_MAX)
		return -EINVAL;
	mutex_lock(&xpmem_lock);
	seg = xa_load(&xpmem_segments, segid);
	if (!seg) {
		mutex_unlock(&xpmem_lock);
		return -EINVAL;
	}
	if (seg->owner != tg) {
		mutex_unlock(&xpmem_lock);
		return -EACCES;
	}
	xpmem_segment_remove(seg);
	mutex_unlock(&xpmem_lock);
	xpmem_revoke_zap(tg, seg->vaddr, seg->vaddr + seg->size);
	kref_put(&seg->kref, xpmem_segment_free);	/* the table's */
	return 0;
}

static long xpmem_get(struct xpmem_tg *tg, struct xpmem_cmd_get __user *arg)
{
	struct xpmem_cmd_get cmd;
	struct xpmem_segment *seg;
	struct xpmem_permit *permit;
	u32 id;
	int ret;

	if (copy_from_user(&cmd, arg, sizeof(cmd)))
		return -EFAULT;
	if (cmd.segid <= 0 || cmd.permit_type != XPMEM_PERMIT_MODE ||
	    (cmd.flags != XPMEM_RDONLY && cmd.flags != XPMEM_RDWR))
		return -EINVAL;
	permit = kzalloc(sizeof(*permit), GFP_KERNEL);
	if (!permit)
		return -ENOMEM;
	mutex_lock(&xpmem_lock);
	seg = cmd.segid <= INT_MAX ? xa_load(&xpmem_segments, cmd.segid) : NULL;
	if (!seg) {
		ret = -ENOENT;
	} else if (!xpmem_permitted(seg, cmd.flags == XPMEM_RDONLY)) {
		ret = -EACCES;
	} else {
		permit->seg = seg;
		permit->holder = tg;
		permit->read_only = cmd.flags == XPMEM_RDONLY;
		ret = xa_alloc(&xpmem_permits, &id, permit, xa_limit_31b, GFP_KERNEL);
		if (!ret) {
			kref_get(&seg->kref);
			permit->apid = id;
			atomic_inc(&xpmem_nr_permits);
		}
	}
	mutex_unlock(&xpmem_lock);
	if (ret) {
		kfree(permit);
		return ret;
	}
	return put_user(permit->apid, &arg->apid);
}

/* Looks a permit up for its holder. Under xpmem_lock. */
static struct xpmem_permit *xpmem_permit_of(struct xpmem_tg *tg, s64 apid)
{
	struct xpmem_permit *permit;

	if (apid <= 0 || apid > INT_MAX)
		return NULL;
	permit = xa_load(&xpmem_permits, apid);
	return permit && permit->holder == tg ? permit : NULL;
}

static long xpmem_release(struct xpmem_tg *tg, struct xpmem_cmd_release __user *arg)
{
	struct xpmem_permit *permit;
	struct xpmem_segment *seg;
	s64 apid;

	if (get_user(apid, &arg->apid))
		return -EFAULT;
	mutex_lock(&xpmem_lock);
	permit = xpmem_permit_of(tg, apid);
	if (!permit) {
		mutex_unlock(&xpmem_lock);
		return -EINVAL;
	}
	seg = permit->seg;
	kref_get(&seg->kref);
	xpmem_permit_release(permit);
	mutex_unlock(&xpmem_lock);
	xpmem_revoke_zap(seg->owner, seg->vaddr, seg->vaddr + seg->size);
	kref_put(&seg->kref, xpmem_segment_free);
	return xpmem_detach_all(tg, apid);
}

/* Whether [start, end) of the caller overlaps an attachment. */
static bool xpmem_overlaps_attachment(unsigned long start, unsigned long end)
{
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	bool overlaps = false;

	mmap_read_lock(mm);
	for (vma = find_vma(mm, start); vma && vma->vm_start < end;
	     vma = find_vma(mm, vma->vm_end))
		overlaps |= vma->vm_ops == &xpmem_vm_ops;
	mmap_read_unlock(mm);
	return overlaps;
}

static long xpmem_attach(struct file *file, struct xpmem_tg *tg,
			 struct xpmem_cmd_attach __user *arg)
{
	struct xpmem_cmd_attach cmd;
	struct xpmem_permit *permit;
	struct xpmem_attachment *att;
	unsigned long address, size;
	loff_t offset;
	int ret = 0;

	if (copy_from_user(&cmd, arg, sizeof(cmd)))
		return -EFAULT;
	if (cmd.offset < 0 || !PAGE_ALIGNED(cmd.offset) || !cmd.size ||
	    cmd.size > TASK_SIZE || !PAGE_ALIGNED(cmd.vaddr))
		return -EINVAL;
	size = PAGE_ALIGN(cmd.size);
	if (cmd.vaddr && (cmd.vaddr >= TASK_SIZE || size > TASK_SIZE - cmd.vaddr))
		return -EINVAL;
	if (cmd.vaddr && xpmem_overlaps_attachment(cmd.vaddr, cmd.vaddr + size))
		return -EINVAL;
	att = kzalloc(sizeof(*att), GFP_KERNEL);
	if (!att)
		return -ENOMEM;
	kref_init(&att->kref);
	INIT_LIST_HEAD(&att->link);
	atomic_inc(&xpmem_nr_attachments);

	mutex_lock(&xpmem_lock);
	permit = xpmem_permit_of(tg, cmd.apid);
	if (!permit) {
		ret = -EINVAL;
	} else if (permit->seg->removed) {
		ret = -ENOENT;
	} else if ((u64)cmd.offset > permit->seg->size ||
		   size > permit->seg->size - cmd.offset ||
		   permit->seg->vaddr + cmd.offset + size > XPMEM_MAX_ADDRESS) {
		ret = -EINVAL;
	} else {
		att->owner = permit->seg->owner;
		kref_get(&att->owner->kref);
		att->holder = tg;
		att->segid = permit->seg->segid;
		att->apid = permit->apid;
		att->owner_start = permit->seg->vaddr + cmd.offset;
		att->owner_end = att->owner_start + size;
		att->read_only = permit->read_only;
		list_add(&att->link, &xpmem_attachments);
	}
	mutex_unlock(&xpmem_lock);
	if (ret) {
		kref_put(&att->kref, xpmem_attachment_free);
		return ret;
	}

	offset = xpmem_file_offset(att->owner->slot, att->owner_start);
	mutex_lock(&tg->attach_lock);
	tg->pending = att;
	tg->pending_task = current;
	address = vm_mmap(file, cmd.vaddr, size,
			  PROT_READ | (att->read_only ? 0 : PROT_WRITE),
			  MAP_SHARED | (cmd.vaddr ? MAP_FIXED : 0), offset);
	tg->pending = NULL;
	tg->pending_task = NULL;
	mutex_unlock(&tg->attach_lock);
	if (IS_ERR_VALUE(address)) {
		mutex_lock(&xpmem_lock);
		list_del(&att->link);
		mutex_unlock(&xpmem_lock);
		kref_put(&att->kref, xpmem_attachment_free);
		return (long)address;
	}
	att->address = address;
	att->size = size;
	/* The VMA holds a reference now; the table's goes at detach or exit. */
	return put_user((u64)address, &arg->vaddr);
}

/* Unmaps every VMA of @att left in its original range. */
static void xpmem_unmap_attachment(struct xpmem_attachment *att)
{
	struct mm_struct *mm = current->mm;
	unsigned long start, end;
	struct vm_area_struct *vma;

	for (;;) {
		start = 0;
		end = 0;
		mmap_read_lock(mm);
		for (vma = find_vma(mm, att->address);
		     vma && vma->vm_start < att->address + att->size;
		     vma = find_vma(mm, vma->vm_end)) {
			if (vma->vm_private_data == att && vma->vm_ops == &xpmem_vm_ops) {
				start = vma->vm_start;
				end = vma->vm_end;
				break;
			}
		}
		mmap_read_unlock(mm);
		if (!end || vm_munmap(start, end - start))
			return;
	}
}

/* Takes @att out of the table (once) and drops the table's reference. */
static void xpmem_forget_attachment(struct xpmem_attachment *att)
{
	bool listed;

	mutex_lock(&xpmem_lock);
	listed = !list_empty(&att->link);
	list_del_init(&att->link);
	mutex_unlock(&xpmem_lock);
	if (listed)
		kref_put(&att->kref, xpmem_attachment_free);
}

/* Detaches everything @tg attached through @apid (release). */
static long xpmem_detach_all(struct xpmem_tg *tg, s64 apid)
{
	struct xpmem_attachment *att;

	for (;;) {
		struct xpmem_attachment *found = NULL;

		mutex_lock(&xpmem_lock);
		list_for_each_entry(att, &xpmem_attachments, link) {
			if (att->holder == tg && att->apid == apid && att->size) {
				found = att;
				kref_get(&found->kref);
				break;
			}
		}
		mutex_unlock(&xpmem_lock);
		if (!found)
			return 0;
		xpmem_unmap_attachment(found);
		xpmem_forget_attachment(found);
		kref_put(&found->kref, xpmem_attachment_free);
	}
}

static long xpmem_detach(struct xpmem_tg *tg, struct xpmem_cmd_detach __user *arg)
{
	struct mm_struct *mm = current->mm;
	struct xpmem_attachment *att;
	struct vm_area_struct *vma;
	u64 address;

	if (get_user(address, &arg->vaddr))
		return -EFAULT;
	mmap_read_lock(mm);
	vma = vma_lookup(mm, address);
	if (!vma) {
		mmap_read_unlock(mm);
		return 0;	/* no mapping at all */
	}
	if (vma->vm_ops != &xpmem_vm_ops) {
		mmap_read_unlock(mm);
		return -EINVAL;
	}
	att = vma->vm_private_data;
	kref_get(&att->kref);
	mmap_read_unlock(mm);
	xpmem_unmap_attachment(att);
	xpmem_forget_attachment(att);
	kref_put(&att->kref, xpmem_attachment_free);
	return 0;
}

static long xpmem_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct xpmem_tg *tg = file->private_data;
	void __user *argp = (void __user *)arg;

	/* A fork child inherited the parent's descriptor: it must open afresh. */
	if (current->tgid != tg->tgid)
		return -XPMEM_ERRNO_NOPROC;
	switch (cmd) {
	case XPMEM_CMD_VERSION:
		return XPMEM_VERSION;
	case XPMEM_CMD_MAKE:
		return xpmem_make(tg, argp);
	case XPMEM_CMD_REMOVE:
		return xpmem_remove(tg, argp);
	case XPMEM_CMD_GET:
		return xpmem_get(tg, argp);
	case XPMEM_CMD_RELEASE:
		return xpmem_release(tg, argp);
	case XPMEM_CMD_ATTACH:
		return xpmem_attach(file, tg, argp);
	case XPMEM_CMD_DETACH:
		return xpmem_detach(tg, argp);
	case XPMEM_CMD_FORK_BEGIN:
	case XPMEM_CMD_FORK_END:
		return 0;
	default:
		return -ENOTTY;
	}
}

static int xpmem_open(struct inode *inode, struct file *file)
{
	struct xpmem_tg *tg;

	if (!current->mm)
		return -EINVAL;
	tg = kzalloc(sizeof(*tg), GFP_KERNEL);
	if (!tg)
		return -ENOMEM;
	kref_init(&tg->kref);
	tg->tgid = current->tgid;
	tg->mm = current->mm;
	mmgrab(tg->mm);
	mutex_init(&tg->notifier_lock);
	mutex_init(&tg->attach_lock);
	file->private_data = tg;
	/* One address space for every open file: one i_mmap tree to zap. */
	file->f_mapping = xpmem_inode->i_mapping;
	atomic_inc(&xpmem_nr_tgs);
	return 0;
}

/* The last reference to the open file: the process is done with XPMEM. */
static int xpmem_release_file(struct inode *inode, struct file *file)
{
	struct xpmem_tg *tg = file->private_data;
	struct xpmem_attachment *att, *next;
	struct xpmem_segment *seg;
	struct xpmem_permit *permit;
	unsigned long index;
	LIST_HEAD(forgotten);

	mutex_lock(&xpmem_lock);
	xa_for_each(&xpmem_segments, index, seg) {
		if (seg->owner != tg)
			continue;
		xpmem_segment_remove(seg);
		kref_put(&seg->kref, xpmem_segment_free);
	}
	xa_for_each(&xpmem_permits, index, permit) {
		if (permit->holder == tg)
			xpmem_permit_release(permit);
	}
	list_for_each_entry_safe(att, next, &xpmem_attachments, link) {
		if (att->holder == tg)
			list_move(&att->link, &forgotten);
	}
	if (tg->slot)
		xa_erase(&xpmem_slots, tg->slot);
	mutex_unlock(&xpmem_lock);

	list_for_each_entry_safe(att, next, &forgotten, link) {
		list_del_init(&att->link);
		kref_put(&att->kref, xpmem_attachment_free);
	}
	if (tg->slot) {
		xpmem_revoke_zap(tg, 0, XPMEM_MAX_ADDRESS);
		mmu_interval_notifier_remove(&tg->notifier);
	}
	xpmem_tg_put(tg);
	return 0;
}

static const struct file_operations xpmem_fops = {
	.owner = THIS_MODULE,
	.open = xpmem_open,
	.release = xpmem_release_file,
	.unlocked_ioctl = xpmem_ioctl,
	.mmap = xpmem_mmap,
};

static struct miscdevice xpmem_device = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "xpmem",
	.fops = &xpmem_fops,
	.mode = 0666,
};

static int xpmem_counters_show(struct seq_file *m, void *unused)
{
	seq_printf(m, "processes %d\nsegments %d\npermits %d\nattachments %d\nvmas %d\n",
		   atomic_read(&xpmem_nr_tgs), atomic_read(&xpmem_nr_segments),
		   atomic_read(&xpmem_nr_permits), atomic_read(&xpmem_nr_attachments),
		   atomic_read(&xpmem_nr_vmas));
	/* Attachments are PFN mappings: no page is ever held between faults. */
	seq_puts(m, "pages 0\n");
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(xpmem_counters);

static int xpmem_init_fs_context(struct fs_context *fc)
{
	return init_pseudo(fc, XPMEM_MAGIC) ? 0 : -ENOMEM;
}

static struct file_system_type xpmem_fs_type = {
	.name = "xpmem",
	.owner = THIS_MODULE,
	.init_fs_context = xpmem_init_fs_context,
	.kill_sb = kill_anon_super,
};

static int __init xpmem_init(void)
{
	int ret;

	xpmem_mnt = kern_mount(&xpmem_fs_type);
	if (IS_ERR(xpmem_mnt))
		return PTR_ERR(xpmem_mnt);
	xpmem_inode = alloc_anon_inode(xpmem_mnt->mnt_sb);
	if (IS_ERR(xpmem_inode)) {
		ret = PTR_ERR(xpmem_inode);
		goto unmount;
	}
	ret = misc_register(&xpmem_device);
	if (ret)
		goto put_inode;
	xpmem_debugfs = debugfs_create_dir("xpmem", NULL);
	debugfs_create_file("counters", 0444, xpmem_debugfs, NULL, &xpmem_counters_fops);
	return 0;

put_inode:
	iput(xpmem_inode);
unmount:
	kern_unmount(xpmem_mnt);
	return ret;
}

static void __exit xpmem_exit(void)
{
	debugfs_remove(xpmem_debugfs);
	misc_deregister(&xpmem_device);
	iput(xpmem_inode);
	kern_unmount(xpmem_mnt);
}

module_init(xpmem_init);
module_exit(xpmem_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Cross-process memory mapping (XPMEM) with the classic ABI");
