package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	resourcehelper "k8s.io/kubernetes/pkg/api/v1/resource"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
)

const helperArg = "__mount-and-exec"

var errNotStarted = errors.New("container not started")

type proc struct{ pgid int }

func (p *proc) signal(sig syscall.Signal) { _ = syscall.Kill(-p.pgid, sig) }

type runResult struct {
	code     int32
	startErr error
}

type mount struct {
	Src, Dst string
	RO       bool
}

// helperSpec is what the agent passes to its own binary re-executed in a new mount namespace.
type helperSpec struct {
	Mounts []mount
	Dir    string
	Argv   []string
}

// runOnce starts the container's process once and waits for it.
func (w *podWorker) runOnce(c *corev1.Container, init bool, i int) runResult {
	var (
		env    map[string]string
		argv   []string
		mounts []mount
		err    error
	)
	for { // like the kubelet, retry while a referenced secret, config map or key is missing
		if env, err = w.a.resolveEnv(w.ctx, w.pod, c); err == nil {
			mounts, err = w.mounts(c)
		}
		if err == nil {
			break
		}
		w.setContainer(init, i, func(s *corev1.ContainerStatus) {
			s.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CreateContainerConfigError", Message: err.Error()}}
		})
		select {
		case <-w.ctx.Done():
			return runResult{code: 137, startErr: errNotStarted}
		case <-time.After(2 * time.Second):
		}
	}
	started := metav1.Now()
	fail := func(code int32, reason string, err error) runResult {
		w.setContainer(init, i, func(s *corev1.ContainerStatus) {
			s.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason,
				Message: err.Error(), StartedAt: started, FinishedAt: metav1.Now()}}
		})
		return runResult{code: code, startErr: err}
	}
	if argv, err = w.a.argv(c, env); err != nil {
		return fail(128, "StartError", err)
	}
	workDir := c.WorkingDir
	if workDir == "" {
		workDir = filepath.Join(w.dir, "work")
	}
	termFile := filepath.Join(w.dir, "termination", c.Name)
	if err = os.MkdirAll(filepath.Dir(termFile), 0o755); err == nil {
		err = os.WriteFile(termFile, nil, 0o666)
	}
	if err != nil {
		return fail(128, "StartError", err)
	}
	termPath := c.TerminationMessagePath
	if termPath == "" {
		termPath = corev1.TerminationMessagePathDefault
	}
	logPath := filepath.Join(w.logDir, c.Name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fail(128, "StartError", err)
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, io.SeekEnd)

	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		spec, _ := json.Marshal(helperSpec{Mounts: append(mounts, mount{Src: termFile, Dst: termPath}), Dir: workDir, Argv: argv})
		self, _ := os.Executable()
		cmd = exec.Command(self, helperArg, string(spec))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Cloneflags: syscall.CLONE_NEWNS}
	} else { // no mount namespace: volumes and the termination message file are not mounted
		_ = os.MkdirAll(workDir, 0o755)
		cmd = exec.Command(argv[0], argv[1:]...)
		cmd.Dir = workDir
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	cmd.Env = w.a.envList(env, w.pod)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fail(128, "StartError", err)
	}
	p := &proc{pgid: cmd.Process.Pid}
	pidFile := filepath.Join(w.a.stateDir, "pids", fmt.Sprintf("%s_%s", w.pod.UID, c.Name))
	_ = os.WriteFile(pidFile, []byte(fmt.Sprint(p.pgid)), 0o644)
	w.mu.Lock()
	w.procs[c.Name] = p
	w.mu.Unlock()
	klog.Infof("pod %s/%s container %s: started pid %d: %q, log %s", w.pod.Namespace, w.pod.Name, c.Name, p.pgid, argv, logPath)
	containerID := fmt.Sprintf("kompress-nodeagent://%s/%s/%d", w.pod.UID, c.Name, p.pgid)
	w.setContainer(init, i, func(s *corev1.ContainerStatus) {
		t := true
		s.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}}
		s.Ready, s.Started, s.ContainerID = !init, &t, containerID
	})

	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-w.ctx.Done(): // deleted or past its deadline: SIGTERM, SIGKILL after the grace period
		p.signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(w.gracePeriod()):
			p.signal(syscall.SIGKILL)
			<-done
		}
	}
	p.signal(syscall.SIGKILL) // leftovers of the process group
	_ = os.Remove(pidFile)
	w.mu.Lock()
	delete(w.procs, c.Name)
	w.mu.Unlock()

	code := int32(cmd.ProcessState.ExitCode())
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		code = 128 + int32(ws.Signal())
	}
	msg := readLimited(termFile, 0, 4096)
	if msg == "" && code != 0 && c.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError {
		msg = tailLog(logPath, logStart)
	}
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	klog.Infof("pod %s/%s container %s: exited %d", w.pod.Namespace, w.pod.Name, c.Name, code)
	w.setContainer(init, i, func(s *corev1.ContainerStatus) {
		s.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code, Reason: reason,
			Message: msg, StartedAt: started, FinishedAt: metav1.Now(), ContainerID: containerID}}
		s.Ready, s.Started = false, new(bool)
	})
	return runResult{code: code}
}

