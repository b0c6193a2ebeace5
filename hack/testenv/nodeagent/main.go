// Command kompress-nodeagent is TEST INFRASTRUCTURE for kompress, not a kubelet and not
// for production. It lets the real control plane of hack/testenv run pods without a
// container runtime:
//
//   - it registers a Node (Ready, with cpu, memory, pods and nvidia.com/gpu capacity) and
//     keeps its Lease in kube-node-lease and its Ready heartbeat fresh;
//   - it watches the pods bound to that node and runs each container as a local process:
//     the container's command + args ($(VAR) expanded like the kubelet), with env, envFrom,
//     secretKeyRef, configMapKeyRef, fieldRef and resourceFieldRef resolved. The IMAGE IS
//     IGNORED: the executable is looked up on the agent's PATH (or used as is if absolute);
//     a container without a command runs the --image-entrypoint mapping for its image;
//   - emptyDir, configMap, secret and hostPath volumes and the terminationMessagePath are
//     bind-mounted in a private mount namespace per container (needs root);
//   - it reports pod status like a kubelet (phases, container states, restart counts,
//     termination messages, conditions, activeDeadlineSeconds), and on deletion kills the
//     process (SIGTERM, SIGKILL after the grace period) and deletes the pod with grace 0;
//   - with --noop it runs nothing: every pod succeeds at once, with the termination message
//     taken from the pod's KOMPRESS_NOOP_MESSAGE env var (exit code KOMPRESS_NOOP_EXIT_CODE).
//
// Not supported: images, kubectl logs/exec/port-forward (logs are files under --state-dir),
// probes, sidecar (restartPolicy: Always) init containers, projected service account
// tokens, resource limits, networking (every pod has IP 127.0.0.1).
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
)

type agent struct {
	client     kubernetes.Interface
	node       string
	stateDir   string
	noop       bool
	passEnv    []string
	entrypts   map[string]string
	allocBle   corev1.ResourceList
	workers    *workers
	heartbeats time.Duration
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == helperArg {
		execHelper(os.Args[2:]) // never returns
	}
	var (
		kubeconfig = flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of a user allowed to manage nodes, leases and pods")
		node       = flag.String("node-name", "kompress-test-node", "name of the Node to register")
		cpu        = flag.String("cpu", "8", "cpu capacity")
		memory     = flag.String("memory", "32Gi", "memory capacity")
		pods       = flag.Int("pods", 110, "pod capacity")
		gpu        = flag.Int("gpu", 0, "nvidia.com/gpu capacity")
		labels     = flag.String("labels", "", "extra node labels, k=v,k2=v2")
		taints     = flag.String("taints", "", "node taints, key=value:Effect,...")
		stateDir   = flag.String("state-dir", "", "pod logs, volumes and pid files (default $TMPDIR/kompress-nodeagent-<node>)")
		noop       = flag.Bool("noop", false, "run nothing: every pod succeeds at once (message from env KOMPRESS_NOOP_MESSAGE)")
		passEnv    = flag.String("pass-env", "PATH,HOME,LANG,TMPDIR,LD_LIBRARY_PATH,ORT_DYLIB_PATH,RUST_LOG,RUST_BACKTRACE", "agent env vars passed to every container (pod env wins)")
		entrypts   = flag.String("image-entrypoint", "", "command for containers without one, per image name (no tag): img=cmd,*=cmd")
		qps        = flag.Float64("qps", 200, "client QPS")
		heartbeat  = flag.Duration("heartbeat", 10*time.Second, "node status and lease renewal interval")
	)
	klog.InitFlags(nil)
	flag.Parse()
	if *stateDir == "" {
		*stateDir = filepath.Join(os.TempDir(), "kompress-nodeagent-"+*node)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatalf("kubeconfig: %v", err)
	}
	cfg.QPS, cfg.Burst = float32(*qps), int(*qps*2)
	cfg.UserAgent = "kompress-nodeagent/" + *node
	a := &agent{
		client:     kubernetes.NewForConfigOrDie(cfg),
		node:       *node,
		stateDir:   *stateDir,
		noop:       *noop,
		passEnv:    splitList(*passEnv),
		entrypts:   map[string]string{},
		heartbeats: *heartbeat,
		allocBle: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse(*cpu),
			corev1.ResourceMemory: resource.MustParse(*memory),
			corev1.ResourcePods:   *resource.NewQuantity(int64(*pods), resource.DecimalSI),
			"nvidia.com/gpu":      *resource.NewQuantity(int64(*gpu), resource.DecimalSI),
			"ephemeral-storage":   resource.MustParse("100Gi"),
		},
	}
	for _, kv := range splitList(*entrypts) {
		k, v, _ := strings.Cut(kv, "=")
		a.entrypts[k] = v
	}
	a.workers = newWorkers(a)
	for _, d := range []string{"pods", "logs", "pids"} {
		if err := os.MkdirAll(filepath.Join(a.stateDir, d), 0o755); err != nil {
			klog.Fatal(err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// The node lifecycle controller writes a new Node too (taints, annotations): a conflict
	// only means our copy is stale, so register again from a fresh read.
	register := func() error { return a.registerNode(ctx, parseMap(*labels), parseTaints(*taints)) }
	if err := retry.RetryOnConflict(retry.DefaultRetry, register); err != nil {
		klog.Fatalf("register node: %v", err)
	}
	go a.heartbeat(ctx)

	lw := cache.NewListWatchFromClient(a.client.CoreV1().RESTClient(), "pods", metav1.NamespaceAll,
		fields.OneTermEqualSelector("spec.nodeName", a.node))
	_, informer := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &corev1.Pod{},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { a.workers.observe(o.(*corev1.Pod)) },
			UpdateFunc: func(_, o any) { a.workers.observe(o.(*corev1.Pod)) },
			DeleteFunc: func(o any) {
				if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
					o = t.Obj
				}
				if p, ok := o.(*corev1.Pod); ok {
					a.workers.gone(p)
				}
			},
		},
	})
	klog.Infof("node %s registered (noop=%v, state dir %s); watching its pods", a.node, a.noop, a.stateDir)
	informer.Run(ctx.Done())
	klog.Info("stopping: killing pod processes")
	a.workers.killAll()
}

