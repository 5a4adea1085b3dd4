/* Tries, from inside an instance, the system calls Tessera's seccomp
 * profile and user namespace must refuse; prints one line per call:
 * `name errno` (0: it succeeded). Built static by the isolation tests. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static char stack[65536] __attribute__((aligned(16)));
static int child(void *arg) { (void)arg; return 0; }

static void report(const char *name, long r) {
    printf("%s %d\n", name, r < 0 ? errno : 0);
}

int main(void) {
    char buf[64] = {0};
    setvbuf(stdout, NULL, _IONBF, 0);
    /* Never on the host itself: some of these would succeed there. */
    FILE *map = fopen("/proc/self/uid_map", "r");
    unsigned inside = 0, outside = 0;
    if (!map || fscanf(map, "%u %u", &inside, &outside) != 2 || outside == 0) {
        fprintf(stderr, "not inside an instance's user namespace; refusing to probe\n");
        return 2;
    }
    int fd = open("/proc/sys/kernel/core_pattern", O_WRONLY);
    report("write_core_pattern", fd < 0 ? fd : write(fd, "|/tmp/x", 7));
    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0));
    report("add_key", syscall(SYS_add_key, "user", "tessera", "x", 1, -3));
    report("bpf", syscall(SYS_bpf, 5 /* BPF_PROG_LOAD */, buf, sizeof buf));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    report("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, buf, O_RDONLY));
    report("init_module", syscall(SYS_init_module, buf, sizeof buf, ""));
    report("finit_module", syscall(SYS_finit_module, 0, "", 0));
    report("unshare_user", unshare(CLONE_NEWUSER));
    report("unshare_mount", unshare(CLONE_NEWNS));
    long pid = clone(child, stack + sizeof stack, CLONE_NEWUSER | SIGCHLD, NULL);
    if (pid > 0) waitpid(pid, NULL, 0);
    report("clone_newuser", pid);
    report("clone3", syscall(SYS_clone3, NULL, 0));
    report("mount_tmpfs", mount("none", "/tmp", "tmpfs", 0, NULL));
    report("mknod_disk", mknod("/tmp/tessera-sda", S_IFBLK | 0600, makedev(8, 0)));
    report("perf_event_open", syscall(SYS_perf_event_open, buf, 0, -1, -1, 0));
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, buf));
    /* The loop device's requests, refused before the descriptor is looked
     * at (EPERM, not EBADF), with the high 32 bits set too. */
    report("loop_clr_fd", syscall(SYS_ioctl, -1, 0x4C01UL));
    report("loop_clr_fd_high_bits", syscall(SYS_ioctl, -1, 0xFFFFFFFF00004C01UL));
    report("loop_get_status64", syscall(SYS_ioctl, -1, 0x4C05UL));
    report("loop_ctl_get_free", syscall(SYS_ioctl, -1, 0x4C82UL));
    /* Still allowed: other requests (EBADF on no descriptor), an ordinary fork. */
    report("ioctl_tcgets", syscall(SYS_ioctl, -1, 0x5401UL));
    pid = fork();
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    report("fork", pid);
    return 0;
}
