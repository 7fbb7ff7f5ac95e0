/*
 * Attach + first touch of 1 GiB through the kernel backend, next to the floor
 * for building page tables: mmap(MAP_POPULATE) of a 1 GiB memfd in one
 * process. Runs as root in the test guest (see tests/vm/run.sh):
 *
 *   attach_cost
 *	the module's multi-page faults (fault_pages=16) against one page per
 *	fault as the classic module does (fault_pages=1);
 *   attach_cost --compare /xpmem-baseline.ko [ROUNDS]
 *	the loaded module (/xpmem.ko) against another build of it, loaded in
 *	turn, ROUNDS times (3), with the ratio of every round.
 *
 * Build: gcc -static -O2 -o /tmp/attach_cost tests/vm/attach_cost.c -Iinclude \
 *	build-vm/static/src/libxpmem.a -lstdc++ -lpthread
 * Only the children use libxpmem, so each opens the module loaded at the time.
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
#define MAX_ROUNDS 16

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void set_fault_pages(int n)
{
	FILE *f = fopen("/sys/module/xpmem/parameters/fault_pages", "w");

	if (f) {
		fprintf(f, "%d\n", n);
		fclose(f);
	}
}

static int load_module(const char *path)
{
	char command[256];

	/* The module's last references drop asynchronously after its users exit. */
	snprintf(command, sizeof(command),
		 "for i in 1 2 3 4 5 6 7 8 9 10; do rmmod xpmem 2>/dev/null && break; sleep 1; done; "
		 "insmod %s", path);
	return system(command);
}

/* Milliseconds one attacher takes to attach and read every page of the owner's 1 GiB. */
static double attach_and_touch(xpmem_segid_t segid)
{
	int pipe_fds[2];
	double ms = -1;
	pid_t child;

	if (pipe(pipe_fds))
		return -1;
	child = fork();
	if (child == 0) {
		xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
		struct xpmem_addr addr = { apid, 0 };
		double t0 = now(), elapsed;
		volatile char *view = xpmem_attach(addr, SIZE, NULL);

		if (view == (void *)-1)
			_exit(1);
		for (unsigned long off = 0; off < SIZE; off += 4096)
			(void)view[off];
		elapsed = (now() - t0) * 1e3;
		if (write(pipe_fds[1], &elapsed, sizeof(elapsed)) != sizeof(elapsed))
			_exit(1);
		_exit(0);
	}
	if (read(pipe_fds[0], &ms, sizeof(ms)) != sizeof(ms))
		ms = -1;
	waitpid(child, NULL, 0);
	close(pipe_fds[0]);
	close(pipe_fds[1]);
	return ms;
}

/* An owner of 1 GiB of populated memory, measured by an attacher with each window. */
static void measure(const int *windows, int count, double *ms)
{
	int pipe_fds[2];
	pid_t owner;

	if (pipe(pipe_fds))
		exit(1);
	owner = fork();
	if (owner == 0) {
		char *mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		xpmem_segid_t segid = xpmem_make(mem, SIZE, XPMEM_PERMIT_MODE, (void *)0600);

		for (int i = 0; i < count; i++) {
			double one;

			set_fault_pages(windows[i]);
			one = segid > 0 ? attach_and_touch(segid) : -1;
			if (write(pipe_fds[1], &one, sizeof(one)) != sizeof(one))
				_exit(1);
		}
		_exit(0);
	}
	for (int i = 0; i < count; i++)
		if (read(pipe_fds[0], &ms[i], sizeof(ms[i])) != sizeof(ms[i]))
			ms[i] = -1;
	waitpid(owner, NULL, 0);
	close(pipe_fds[0]);
	close(pipe_fds[1]);
}

static void floor_cost(void)
{
	int fd = memfd_create("floor", 0);
	char *warm;

	if (fd < 0 || ftruncate(fd, SIZE))
		return;
	warm = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	munmap(warm, SIZE);	/* the pages exist now, as the owner's do */
	for (int i = 0; i < 2; i++) {
		double t0 = now();
		char *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);

		printf("attach1g: floor: mmap(MAP_POPULATE) of a 1 GiB memfd: %.0f ms\n",
		       (now() - t0) * 1e3);
		fflush(stdout);
		munmap(p, SIZE);
	}
	close(fd);
}

static int compare_doubles(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* The loaded module against @baseline, taking turns. */
static int compare(const char *baseline, int rounds)
{
	const int window = 16;
	double ratios[MAX_ROUNDS];

	for (int round = 0; round < rounds; round++) {
		double base, current;

		if (load_module(baseline))
			return 1;
		measure(&window, 1, &base);
		if (load_module("/xpmem.ko"))
			return 1;
		measure(&window, 1, &current);
		ratios[round] = current / base;
		printf("attach1g: round %d: baseline %.0f ms, this module %.0f ms, ratio %.2f\n",
		       round + 1, base, current, ratios[round]);
		fflush(stdout);
	}
	qsort(ratios, rounds, sizeof(ratios[0]), compare_doubles);
	printf("attach1g: this module / baseline, median of %d rounds: %.2f\n", rounds,
	       ratios[rounds / 2]);
	floor_cost();
	return 0;
}

int main(int argc, char **argv)
{
	const int windows[] = { 16, 1, 16, 1 };
	double ms[4];

	if (argc >= 3 && strcmp(argv[1], "--compare") == 0) {
		int rounds = argc >= 4 ? atoi(argv[3]) : 3;

		return compare(argv[2], rounds < 1 || rounds > MAX_ROUNDS ? 3 : rounds);
	}
	measure(windows, 4, ms);
	for (int i = 0; i < 4; i++)
		printf("attach1g: fault_pages %2d: attach + first touch of 1 GiB: %.0f ms\n",
		       windows[i], ms[i]);
	floor_cost();
	return 0;
}
