package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
)

// workers tracks one worker per pod UID seen on this node.
type workers struct {
	a  *agent
	mu sync.Mutex
	m  map[types.UID]*podWorker
}

func newWorkers(a *agent) *workers { return &workers{a: a, m: map[types.UID]*podWorker{}} }

// observe is called for every add/update of a pod bound to this node.
func (ws *workers) observe(p *corev1.Pod) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if w, ok := ws.m[p.UID]; ok {
		if p.DeletionTimestamp != nil {
			w.requestStop(stopDeleted)
		}
		return
	}
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		w := &podWorker{}
		w.finished.Store(true) // finished before this agent started
		ws.m[p.UID] = w
		return
	}
	w := newPodWorker(ws.a, p)
	ws.m[p.UID] = w
	go w.run()
}

// gone is called when the pod object has disappeared from the API.
func (ws *workers) gone(p *corev1.Pod) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if w, ok := ws.m[p.UID]; ok {
		if !w.finished.Load() {
			w.vanished.Store(true)
			w.requestStop(stopDeleted)
		}
		delete(ws.m, p.UID)
	}
}

func (ws *workers) killAll() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for _, w := range ws.m {
		w.killNow()
	}
}

type stopReason int

const (
	stopNone stopReason = iota
	stopDeleted
	stopDeadline
)

type podWorker struct {
	a        *agent
	pod      *corev1.Pod // as first seen; the spec of a pod does not change
	dir      string      // per-pod state: volumes, work dir, termination message files
	logDir   string
	finished atomic.Bool
	vanished atomic.Bool

	ctx    context.Context
	cancel context.CancelFunc
	reason stopReason

	mu     sync.Mutex
	status corev1.PodStatus
	procs  map[string]*proc
	pushMu sync.Mutex
}

func newPodWorker(a *agent, p *corev1.Pod) *podWorker {
	w := &podWorker{
		a: a, pod: p.DeepCopy(), procs: map[string]*proc{},
		dir:    filepath.Join(a.stateDir, "pods", string(p.UID)),
		logDir: filepath.Join(a.stateDir, "logs", fmt.Sprintf("%s_%s_%s", p.Namespace, p.Name, p.UID)),
	}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	if p.DeletionTimestamp != nil {
		w.requestStop(stopDeleted)
	}
	return w
}

func (w *podWorker) requestStop(r stopReason) {
	w.mu.Lock()
	if w.reason == stopNone {
		w.reason = r
	}
	w.mu.Unlock()
	if w.cancel != nil {
		w.cancel()
	}
}

func (w *podWorker) killNow() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.procs {
		p.signal(9)
	}
}

func (w *podWorker) stopReason() stopReason {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reason
}

func (w *podWorker) gracePeriod() time.Duration {
	if g := w.pod.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return 30 * time.Second
}

