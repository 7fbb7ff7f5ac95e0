// SPDX-License-Identifier: GPL-2.0
/*
 * xpmem.c - cross-process memory through /dev/xpmem, speaking the classic
 * XPMEM ioctl ABI (xpmem_abi.h).
 *
 * A process (a thread group, "tg") opens /dev/xpmem; its state lives as long
 * as that open file, so closing a dup()ed descriptor tears nothing down. Only
 * the thread group and mm that opened the file may use it: a fork child, an
 * exec()ed image or a process that received the descriptor gets NOPROC.
 *
 * Every mm that opens /dev/xpmem gets one struct xpmem_mm, shared by its
 * files: an mmu notifier (mmu_notifier_get(), so registered once, at the
 * first open, before the process can map any attachment: the registration's
 * mm_take_all_locks() then never meets our address_space locks), and a pseudo
 * file whose address_space holds the VMAs of every attachment of that mm's
 * memory, at file offset = owner address. An attachment is a VM_PFNMAP|VM_IO
 * mapping of that file: faults look the owner's pages up with
 * get_user_pages_remote() and map up to 16 at a time; no page is held between
 * faults. Any change to the owner's memory, whoever makes it (munmap, mremap,
 * MADV_DONTNEED, COW, THP collapse, migration, reclaim, exit), zaps the range
 * in every attacher with unmap_mapping_range() on the owner's address_space.
 * Faults that begin while the owner's memory is changing wait for it, without
 * the attacher's mmap_lock and killably, then retry (the counting of KVM's
 * mmu_invalidate_seq).
 *
 * An attachment's VMA can never outlive its right to the owner's memory:
 * detach, release, segment removal and either side's close mark the
 * attachment revoked before zapping it, faults check that mark (and that the
 * owner is alive) under the owner's fault_lock before mapping, and the VMA
 * cannot be moved (->mremap refuses), inherited (VM_DONTCOPY, which VM_IO
 * makes permanent) or mapped by anyone but the attach ioctl.
 *
 * Locking, outer to inner:
 *	xpmem_lock		ids, per-user counts, the lists of segments,
 *				permits and attachments. Never held while an
 *				mmap_lock, i_mmap_rwsem or fault_lock is taken.
 *	attacher mmap_lock -> owner mmap_lock (trylock only: two processes
 *		attached to each other, or one attached to itself, must never
 *		wait for each other's lock)
 *	attacher mmap_lock -> xmm->fault_lock -> PTL (fault; page tables are
 *		allocated before fault_lock, so that reclaim, which can call
 *		the notifier, never runs under it)
 *	notifier context -> xmm->fault_lock (counting only)
 *	xpmem_lock -> xmm->attached_lock (spinlock; also taken alone by the
 *		notifier)
 * The notifier never zaps in its own context: zapping invalidates the
 * attachers' mms, a nested mmu notifier invalidation. It hands the zap to
 * xpmem_zap_wq and waits. A zap's own nested invalidations of attachment
 * VMAs are skipped (zap markers): no attachment can map an attachment VMA,
 * GUP refuses VM_PFNMAP.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/cred.h>
#include <linux/debugfs.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/fs_context.h>
#include <linux/hashtable.h>
#include <linux/ipc_namespace.h>
#include <linux/kref.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/nsproxy.h>
#include <linux/pseudo_fs.h>
#include <linux/sched/mm.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/userfaultfd_k.h>
#include <linux/user_namespace.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "compat.h"
#include "xpmem_abi.h"

#define XPMEM_VERSION 0x00030002	/* above every classic version */
#define XPMEM_ERRNO_NOPROC 2004
#define XPMEM_PERMIT_MODE 0x1
#define XPMEM_RDONLY 0x1
#define XPMEM_RDWR 0x2
#define XPMEM_FAULT_PAGES 16
#define XPMEM_MAGIC 0x58504d4d

/* What a user may hold at once, over all its processes. */
enum xpmem_kind { XPMEM_SEGMENTS, XPMEM_PERMITS, XPMEM_ATTACHMENTS, XPMEM_KINDS };

static unsigned int max_per_user[XPMEM_KINDS] = { 1U << 16, 1U << 18, 1U << 20 };
module_param_named(max_segments_per_user, max_per_user[XPMEM_SEGMENTS], uint, 0644);
MODULE_PARM_DESC(max_segments_per_user, "segments one user may have made at once");
module_param_named(max_permits_per_user, max_per_user[XPMEM_PERMITS], uint, 0644);
MODULE_PARM_DESC(max_permits_per_user, "permits one user may hold at once");
module_param_named(max_attachments_per_user, max_per_user[XPMEM_ATTACHMENTS], uint, 0644);
MODULE_PARM_DESC(max_attachments_per_user, "attachments one user may hold at once");

/* Pages mapped per fault; 1 behaves like the classic module (for comparisons). */
static unsigned int fault_pages = XPMEM_FAULT_PAGES;
module_param(fault_pages, uint, 0644);
MODULE_PARM_DESC(fault_pages, "pages mapped per attachment fault (1-16)");

struct xpmem_user {
	struct hlist_node node;		/* xpmem_users */
	kuid_t uid;
	unsigned int count[XPMEM_KINDS];
};

/* The XPMEM state of one mm, shared by the files opened in it. */
struct xpmem_mm {
	struct mmu_notifier notifier;	/* mmu_notifier_get(): one per mm */
	struct file *file;		/* its address_space maps the attachments */
	struct mutex fault_lock;	/* faults against invalidations */
	unsigned long seq;		/* invalidations begun: fault_lock */
	atomic_t active;		/* invalidations in progress */
	wait_queue_head_t idle;		/* woken when none is */
	bool released;			/* the mm is gone: fault_lock */
	spinlock_t attached_lock;
	struct list_head attached;	/* attachments that may map its pages */
};

struct xpmem_tg {
	struct kref kref;
	pid_t tgid;
	struct mm_struct *mm;		/* mmgrab()ed */
	struct xpmem_mm *xmm;		/* a reference to its notifier */
	bool dead;			/* closed: under xmm->fault_lock */
	struct list_head segments;	/* made by us: under xpmem_lock */
	struct list_head permits;	/* held by us: under xpmem_lock */
	struct mutex attach_lock;	/* one attach mmap at a time */
	struct xpmem_attachment *pending;	/* being mapped by attach */
	struct task_struct *pending_task;
};

struct xpmem_segment {
	struct kref kref;
	s64 segid;
	struct xpmem_tg *owner;		/* kref */
	struct list_head owner_link;	/* owner->segments */
	struct list_head permits;	/* permit->seg_link */
	struct xpmem_user *user;	/* charged while in the table */
	unsigned long vaddr;
	unsigned long size;
	umode_t mode;
	kuid_t uid;
	kgid_t gid;
	struct user_namespace *ipc_user_ns;	/* get_user_ns(): CAP_IPC_OWNER */
	bool removed;
};

