// A checksum database server for the end-to-end tests: golang.org/x/mod/sumdb's server over a
// signed, in-memory tree of the modules in a GOPROXY directory tree. Records are added when a
// module version is first looked up, the way sum.golang.org adds them.
//
// usage: sumdb -name NAME -root DIR [-addr 127.0.0.1:0]
// prints "vkey <verifier key>" and "addr <host:port>", then serves until killed.
package main

import (
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/sumdb/note"
)

func main() {
	name := flag.String("name", "sumdb.test", "checksum database name")
	root := flag.String("root", "", "GOPROXY directory tree the hashes are computed from")
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	skey, vkey, err := note.GenerateKey(rand.Reader, *name)
	if err != nil {
		log.Fatal(err)
	}
	gosum := func(path, vers string) ([]byte, error) {
		ep, err := module.EscapePath(path)
		if err != nil {
			return nil, err
		}
		ev, err := module.EscapeVersion(vers)
		if err != nil {
			return nil, err
		}
		base := filepath.Join(*root, ep, "@v", ev)
		zh, err := dirhash.HashZip(base+".zip", dirhash.Hash1)
		if err != nil {
			return nil, err
		}
		mh, err := dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) { return os.Open(base + ".mod") })
		if err != nil {
			return nil, err
		}
		return []byte(fmt.Sprintf("%s %s %s\n%s %s/go.mod %s\n", path, vers, zh, path, vers, mh)), nil
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("vkey %s\naddr %s\n", vkey, ln.Addr())
	os.Stdout.Sync()
	log.Fatal(http.Serve(ln, sumdb.NewServer(sumdb.NewTestServer(skey, gosum))))
}
