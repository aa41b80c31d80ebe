package netns

import (
	"net"
	"os"
	"os/exec"
	"testing"
)

func TestPrivilegedDoEntersAndLeavesTheNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("privileged test cannot run: not root")
		}
		t.Skip("needs root")
	}
	name := "pcl-netns-test"
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "add", "pcltest0", "type", "veth", "peer", "name", "pcltest1").CombinedOutput(); err != nil {
		t.Fatalf("add veth: %v %s", err, out)
	}
	var inside int
	err := Do("/run/netns/"+name, func() error {
		ifc, err := net.InterfaceByName("pcltest0")
		if err != nil {
			return err
		}
		inside = ifc.Index
		// A child process started here is in the namespace too.
		out, err := exec.Command("ip", "link", "show", "pcltest0").CombinedOutput()
		if err != nil {
			t.Errorf("child process does not see the namespace's link: %v %s", err, out)
		}
		return nil
	})
	if err != nil || inside == 0 {
		t.Fatalf("inside the namespace: index %d, %v", inside, err)
	}
	if _, err := net.InterfaceByName("pcltest0"); err == nil {
		t.Error("after Do, the thread still sees the namespace's link")
	}
	if err := Do("/run/netns/does-not-exist", func() error { return nil }); err == nil {
		t.Error("a missing namespace was not reported")
	}
}
