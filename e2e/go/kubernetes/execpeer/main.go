// Command execpeer is the kubelet's streaming endpoint for the e2e harness, which runs no kubelet.
//
// kube-apiserver proxies pods/exec and pods/attach to https://NODE:PORT/exec/... and /attach/...
// of the node a pod is bound to. The harness registers a Node whose kubelet endpoint is this
// process, so those requests go the whole way through the real API server and arrive here. Each
// request is served by the kubelet's own streaming code (k8s.io/kubelet/pkg/cri/streaming/
// remotecommand: SPDY/3.1 and the WebSocket channel protocols); an exec runs its command vector as
// a local process, an attach echoes stdin back to stdout.
//
//	execpeer --listen 127.0.0.1:10250
//
// The serving certificate is self-signed and made at start-up: kube-apiserver does not verify
// kubelet serving certificates unless it is given --kubelet-certificate-authority.
//
// Each command runs with EXECPEER_NAMESPACE, EXECPEER_POD and EXECPEER_CONTAINER set to the
// target of the request, so a test can see where its exec was routed.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/tools/remotecommand"
	streaming "k8s.io/kubelet/pkg/cri/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

const (
	// The kubelet's default --streaming-connection-idle-timeout.
	idleTimeout = 4 * time.Hour
	// How long an exec waits for output pipes still held open by children of its command after
	// the command itself has exited.
	outputDrainTimeout = 2 * time.Second
)

func main() {
	listen := flag.String("listen", "127.0.0.1:10250", "address to serve the kubelet streaming API on (HTTPS)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("execpeer ")

	cert, err := selfSignedCertificate()
	if err != nil {
		log.Fatalf("serving certificate: %v", err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	// kube-apiserver builds /{exec,attach}/NAMESPACE/POD/CONTAINER (streamLocation in
	// pkg/registry/core/pod/strategy.go); the kubelet also accepts a pod UID before the container.
	mux.HandleFunc("/exec/{namespace}/{pod}/{container}", serveExec)
	mux.HandleFunc("/exec/{namespace}/{pod}/{uid}/{container}", serveExec)
	mux.HandleFunc("/attach/{namespace}/{pod}/{container}", serveAttach)
	mux.HandleFunc("/attach/{namespace}/{pod}/{uid}/{container}", serveAttach)

	srv := &http.Server{
		Handler:           logRequests(mux),
		ReadHeaderTimeout: 30 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		// SPDY and WebSocket upgrades need HTTP/1.1: do not offer HTTP/2.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.Default(),
	}
	log.Printf("serving the kubelet streaming API on https://%s", ln.Addr())
	if err := srv.ServeTLS(ln, "", ""); err != nil {
		log.Fatalf("serve: %v", err)
	}
}

// logRequests logs each request line. It hands the original ResponseWriter on: the WebSocket and
// SPDY upgrades hijack the connection.
func logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		transport := "http"
		if p := r.Header.Get("Sec-Websocket-Protocol"); p != "" {
			transport = "websocket (" + p + ")"
		} else if p := r.Header.Values("X-Stream-Protocol-Version"); len(p) > 0 {
			transport = fmt.Sprintf("spdy %v", p)
		}
		log.Printf("%s %s %s from %s, %s", r.Method, r.URL.RequestURI(), r.Proto, r.RemoteAddr, transport)
		next.ServeHTTP(w, r)
	})
}

// target is the pod and container a request names, with the streams it asked for.
type target struct {
	namespace, pod, container string
	uid                       types.UID
	opts                      *streaming.Options
}

func parseTarget(w http.ResponseWriter, r *http.Request) (*target, bool) {
	opts, err := streaming.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil, false
	}
	return &target{
		namespace: r.PathValue("namespace"),
		pod:       r.PathValue("pod"),
		container: r.PathValue("container"),
		uid:       types.UID(r.PathValue("uid")),
		opts:      opts,
	}, true
}

func (t *target) String() string {
	return fmt.Sprintf("%s/%s/%s", t.namespace, t.pod, t.container)
}