struct xpmem_permit {
	s64 apid;
	struct xpmem_segment *seg;	/* kref */
	struct xpmem_tg *holder;
	struct list_head holder_link;	/* holder->permits */
	struct list_head seg_link;	/* seg->permits */
	struct list_head attachments;	/* attachment->permit_link */
	struct xpmem_user *user;
	bool read_only;
};

struct xpmem_attachment {
	struct kref kref;		/* the table's, one per VMA, faults' */
	struct xpmem_permit *permit;	/* NULL once out of the table */
	struct list_head permit_link;	/* permit->attachments */
	struct list_head owner_link;	/* owner->xmm->attached */
	struct xpmem_tg *owner;		/* kref */
	/*
	 * The notifier of the mm it is mapped in, held as long as it may be
	 * mapped: a later open there must not register anew (the registration's
	 * mm_take_all_locks() would take our address_space locks).
	 */
	struct xpmem_mm *holder_xmm;
	struct xpmem_user *user;
	unsigned long owner_start;	/* the owner range it may reach */
	unsigned long owner_end;
	unsigned long address;		/* where it was mapped: mmap_lock */
	unsigned long size;
	bool read_only;
	bool revoked;			/* set before zapping; READ_ONCE */
};

static DEFINE_MUTEX(xpmem_lock);
static DEFINE_XARRAY_ALLOC1(xpmem_segments);
static DEFINE_XARRAY_ALLOC1(xpmem_permits);
static u32 xpmem_next_segid, xpmem_next_apid;
static DEFINE_HASHTABLE(xpmem_users, 6);
static struct vfsmount *xpmem_mnt;
static struct dentry *xpmem_debugfs;
static struct workqueue_struct *xpmem_zap_wq;
static const struct vm_operations_struct xpmem_vm_ops;

/* Live objects, for leak checks (debugfs xpmem/counters). */
static atomic_t xpmem_nr_tgs, xpmem_nr_segments, xpmem_nr_permits,
	xpmem_nr_attachments, xpmem_nr_vmas;

/* ---- per-user limits (under xpmem_lock) ---------------------------------- */

static struct xpmem_user *xpmem_user_charge(enum xpmem_kind kind)
{
	kuid_t uid = current_euid();
	struct xpmem_user *user;

	hash_for_each_possible(xpmem_users, user, node, __kuid_val(uid)) {
		if (uid_eq(user->uid, uid))
			goto found;
	}
	user = kzalloc(sizeof(*user), GFP_KERNEL_ACCOUNT);
	if (!user)
		return ERR_PTR(-ENOMEM);
	user->uid = uid;
	hash_add(xpmem_users, &user->node, __kuid_val(uid));
found:
	if (user->count[kind] >= READ_ONCE(max_per_user[kind])) {
		if (!user->count[XPMEM_SEGMENTS] && !user->count[XPMEM_PERMITS] &&
		    !user->count[XPMEM_ATTACHMENTS]) {
			hash_del(&user->node);
			kfree(user);
		}
		return ERR_PTR(-ENOSPC);
	}
	user->count[kind]++;
	return user;
}

static void xpmem_user_uncharge(struct xpmem_user *user, enum xpmem_kind kind)
{
	user->count[kind]--;
	if (!user->count[XPMEM_SEGMENTS] && !user->count[XPMEM_PERMITS] &&
	    !user->count[XPMEM_ATTACHMENTS]) {
		hash_del(&user->node);
		kfree(user);
	}
}

/* ---- zapping attachers' PTEs ---------------------------------------------- */

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

static void xpmem_zapping_begin(struct xpmem_zap_marker *marker)
{
	marker->task = current;
	spin_lock(&xpmem_zappers_lock);
	list_add(&marker->link, &xpmem_zappers);
	spin_unlock(&xpmem_zappers_lock);
}

static void xpmem_zapping_end(struct xpmem_zap_marker *marker)
{
	spin_lock(&xpmem_zappers_lock);
	list_del(&marker->link);
	spin_unlock(&xpmem_zappers_lock);
}

/* Zaps every attacher's PTEs for [start, end) of the memory of @xmm. */
static void xpmem_zap(struct xpmem_mm *xmm, unsigned long start, unsigned long end)
{
	struct xpmem_zap_marker marker;

	if (start >= end)
		return;
	xpmem_zapping_begin(&marker);
	unmap_mapping_range(xmm->file->f_mapping, start, end - start, 1);
	xpmem_zapping_end(&marker);
}

struct xpmem_zap_work {
	struct work_struct work;
	struct completion done;
	struct xpmem_mm *xmm;
	unsigned long start, end;
};

static void xpmem_zap_work_fn(struct work_struct *work)
{
	struct xpmem_zap_work *zap = container_of(work, struct xpmem_zap_work, work);

	xpmem_zap(zap->xmm, zap->start, zap->end);
	complete(&zap->done);	/* last touch: the waiter's stack holds @zap */
}

/* xpmem_zap() for the notifier, which must not invalidate in its own context. */
static void xpmem_zap_from_notifier(struct xpmem_mm *xmm, unsigned long start,
				    unsigned long end)
{
	struct xpmem_zap_work zap = { .xmm = xmm, .start = start, .end = end };

	INIT_WORK_ONSTACK(&zap.work, xpmem_zap_work_fn);
	init_completion(&zap.done);
	queue_work(xpmem_zap_wq, &zap.work);
	wait_for_completion(&zap.done);
	destroy_work_on_stack(&zap.work);
}

/*
 * Finishes revoking attachments of [start, end) of @xmm's memory, once they
 * are marked revoked: taking fault_lock waits for any fault that checked an
 * attachment before the mark to have mapped its pages (every later fault
 * sees the mark), then the zap removes them.
 */
static void xpmem_revoke_range(struct xpmem_mm *xmm, unsigned long start, unsigned long end)
{
	mutex_lock(&xmm->fault_lock);
	mutex_unlock(&xmm->fault_lock);
	xpmem_zap(xmm, start, end);
}

/* ---- thread groups ------------------------------------------------------- */

static void xpmem_tg_free(struct kref *kref)
{
	struct xpmem_tg *tg = container_of(kref, struct xpmem_tg, kref);

	mmu_notifier_put(&tg->xmm->notifier);
	mmdrop(tg->mm);
	kfree(tg);
	atomic_dec(&xpmem_nr_tgs);
}

static void xpmem_tg_put(struct xpmem_tg *tg)
{
	kref_put(&tg->kref, xpmem_tg_free);
}