func (w *podWorker) run() {
	p := w.pod
	defer w.finished.Store(true)
	now := metav1.Now()
	w.mu.Lock()
	w.status = corev1.PodStatus{
		Phase: corev1.PodPending, StartTime: &now,
		HostIP: "127.0.0.1", HostIPs: []corev1.HostIP{{IP: "127.0.0.1"}},
		PodIP: "127.0.0.1", PodIPs: []corev1.PodIP{{IP: "127.0.0.1"}},
		QOSClass: p.Status.QOSClass,
	}
	for _, c := range p.Spec.InitContainers {
		w.status.InitContainerStatuses = append(w.status.InitContainerStatuses, waitingStatus(c, "PodInitializing"))
	}
	for _, c := range p.Spec.Containers {
		w.status.ContainerStatuses = append(w.status.ContainerStatuses, waitingStatus(c, "ContainerCreating"))
	}
	w.mu.Unlock()

	if p.Status.Phase == corev1.PodRunning {
		// It was running under an earlier agent process; its process is gone.
		w.finish(corev1.PodFailed, "NodeAgentRestarted", "the test node agent restarted while the pod was running")
		return
	}
	if w.a.noop {
		w.runNoop()
		return
	}
	if d := p.Spec.ActiveDeadlineSeconds; d != nil {
		t := time.AfterFunc(time.Duration(*d)*time.Second, func() { w.requestStop(stopDeadline) })
		defer t.Stop()
	}
	_ = os.MkdirAll(w.logDir, 0o755)
	w.push()

	ok := true
	for i := range p.Spec.InitContainers {
		if code := w.runContainer(&p.Spec.InitContainers[i], true, i); code != 0 {
			ok = false
			break
		}
	}
	var wg sync.WaitGroup
	if ok && w.ctx.Err() == nil {
		w.mu.Lock()
		w.status.Phase = corev1.PodRunning
		w.mu.Unlock()
		for i := range p.Spec.Containers {
			wg.Add(1)
			go func(i int) { defer wg.Done(); w.runContainer(&p.Spec.Containers[i], false, i) }(i)
		}
		wg.Wait()
	}
	phase := corev1.PodSucceeded
	w.mu.Lock()
	for _, s := range append(append([]corev1.ContainerStatus{}, w.status.InitContainerStatuses...), w.status.ContainerStatuses...) {
		if s.State.Terminated == nil || s.State.Terminated.ExitCode != 0 {
			phase = corev1.PodFailed
		}
	}
	w.mu.Unlock()
	switch w.stopReason() {
	case stopDeadline:
		w.finish(corev1.PodFailed, "DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
	default:
		w.finish(phase, "", "")
	}
	_ = os.RemoveAll(w.dir)
}

// finish pushes the terminal status and, for a deleted pod, deletes it with grace 0.
func (w *podWorker) finish(phase corev1.PodPhase, reason, msg string) {
	w.mu.Lock()
	w.status.Phase, w.status.Reason, w.status.Message = phase, reason, msg
	for _, list := range [][]corev1.ContainerStatus{w.status.InitContainerStatuses, w.status.ContainerStatuses} {
		for i := range list {
			list[i].Ready = false
			if list[i].State.Terminated == nil { // never ran, or killed before it started
				list[i].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
					ExitCode: 137, Reason: "ContainerStatusUnknown", Message: "The container could not be located when the pod was terminated"}}
			}
		}
	}
	w.mu.Unlock()
	klog.Infof("pod %s/%s: %s %s", w.pod.Namespace, w.pod.Name, phase, reason)
	if !w.vanished.Load() {
		w.push()
	}
	if w.stopReason() == stopDeleted && !w.vanished.Load() {
		zero := int64(0)
		uid := w.pod.UID
		err := w.a.client.CoreV1().Pods(w.pod.Namespace).Delete(context.Background(), w.pod.Name,
			metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			klog.Warningf("pod %s/%s: delete: %v", w.pod.Namespace, w.pod.Name, err)
		}
	}
}

func (w *podWorker) runNoop() {
	msg, code := "", int32(0)
	for _, c := range w.pod.Spec.Containers[:1] {
		env, err := w.a.resolveEnv(w.ctx, w.pod, &c)
		if err != nil {
			klog.Warningf("pod %s/%s: noop env: %v", w.pod.Namespace, w.pod.Name, err)
		}
		msg = env["KOMPRESS_NOOP_MESSAGE"]
		if v := env["KOMPRESS_NOOP_EXIT_CODE"]; v != "" {
			_, _ = fmt.Sscan(v, &code)
		}
	}
	now := metav1.Now()
	w.mu.Lock()
	for l, list := range [][]corev1.ContainerStatus{w.status.InitContainerStatuses, w.status.ContainerStatuses} {
		for i := range list {
			t := &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now}
			if l == 1 && i == 0 { // the first main container carries the message
				t.ExitCode, t.Message = code, msg
				if code != 0 {
					t.Reason = "Error"
				}
			}
			list[i].State = corev1.ContainerState{Terminated: t}
			list[i].Started = new(bool)
		}
	}
	w.mu.Unlock()
	phase := corev1.PodSucceeded
	if code != 0 {
		phase = corev1.PodFailed
	}
	w.finish(phase, "", "")
}

func waitingStatus(c corev1.Container, reason string) corev1.ContainerStatus {
	f := false
	return corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image, Started: &f,
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}}}
}

