/*
 * io_bench: the guest side of `cargo xtask bench io`'s 4 KiB random reads and TCP upload,
 * and the L1 side of the upload. Busybox has neither O_DIRECT random reads nor a timed
 * TCP sender, so this small static program does both, the same way for every VMM.
 *
 *   io_bench randread DEV COUNT        COUNT 4 KiB reads (O_DIRECT, queue depth 1) at
 *                                      pseudo-random 4 KiB-aligned offsets of DEV
 *   io_bench tcp-send ADDR PORT BYTES  send BYTES to ADDR:PORT, wait for the receiver to
 *                                      close (it has everything), report the time
 *   io_bench tcp-recv PORT             accept one connection, count its bytes, close
 *
 * Result lines: "KILN-RAND reads=N seconds=S", "KILN-TCP bytes=N seconds=S",
 * "KILN-TCP-RECV bytes=N". Times come from CLOCK_MONOTONIC. Exit 0 or 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int fail(const char *what)
{
    printf("KILN-FAIL %s: %s\n", what, strerror(errno));
    return 1;
}

static int randread(const char *dev, long count)
{
    int fd = open(dev, O_RDONLY | O_DIRECT);
    uint64_t size = 0;
    void *buf;
    if (fd < 0 || ioctl(fd, BLKGETSIZE64, &size) || size < 4096)
        return fail("open the disk");
    if (posix_memalign(&buf, 4096, 4096))
        return fail("allocate");
    uint64_t blocks = size / 4096, x = 0x9e3779b97f4a7c15ull;
    double t0 = now();
    for (long i = 0; i < count; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (pread(fd, buf, 4096, (off_t)(x % blocks) * 4096) != 4096)
            return fail("pread");
    }
    printf("KILN-RAND reads=%ld seconds=%.6f\n", count, now() - t0);
    return 0;
}

static int tcp_send(const char *addr, int port, uint64_t total)
{
    static char buf[65536];
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || inet_pton(AF_INET, addr, &a.sin_addr) != 1)
        return fail("socket");
    for (int tries = 0; connect(fd, (struct sockaddr *)&a, sizeof a); tries++) {
        if (tries == 100)
            return fail("connect");
        usleep(50000);
        close(fd);
        fd = socket(AF_INET, SOCK_STREAM, 0);
    }
    double t0 = now();
    for (uint64_t sent = 0; sent < total;) {
        size_t n = total - sent < sizeof buf ? total - sent : sizeof buf;
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno != EINTR)
            return fail("write");
        if (w > 0)
            sent += w;
    }
    shutdown(fd, SHUT_WR);
    while (read(fd, buf, sizeof buf) > 0)
        ;
    printf("KILN-TCP bytes=%llu seconds=%.6f\n", (unsigned long long)total, now() - t0);
    return 0;
}

static int tcp_recv(int port)
{
    static char buf[65536];
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 1))
        return fail("listen");
    int c = accept(fd, NULL, NULL);
    if (c < 0)
        return fail("accept");
    uint64_t got = 0;
    ssize_t r;
    while ((r = read(c, buf, sizeof buf)) != 0) {
        if (r < 0 && errno != EINTR)
            return fail("read");
        if (r > 0)
            got += r;
    }
    close(c);
    printf("KILN-TCP-RECV bytes=%llu\n", (unsigned long long)got);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && !strcmp(argv[1], "randread"))
        return randread(argv[2], atol(argv[3]));
    if (argc == 5 && !strcmp(argv[1], "tcp-send"))
        return tcp_send(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 0));
    if (argc == 3 && !strcmp(argv[1], "tcp-recv"))
        return tcp_recv(atoi(argv[2]));
    fprintf(stderr, "usage: io_bench randread DEV COUNT | tcp-send ADDR PORT BYTES | tcp-recv PORT\n");
    return 2;
}
