// Command etcd is upstream etcd server, built as a module dependency because etcd's own go.mod has local replaces.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
