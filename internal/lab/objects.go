package lab

import (
	"maps"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ClusterObjects are the Kubernetes objects that describe a lab. Status is filled in (node addresses,
// pod phase and IPs); an API server stores it only through the status subresource, so write the object,
// then its status.
type ClusterObjects struct {
	// Namespaces are the topology's namespaces with their labels.
	Namespaces []corev1.Namespace
	// Nodes carry their pod CIDRs and their fabric addresses as InternalIP.
	Nodes []corev1.Node
	// Pods are Running, on their node, with one container whose named ports are the pod's ports.
	Pods []corev1.Pod
}

// Objects returns the Namespace, Node and Pod objects that describe the lab, for writing to an API server.
func (l *Lab) Objects() ClusterObjects {
	return l.plan.objects()
}

// Objects returns the objects that describe a lab built from t, with the addresses Up would give it.
func (t *Topology) Objects() (ClusterObjects, error) {
	p, err := t.plan()
	if err != nil {
		return ClusterObjects{}, err
	}
	return p.objects(), nil
}

func (p *plan) objects() ClusterObjects {
	var out ClusterObjects
	for _, name := range p.nsOrder {
		ns := p.namespaces[name]
		labels := maps.Clone(ns.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		labels[corev1.LabelMetadataName] = ns.Name
		out.Namespaces = append(out.Namespaces, corev1.Namespace{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
			ObjectMeta: metav1.ObjectMeta{Name: ns.Name, Labels: labels},
			Status:     corev1.NamespaceStatus{Phase: corev1.NamespaceActive},
		})
	}
	for _, np := range p.nodes {
		out.Nodes = append(out.Nodes, corev1.Node{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
			ObjectMeta: metav1.ObjectMeta{Name: np.node.Name, Labels: map[string]string{
				corev1.LabelHostname: np.node.Name, corev1.LabelOSStable: "linux",
				"portcullis.dev/lab": "true",
			}},
			Spec: corev1.NodeSpec{
				PodCIDR:  np.node.PodCIDRv4.String(),
				PodCIDRs: []string{np.node.PodCIDRv4.String(), np.node.PodCIDRv6.String()},
			},
			Status: corev1.NodeStatus{
				Addresses: []corev1.NodeAddress{
					{Type: corev1.NodeInternalIP, Address: np.fabric4.String()},
					{Type: corev1.NodeInternalIP, Address: np.fabric6.String()},
					{Type: corev1.NodeHostName, Address: np.node.Name},
				},
				Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
					Reason: "LabNodeReady"}},
			},
		})
	}
	for _, ep := range p.pods {
		np := p.nodeByName[ep.node.Name]
		var ports []corev1.ContainerPort
		for _, pt := range ep.ports {
			ports = append(ports, corev1.ContainerPort{Name: pt.Name, ContainerPort: int32(pt.Port),
				Protocol: corev1.Protocol(pt.Protocol)})
		}
		out.Pods = append(out.Pods, corev1.Pod{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ep.pod.Namespace, Name: ep.pod.Name,
				Labels: maps.Clone(ep.pod.Labels)},
			Spec: corev1.PodSpec{
				NodeName: ep.node.Name,
				Containers: []corev1.Container{{
					Name:  "server",
					Image: "portcullis.dev/lab-server:latest",
					Ports: ports,
				}},
			},
			Status: corev1.PodStatus{
				Phase:   corev1.PodRunning,
				HostIP:  np.fabric4.String(),
				HostIPs: []corev1.HostIP{{IP: np.fabric4.String()}, {IP: np.fabric6.String()}},
				PodIP:   ep.ipv4.String(),
				PodIPs:  []corev1.PodIP{{IP: ep.ipv4.String()}, {IP: ep.ipv6.String()}},
				Conditions: []corev1.PodCondition{
					{Type: corev1.PodReady, Status: corev1.ConditionTrue},
					{Type: corev1.ContainersReady, Status: corev1.ConditionTrue},
				},
			},
		})
	}
	return out
}