static bool xpmem_attached_overlaps(struct xpmem_mm *xmm, unsigned long start,
				    unsigned long end)
{
	struct xpmem_attachment *att;
	bool overlaps = false;

	spin_lock(&xmm->attached_lock);
	list_for_each_entry(att, &xmm->attached, owner_link) {
		if (att->owner_start < end && start < att->owner_end) {
			overlaps = true;
			break;
		}
	}
	spin_unlock(&xmm->attached_lock);
	return overlaps;
}

static struct xpmem_mm *xpmem_mm_of(struct mmu_notifier *notifier)
{
	return container_of(notifier, struct xpmem_mm, notifier);
}

static int xpmem_invalidate_start(struct mmu_notifier *notifier,
				  const struct mmu_notifier_range *range)
{
	struct xpmem_mm *xmm = xpmem_mm_of(notifier);
	bool blockable = mmu_notifier_range_blockable(range);
	bool overlaps;

	/* Nested in our own zap, which only invalidates attachment VMAs: skipped. */
	if (xpmem_current_is_zapping())
		return 0;
	if (blockable)
		mutex_lock(&xmm->fault_lock);
	else if (!mutex_trylock(&xmm->fault_lock))
		return -EAGAIN;
	overlaps = xpmem_attached_overlaps(xmm, range->start, range->end);
	if (overlaps && !blockable) {
		mutex_unlock(&xmm->fault_lock);
		return -EAGAIN;	/* no end call follows */
	}
	/* Counted even with nothing attached: an attachment made meanwhile waits. */
	atomic_inc(&xmm->active);
	xmm->seq++;
	mutex_unlock(&xmm->fault_lock);
	if (overlaps)
		xpmem_zap_from_notifier(xmm, range->start, min(range->end, TASK_SIZE_MAX));
	return 0;
}

static void xpmem_invalidate_end(struct mmu_notifier *notifier,
				 const struct mmu_notifier_range *range)
{
	struct xpmem_mm *xmm = xpmem_mm_of(notifier);

	if (xpmem_current_is_zapping())
		return;	/* not counted either */
	if (atomic_dec_and_test(&xmm->active) && wq_has_sleeper(&xmm->idle))
		wake_up_all(&xmm->idle);
}

/* The mm is being torn down: no later invalidation reaches us. */
static void xpmem_mm_release(struct mmu_notifier *notifier, struct mm_struct *mm)
{
	struct xpmem_mm *xmm = xpmem_mm_of(notifier);

	mutex_lock(&xmm->fault_lock);
	xmm->released = true;
	xmm->seq++;
	mutex_unlock(&xmm->fault_lock);
	xpmem_zap(xmm, 0, TASK_SIZE_MAX);
}

static struct file *xpmem_attachments_file(void);

static struct mmu_notifier *xpmem_mm_alloc(struct mm_struct *mm)
{
	struct xpmem_mm *xmm = kzalloc(sizeof(*xmm), GFP_KERNEL_ACCOUNT);
	struct file *file;

	if (!xmm)
		return ERR_PTR(-ENOMEM);
	file = xpmem_attachments_file();
	if (IS_ERR(file)) {
		kfree(xmm);
		return ERR_CAST(file);
	}
	xmm->file = file;
	mutex_init(&xmm->fault_lock);
	atomic_set(&xmm->active, 0);
	init_waitqueue_head(&xmm->idle);
	spin_lock_init(&xmm->attached_lock);
	INIT_LIST_HEAD(&xmm->attached);
	return &xmm->notifier;
}

static void xpmem_mm_free(struct mmu_notifier *notifier)
{
	struct xpmem_mm *xmm = xpmem_mm_of(notifier);

	fput(xmm->file);
	kfree(xmm);
}

static const struct mmu_notifier_ops xpmem_notifier_ops = {
	.release = xpmem_mm_release,
	.invalidate_range_start = xpmem_invalidate_start,
	.invalidate_range_end = xpmem_invalidate_end,
	.alloc_notifier = xpmem_mm_alloc,
	.free_notifier = xpmem_mm_free,
};

/* ---- segments, permits, attachments: table side ------------------------- */

static void xpmem_segment_free(struct kref *kref)
{
	struct xpmem_segment *seg = container_of(kref, struct xpmem_segment, kref);

	put_user_ns(seg->ipc_user_ns);
	xpmem_tg_put(seg->owner);
	kfree(seg);
	atomic_dec(&xpmem_nr_segments);
}

static void xpmem_segment_put(struct xpmem_segment *seg)
{
	kref_put(&seg->kref, xpmem_segment_free);
}

static void xpmem_attachment_free(struct kref *kref)
{
	struct xpmem_attachment *att = container_of(kref, struct xpmem_attachment, kref);

	xpmem_tg_put(att->owner);
	mmu_notifier_put(&att->holder_xmm->notifier);
	kfree(att);
	atomic_dec(&xpmem_nr_attachments);
}

static void xpmem_attachment_put(struct xpmem_attachment *att)
{
	kref_put(&att->kref, xpmem_attachment_free);
}

/*
 * Takes @att out of the table: from now on it only faults SIGBUS. Under
 * xpmem_lock. The caller then runs xpmem_revoke_range(), then
 * xpmem_forget_attachment().
 */
static void xpmem_take_attachment(struct xpmem_attachment *att)
{
	WRITE_ONCE(att->revoked, true);
	list_del_init(&att->permit_link);
	att->permit = NULL;
	xpmem_user_uncharge(att->user, XPMEM_ATTACHMENTS);
}

/* The last step of taking @att out: it no longer needs invalidations. */
static void xpmem_forget_attachment(struct xpmem_attachment *att)
{
	struct xpmem_mm *xmm = att->owner->xmm;

	spin_lock(&xmm->attached_lock);
	list_del_init(&att->owner_link);
	spin_unlock(&xmm->attached_lock);
	xpmem_attachment_put(att);	/* the table's */
}

/* Marks every attachment of @seg revoked. Under xpmem_lock. */
static void xpmem_segment_remove(struct xpmem_segment *seg)
{
	struct xpmem_permit *permit;
	struct xpmem_attachment *att;

	seg->removed = true;
	xa_erase(&xpmem_segments, seg->segid);
	list_del_init(&seg->owner_link);
	xpmem_user_uncharge(seg->user, XPMEM_SEGMENTS);
	list_for_each_entry(permit, &seg->permits, seg_link)
		list_for_each_entry(att, &permit->attachments, permit_link)
			WRITE_ONCE(att->revoked, true);
}

