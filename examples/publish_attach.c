/*
 * Two processes share one buffer through XPMEM: the C API, as classic clients use it.
 *
 *   xpmem-example-c                 publishes a buffer, starts `xpmem-example-c attach
 *                                   SEGID`, and prints what the other process wrote into it
 *   xpmem-example-c attach SEGID    attaches the segment, reads it, writes a reply
 *
 * The second process is started with posix_spawnp (this program again), so the two are
 * unrelated except for the segment id passed on the command line: that is all XPMEM needs.
 */
#define _POSIX_C_SOURCE 200809L
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xpmem.h>

extern char **environ;

#define SIZE (1 << 20)

static int publish(const char *self)
{
	/* Any page-aligned private memory can be published; here, one MiB from the heap. */
	char *buffer;
	if (posix_memalign((void **)&buffer, 4096, SIZE) != 0) {
		fprintf(stderr, "out of memory\n");
		return 1;
	}
	snprintf(buffer, SIZE, "hello from the publisher, pid %d", (int)getpid());

	/* XPMEM_PERMIT_MODE: the permit value is a pointer to the mode bits. */
	xpmem_segid_t segid = xpmem_make(buffer, SIZE, XPMEM_PERMIT_MODE, (void *)0600);
	if (segid == -1) {
		perror("xpmem_make");
		return 1;
	}
	printf("publisher: segment %lld, buffer says \"%s\"\n", (long long)segid, buffer);
	fflush(stdout);

	char id[32];
	snprintf(id, sizeof id, "%lld", (long long)segid);
	char *argv[] = {(char *)self, "attach", id, NULL};
	pid_t child;
	int error = posix_spawnp(&child, self, NULL, NULL, argv, environ);
	if (error != 0) {
		fprintf(stderr, "posix_spawn: %s\n", strerror(error));
		return 1;
	}
	int status = 0;
	waitpid(child, &status, 0);
	/* The attacher's store landed in our own buffer: no copy, no message. */
	printf("publisher: buffer now says \"%s\"\n", buffer);
	if (xpmem_remove(segid) != 0)
		perror("xpmem_remove");
	free(buffer);
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

static int attach(const char *text)
{
	xpmem_segid_t segid = strtoll(text, NULL, 10);
	xpmem_apid_t apid = xpmem_get(segid, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
	if (apid == -1) {
		perror("xpmem_get");
		return 1;
	}
	struct xpmem_addr addr = {.apid = apid, .offset = 0};
	char *view = xpmem_attach(addr, SIZE, NULL);
	if (view == (void *)-1) {
		perror("xpmem_attach");
		xpmem_release(apid);
		return 1;
	}
	printf("attacher:  pid %d read \"%s\"\n", (int)getpid(), view);
	snprintf(view, SIZE, "hello back from the attacher, pid %d", (int)getpid());
	xpmem_detach(view);
	xpmem_release(apid);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "attach") == 0)
		return attach(argv[2]);
	if (argc == 1)
		return publish(argv[0]);
	fprintf(stderr, "usage: %s [attach SEGID]\n", argv[0]);
	return 2;
}
