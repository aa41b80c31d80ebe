// Command portcullis-operator runs the cluster-level half of Portcullis: it validates AccessPolicy and
// ClusterAccessPolicy objects, allocates security identities, compiles one NodePolicy per node,
// publishes the IP cache, and reports each policy's status.
package main

import (
	"flag"
	"fmt"
	"os"

	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/portcullis-dev/portcullis/controllers/operator"
	"github.com/portcullis-dev/portcullis/internal/kube"
)

func main() {
	var (
		leaderElect bool
		leaderNS    string
		metricsAddr string
		probeAddr   string
		opts        operator.Options
		zapOpts     = zap.Options{Development: false, TimeEncoder: zapcore.ISO8601TimeEncoder}
	)
	flag.BoolVar(&leaderElect, "leader-elect", true, "elect a leader so that one operator replica writes at a time")
	flag.StringVar(&leaderNS, "leader-election-namespace", "", "namespace of the leader election lease (default: the pod's namespace)")
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint (0 disables it)")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz (0 disables it)")
	flag.DurationVar(&opts.IdentityGCDelay, "identity-gc-delay", 0, "how long an unused identity is kept before deletion (default 10m)")
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))

	if err := run(leaderElect, leaderNS, metricsAddr, probeAddr, opts); err != nil {
		fmt.Fprintln(os.Stderr, "portcullis-operator:", err)
		os.Exit(1)
	}
}

func run(leaderElect bool, leaderNS, metricsAddr, probeAddr string, opts operator.Options) error {
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	scheme, err := kube.NewScheme()
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "portcullis-operator.portcullis.dev",
		LeaderElectionNamespace: leaderNS,
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	if _, err := operator.Setup(mgr, opts); err != nil {
		return fmt.Errorf("set up reconcilers: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	ctrl.Log.Info("starting portcullis-operator")
	return mgr.Start(ctrl.SetupSignalHandler())
}
