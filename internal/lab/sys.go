package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 (and this package) keeps named network namespaces.
const netnsDir = "/run/netns"

// bpffsMount is where bpffs is mounted when it is not mounted yet.
const bpffsMount = "/sys/fs/bpf"

// hostIfName derives the host-side veth name of a pod: "pcl" and 12 hex digits of a hash of
// "namespace/name", 15 characters (IFNAMSIZ-1), as Calico derives "cali…" names.
func hostIfName(ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return "pcl" + hex.EncodeToString(sum[:])[:12]
}

// inNetns runs fn on the calling goroutine's OS thread switched into the network namespace at path, and
// switches the thread back afterwards. If switching back fails the thread stays locked, so that the Go
// runtime discards it when the goroutine ends instead of reusing a thread in a foreign namespace.
func inNetns(path string, fn func() error) (err error) {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := os.Open(path)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	defer func() {
		if rerr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); rerr != nil {
			// Leave the thread locked: it dies with the goroutine.
			err = errors.Join(err, fmt.Errorf("return to the original network namespace: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// writeSysctls writes sysctls (keys relative to /proc/sys, with slashes) inside the namespace at nsPath.
func writeSysctls(nsPath string, kv [][2]string) error {
	return inNetns(nsPath, func() error {
		for _, e := range kv {
			if err := os.WriteFile(filepath.Join("/proc/sys", e[0]), []byte(e[1]), 0); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", e[0], e[1], err)
			}
		}
		return nil
	})
}

// ipBatch runs iproute2 commands, one per line, in the named network namespace ("" for the current one).
func ipBatch(ctx context.Context, netns string, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	args := []string{"-batch", "-"}
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		where := netns
		if where == "" {
			where = "the root namespace"
		}
		return fmt.Errorf("ip in %s: %w: %s", where, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// deleteNetns removes a named network namespace as `ip netns del` does: detach the bind mount that keeps
// it alive, then remove the file. A missing namespace is not an error.
func deleteNetns(name string) error {
	path := filepath.Join(netnsDir, name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount network namespace %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove network namespace %s: %w", name, err)
	}
	return nil
}

// netnsInode returns the inode of a network namespace file, as /proc/PID/ns/net names it ("net:[N]").
func netnsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// pidsInNetns lists the processes whose network namespace has one of the given inodes.
func pidsInNetns(inodes map[uint64]bool) []int {
	if len(inodes) == 0 {
		return nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			continue
		}
		var ino uint64
		if _, err := fmt.Sscanf(link, "net:[%d]", &ino); err == nil && inodes[ino] {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cgroup2Root finds the mount point of the cgroup v2 hierarchy: /sys/fs/cgroup on a unified system,
// /sys/fs/cgroup/unified on a hybrid one.
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	var found []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 {
			continue
		}
		if fields[sep+1] == "cgroup2" {
			found = append(found, fields[4])
		}
	}
	if len(found) == 0 {
		return "", errors.New("no cgroup v2 hierarchy is mounted")
	}
	if slices.Contains(found, "/sys/fs/cgroup") {
		return "/sys/fs/cgroup", nil
	}
	return found[0], nil
}

// ensureBPFFS mounts bpffs at /sys/fs/bpf unless it is mounted there already.
func ensureBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs(bpffsMount, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(bpffsMount, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", bpffsMount, err)
	}
	if err := unix.Mount("bpf", bpffsMount, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", bpffsMount, err)
	}
	return nil
}

// cgroupPIDs reads the processes of one cgroup.
func cgroupPIDs(dir string) ([]int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range bytes.Fields(data) {
		if pid, err := strconv.Atoi(string(f)); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// cgroupDirs lists dir and every cgroup below it, deepest first.
func cgroupDirs(dir string) []string {
	var dirs []string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	slices.Reverse(dirs)
	return dirs
}

// killCgroupTree sends SIGKILL, by PID, to every process in dir's cgroup tree (never the caller), waits
// until the tree is empty, and removes the cgroups, deepest first. A missing dir is not an error.
func killCgroupTree(dir string, timeout time.Duration) error {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	self := os.Getpid()
	deadline := time.Now().Add(timeout)
	for {
		var left []int
		for _, d := range cgroupDirs(dir) {
			pids, _ := cgroupPIDs(d)
			for _, pid := range pids {
				if pid == self {
					continue
				}
				_ = syscall.Kill(pid, syscall.SIGKILL)
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in %s did not exit", left, dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var errs []error
	for _, d := range cgroupDirs(dir) {
		for {
			err := unix.Rmdir(d)
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if errors.Is(err, unix.EBUSY) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, err))
			break
		}
	}
	return errors.Join(errs...)
}
