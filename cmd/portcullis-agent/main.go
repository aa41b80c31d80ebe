// Command portcullis-agent runs on every node: it converges the kernel's BPF maps and programs to the
// node's NodePolicy and the cluster's IP cache, keeps enforcing through its own restarts (maps and
// links are pinned in bpffs and adopted on start), repairs drift, and reports in NodePolicy status.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/portcullis-dev/portcullis/controllers/agent"
	"github.com/portcullis-dev/portcullis/internal/datapath"
	"github.com/portcullis-dev/portcullis/internal/kube"
	"github.com/portcullis-dev/portcullis/internal/l7"
)

type config struct {
	nodeName   string
	bpffs      string
	pinDir     string
	cgroupRoot string
	netns      string
	http       bool
	// httpDelivery is how requests are framed and allowed ones reach the application: direct,
	// redirect or pass (l7.ParseDelivery).
	httpDelivery string
	// httpHoldMax is l7.Options.HoldMax.
	httpHoldMax time.Duration
	// httpAtSource judges a local server's ingress rules at its local clients' sockets.
	httpAtSource bool
	// httpBeforeTCP judges whole requests at the pod's interfaces, before TCP.
	httpBeforeTCP bool
	interval      time.Duration
	metricsAddr   string
	probeAddr     string
}

func main() {
	var c config
	zapOpts := zap.Options{TimeEncoder: zapcore.ISO8601TimeEncoder}
	flag.StringVar(&c.nodeName, "node-name", os.Getenv("NODE_NAME"), "the node this agent enforces (default $NODE_NAME, from the downward API)")
	flag.StringVar(&c.bpffs, "bpffs", "/sys/fs/bpf", "a bpffs mount")
	flag.StringVar(&c.pinDir, "pin-dir", "", "where maps and links are pinned (default <bpffs>/portcullis)")
	flag.StringVar(&c.cgroupRoot, "cgroup-root", "/sys/fs/cgroup", "the cgroup v2 mount (HTTP rules attach sock_ops there)")
	flag.StringVar(&c.netns, "netns", "", "work on the interfaces of this network namespace (a path; the lab's nodes) instead of the agent's own")
	flag.BoolVar(&c.http, "http", true, "judge HTTP requests at the socket for ports with HTTP rules (needs sockmap and cgroup v2); with false, such ports are enforced at L3/L4 only and reported Degraded")
	flag.StringVar(&c.httpDelivery, "http-delivery", "", "how the kernel frames requests at a server's socket on judged ports and hands allowed ones to the application: direct (the default on Linux 6.5 and later: the verdict program frames each received segment and passes allowed bytes at once), redirect (the default before 6.5: the kernel's stream parser frames, allowed requests go through the socket's backlog, about 15 to 20 µs more per request at one connection) or pass (stream parser and SK_PASS: this kernel loses requests with it; for measurements). See bpf/README.md, \"Deliveries\"")
	flag.DurationVar(&c.httpHoldMax, "http-hold-max", l7.DefaultHoldMax, "with direct delivery, how long an incomplete request header block may wait for its end (a client sending it slowly) before the connection is denied and reset")
	flag.BoolVar(&c.httpAtSource, "http-judge-at-source", false, "judge the ingress HTTP rules of a server on this node at the sockets of its clients on this node (their sk_msg program), for clients in pods where no process can hold CAP_NET_RAW or CAP_NET_ADMIN (every process's capability bounding set lacks both, as in Pod Security Standard restricted): allowed requests then cost no delivery hop. Off by default: the kernel's sk_msg send path has let a client's own writes past its socket's judge (it reuses a verdict after a short write); closed as far as known, but the server's socket judges what TCP received whatever the writes (docs/limitations.md). Other clients, and clients on other nodes, are judged at the server's socket")
	flag.BoolVar(&c.httpBeforeTCP, "http-judge-before-tcp", true, "with direct delivery, judge a server's requests at its pod's interfaces as they come in, before TCP (a tcx program in the pod's network namespace), when each comes whole in its segments: such connections never enter the kernel's SOCKHASH receive path (about 5 µs a round trip); a connection with anything else (a header block in pieces, a denied request, pipelined requests, a chunked body) is handed to its socket's verdict program for the rest of its life. See bpf/README.md, \"Judging before TCP\"")
	flag.DurationVar(&c.interval, "drift-check-interval", 5*time.Second, "how often the kernel is compared with the desired state and repaired")
	flag.StringVar(&c.metricsAddr, "metrics-bind-address", ":9962", "address of the Prometheus metrics endpoint (0 disables it)")
	flag.StringVar(&c.probeAddr, "health-probe-bind-address", ":9963", "address of /healthz and /readyz (0 disables it)")
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "portcullis-agent:", err)
		os.Exit(1)
	}
}

