// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * Exec target for the argv tests: writes what the kernel gave this
 * program as its argv, /proc/self/cmdline read by the program itself, to
 * $VIGIL_CMDLINE_DIR/<pid>, so a test can compare it with what the exec
 * sensor recorded for that pid.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(void)
{
	static char buf[1 << 20];
	const char *dir = getenv("VIGIL_CMDLINE_DIR");
	char path[4096], tmp[4096];
	ssize_t n, len = 0;
	int fd;

	if (!dir)
		return 2;
	fd = open("/proc/self/cmdline", O_RDONLY);
	if (fd < 0)
		return 3;
	while ((n = read(fd, buf + len, sizeof(buf) - len)) > 0)
		len += n;
	close(fd);
	/* write then rename: the test never reads a half-written file */
	snprintf(path, sizeof(path), "%s/%d", dir, (int)getpid());
	snprintf(tmp, sizeof(tmp), "%s/.%d", dir, (int)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, buf, len) != len || close(fd))
		return 4;
	return rename(tmp, path) ? 5 : 0;
}
