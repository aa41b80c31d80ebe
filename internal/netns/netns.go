// Package netns runs code inside another network namespace, one locked OS thread at a time. The lab
// uses it to put a node's agent to work on that node's interfaces while the agent process itself
// stays in the namespace that reaches the API server.
package netns

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn with the calling goroutine locked to an OS thread that has entered the network
// namespace at path (for example /run/netns/pcl-node-a). An empty path runs fn where it is. Child
// processes started by fn (os/exec) and sockets it opens belong to that namespace. The thread is put
// back before it is unlocked; if that fails, the thread is left locked so the runtime retires it with
// the goroutine instead of reusing a thread in the wrong namespace.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer unix.Close(target)

	runtime.LockOSThread()
	orig, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current network namespace: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	fnErr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with this goroutine rather than serve others here.
		return errors.Join(fnErr, fmt.Errorf("return from network namespace %s: %w", path, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// soNetnsCookie is SO_NETNS_COOKIE (Linux 5.14).
const soNetnsCookie = 71

// Cookie returns the kernel's cookie of the network namespace at path (an empty path: the caller's),
// the value BPF programs see from bpf_get_netns_cookie. It is read from a socket opened inside.
func Cookie(path string) (uint64, error) {
	var cookie uint64
	err := Do(path, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, soNetnsCookie)
		if err != nil {
			return fmt.Errorf("SO_NETNS_COOKIE: %w", err)
		}
		return nil
	})
	return cookie, err
}