// checkHost fails early, with a message that says what to fix, when the node lacks what the agent
// needs.
func checkHost(c config) error {
	if c.nodeName == "" {
		return errors.New("no node name: pass --node-name or set NODE_NAME (fieldRef spec.nodeName)")
	}
	if c.httpDelivery != "" {
		if _, err := l7.ParseDelivery(c.httpDelivery); err != nil {
			return fmt.Errorf("--http-delivery: %w", err)
		}
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(c.bpffs, &fs); err != nil {
		return fmt.Errorf("bpffs %s: %w (mount it: mount -t bpf bpf %s)", c.bpffs, err, c.bpffs)
	}
	if fs.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is not a bpffs mount (mount it: mount -t bpf bpf %s); pins elsewhere would not outlive the agent", c.bpffs, c.bpffs)
	}
	if err := unix.Statfs(c.cgroupRoot, &fs); err != nil {
		return fmt.Errorf("cgroup root %s: %w", c.cgroupRoot, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%s is not a cgroup v2 mount: Portcullis needs the unified hierarchy", c.cgroupRoot)
	}
	return nil
}

// httpDelivery is the --http-delivery value (checked by checkHost), or when it is not given direct
// delivery where the kernel supports it and redirect before that.
func httpDelivery(flagValue string) l7.Delivery {
	if flagValue != "" {
		d, _ := l7.ParseDelivery(flagValue)
		return d
	}
	if err := l7.DirectDeliverySupported(); err != nil {
		ctrl.Log.WithName("setup").Info("using the stream parser's delivery (redirect)", "reason", err.Error())
		return l7.DeliverRedirect
	}
	return l7.DeliverDirect
}

func run(c config) error {
	if err := checkHost(c); err != nil {
		return err
	}
	if c.pinDir == "" {
		c.pinDir = filepath.Join(c.bpffs, "portcullis")
	}
	if err := os.MkdirAll(c.pinDir, 0o700); err != nil {
		return fmt.Errorf("pin directory: %w", err)
	}
	// Existing pins are adopted: enforcement continues across the restart with no empty window.
	dp, err := datapath.Load(datapath.Options{PinDir: c.pinDir})
	if err != nil {
		return fmt.Errorf("load BPF dataplane: %w", err)
	}
	defer dp.Close()
	var http7 *l7.L7
	if c.http {
		delivery := httpDelivery(c.httpDelivery)
		// The HTTP programs share the datapath's IP cache, and their sock_ops program sits on the
		// cgroup that holds the node's pods.
		if c.httpBeforeTCP && delivery != l7.DeliverDirect {
			ctrl.Log.WithName("setup").Info("not judging before TCP: it hands connections to direct delivery", "delivery", delivery.String())
			c.httpBeforeTCP = false
		}
		http7, err = l7.Load(l7.Options{PinDir: filepath.Join(c.pinDir, "l7"), IPCache: dp.IPCacheMap(), Delivery: delivery, HoldMax: c.httpHoldMax,
			JudgeAtSource: c.httpAtSource, JudgeBeforeTCP: c.httpBeforeTCP})
		if err != nil {
			return fmt.Errorf("load the HTTP programs (run with --http=false to enforce L3/L4 only): %w", err)
		}
		defer http7.Close()
		if err := http7.AttachCgroup(c.cgroupRoot); err != nil {
			return fmt.Errorf("attach the HTTP programs to %s: %w", c.cgroupRoot, err)
		}
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	scheme, err := kube.NewScheme()
	if err != nil {
		return err
	}
	var resetter *agent.Resetter
	if http7 != nil {
		// Denied HTTP connections that could not get a 403 are reset from inside each pod's
		// network namespace, found through the processes of the cgroup the programs sit on.
		resetter = agent.NewResetter(http7, c.cgroupRoot)
	}
	flows := agent.NewFlows(dp, http7, resetter, c.nodeName, 4096)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: scheme,
		// /flows serves the most recent flow events next to the metrics.
		Metrics:                metricsserver.Options{BindAddress: c.metricsAddr, ExtraHandlers: map[string]http.Handler{"/flows": flows}},
		HealthProbeBindAddress: c.probeAddr,
		Cache:                  agent.CacheOptions(c.nodeName),
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	var beforeTCP *agent.BeforeTCPAttacher
	if http7 != nil && c.httpBeforeTCP {
		// l7_fast on the interfaces of the network namespace of every pod with HTTP rules on its
		// ingress, never the node's own.
		beforeTCP = agent.NewBeforeTCPAttacher(http7, c.cgroupRoot, c.netns)
	}
	if _, err := agent.Setup(mgr, agent.Options{NodeName: c.nodeName, DriftCheckInterval: c.interval, Datapath: dp, Netns: c.netns, Flows: flows,
		L7: http7, BeforeTCP: beforeTCP}); err != nil {
		return err
	}
	if resetter != nil {
		if err := mgr.Add(resetter); err != nil {
			return err
		}
	}
	if beforeTCP != nil {
		if err := mgr.Add(beforeTCP); err != nil {
			return err
		}
	}
	if http7 != nil && c.httpAtSource {
		// Which pods' clients may be judged at their own socket: those that can never hold
		// CAP_NET_RAW or CAP_NET_ADMIN.
		if err := mgr.Add(agent.NewTrustScanner(http7, "/proc")); err != nil {
			return err
		}
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	ctrl.Log.Info("starting portcullis-agent", "node", c.nodeName, "pinDir", c.pinDir)
	return mgr.Start(ctrl.SetupSignalHandler())
}
