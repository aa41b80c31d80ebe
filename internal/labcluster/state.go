package labcluster

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/portcullis-dev/portcullis/internal/lab"
)

// State is what `portcullis lab up` leaves in .lab/state.json so that the other lab commands, run
// from another shell, can reach the running lab.
type State struct {
	// Prefix of the lab's namespaces and directories.
	Prefix string `json:"prefix"`
	// PID of the `lab up` process, which owns the control plane and the agents.
	PID int `json:"pid"`
	// Kubeconfig is the administrator kubeconfig.
	Kubeconfig string `json:"kubeconfig"`
	// Pods maps namespace/name to the pod's network namespace and cgroup.
	Pods map[string]PodState `json:"pods"`
}

// PodState locates one pod.
type PodState struct {
	Netns  string `json:"netns"`
	Cgroup string `json:"cgroup"`
}

// State describes the running lab.
func (c *Cluster) State() (State, error) {
	st := State{Prefix: c.Net.Prefix(), PID: os.Getpid(), Kubeconfig: c.Kubeconfig, Pods: map[string]PodState{}}
	for _, ref := range c.Net.Pods() {
		ns, err := c.Net.PodNetns(ref)
		if err != nil {
			return st, err
		}
		cg, err := c.Net.PodCgroup(ref)
		if err != nil {
			return st, err
		}
		st.Pods[ref] = PodState{Netns: ns, Cgroup: cg}
	}
	return st, nil
}

// SaveState writes the state file.
func SaveState(path string, st State) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// LoadState reads the state file.
func LoadState(path string) (State, error) {
	var st State
	data, err := os.ReadFile(path)
	if err != nil {
		return st, fmt.Errorf("no running lab (%w): start one with `portcullis lab up`", err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("lab state %s: %w", path, err)
	}
	return st, nil
}

// Command returns a command that runs argv inside the pod: in its cgroup first (sockets belong to the
// cgroup of the process that opens them, and the HTTP programs sit on the node's cgroup), then its
// network namespace, entered with nsenter — not `ip netns exec`, which would remount /sys. Like
// the lab's own pod processes it runs without CAP_NET_RAW and CAP_NET_ADMIN in its bounding set
// (setpriv, before entering the namespace), as in a restricted pod.
func (p PodState) Command(argv ...string) *exec.Cmd {
	script := `echo $$ > "$0/cgroup.procs" && exec "$@"`
	args := append([]string{"--bounding-set", lab.RestrictedBoundingSet, "--", "nsenter", "--net=" + p.Netns, "--", "sh", "-c", script, p.Cgroup}, argv...)
	return exec.Command("setpriv", args...)
}