/* Takes @permit and its attachments (onto @taken) out of the table. Under xpmem_lock. */
static void xpmem_permit_take(struct xpmem_permit *permit, struct list_head *taken)
{
	struct xpmem_attachment *att, *next;

	xa_erase(&xpmem_permits, permit->apid);
	list_del(&permit->holder_link);
	list_del(&permit->seg_link);
	xpmem_user_uncharge(permit->user, XPMEM_PERMITS);
	list_for_each_entry_safe(att, next, &permit->attachments, permit_link) {
		xpmem_take_attachment(att);
		list_add(&att->permit_link, taken);
	}
}

/* Unmaps every VMA of @att left in its range of the caller's address space. */
static int xpmem_unmap_attachment(struct xpmem_attachment *att)
{
	struct mm_struct *mm = current->mm;
	struct vm_area_struct *vma;
	unsigned long start, end;
	int ret;

	for (;;) {
		start = 0;
		end = 0;
		mmap_read_lock(mm);
		for (vma = find_vma(mm, att->address);
		     vma && vma->vm_start < att->address + att->size;
		     vma = find_vma(mm, vma->vm_end)) {
			if (vma->vm_ops == &xpmem_vm_ops && vma->vm_private_data == att) {
				start = vma->vm_start;
				end = vma->vm_end;
				break;
			}
		}
		mmap_read_unlock(mm);
		if (!end)
			return 0;
		ret = vm_munmap(start, end - start);
		if (ret)
			return ret;	/* revoked anyway: what is left faults SIGBUS */
	}
}

/*
 * Finishes a release: the attachments on @taken are revoked; zaps them and,
 * when they are in the caller's address space, unmaps them.
 */
static void xpmem_permit_finish(struct xpmem_permit *permit, struct list_head *taken,
				bool unmap)
{
	struct xpmem_segment *seg = permit->seg;
	struct xpmem_attachment *att, *next;

	xpmem_revoke_range(seg->owner->xmm, seg->vaddr, seg->vaddr + seg->size);
	list_for_each_entry_safe(att, next, taken, permit_link) {
		list_del_init(&att->permit_link);
		if (unmap)
			xpmem_unmap_attachment(att);
		xpmem_forget_attachment(att);
	}
	xpmem_segment_put(seg);
	kfree(permit);
	atomic_dec(&xpmem_nr_permits);
}

/* System V IPC rules, with CAP_IPC_OWNER where the owner's IPC namespace lives. */
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
	return ns_capable(seg->ipc_user_ns, CAP_IPC_OWNER);
}

/* ---- faults -------------------------------------------------------------- */

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
	xpmem_attachment_put(att);
}

/* Attachments stay where they were mapped: detach finds them by address. */
static int xpmem_vma_mremap(struct vm_area_struct *vma)
{
	return -EINVAL;
}

enum xpmem_owner_lock { XPMEM_OWNER_LOCKED, XPMEM_OWNER_SELF, XPMEM_OWNER_BUSY };

/*
 * The owner's mmap_lock for get_user_pages_remote(). Never waited for while
 * the attacher's is held: the same lock when a process attached its own
 * memory, an ABBA between two processes attached to each other.
 */
static enum xpmem_owner_lock xpmem_lock_owner_mm(struct vm_fault *vmf, struct mm_struct *mm)
{
	if (mm == vmf->vma->vm_mm)
		return XPMEM_OWNER_SELF;	/* the fault holds it */
	return mmap_read_trylock(mm) ? XPMEM_OWNER_LOCKED : XPMEM_OWNER_BUSY;
}

/*
 * Whether the fault may drop the attacher's lock, wait and be retried; if so,
 * this drops the lock. @ret is what the fault returns either way: NOPAGE
 * where it cannot be retried (the caller retries the access), RETRY else.
 */
static bool xpmem_fault_may_wait(struct vm_fault *vmf, vm_fault_t *ret)
{
	*ret = VM_FAULT_NOPAGE;
	if (!(vmf->flags & FAULT_FLAG_ALLOW_RETRY))
		return false;
	*ret = VM_FAULT_RETRY;
	if (vmf->flags & FAULT_FLAG_RETRY_NOWAIT)
		return false;
	xpmem_release_fault_lock(vmf);
	return true;
}

/* The owner's mmap_lock is taken: wait for it without ours, then retry. */
static vm_fault_t xpmem_owner_busy(struct vm_fault *vmf, struct mm_struct *mm)
{
	vm_fault_t ret;

	if (xpmem_fault_may_wait(vmf, &ret) && !mmap_read_lock_killable(mm))
		mmap_read_unlock(mm);
	return ret;
}

/*
 * The owner is changing its memory: wait until it is done, without our lock
 * and killably (the owner decides how long that takes), then retry.
 */
static vm_fault_t xpmem_owner_changing(struct vm_fault *vmf, struct xpmem_mm *xmm)
{
	vm_fault_t ret;

	if (xpmem_fault_may_wait(vmf, &ret))
		wait_event_killable(xmm->idle, !atomic_read(&xmm->active));
	return ret;
}

/* Samples the invalidation count of @xmm; false while an invalidation runs. */
static bool xpmem_fault_begin(struct xpmem_mm *xmm, unsigned long *seq)
{
	bool idle;

	mutex_lock(&xmm->fault_lock);
	*seq = xmm->seq;
	idle = !atomic_read(&xmm->active);
	mutex_unlock(&xmm->fault_lock);
	return idle;
}

/*
 * Looks up @nr owner pages from @address. Returns how many, or a negative
 * VM_FAULT code (as -code): SIGSEGV where a write meets memory the owner maps
 * read-only, SIGBUS where nothing is mapped.
 */
static long xpmem_get_owner_pages(struct mm_struct *mm, unsigned long address,
				  unsigned long nr, unsigned int gup_flags, struct page **pages)
{
	long got = xpmem_gup_remote(mm, address, nr, gup_flags, pages, NULL);

	if (got > 0)
		return got;
	if ((gup_flags & FOLL_WRITE) &&
	    xpmem_gup_remote(mm, address, 1, gup_flags & ~FOLL_WRITE, pages, NULL) == 1) {
		put_page(pages[0]);	/* readable only: never writable through us */
		return -(long)VM_FAULT_SIGSEGV;
	}
	return -(long)VM_FAULT_SIGBUS;
}

static void xpmem_put_pages(struct page **pages, long nr)
{
	while (nr > 0)
		put_page(pages[--nr]);
}

static int xpmem_no_pte_change(pte_t *pte, unsigned long address, void *data)
{
	return 0;
}

/*
 * Whether a fault that began at @seq may map @att's pages: no invalidation
 * began since (none was running then), nothing revoked. Under fault_lock.
 */
static bool xpmem_may_map(struct xpmem_attachment *att, unsigned long seq)
{
	struct xpmem_mm *xmm = att->owner->xmm;

	return xmm->seq == seq && !xmm->released && !READ_ONCE(att->revoked) &&
	       !att->owner->dead;
}