func readLimited(path string, off int64, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if off > 0 {
		_, _ = f.Seek(off, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, max))
	return string(b)
}

// tailLog returns the last 80 lines, at most 2048 bytes, written to the log since off.
func tailLog(path string, off int64) string {
	if fi, err := os.Stat(path); err == nil && fi.Size()-off > 2048 {
		off = fi.Size() - 2048
	}
	lines := strings.SplitAfter(readLimited(path, off, 2048), "\n")
	if len(lines) > 81 {
		lines = lines[len(lines)-81:]
	}
	return strings.Join(lines, "")
}

// argv is the container's command + args with $(VAR) expanded.
func (a *agent) argv(c *corev1.Container, env map[string]string) ([]string, error) {
	cmd := c.Command
	if len(cmd) == 0 {
		img := c.Image
		if i := strings.IndexByte(img, '@'); i >= 0 {
			img = img[:i]
		}
		if i := strings.LastIndexByte(img, ':'); i > strings.LastIndexByte(img, '/') {
			img = img[:i]
		}
		ep, ok := a.entrypts[img]
		if !ok {
			ep, ok = a.entrypts["*"]
		}
		if !ok {
			return nil, fmt.Errorf("container %s has no command; the test node agent ignores images (image %q has no --image-entrypoint)", c.Name, c.Image)
		}
		cmd = strings.Fields(ep)
	}
	mapping := expansion.MappingFuncFor(env)
	var out []string
	for _, s := range append(append([]string{}, cmd...), c.Args...) {
		out = append(out, expansion.Expand(s, mapping))
	}
	if !strings.Contains(out[0], "/") {
		p, err := exec.LookPath(out[0])
		if err != nil {
			return nil, fmt.Errorf("exec: %q: executable file not found in $PATH of the test node agent", out[0])
		}
		out[0] = p
	}
	return out, nil
}

// envList is the process environment: the passed-through agent variables, then the pod's.
func (a *agent) envList(env map[string]string, p *corev1.Pod) []string {
	all := map[string]string{"HOSTNAME": p.Name}
	for _, k := range a.passEnv {
		if v, ok := os.LookupEnv(k); ok {
			all[k] = v
		}
	}
	for k, v := range env {
		all[k] = v
	}
	out := make([]string, 0, len(all))
	for k, v := range all {
		out = append(out, k+"="+v)
	}
	return out
}

