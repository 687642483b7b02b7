// Command runc-wrapper runs the real runc after adapting containers to a host whose root lacks
// CAP_SYS_RESOURCE (seen on the CI machines: CapBnd 0x1fffeffffff).
//
// Without the capability a runtime cannot grant it to a container ("unable to apply caps: operation not
// permitted" for every privileged container) nor lower oom_score_adj below 0 (kubelet's pod sandboxes ask
// for -998 and runc fails with "can't get final child's PID from pipe: EOF"). On `create` and `run` the
// wrapper edits the bundle's config.json, on `exec` the --process file: CAP_SYS_RESOURCE leaves every
// capability set and a negative oomScoreAdj becomes 0. Everything else passes through unchanged; then it
// execs the real runc (HYBRIDORCH_REAL_RUNC, else the first runc found in /usr/sbin, /usr/bin, /sbin).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

const dropped = "CAP_SYS_RESOURCE"

// runc's global flags that take a value (all others are booleans); needed to find the subcommand.
var globalWithValue = map[string]bool{"--root": true, "--log": true, "--log-format": true, "--criu": true,
	"--rootless": true}

func realRunc() (string, error) {
	if p := os.Getenv("HYBRIDORCH_REAL_RUNC"); p != "" {
		return p, nil
	}
	self, _ := os.Executable()
	for _, p := range []string{"/usr/sbin/runc", "/usr/bin/runc", "/sbin/runc", "/usr/local/sbin/runc.real"} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() && !sameFile(p, self) {
			return p, nil
		}
	}
	return "", fmt.Errorf("runc-wrapper: no runc found (set HYBRIDORCH_REAL_RUNC)")
}

func sameFile(a, b string) bool {
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(sa, sb)
}

// subcommand returns the index of runc's subcommand in args (after the global flags), or -1.
func subcommand(args []string) int {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return i
		}
		if globalWithValue[a] {
			i++ // "--root DIR": skip the value; "--root=DIR" is one word
		}
	}
	return -1
}

// flagValue finds "--name V", "--name=V", "-s V" among a subcommand's arguments.
func flagValue(args []string, long, short string) (string, bool) {
	for i, a := range args {
		if a == "--" {
			break
		}
		if (a == long || (short != "" && a == short)) && i+1 < len(args) {
			return args[i+1], true
		}
		if strings.HasPrefix(a, long+"=") {
			return a[len(long)+1:], true
		}
	}
	return "", false
}

func withoutCap(list []any) []any {
	out := list[:0]
	for _, c := range list {
		if s, ok := c.(string); !ok || s != dropped {
			out = append(out, c)
		}
	}
	return out
}

// fixProcess edits an OCI "process" object in place and reports whether anything changed.
func fixProcess(proc map[string]any) bool {
	changed := false
	if caps, ok := proc["capabilities"].(map[string]any); ok {
		for name, v := range caps {
			if list, ok := v.([]any); ok {
				n := len(list)
				caps[name] = withoutCap(list)
				changed = changed || len(caps[name].([]any)) != n
			}
		}
	}
	if adj, ok := proc["oomScoreAdj"].(float64); ok && adj < 0 {
		proc["oomScoreAdj"] = 0
		changed = true
	}
	return changed
}

// rewrite loads a JSON file, lets edit change the object, and writes it back (same mode) when it did.
func rewrite(path string, edit func(map[string]any) bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if !edit(doc) {
		return nil
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp := path + ".runc-wrapper"
	if err := os.WriteFile(tmp, out, st.Mode().Perm()); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// dropCgroupsPath removes linux.cgroupsPath when HYBRIDORCH_DROP_CGROUPS_PATH is set (the node's runsc
// wrapper sets it). runsc runs with --ignore-cgroups on these nested cgroup v1 nodes, but still resolves a
// pod container's (relative, systemd-style) cgroupsPath against its own cgroups and fails there ("finding
// current cgroups: Rel: can't make ../system.slice/containerd.service relative to /kubelet.slice").
func dropCgroupsPath(doc map[string]any) bool {
	linux, ok := doc["linux"].(map[string]any)
	if os.Getenv("HYBRIDORCH_DROP_CGROUPS_PATH") == "" || !ok {
		return false
	}
	if _, ok := linux["cgroupsPath"]; !ok {
		return false
	}
	delete(linux, "cgroupsPath")
	return true
}

func adapt(args []string) error {
	i := subcommand(args)
	if i < 0 {
		return nil
	}
	rest := args[i+1:]
	switch args[i] {
	case "create", "run":
		bundle, ok := flagValue(rest, "--bundle", "-b")
		if !ok {
			bundle = "."
		}
		return rewrite(filepath.Join(bundle, "config.json"), func(doc map[string]any) bool {
			proc, ok := doc["process"].(map[string]any)
			changed := ok && fixProcess(proc)
			return dropCgroupsPath(doc) || changed
		})
	case "exec":
		if p, ok := flagValue(rest, "--process", "-p"); ok {
			return rewrite(p, fixProcess)
		}
	}
	return nil
}

func main() {
	runc, err := realRunc()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := adapt(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "runc-wrapper: %v\n", err)
		os.Exit(1)
	}
	argv := append([]string{runc}, os.Args[1:]...)
	err = syscall.Exec(runc, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "runc-wrapper: exec %s: %v\n", runc, err)
	os.Exit(1)
}