/* The owner address a fault at @vmf reaches; false if it may reach none. */
static bool xpmem_fault_target(struct vm_fault *vmf, unsigned long *address)
{
	struct xpmem_attachment *att = vmf->vma->vm_private_data;

	*address = vmf->pgoff << PAGE_SHIFT;
	return !READ_ONCE(att->revoked) && *address >= att->owner_start &&
	       *address < att->owner_end;
}

/*
 * Maps @got owner pages at the fault address, writable if @writable; the
 * caller checked xpmem_may_map().
 */
static vm_fault_t xpmem_insert(struct vm_fault *vmf, struct page **pages, long got,
			       bool writable)
{
	struct vm_area_struct *vma = vmf->vma;
	vm_fault_t ret = VM_FAULT_NOPAGE;
	/* Not vma->vm_page_prot: having pfn_mkwrite makes it write-protected. */
	pgprot_t prot = vm_get_page_prot(writable ? vma->vm_flags : vma->vm_flags & ~VM_WRITE);
	long i;

	for (i = 0; i < got; i++) {
		vm_fault_t one = vmf_insert_pfn_prot(vma, vmf->address + i * PAGE_SIZE,
						     page_to_pfn(pages[i]), prot);
		if (one & VM_FAULT_ERROR) {
			if (i == 0)
				ret = one;
			break;
		}
	}
	return ret;
}

/*
 * Whether the owner handles missing pages at @address itself (userfaultfd),
 * for an access it allows (waiting for a handler that can never grant a
 * refused access would retry the fault forever). Clamps @nr to the owner's
 * VMA there, so that one fault never spans a VMA that does and one that does
 * not.
 */
static bool xpmem_owner_handles_faults(struct mm_struct *mm, unsigned long address,
				       bool write, unsigned long *nr)
{
	struct vm_area_struct *vma = vma_lookup(mm, address);

	if (!vma)
		return false;
	*nr = min(*nr, (vma->vm_end - address) >> PAGE_SHIFT);
	return userfaultfd_armed(vma) && (vma->vm_flags & (write ? VM_WRITE : VM_READ));
}

/*
 * Lets the owner's userfaultfd handler provide the page at @address: without
 * the attacher's lock (which this drops), GUP may wait for the handler. The
 * fault is then retried (any earlier retry, for a busy owner, does not count:
 * the wait needs only that the fault may be retried).
 */
static vm_fault_t xpmem_wait_for_owner_handler(struct vm_fault *vmf, struct mm_struct *mm,
					       unsigned long address, bool write)
{
	struct page *page;
	int locked = 1;

	xpmem_release_fault_lock(vmf);
	if (mmap_read_lock_killable(mm))
		return VM_FAULT_RETRY;
	if (xpmem_gup_remote(mm, address, 1, write ? FOLL_WRITE : 0, &page, &locked) == 1)
		put_page(page);
	if (locked)
		mmap_read_unlock(mm);
	return VM_FAULT_RETRY;
}

/*
 * Page tables for @nr pages from the fault address, allocated now: under
 * fault_lock, an allocation could recurse into reclaim, the notifier and
 * fault_lock. Only the PTE table can be missing (the fault allocated the upper
 * levels) and @nr stays within its PMD.
 */
static int xpmem_prepare_page_table(struct vm_fault *vmf, unsigned long nr)
{
	if (!pmd_none(READ_ONCE(*vmf->pmd)))
		return 0;
	return apply_to_page_range(vmf->vma->vm_mm, vmf->address, nr << PAGE_SHIFT,
				   xpmem_no_pte_change, NULL);
}

static vm_fault_t xpmem_map(struct vm_fault *vmf, struct xpmem_tg *owner,
			    unsigned long address)
{
	struct vm_area_struct *vma = vmf->vma;
	struct xpmem_attachment *att = vma->vm_private_data;
	struct xpmem_mm *xmm = owner->xmm;
	struct mm_struct *mm = owner->mm;
	bool write = vmf->flags & FAULT_FLAG_WRITE;
	struct page *pages[XPMEM_FAULT_PAGES];
	enum xpmem_owner_lock lock;
	unsigned int gup_flags;
	unsigned long nr, seq;
	bool owner_handles;
	vm_fault_t ret;
	long got;

	nr = min3((unsigned long)clamp_val(READ_ONCE(fault_pages), 1, XPMEM_FAULT_PAGES),
		  (vma->vm_end - vmf->address) >> PAGE_SHIFT,
		  (att->owner_end - address) >> PAGE_SHIFT);
	nr = min(nr, (PMD_SIZE - (vmf->address & ~PMD_MASK)) >> PAGE_SHIFT);
	if (!xpmem_fault_begin(xmm, &seq))
		return xpmem_owner_changing(vmf, xmm);	/* @att may be gone after this */
	lock = xpmem_lock_owner_mm(vmf, mm);
	if (lock == XPMEM_OWNER_BUSY)
		return xpmem_owner_busy(vmf, mm);
	/*
	 * Where the owner handles its own faults (userfaultfd), GUP must not
	 * fault under our lock: it could not wait for the handler.
	 */
	owner_handles = xpmem_owner_handles_faults(mm, address, write, &nr);
	gup_flags = write ? FOLL_WRITE : 0;
	got = xpmem_get_owner_pages(mm, address, nr,
				    gup_flags | (owner_handles ? FOLL_NOFAULT : 0), pages);
	if (got < 0 && owner_handles) {
		if ((vmf->flags & FAULT_FLAG_ALLOW_RETRY) &&
		    !(vmf->flags & FAULT_FLAG_RETRY_NOWAIT)) {
			if (lock == XPMEM_OWNER_LOCKED)
				mmap_read_unlock(mm);
			return xpmem_wait_for_owner_handler(vmf, mm, address, write);
		}
		got = xpmem_get_owner_pages(mm, address, 1, gup_flags, pages);
	}
	if (lock == XPMEM_OWNER_LOCKED)
		mmap_read_unlock(mm);
	if (got < 0)
		return (vm_fault_t)-got;
	if (xpmem_prepare_page_table(vmf, got)) {
		xpmem_put_pages(pages, got);
		return VM_FAULT_OOM;
	}
	mutex_lock(&xmm->fault_lock);
	/* Otherwise the CPU retries the access and faults afresh (SIGBUS once revoked). */
	ret = xpmem_may_map(att, seq) ? xpmem_insert(vmf, pages, got, write) : VM_FAULT_NOPAGE;
	mutex_unlock(&xmm->fault_lock);
	xpmem_put_pages(pages, got);
	return ret;
}

/* Pins the owner of the faulting attachment: the fault may drop the VMA's lock. */
static struct xpmem_tg *xpmem_fault_owner(struct vm_fault *vmf)
{
	struct xpmem_attachment *att = vmf->vma->vm_private_data;
	struct xpmem_tg *owner = att->owner;