// resolveEnv computes the container's env like the kubelet: envFrom first, then env, with
// $(VAR) references to earlier variables expanded in plain values.
func (a *agent) resolveEnv(ctx context.Context, p *corev1.Pod, c *corev1.Container) (map[string]string, error) {
	env := map[string]string{}
	cms := map[string]*corev1.ConfigMap{}
	secrets := map[string]*corev1.Secret{}
	getCM := func(name string) (*corev1.ConfigMap, error) {
		if cm, ok := cms[name]; ok {
			return cm, nil
		}
		cm, err := a.client.CoreV1().ConfigMaps(p.Namespace).Get(ctx, name, metav1.GetOptions{})
		cms[name] = cm
		return cm, err
	}
	getSecret := func(name string) (*corev1.Secret, error) {
		if s, ok := secrets[name]; ok {
			return s, nil
		}
		s, err := a.client.CoreV1().Secrets(p.Namespace).Get(ctx, name, metav1.GetOptions{})
		secrets[name] = s
		return s, err
	}
	optional := func(o *bool) bool { return o != nil && *o }
	for _, src := range c.EnvFrom {
		switch {
		case src.ConfigMapRef != nil:
			cm, err := getCM(src.ConfigMapRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && optional(src.ConfigMapRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("configmap %q: %w", src.ConfigMapRef.Name, err)
			}
			for k, v := range cm.Data {
				env[src.Prefix+k] = v
			}
		case src.SecretRef != nil:
			s, err := getSecret(src.SecretRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && optional(src.SecretRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("secret %q: %w", src.SecretRef.Name, err)
			}
			for k, v := range s.Data {
				env[src.Prefix+k] = string(v)
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = expansion.Expand(e.Value, expansion.MappingFuncFor(env))
			continue
		}
		switch vf := e.ValueFrom; {
		case vf.SecretKeyRef != nil:
			s, err := getSecret(vf.SecretKeyRef.Name)
			if err == nil {
				if v, ok := s.Data[vf.SecretKeyRef.Key]; ok {
					env[e.Name] = string(v)
					continue
				}
				err = fmt.Errorf("couldn't find key %s in Secret %s/%s", vf.SecretKeyRef.Key, p.Namespace, vf.SecretKeyRef.Name)
			} else if !apierrors.IsNotFound(err) {
				return nil, err
			}
			if !optional(vf.SecretKeyRef.Optional) {
				return nil, err
			}
		case vf.ConfigMapKeyRef != nil:
			cm, err := getCM(vf.ConfigMapKeyRef.Name)
			if err == nil {
				if v, ok := cm.Data[vf.ConfigMapKeyRef.Key]; ok {
					env[e.Name] = v
					continue
				}
				err = fmt.Errorf("couldn't find key %s in ConfigMap %s/%s", vf.ConfigMapKeyRef.Key, p.Namespace, vf.ConfigMapKeyRef.Name)
			} else if !apierrors.IsNotFound(err) {
				return nil, err
			}
			if !optional(vf.ConfigMapKeyRef.Optional) {
				return nil, err
			}
		case vf.FieldRef != nil:
			v, err := podField(p, vf.FieldRef.FieldPath)
			if err != nil {
				return nil, err
			}
			env[e.Name] = v
		case vf.ResourceFieldRef != nil:
			fs := vf.ResourceFieldRef.DeepCopy()
			if fs.ContainerName == "" {
				fs.ContainerName = c.Name
			}
			v, err := resourcehelper.ExtractResourceValueByContainerNameAndNodeAllocatable(fs, p, fs.ContainerName, a.allocBle)
			if err != nil {
				return nil, err
			}
			env[e.Name] = v
		}
	}
	return env, nil
}

func podField(p *corev1.Pod, path string) (string, error) {
	var keyOf = func(prefix string) (string, bool) {
		if strings.HasPrefix(path, prefix+"['") && strings.HasSuffix(path, "']") {
			return path[len(prefix)+2 : len(path)-2], true
		}
		return "", false
	}
	if k, ok := keyOf("metadata.labels"); ok {
		return p.Labels[k], nil
	}
	if k, ok := keyOf("metadata.annotations"); ok {
		return p.Annotations[k], nil
	}
	switch path {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return string(p.UID), nil
	case "spec.nodeName":
		return p.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.podIP", "status.hostIPs", "status.podIPs":
		return "127.0.0.1", nil
	}
	return "", fmt.Errorf("fieldRef %q is not supported by the test node agent", path)
}

// mounts prepares the pod's volumes (once) and returns the container's bind mounts.
func (w *podWorker) mounts(c *corev1.Container) ([]mount, error) {
	var out []mount
	for _, vm := range c.VolumeMounts {
		var vol *corev1.Volume
		for i := range w.pod.Spec.Volumes {
			if w.pod.Spec.Volumes[i].Name == vm.Name {
				vol = &w.pod.Spec.Volumes[i]
			}
		}
		if vol == nil {
			return nil, fmt.Errorf("volume %q not found", vm.Name)
		}
		src, err := w.volume(vol)
		if err != nil {
			return nil, err
		}
		if src == "" { // unsupported kind (projected, downwardAPI, ...): not mounted
			klog.V(2).Infof("pod %s/%s: volume %s not supported, not mounted", w.pod.Namespace, w.pod.Name, vm.Name)
			continue
		}
		if vm.SubPath != "" {
			src = filepath.Join(src, vm.SubPath)
			if _, err := os.Stat(src); os.IsNotExist(err) {
				_ = os.MkdirAll(src, 0o777)
			}
		}
		out = append(out, mount{Src: src, Dst: vm.MountPath, RO: vm.ReadOnly})
	}
	return out, nil
}

// volume returns the host directory backing a volume, creating and filling it if needed.
func (w *podWorker) volume(v *corev1.Volume) (string, error) {
	dir := filepath.Join(w.dir, "volumes", v.Name)
	write := func(data map[string][]byte, items []corev1.KeyToPath) error {
		if _, err := os.Stat(dir); err == nil {
			return nil // filled by an earlier container of the pod
		}
		tmp := dir + ".tmp"
		_ = os.RemoveAll(tmp)
		if len(items) == 0 {
			for k := range data {
				items = append(items, corev1.KeyToPath{Key: k, Path: k})
			}
		}
		for _, it := range items {
			b, ok := data[it.Key]
			if !ok {
				return fmt.Errorf("volume %s: key %q not found", v.Name, it.Key)
			}
			f := filepath.Join(tmp, it.Path)
			if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(f, b, 0o644); err != nil {
				return err
			}
		}
		_ = os.MkdirAll(tmp, 0o755)
		return os.Rename(tmp, dir)
	}
	ctx := w.ctx
	switch {
	case v.EmptyDir != nil:
		return dir, os.MkdirAll(dir, 0o777)
	case v.HostPath != nil:
		if t := v.HostPath.Type; t != nil && *t == corev1.HostPathDirectoryOrCreate {
			_ = os.MkdirAll(v.HostPath.Path, 0o755)
		}
		return v.HostPath.Path, nil
	case v.ConfigMap != nil:
		cm, err := w.a.client.CoreV1().ConfigMaps(w.pod.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
		data := map[string][]byte{}
		if err != nil {
			if !apierrors.IsNotFound(err) || v.ConfigMap.Optional == nil || !*v.ConfigMap.Optional {
				return "", fmt.Errorf("configmap %q: %w", v.ConfigMap.Name, err)
			}
		} else {
			for k, s := range cm.Data {
				data[k] = []byte(s)
			}
			for k, b := range cm.BinaryData {
				data[k] = b
			}
		}
		return dir, write(data, v.ConfigMap.Items)
	case v.Secret != nil:
		s, err := w.a.client.CoreV1().Secrets(w.pod.Namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
		data := map[string][]byte{}
		if err != nil {
			if !apierrors.IsNotFound(err) || v.Secret.Optional == nil || !*v.Secret.Optional {
				return "", fmt.Errorf("secret %q: %w", v.Secret.SecretName, err)
			}
		} else {
			data = s.Data
		}
		return dir, write(data, v.Secret.Items)
	}
	return "", nil
}

// execHelper runs in the container's new mount namespace (CLONE_NEWNS): it makes the mounts
// private, bind-mounts the volumes and the termination message file, and execs the command.
func execHelper(args []string) {
	die := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "kompress-nodeagent: "+format+"\n", a...)
		os.Exit(128)
	}
	var spec helperSpec
	if len(args) != 1 || json.Unmarshal([]byte(args[0]), &spec) != nil {
		die("bad helper arguments")
	}
	if err := syscall.Mount("none", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		die("make mounts private: %v", err)
	}
	for _, m := range spec.Mounts {
		fi, err := os.Stat(m.Src)
		if err != nil {
			die("mount source: %v", err)
		}
		if _, err := os.Stat(m.Dst); os.IsNotExist(err) { // a mount point on the host
			if fi.IsDir() {
				err = os.MkdirAll(m.Dst, 0o755)
			} else if err = os.MkdirAll(filepath.Dir(m.Dst), 0o755); err == nil {
				err = os.WriteFile(m.Dst, nil, 0o644)
			}
			if err != nil {
				die("mount point %s: %v", m.Dst, err)
			}
		}
		if err := syscall.Mount(m.Src, m.Dst, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			die("bind %s on %s: %v", m.Src, m.Dst, err)
		}
		if m.RO {
			if err := syscall.Mount("", m.Dst, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				die("read-only %s: %v", m.Dst, err)
			}
		}
	}
	if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
		die("working dir: %v", err)
	}
	if err := os.Chdir(spec.Dir); err != nil {
		die("working dir: %v", err)
	}
	err := syscall.Exec(spec.Argv[0], spec.Argv, os.Environ())
	die("exec %s: %v", spec.Argv[0], err)
}
