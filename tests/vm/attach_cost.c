/*
 * Attach + first touch of 1 GiB through the kernel backend, with the module's
 * multi-page faults (fault_pages=16) and one page per fault as the classic
 * module does (fault_pages=1), next to the floor for building page tables:
 * mmap(MAP_POPULATE) of a 1 GiB memfd in one process. Runs as root in the
 * test guest:
 *   cmake --build build-vm/static  # or let tests/vm/run.sh build it once
 *   gcc -static -O2 -o /tmp/attach_cost tests/vm/attach_cost.c -Iinclude \
 *       build-vm/static/src/libxpmem.a -lstdc++ -lpthread
 *   XPMEM_VM_DEBUG=/tmp/attach_cost tests/vm/run.sh None
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xpmem.h>
#define SIZE (1UL << 30)
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void set_fault_pages(int n) { FILE *f = fopen("/sys/module/xpmem/parameters/fault_pages", "w"); fprintf(f, "%d\n", n); fclose(f); }
int main(void) {
	char *mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	xpmem_segid_t segid = xpmem_make(mem, SIZE, XPMEM_PERMIT_MODE, (void *)0600);
	int windows[] = {16, 1, 16, 1};
	for (int i = 0; i < 4; i++) {
		set_fault_pages(windows[i]);
		pid_t child = fork();
		if (child == 0) {
			xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
			struct xpmem_addr addr = { apid, 0 };
			double t0 = now();
			volatile char *view = xpmem_attach(addr, SIZE, NULL);
			unsigned long sum = 0;
			for (unsigned long off = 0; off < SIZE; off += 4096) sum += view[off];
			double t1 = now();
			printf("attach1g: fault_pages %2d: attach + first touch of 1 GiB: %.0f ms (sum %lu)\n", windows[i], (t1 - t0) * 1e3, sum);
			fflush(stdout);
			_exit(0);
		}
		waitpid(child, NULL, 0);
	}
	int fd = memfd_create("floor", 0);
	ftruncate(fd, SIZE);
	char *warm = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	munmap(warm, SIZE);  /* the pages exist now, as the owner's do */
	for (int i = 0; i < 2; i++) {
		double t0 = now();
		char *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
		double t1 = now();
		printf("attach1g: floor: mmap(MAP_POPULATE) of a 1 GiB memfd: %.0f ms\n", (t1 - t0) * 1e3);
		fflush(stdout);
		munmap(p, SIZE);
	}
	return 0;
}