func serveExec(w http.ResponseWriter, r *http.Request) {
	t, ok := parseTarget(w, r)
	if !ok {
		return
	}
	cmd := r.URL.Query()[corev1.ExecCommandParam]
	streaming.ServeExec(w, r, (*executor)(t), t.pod, t.uid, t.container, cmd, t.opts,
		idleTimeout, remotecommandconsts.DefaultStreamCreationTimeout, remotecommandconsts.SupportedStreamingProtocols)
}

func serveAttach(w http.ResponseWriter, r *http.Request) {
	t, ok := parseTarget(w, r)
	if !ok {
		return
	}
	streaming.ServeAttach(w, r, (*attacher)(t), t.pod, t.uid, t.container, t.opts,
		idleTimeout, remotecommandconsts.DefaultStreamCreationTimeout, remotecommandconsts.SupportedStreamingProtocols)
}

// executor runs an exec's command vector as a local process.
type executor target

var _ streaming.Executor = (*executor)(nil)

func (e *executor) ExecInContainer(ctx context.Context, _ string, _ types.UID, _ string, cmd []string,
	in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	t := (*target)(e)
	go drainResize(ctx, resize)
	if len(cmd) == 0 {
		return errors.New("no command given")
	}
	c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	c.Env = append(os.Environ(),
		"EXECPEER_NAMESPACE="+t.namespace, "EXECPEER_POD="+t.pod, "EXECPEER_CONTAINER="+t.container)
	c.WaitDelay = outputDrainTimeout
	// The WebSocket protocol opens every channel, asked for or not: use only the streams the
	// request asked for, so a command without stdin reads end-of-file at once.
	if t.opts.Stdout && out != nil {
		c.Stdout = out
	}
	if t.opts.Stderr && errOut != nil {
		c.Stderr = errOut
	} else if tty {
		// A terminal has one output stream.
		c.Stderr = c.Stdout
	}
	var stdin io.WriteCloser
	if t.opts.Stdin && in != nil {
		var err error
		if stdin, err = c.StdinPipe(); err != nil {
			return err
		}
	}
	if err := c.Start(); err != nil {
		log.Printf("exec %s %q: %v", t, cmd, err)
		return err
	}
	if stdin != nil {
		// Not waited for: the client may keep stdin open after the command has exited. Wait
		// closes the pipe, which ends this copy; the stream itself ends with the connection.
		go func() {
			_, _ = io.Copy(stdin, in)
			_ = stdin.Close()
		}()
	}
	err := c.Wait()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		code := exitErr.ExitCode()
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		log.Printf("exec %s %q: exit code %d", t, cmd, code)
		return utilexec.CodeExitError{Err: err, Code: code}
	}
	if err != nil && !errors.Is(err, exec.ErrWaitDelay) {
		log.Printf("exec %s %q: %v", t, cmd, err)
		return err
	}
	log.Printf("exec %s %q: exit code 0", t, cmd)
	return nil
}

// attacher echoes an attach's stdin back to its stdout.
type attacher target

var _ streaming.Attacher = (*attacher)(nil)

func (a *attacher) AttachContainer(ctx context.Context, _ string, _ types.UID, _ string,
	in io.Reader, out, _ io.WriteCloser, _ bool, resize <-chan remotecommand.TerminalSize) error {
	t := (*target)(a)
	go drainResize(ctx, resize)
	var n int64
	if t.opts.Stdin && in != nil {
		dst := io.Discard
		if t.opts.Stdout && out != nil {
			dst = out
		}
		var err error
		if n, err = io.Copy(dst, in); err != nil {
			log.Printf("attach %s: %v", t, err)
			return err
		}
	}
	log.Printf("attach %s: echoed %d bytes", t, n)
	return nil
}

func drainResize(ctx context.Context, resize <-chan remotecommand.TerminalSize) {
	if resize == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-resize:
			if !ok {
				return
			}
		}
	}
}

func selfSignedCertificate() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	host, _ := os.Hostname()
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "portcullis-exec-peer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost", host},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
