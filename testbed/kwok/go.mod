// Wrapper module: builds kwok, which stands in for the kubelets of fake nodes.
module noderoll.io/testbed/kwok

go 1.26.0

tool sigs.k8s.io/kwok/cmd/kwok