	if (!mmget_not_zero(owner->mm))
		return NULL;
	kref_get(&owner->kref);
	return owner;
}

/* Unpins; mmput_async: the owner's last mmput must not run inside our fault. */
static void xpmem_fault_owner_put(struct xpmem_tg *owner)
{
	mmput_async(owner->mm);
	xpmem_tg_put(owner);
}

static vm_fault_t xpmem_fault(struct vm_fault *vmf)
{
	unsigned long address;
	struct xpmem_tg *owner;
	vm_fault_t ret;

	if (xpmem_fault_needs_mmap_lock(vmf))
		return VM_FAULT_RETRY;
	if (!xpmem_fault_target(vmf, &address))
		return VM_FAULT_SIGBUS;
	owner = xpmem_fault_owner(vmf);
	if (!owner)
		return VM_FAULT_SIGBUS;
	ret = xpmem_map(vmf, owner, address);
	xpmem_fault_owner_put(owner);
	return ret;
}

/*
 * A store to a page mapped read-only (a read fault maps read-only). Breaks the
 * owner's COW there (or finds the page read-only in the owner: SIGSEGV), then
 * replaces our PTE by a writable one, deciding under fault_lock: letting the
 * kernel make the old PTE writable after we unlock could make a PTE writable
 * that an invalidation and another fault have put there meanwhile. Never
 * waits for the owner's mmap_lock: this path cannot drop the attacher's.
 */
static vm_fault_t xpmem_pfn_mkwrite(struct vm_fault *vmf)
{
	struct xpmem_attachment *att = vmf->vma->vm_private_data;
	unsigned long address, seq, nr = 1;
	vm_fault_t ret = VM_FAULT_NOPAGE;
	struct xpmem_zap_marker marker;
	enum xpmem_owner_lock lock;
	struct xpmem_tg *owner;
	unsigned int nofault;
	struct page *page;
	long got;

	if (!xpmem_fault_target(vmf, &address))
		return VM_FAULT_SIGBUS;
	owner = xpmem_fault_owner(vmf);
	if (!owner)
		return VM_FAULT_SIGBUS;
	lock = xpmem_lock_owner_mm(vmf, owner->mm);
	if (lock == XPMEM_OWNER_BUSY || !xpmem_fault_begin(owner->xmm, &seq)) {
		if (lock == XPMEM_OWNER_LOCKED)
			mmap_read_unlock(owner->mm);
		goto out;	/* the CPU retries the store */
	}
	/* An owner with userfaultfd: only ->fault can wait for its handler. */
	nofault = xpmem_owner_handles_faults(owner->mm, address, true, &nr) ? FOLL_NOFAULT : 0;
	got = xpmem_get_owner_pages(owner->mm, address, 1, FOLL_WRITE | nofault, &page);
	if (lock == XPMEM_OWNER_LOCKED)
		mmap_read_unlock(owner->mm);
	xpmem_zapping_begin(&marker);
	zap_vma_ptes(vmf->vma, vmf->address, PAGE_SIZE);
	xpmem_zapping_end(&marker);
	if (got < 0) {
		if (!nofault)
			ret = (vm_fault_t)-got;
		goto out;	/* with userfaultfd: the store faults again, in ->fault */
	}
	if (xpmem_prepare_page_table(vmf, 1)) {
		put_page(page);
		ret = VM_FAULT_OOM;
		goto out;
	}
	mutex_lock(&owner->xmm->fault_lock);
	if (xpmem_may_map(att, seq))
		xpmem_insert(vmf, &page, 1, true);
	mutex_unlock(&owner->xmm->fault_lock);
	put_page(page);
out:
	xpmem_fault_owner_put(owner);
	return ret;
}

static const struct vm_operations_struct xpmem_vm_ops = {
	.open = xpmem_vma_open,
	.close = xpmem_vma_close,
	.mremap = xpmem_vma_mremap,
	.fault = xpmem_fault,
	.pfn_mkwrite = xpmem_pfn_mkwrite,
};

/* Whether @tg's file is used by the process that opened it. */
static bool xpmem_is_opener(struct xpmem_tg *tg)
{
	return current->tgid == tg->tgid && current->mm == tg->mm;
}

/* Only mappings made by the attach ioctl, in the thread making them. */
static int xpmem_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct xpmem_tg *tg = file->private_data;
	struct xpmem_attachment *att = tg->pending;

	if (!att || tg->pending_task != current || !xpmem_is_opener(tg))
		return -EINVAL;
	/* Into the owner's address_space: its invalidations find this VMA. */
	vma_set_file(vma, att->owner->xmm->file);
	vma->vm_ops = &xpmem_vm_ops;
	vma->vm_private_data = att;
	xpmem_vm_flags_set(vma, VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_DONTDUMP |
			   VM_DONTCOPY);
	if (att->read_only)
		xpmem_vm_flags_clear(vma, VM_MAYWRITE);
	att->address = vma->vm_start;
	att->size = vma->vm_end - vma->vm_start;
	xpmem_vma_open(vma);
	return 0;
}

/* ---- ioctls -------------------------------------------------------------- */

static long xpmem_make(struct xpmem_tg *tg, struct xpmem_cmd_make __user *arg)
{
	struct xpmem_cmd_make cmd;
	struct xpmem_segment *seg;
	s64 segid = 0;
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
	seg = kzalloc(sizeof(*seg), GFP_KERNEL_ACCOUNT);
	if (!seg)
		return -ENOMEM;
	kref_init(&seg->kref);
	INIT_LIST_HEAD(&seg->owner_link);
	INIT_LIST_HEAD(&seg->permits);
	seg->vaddr = cmd.vaddr;
	seg->size = cmd.size;
	seg->mode = cmd.permit_value;
	seg->uid = current_euid();
	seg->gid = current_egid();
	seg->ipc_user_ns = get_user_ns(current->nsproxy->ipc_ns->user_ns);
	kref_get(&tg->kref);
	seg->owner = tg;
	atomic_inc(&xpmem_nr_segments);

	mutex_lock(&xpmem_lock);
	seg->user = xpmem_user_charge(XPMEM_SEGMENTS);
	ret = PTR_ERR_OR_ZERO(seg->user);
	if (!ret) {
		ret = xa_alloc_cyclic(&xpmem_segments, &id, seg, XA_LIMIT(1, INT_MAX),
				      &xpmem_next_segid, GFP_KERNEL_ACCOUNT);
		if (ret < 0)
			xpmem_user_uncharge(seg->user, XPMEM_SEGMENTS);
	}
	if (ret >= 0) {
		ret = 0;
		segid = id;
		seg->segid = id;
		list_add(&seg->owner_link, &tg->segments);
	}
	mutex_unlock(&xpmem_lock);
	if (ret) {
		xpmem_segment_put(seg);
		return ret == -EBUSY ? -ENOSPC : ret;
	}
	return put_user(segid, &arg->segid);
}

