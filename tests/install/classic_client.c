/*
 * A client written against the classic libxpmem, the way UCX, Open MPI and MPICH use it:
 * probe with xpmem_version(), publish the whole address space, get, attach, detach,
 * release, remove. Built as C against the installed header and -lxpmem only.
 */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <xpmem.h>

int main(void)
{
	static char buffer[4096] __attribute__((aligned(4096))) = "classic";
	xpmem_segid_t segid;
	xpmem_apid_t apid;
	struct xpmem_addr addr;
	char *view;

	if (xpmem_version() < 0 || xpmem_init() != 0)
		return 1;
	segid = xpmem_make(0, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE, (void *)0600);
	if (segid <= 0)
		return 2;
	apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
	if (apid <= 0)
		return 3;
	addr.apid = apid;
	addr.offset = (off_t)(unsigned long)buffer;
	view = xpmem_attach(addr, sizeof(buffer), NULL);
	if (view == (void *)-1 || strcmp(view, "classic") != 0)
		return 4;
	view[0] = 'C';
	if (buffer[0] != 'C')
		return 5;
	if (xpmem_detach(view) || xpmem_release(apid) || xpmem_remove(segid))
		return 6;
	/* As classic clients print ids: the types are long long, as in the classic header. */
	printf("classic client: segment %llx, permit %llx: ok\n", segid, apid);
	return 0;
}
