/*
 * Helpers for the test guest, where only busybox exists:
 *   guest_tool exit CODE          reports CODE to the host through QEMU's
 *                                 isa-debug-exit port (QEMU exits 2*CODE+1)
 *   guest_tool run-as UID CMD...  runs CMD as UID (and gid UID), no groups
 */
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "exit") == 0) {
		if (ioperm(0xf4, 4, 1) != 0) {
			perror("ioperm");
			return 1;
		}
		outl((unsigned int)atoi(argv[2]), 0xf4);
		return 1; /* not reached when QEMU has the device */
	}
	if (argc >= 4 && strcmp(argv[1], "run-as") == 0) {
		uid_t id = (uid_t)atoi(argv[2]);

		if (setgroups(0, NULL) || setresgid(id, id, id) || setresuid(id, id, id)) {
			perror("run-as");
			return 1;
		}
		execv(argv[3], argv + 3);
		perror("execv");
		return 127;
	}
	fprintf(stderr, "usage: %s exit CODE | run-as UID CMD...\n", argv[0]);
	return 2;
}