/* Revokes a removed segment's attachments; drops the table's reference. */
static void xpmem_segment_finish(struct xpmem_segment *seg)
{
	xpmem_revoke_range(seg->owner->xmm, seg->vaddr, seg->vaddr + seg->size);
	xpmem_segment_put(seg);
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
	xpmem_segment_finish(seg);
	return 0;
}

static long xpmem_get(struct xpmem_tg *tg, struct xpmem_cmd_get __user *arg)
{
	struct xpmem_cmd_get cmd;
	struct xpmem_segment *seg;
	struct xpmem_permit *permit;
	s64 apid = 0;
	u32 id;
	int ret;

	if (copy_from_user(&cmd, arg, sizeof(cmd)))
		return -EFAULT;
	if (cmd.segid <= 0 || cmd.permit_type != XPMEM_PERMIT_MODE ||
	    (cmd.flags != XPMEM_RDONLY && cmd.flags != XPMEM_RDWR))
		return -EINVAL;
	permit = kzalloc(sizeof(*permit), GFP_KERNEL_ACCOUNT);
	if (!permit)
		return -ENOMEM;
	INIT_LIST_HEAD(&permit->attachments);
	mutex_lock(&xpmem_lock);
	seg = cmd.segid <= INT_MAX ? xa_load(&xpmem_segments, cmd.segid) : NULL;
	if (!seg) {
		ret = -ENOENT;
	} else if (!xpmem_permitted(seg, cmd.flags == XPMEM_RDONLY)) {
		ret = -EACCES;
	} else {
		permit->user = xpmem_user_charge(XPMEM_PERMITS);
		ret = PTR_ERR_OR_ZERO(permit->user);
	}
	if (!ret) {
		ret = xa_alloc_cyclic(&xpmem_permits, &id, permit, XA_LIMIT(1, INT_MAX),
				      &xpmem_next_apid, GFP_KERNEL_ACCOUNT);
		if (ret < 0) {
			xpmem_user_uncharge(permit->user, XPMEM_PERMITS);
		} else {
			ret = 0;
			kref_get(&seg->kref);
			permit->seg = seg;
			permit->holder = tg;
			permit->read_only = cmd.flags == XPMEM_RDONLY;
			permit->apid = id;
			apid = id;
			list_add(&permit->holder_link, &tg->permits);
			list_add(&permit->seg_link, &seg->permits);
			atomic_inc(&xpmem_nr_permits);
		}
	}
	mutex_unlock(&xpmem_lock);
	if (ret) {
		kfree(permit);
		return ret == -EBUSY ? -ENOSPC : ret;
	}
	return put_user(apid, &arg->apid);
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
	LIST_HEAD(taken);
	s64 apid;

	if (get_user(apid, &arg->apid))
		return -EFAULT;
	mutex_lock(&xpmem_lock);
	permit = xpmem_permit_of(tg, apid);
	if (permit)
		xpmem_permit_take(permit, &taken);
	mutex_unlock(&xpmem_lock);
	if (!permit)
		return -EINVAL;
	xpmem_permit_finish(permit, &taken, true);
	return 0;
}

/* Whether [start, end) of the caller overlaps an attachment (advisory). */
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

/* Makes the table entry of a new attachment. Under xpmem_lock. */
static int xpmem_attachment_add(struct xpmem_attachment *att, struct xpmem_permit *permit,
				u64 offset, unsigned long size)
{
	struct xpmem_segment *seg = permit->seg;

	if (seg->removed)
		return -ENOENT;
	if (offset > seg->size || size > seg->size - offset)
		return -EINVAL;
	att->user = xpmem_user_charge(XPMEM_ATTACHMENTS);
	if (IS_ERR(att->user))
		return PTR_ERR(att->user);
	att->owner = seg->owner;
	kref_get(&att->owner->kref);
	att->owner_start = seg->vaddr + offset;
	att->owner_end = att->owner_start + size;
	att->read_only = permit->read_only;
	att->permit = permit;
	list_add(&att->permit_link, &permit->attachments);
	/* Here, not later: a release may forget it as soon as xpmem_lock drops. */
	spin_lock(&att->owner->xmm->attached_lock);
	list_add(&att->owner_link, &att->owner->xmm->attached);
	spin_unlock(&att->owner->xmm->attached_lock);
	atomic_inc(&xpmem_nr_attachments);
	return 0;
}

/* Takes a failed attachment back out of the table, unless someone else did. */
static void xpmem_attachment_undo(struct xpmem_attachment *att)
{
	bool listed;

	mutex_lock(&xpmem_lock);
	listed = att->permit;
	if (listed)
		xpmem_take_attachment(att);
	mutex_unlock(&xpmem_lock);
	if (listed)
		xpmem_forget_attachment(att);
}

static long xpmem_attach(struct file *file, struct xpmem_tg *tg,
			 struct xpmem_cmd_attach __user *arg)
{
	struct xpmem_cmd_attach cmd;
	struct mmu_notifier *notifier;
	struct xpmem_permit *permit;
	struct xpmem_attachment *att;
	unsigned long address, size;
	int ret;

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
	att = kzalloc(sizeof(*att), GFP_KERNEL_ACCOUNT);
	if (!att)
		return -ENOMEM;
	notifier = mmu_notifier_get(&xpmem_notifier_ops, current->mm);	/* tg->xmm's */
	if (IS_ERR(notifier)) {
		kfree(att);
		return PTR_ERR(notifier);
	}
	att->holder_xmm = xpmem_mm_of(notifier);
	kref_init(&att->kref);
	INIT_LIST_HEAD(&att->permit_link);
	INIT_LIST_HEAD(&att->owner_link);

	mutex_lock(&xpmem_lock);
	permit = xpmem_permit_of(tg, cmd.apid);
	ret = permit ? xpmem_attachment_add(att, permit, cmd.offset, size) : -EINVAL;
	if (!ret)
		kref_get(&att->kref);	/* ours: a release may forget it any time now */
	mutex_unlock(&xpmem_lock);
	if (ret) {
		mmu_notifier_put(notifier);
		kfree(att);
		return ret;
	}

