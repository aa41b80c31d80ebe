package operator

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	apiWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_operator_api_writes_total",
		Help: "Objects created or updated by the operator, by kind.",
	}, []string{"kind"})
	apiBytesWritten = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "portcullis_operator_api_bytes_written_total",
		Help: "Bytes of spec written to the API server by the operator, by kind.",
	}, []string{"kind"})
)

func init() {
	metrics.Registry.MustRegister(apiWrites, apiBytesWritten)
}

// Setup creates the operator's shared state and registers all its reconcilers with the manager: the
// two policy kinds, endpoints (pods and namespaces), node policies, the IP cache, and the periodic
// identity garbage collection (run by the leader only).
func Setup(mgr ctrl.Manager, opts Options) (*Operator, error) {
	o := New(mgr.GetClient(), opts)
	rec := mgr.GetEventRecorder("portcullis-operator")
	for _, kind := range []string{kindAccessPolicy, kindClusterAccessPolicy} {
		if err := (&PolicyReconciler{Operator: o, Kind: kind, Recorder: rec}).SetupWithManager(mgr); err != nil {
			return nil, err
		}
	}
	if err := (&EndpointReconciler{Operator: o}).SetupWithManager(mgr); err != nil {
		return nil, err
	}
	if err := (&NodePolicyReconciler{Operator: o}).SetupWithManager(mgr); err != nil {
		return nil, err
	}
	if err := (&IPCacheReconciler{Operator: o}).SetupWithManager(mgr); err != nil {
		return nil, err
	}
	gc := manager.RunnableFunc(func(ctx context.Context) error {
		t := time.NewTicker(o.opts.IdentityGCInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				if err := o.collectIdentities(ctx); err != nil {
					log.FromContext(ctx).Error(err, "identity garbage collection")
				}
			}
		}
	})
	if err := mgr.Add(gc); err != nil {
		return nil, err
	}
	return o, nil
}