// setContainer updates one container status under the lock and pushes the pod status.
func (w *podWorker) setContainer(init bool, i int, f func(s *corev1.ContainerStatus)) {
	w.mu.Lock()
	if init {
		f(&w.status.InitContainerStatuses[i])
	} else {
		f(&w.status.ContainerStatuses[i])
	}
	w.mu.Unlock()
	w.push()
}

// runContainer runs one container until it is done under the pod's restart policy and
// returns its last exit code.
func (w *podWorker) runContainer(c *corev1.Container, init bool, i int) int32 {
	policy := w.pod.Spec.RestartPolicy
	backoff := time.Second
	for restarts := int32(0); ; restarts++ {
		res := w.runOnce(c, init, i)
		if res.startErr == errNotStarted { // stopped while waiting for its config
			return 137
		}
		if w.ctx.Err() != nil {
			return res.code
		}
		if !(policy == corev1.RestartPolicyAlways || (policy == corev1.RestartPolicyOnFailure && res.code != 0)) {
			return res.code
		}
		// restart after a short back-off (the kubelet's starts at 10s; tests want speed)
		w.setContainer(init, i, func(s *corev1.ContainerStatus) {
			s.LastTerminationState, s.RestartCount = s.State, restarts+1
			s.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
				Message: fmt.Sprintf("back-off %s restarting failed container", backoff)}}
		})
		select {
		case <-w.ctx.Done():
			return res.code
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// push writes the worker's status to the API server (merging conditions it does not own).
func (w *podWorker) push() {
	w.pushMu.Lock()
	defer w.pushMu.Unlock()
	w.mu.Lock()
	st := *w.status.DeepCopy()
	w.mu.Unlock()
	st.Conditions = conditions(&st)
	pods := w.a.client.CoreV1().Pods(w.pod.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(context.Background(), w.pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != w.pod.UID {
			return apierrors.NewNotFound(corev1.Resource("pods"), w.pod.Name)
		}
		if cur.Status.Phase == corev1.PodSucceeded || cur.Status.Phase == corev1.PodFailed {
			return nil // terminal phases are final
		}
		mine := map[corev1.PodConditionType]bool{}
		for _, c := range st.Conditions {
			mine[c.Type] = true
		}
		next := st.DeepCopy()
		for _, c := range cur.Status.Conditions {
			if !mine[c.Type] {
				next.Conditions = append(next.Conditions, c)
			}
		}
		for i := range next.Conditions { // keep transition times of unchanged conditions
			for _, old := range cur.Status.Conditions {
				if old.Type == next.Conditions[i].Type && old.Status == next.Conditions[i].Status {
					next.Conditions[i].LastTransitionTime = old.LastTransitionTime
				}
			}
		}
		next.QOSClass = cur.Status.QOSClass
		cur.Status = *next
		_, err = pods.UpdateStatus(context.Background(), cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) {
		klog.Warningf("pod %s/%s: status update: %v", w.pod.Namespace, w.pod.Name, err)
	}
}

// conditions derives the kubelet-owned pod conditions from the container states.
func conditions(st *corev1.PodStatus) []corev1.PodCondition {
	now := metav1.Now()
	mk := func(t corev1.PodConditionType, ok bool, reason string) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s, reason = corev1.ConditionTrue, ""
		}
		return corev1.PodCondition{Type: t, Status: s, Reason: reason, LastTransitionTime: now}
	}
	terminal := st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed
	initDone := true
	for _, s := range st.InitContainerStatuses {
		if s.State.Terminated == nil || s.State.Terminated.ExitCode != 0 {
			initDone = false
		}
	}
	ready := !terminal
	for _, s := range st.ContainerStatuses {
		ready = ready && s.Ready
	}
	notReady := "ContainersNotReady"
	if terminal {
		notReady = "PodCompleted"
	}
	return []corev1.PodCondition{
		mk(corev1.PodReadyToStartContainers, !terminal, ""),
		mk(corev1.PodInitialized, initDone, "ContainersNotInitialized"),
		mk(corev1.PodReady, ready, notReady),
		mk(corev1.ContainersReady, ready, notReady),
		mk(corev1.PodScheduled, true, ""),
	}
}
