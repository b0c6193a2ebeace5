// ggcr-registry serves go-containerregistry's in-memory registry (pkg/registry, the one
// behind `crane registry serve`) with the OCI 1.1 referrers API switched on.
//
// `crane registry serve` has no flag or environment variable for referrers: the library
// only has the option registry.WithReferrersSupport(true), which this program sets. It also
// fixes two gaps of that library's referrers handler so that clients see an OCI 1.1
// registry:
//   - a manifest PUT whose body has a "subject" gets the "OCI-Subject: <subject digest>"
//     response header (clients then do not push the fallback referrers tag);
//   - GET /v2/<name>/referrers/<digest> reports each referrer's "artifactType" from the
//     manifest's own artifactType field (the library takes config.mediaType only, which is
//     application/vnd.oci.empty.v1+json for artifacts), and honours ?artifactType=
//     (with the "OCI-Filters-Applied: artifactType" header).
//
// Usage: ggcr-registry [--address 127.0.0.1:0] [--disk DIR] [--referrers=false] [--port-file F]
// Prints "serving on 127.0.0.1:PORT" on stderr once listening; SIGTERM/SIGINT stop it.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	address := flag.String("address", "127.0.0.1:0", "address to listen on")
	disk := flag.String("disk", "", "store blobs in this directory (default: in memory)")
	referrers := flag.Bool("referrers", true, "serve the OCI referrers API")
	portFile := flag.String("port-file", "", "write the port to this file once listening")
	flag.Parse()

	opts := []registry.Option{registry.WithReferrersSupport(*referrers)}
	if *disk != "" {
		if err := os.MkdirAll(*disk, 0o755); err != nil {
			log.Fatal(err)
		}
		opts = append(opts, registry.WithBlobHandler(registry.NewDiskBlobHandler(*disk)))
	}
	var h http.Handler = registry.New(opts...)
	if *referrers {
		h = referrersFix{h}
	}

	ln, err := net.Listen("tcp", *address)
	if err != nil {
		log.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if *portFile != "" {
		if err := os.WriteFile(*portFile, []byte(strconv.Itoa(port)+"\n"), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	log.Printf("serving on %s (referrers API: %v)", ln.Addr(), *referrers)

	s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	errCh := make(chan error, 1)
	go func() { errCh <- s.Serve(ln) }()
	select {
	case err := <-errCh:
		log.Fatal(err)
	case <-ctx.Done():
	}
	log.Print("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(sctx); err != nil {
		log.Fatal(err)
	}
	if err := <-errCh; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

type referrersFix struct{ next http.Handler }

// pathParts splits /v2/<name>/<kind>/<ref> into name, kind, ref.
func pathParts(p string) (name, kind, ref string, ok bool) {
	e := strings.Split(strings.TrimPrefix(p, "/"), "/")
	if len(e) < 4 || e[0] != "v2" {
		return "", "", "", false
	}
	return strings.Join(e[1:len(e)-2], "/"), e[len(e)-2], e[len(e)-1], true
}

func (f referrersFix) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, kind, ref, ok := pathParts(r.URL.Path)
	switch {
	case ok && kind == "manifests" && r.Method == http.MethodPut:
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var m struct {
			Subject *struct {
				Digest string `json:"digest"`
			} `json:"subject"`
		}
		if json.Unmarshal(body, &m) == nil && m.Subject != nil && m.Subject.Digest != "" {
			w.Header().Set("OCI-Subject", m.Subject.Digest)
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		f.next.ServeHTTP(w, r)
	case ok && kind == "referrers" && r.Method == http.MethodGet:
		f.referrers(w, r, name, ref)
	default:
		f.next.ServeHTTP(w, r)
	}
}

type descriptor map[string]interface{}

func (f referrersFix) referrers(w http.ResponseWriter, r *http.Request, name, ref string) {
	filter := r.URL.Query().Get("artifactType")
	inner := r.Clone(r.Context())
	inner.URL.RawQuery = ""
	rec := httptest.NewRecorder()
	f.next.ServeHTTP(rec, inner)
	if rec.Code != http.StatusOK {
		if rec.Code == http.StatusNotFound && strings.Contains(rec.Body.String(), "NAME_UNKNOWN") {
			// OCI 1.1: an unknown subject gives an empty index, not an error
			rec = httptest.NewRecorder()
			rec.Code = http.StatusOK
			rec.Body.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
		} else {
			copyResponse(w, rec)
			return
		}
	}
	var idx map[string]interface{}
	if err := json.Unmarshal(rec.Body.Bytes(), &idx); err != nil {
		copyResponse(w, rec)
		return
	}
	list, _ := idx["manifests"].([]interface{})
	out := []interface{}{}
	for _, d := range list {
		desc, ok := d.(map[string]interface{})
		if !ok {
			continue
		}
		if dg, _ := desc["digest"].(string); dg != "" {
			if at := f.artifactType(r, name, dg); at != "" {
				desc["artifactType"] = at
			}
		}
		if filter != "" && desc["artifactType"] != filter {
			continue
		}
		out = append(out, desc)
	}
	idx["manifests"] = out
	body, _ := json.Marshal(idx)
	w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if filter != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// artifactType: the manifest's artifactType, else its config.mediaType (OCI 1.1 rules).
func (f referrersFix) artifactType(r *http.Request, name, digest string) string {
	req := httptest.NewRequest(http.MethodGet, fmt.Sprintf("/v2/%s/manifests/%s", name, digest), nil).WithContext(r.Context())
	rec := httptest.NewRecorder()
	f.next.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return ""
	}
	var m struct {
		ArtifactType string `json:"artifactType"`
		Config       struct {
			MediaType string `json:"mediaType"`
		} `json:"config"`
	}
	if json.Unmarshal(rec.Body.Bytes(), &m) != nil {
		return ""
	}
	if m.ArtifactType != "" {
		return m.ArtifactType
	}
	return m.Config.MediaType
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}
