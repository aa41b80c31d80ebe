package agent

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"

	"github.com/portcullis-dev/portcullis/internal/netns"
)

func TestPrivilegedRouteInterfacesFindsEachPodsHostSide(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("privileged test cannot run: not root (CI=true)")
		}
		t.Skip("needs root")
	}
	ns := "pcl-routes-test"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("-n", ns, "link", "add", "pclhost0", "type", "veth", "peer", "name", "pclpod0")
	run("-n", ns, "link", "set", "pclhost0", "up")
	run("-n", ns, "route", "add", "10.0.7.7/32", "dev", "pclhost0")
	run("-n", ns, "-6", "route", "add", "fd00:7::7/128", "dev", "pclhost0")
	run("-n", ns, "route", "add", "10.0.8.0/24", "dev", "pclhost0") // not a host route

	var got map[netip.Addr]int
	var want int
	err := netns.Do("/run/netns/"+ns, func() error {
		ifc, err := net.InterfaceByName("pclhost0")
		if err != nil {
			return err
		}
		want = ifc.Index
		got, err = RouteInterfaces(context.Background())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"10.0.7.7", "fd00:7::7"} {
		if got[netip.MustParseAddr(a)] != want {
			t.Errorf("%s → ifindex %d, want %d (all: %v)", a, got[netip.MustParseAddr(a)], want, got)
		}
	}
	if _, ok := got[netip.MustParseAddr("10.0.8.0")]; ok {
		t.Errorf("a /24 route was taken for a pod's host route: %v", got)
	}
}
