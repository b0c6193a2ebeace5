// kstatus prints the kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status) verdict for one
// Kubernetes object given as JSON, as one JSON line:
//
//	{"status":"Current","message":"Resource is current"}
//
// Usage: kstatus [FILE]   (no FILE or "-": read stdin, e.g. `kubectl get cj x -o json | kstatus`)
//
// A List (kubectl get without a name) gives one line per item, with "kind" and "name" added.
// Exit status: 0 when the status was computed (whatever it is), 1 on bad input.
//
// Note kstatus' rules for a custom resource: only metadata.deletionTimestamp (Terminating),
// status.observedGeneration != metadata.generation (InProgress) and the conditions
// Reconciling=True (InProgress) and Stalled=True (Failed) count; anything else, a Ready=False
// condition included, is Current.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type line struct {
	Kind    string `json:"kind,omitempty"`
	Name    string `json:"name,omitempty"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	in := stdin
	switch {
	case len(args) > 1:
		return fmt.Errorf("usage: kstatus [FILE]")
	case len(args) == 1 && (args[0] == "-h" || args[0] == "--help"):
		fmt.Fprintln(stdout, "usage: kstatus [FILE]  (reads one Kubernetes object as JSON; stdin when no FILE)")
		return nil
	case len(args) == 1 && args[0] != "-":
		f, err := os.Open(args[0])
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	// utiljson keeps integers int64 (encoding/json makes them float64, and kstatus'
	// unstructured.NestedInt64 of metadata.generation would then fail)
	var obj map[string]interface{}
	if err := utiljson.Unmarshal(data, &obj); err != nil {
		return fmt.Errorf("input is not a JSON object: %w", err)
	}
	if obj == nil {
		return fmt.Errorf("input is not a JSON object")
	}
	u := &unstructured.Unstructured{Object: obj}
	enc := json.NewEncoder(stdout)
	if u.IsList() {
		return u.EachListItem(func(o runtime.Object) error {
			item := o.(*unstructured.Unstructured)
			res, err := status.Compute(item)
			if err != nil {
				return fmt.Errorf("%s %s: %w", item.GetKind(), item.GetName(), err)
			}
			return enc.Encode(line{Kind: item.GetKind(), Name: item.GetName(), Status: string(res.Status), Message: res.Message})
		})
	}
	res, err := status.Compute(u)
	if err != nil {
		return err
	}
	return enc.Encode(line{Status: string(res.Status), Message: res.Message})
}
