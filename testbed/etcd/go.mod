// Wrapper module: builds etcd's server (the root package of go.etcd.io/etcd/server/v3 is
// its main package) at the version scripts/control-plane pins.
module noderoll.io/testbed/etcd

go 1.26.0

tool go.etcd.io/etcd/server/v3
