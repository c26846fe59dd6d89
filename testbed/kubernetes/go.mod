// Wrapper module: k8s.io/kubernetes cannot be built with `go install` because its go.mod
// replaces the k8s.io/* staging modules with local paths. scripts/control-plane copies this
// file into its cache, pins the version from testbed/versions.env and adds a replace for
// every k8s.io/* module that k8s.io/kubernetes requires at v0.0.0 (generated from the
// downloaded go.mod), then builds the three commands below.
module noderoll.io/testbed/kubernetes

go 1.26.0

tool (
	k8s.io/kubernetes/cmd/kube-apiserver
	k8s.io/kubernetes/cmd/kube-controller-manager
	k8s.io/kubernetes/cmd/kube-scheduler
)