	mutex_lock(&tg->attach_lock);
	tg->pending = att;
	tg->pending_task = current;
	address = vm_mmap(file, cmd.vaddr, size,
			  PROT_READ | (att->read_only ? 0 : PROT_WRITE),
			  MAP_SHARED | (cmd.vaddr ? MAP_FIXED : 0), att->owner_start);
	tg->pending = NULL;
	tg->pending_task = NULL;
	mutex_unlock(&tg->attach_lock);
	if (IS_ERR_VALUE(address)) {
		xpmem_attachment_undo(att);
		ret = (long)address;
	} else if (READ_ONCE(att->revoked)) {
		/* Revoked while being mapped (a release or removal meanwhile): undo. */
		vm_munmap(address, size);
		xpmem_attachment_undo(att);
		ret = -ENOENT;
	} else {
		/* The VMA holds a reference now; the table's goes at detach or release. */
		ret = put_user((u64)address, &arg->vaddr);
	}
	xpmem_attachment_put(att);
	return ret;
}

static long xpmem_detach(struct xpmem_tg *tg, struct xpmem_cmd_detach __user *arg)
{
	struct mm_struct *mm = current->mm;
	struct xpmem_attachment *att;
	struct vm_area_struct *vma;
	bool listed;
	u64 address;
	int ret;

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

	mutex_lock(&xpmem_lock);
	listed = att->permit;
	if (listed)
		xpmem_take_attachment(att);
	mutex_unlock(&xpmem_lock);
	if (listed)
		xpmem_revoke_range(att->owner->xmm, att->owner_start, att->owner_end);
	ret = xpmem_unmap_attachment(att);
	if (listed)
		xpmem_forget_attachment(att);
	xpmem_attachment_put(att);
	return ret;
}

static long xpmem_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct xpmem_tg *tg = file->private_data;
	void __user *argp = (void __user *)arg;

	/* A fork child, an exec()ed image or another process: it must open afresh. */
	if (!xpmem_is_opener(tg))
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

static const struct file_operations xpmem_owner_fops = {
	.owner = THIS_MODULE,
};

/* The pseudo file whose address_space holds the attachments of an mm's memory. */
static struct file *xpmem_attachments_file(void)
{
	struct inode *inode;
	struct file *file;

	inode = alloc_anon_inode(xpmem_mnt->mnt_sb);
	if (IS_ERR(inode))
		return ERR_CAST(inode);
	__module_get(THIS_MODULE);	/* put by the file's last fput() */
	file = alloc_file_pseudo(inode, xpmem_mnt, "xpmem", O_RDWR, &xpmem_owner_fops);
	if (IS_ERR(file)) {
		module_put(THIS_MODULE);
		iput(inode);
	}
	return file;
}

static int xpmem_open(struct inode *inode, struct file *file)
{
	struct mmu_notifier *notifier;
	struct xpmem_tg *tg;

	if (!current->mm)
		return -EINVAL;
	tg = kzalloc(sizeof(*tg), GFP_KERNEL_ACCOUNT);
	if (!tg)
		return -ENOMEM;
	/* The mm's first open registers; later ones share its notifier. */
	notifier = mmu_notifier_get(&xpmem_notifier_ops, current->mm);
	if (IS_ERR(notifier)) {
		kfree(tg);
		return PTR_ERR(notifier);
	}
	tg->xmm = xpmem_mm_of(notifier);
	kref_init(&tg->kref);
	tg->tgid = current->tgid;
	tg->mm = current->mm;
	mmgrab(tg->mm);
	mutex_init(&tg->attach_lock);
	INIT_LIST_HEAD(&tg->segments);
	INIT_LIST_HEAD(&tg->permits);
	file->private_data = tg;
	atomic_inc(&xpmem_nr_tgs);
	return 0;
}

/* Releases every permit @tg holds; their attachments fault SIGBUS from now on. */
static void xpmem_release_all(struct xpmem_tg *tg)
{
	struct xpmem_permit *permit;

	do {
		LIST_HEAD(taken);

		mutex_lock(&xpmem_lock);
		permit = list_first_entry_or_null(&tg->permits, struct xpmem_permit,
						  holder_link);
		if (permit)
			xpmem_permit_take(permit, &taken);
		mutex_unlock(&xpmem_lock);
		if (permit)
			xpmem_permit_finish(permit, &taken, false);
	} while (permit);
}

/* The last reference to the open file: the process is done with XPMEM. */
static int xpmem_release_file(struct inode *inode, struct file *file)
{
	struct xpmem_tg *tg = file->private_data;
	struct xpmem_segment *seg, *next;
	LIST_HEAD(removed);

	mutex_lock(&xpmem_lock);
	list_for_each_entry_safe(seg, next, &tg->segments, owner_link) {
		xpmem_segment_remove(seg);
		list_add(&seg->owner_link, &removed);
	}
	mutex_unlock(&xpmem_lock);
	/* No fault maps our pages through our segments from here on. */
	mutex_lock(&tg->xmm->fault_lock);
	tg->dead = true;
	mutex_unlock(&tg->xmm->fault_lock);
	xpmem_zap(tg->xmm, 0, TASK_SIZE_MAX);
	list_for_each_entry_safe(seg, next, &removed, owner_link) {
		list_del_init(&seg->owner_link);
		xpmem_segment_put(seg);	/* the table's */
	}
	xpmem_release_all(tg);
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

/*
 * No .owner: the internal mount lives from init to exit and would pin the
 * module for good. The files on it pin the module instead (xpmem_owner_fops).
 */
static struct file_system_type xpmem_fs_type = {
	.name = "xpmem",
	.init_fs_context = xpmem_init_fs_context,
	.kill_sb = kill_anon_super,
};

static int __init xpmem_init(void)
{
	int ret;

	/* Reclaim can invalidate an owner and wait for its zap: a rescuer is needed. */
	xpmem_zap_wq = alloc_workqueue("xpmem_zap", WQ_UNBOUND | WQ_MEM_RECLAIM, 0);
	if (!xpmem_zap_wq)
		return -ENOMEM;
	xpmem_mnt = kern_mount(&xpmem_fs_type);
	if (IS_ERR(xpmem_mnt)) {
		ret = PTR_ERR(xpmem_mnt);
		goto destroy_wq;
	}
	ret = misc_register(&xpmem_device);
	if (ret)
		goto unmount;
	xpmem_debugfs = debugfs_create_dir("xpmem", NULL);
	debugfs_create_file("counters", 0444, xpmem_debugfs, NULL, &xpmem_counters_fops);
	return 0;

unmount:
	kern_unmount(xpmem_mnt);
destroy_wq:
	destroy_workqueue(xpmem_zap_wq);
	return ret;
}

static void __exit xpmem_exit(void)
{
	debugfs_remove(xpmem_debugfs);
	misc_deregister(&xpmem_device);
	mmu_notifier_synchronize();	/* notifiers put last run xpmem_mm_free() */
	kern_unmount(xpmem_mnt);
	destroy_workqueue(xpmem_zap_wq);
}

module_init(xpmem_init);
module_exit(xpmem_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Cross-process memory mapping (XPMEM) with the classic ABI");