func (a *agent) registerNode(ctx context.Context, labels map[string]string, taints []corev1.Taint) error {
	lbl := map[string]string{
		"kubernetes.io/hostname": a.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
		"kompress.dev/test-node": "true",
	}
	for k, v := range labels {
		lbl[k] = v
	}
	want := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: a.node, Labels: lbl},
		Spec:       corev1.NodeSpec{Taints: taints},
	}
	n, err := a.client.CoreV1().Nodes().Create(ctx, want, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		if n, err = a.client.CoreV1().Nodes().Get(ctx, a.node, metav1.GetOptions{}); err == nil {
			n.Labels, n.Spec.Taints, n.Spec.Unschedulable = lbl, taints, false
			n, err = a.client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return err
	}
	return a.updateNodeStatus(ctx, n)
}

func (a *agent) updateNodeStatus(ctx context.Context, n *corev1.Node) error {
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		c := corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
		for _, old := range n.Status.Conditions {
			if old.Type == t && old.Status == s {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		return c
	}
	n.Status.Capacity, n.Status.Allocatable = a.allocBle, a.allocBle
	n.Status.Phase = corev1.NodeRunning
	n.Status.Conditions = []corev1.NodeCondition{
		cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "kompress test node agent is posting ready status"),
		cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", ""),
		cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", ""),
		cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", ""),
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}, {Type: corev1.NodeHostName, Address: a.node}}
	n.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: "v1.36.3", OperatingSystem: "linux", Architecture: "amd64",
		ContainerRuntimeVersion: "kompress-nodeagent://0", OSImage: "kompress test node agent"}
	_, err := a.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

// heartbeat renews the node Lease and the Ready condition, like the kubelet.
func (a *agent) heartbeat(ctx context.Context) {
	t := time.NewTicker(a.heartbeats)
	defer t.Stop()
	for {
		if err := a.renewLease(ctx); err != nil && ctx.Err() == nil {
			klog.Warningf("lease: %v", err)
		}
		if n, err := a.client.CoreV1().Nodes().Get(ctx, a.node, metav1.GetOptions{}); err == nil {
			err = a.updateNodeStatus(ctx, n)
			if err != nil && ctx.Err() == nil {
				klog.Warningf("node status: %v", err)
			}
		} else if apierrors.IsNotFound(err) {
			_ = a.registerNode(ctx, nil, nil)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *agent) renewLease(ctx context.Context) error {
	leases := a.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	dur := int32(40)
	l, err := leases.Get(ctx, a.node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l = &coordv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: a.node, Namespace: corev1.NamespaceNodeLease}}
		if n, err := a.client.CoreV1().Nodes().Get(ctx, a.node, metav1.GetOptions{}); err == nil {
			l.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID}}
		}
		l.Spec = coordv1.LeaseSpec{HolderIdentity: &a.node, LeaseDurationSeconds: &dur, RenewTime: &now}
		_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		return err
	} else if err != nil {
		return err
	}
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &a.node, &dur, &now
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseMap(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range splitList(s) {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// parseTaints parses key=value:Effect or key:Effect items.
func parseTaints(s string) []corev1.Taint {
	var out []corev1.Taint
	for _, item := range splitList(s) {
		kv, eff, ok := strings.Cut(item, ":")
		if !ok {
			klog.Fatalf("taint %q: want key=value:Effect", item)
		}
		k, v, _ := strings.Cut(kv, "=")
		out = append(out, corev1.Taint{Key: k, Value: v, Effect: corev1.TaintEffect(eff)})
	}
	return out
}
