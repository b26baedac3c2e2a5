/*
 * vsock_echo: the test program for Kiln's virtio-vsock, on both sides of the device.
 * Busybox's nc has no AF_VSOCK, and the host side speaks Firecracker's Unix-socket
 * protocol ("CONNECT <port>\n" -> "OK <port>\n"), so both ends are this one static program.
 *
 *   vsock_echo listen PORT N            guest: accept N vsock connections, echo each to EOF
 *   vsock_echo connect CID PORT BYTES   guest: connect to CID:PORT, pump BYTES, check the echo
 *   vsock_echo uds-listen PATH N        host: accept N Unix connections on PATH, echo each
 *   vsock_echo uds-connect PATH PORT BYTES
 *                                       host: connect to Kiln's socket PATH, CONNECT PORT,
 *                                       pump BYTES through, check the echo
 *   vsock_echo local-cid                guest: print "vsock-cid N", the guest's own CID
 *
 * "Pump" sends a deterministic byte pattern and reads the echo back at the same time
 * (poll), so neither side's flow control can deadlock it, and checks every byte. Prints
 * one result line: "vsock-ok MODE bytes=N" or "vsock-fail MODE: why"; exits 0 or 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static const char *mode = "?";

static int fail(const char *what)
{
    printf("vsock-fail %s: %s (%s)\n", mode, what, errno ? strerror(errno) : "-");
    fflush(stdout);
    return 1;
}

static unsigned char pattern(uint64_t i)
{
    return (unsigned char)((i * 2654435761u) >> 13);
}

static int echo(int fd)
{
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, n - off);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                return -1;
            }
            off += w;
        }
    }
    close(fd);
    return 0;
}

static int serve(int lfd, long count)
{
    printf("vsock-listening %s\n", mode);
    fflush(stdout);
    for (long i = 0; i < count; i++) {
        int c = accept(lfd, NULL, NULL);
        if (c < 0)
            return fail("accept");
        if (echo(c) < 0)
            return fail("echo");
    }
    printf("vsock-ok %s connections=%ld\n", mode, count);
    return 0;
}

static int pump(int fd, uint64_t total)
{
    char out[16384], in[16384];
    uint64_t sent = 0, got = 0;
    int wr_open = 1;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    while (got < total) {
        struct pollfd p = { .fd = fd, .events = POLLIN | (wr_open && sent < total ? POLLOUT : 0) };
        if (poll(&p, 1, 30000) <= 0)
            return fail("timed out waiting for the echo");
        if ((p.revents & POLLOUT) && sent < total) {
            size_t n = total - sent < sizeof out ? total - sent : sizeof out;
            for (size_t i = 0; i < n; i++)
                out[i] = pattern(sent + i);
            ssize_t w = write(fd, out, n);
            if (w < 0 && errno != EAGAIN && errno != EINTR)
                return fail("write");
            if (w > 0)
                sent += w;
            if (sent == total) {
                shutdown(fd, SHUT_WR);
                wr_open = 0;
            }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(fd, in, sizeof in);
            if (r == 0)
                return fail("early end of the echo");
            if (r < 0 && errno != EAGAIN && errno != EINTR)
                return fail("read");
            for (ssize_t i = 0; i < r; i++)
                if ((unsigned char)in[i] != pattern(got + i)) {
                    errno = 0;
                    return fail("echoed bytes differ");
                }
            if (r > 0)
                got += r;
        }
    }
    close(fd);
    printf("vsock-ok %s bytes=%llu\n", mode, (unsigned long long)got);
    return 0;
}

static int unix_addr(struct sockaddr_un *a, const char *path)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a->sun_path)
        return -1;
    strcpy(a->sun_path, path);
    return 0;
}

/* Read Kiln's "OK <port>\n" answer one byte at a time (nothing after it is consumed). */
static int read_ok(int fd)
{
    char line[64];
    size_t n = 0;
    while (n + 1 < sizeof line) {
        ssize_t r = read(fd, line + n, 1);
        if (r <= 0)
            return fail("no answer to CONNECT");
        if (line[n++] == '\n')
            break;
    }
    line[n] = 0;
    if (strncmp(line, "OK ", 3) != 0) {
        errno = 0;
        return fail("CONNECT was not answered with OK");
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        goto usage;
    mode = argv[1];
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(mode, "local-cid") && argc == 2) {
        unsigned int cid = 0;
        int fd = open("/dev/vsock", O_RDONLY);
        if (fd < 0 || ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid))
            return fail("/dev/vsock");
        printf("vsock-cid %u\n", cid);
        return 0;
    }
    if (!strcmp(mode, "listen") && argc == 4) {
        int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
        struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                                 .svm_port = (unsigned)atol(argv[2]) };
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 8))
            return fail("vsock listen");
        return serve(fd, atol(argv[3]));
    }
    if (!strcmp(mode, "connect") && argc == 5) {
        int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
        struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = (unsigned)atol(argv[2]),
                                 .svm_port = (unsigned)atol(argv[3]) };
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a))
            return fail("vsock connect");
        return pump(fd, strtoull(argv[4], NULL, 0));
    }
    if (!strcmp(mode, "uds-listen") && argc == 4) {
        struct sockaddr_un a;
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        unlink(argv[2]);
        if (fd < 0 || unix_addr(&a, argv[2]) || bind(fd, (struct sockaddr *)&a, sizeof a) ||
            listen(fd, 8))
            return fail("unix listen");
        return serve(fd, atol(argv[3]));
    }
    if (!strcmp(mode, "uds-connect") && argc == 5) {
        struct sockaddr_un a;
        char req[64];
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0 || unix_addr(&a, argv[2]) || connect(fd, (struct sockaddr *)&a, sizeof a))
            return fail("unix connect");
        int n = snprintf(req, sizeof req, "CONNECT %s\n", argv[3]);
        if (write(fd, req, n) != n)
            return fail("write CONNECT");
        if (read_ok(fd))
            return 1;
        return pump(fd, strtoull(argv[4], NULL, 0));
    }
usage:
    fprintf(stderr, "usage: vsock_echo listen PORT N | connect CID PORT BYTES | "
                    "uds-listen PATH N | uds-connect PATH PORT BYTES | local-cid\n");
    return 2;
}
