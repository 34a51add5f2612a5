// Command deploy-check checks what deploy/ and the Tiltfile declare without Tilt, Docker or a
// cluster (test/deploy.test.ts runs it).
//
//	deploy-check tiltfile <Tiltfile>   ->   {"calls": [{"fn": "docker_build", "args": {...}}, ...]}
//
// evaluates a Tiltfile with go.starlark.net, the Starlark interpreter Tilt itself embeds, with
// Tilt's builtins replaced by recorders: each call is checked against the builtin's signature (as
// Tilt documents it) and written out as JSON. A builtin Tilt does not have, a keyword it does not
// take, a missing required argument or any Starlark error makes it exit 1, the error on stderr.
//
//	deploy-check manifests <file.yaml>...
//
// decodes each Kubernetes object strictly into its API type (manifests.go) and exits 1 on the
// first file with an unknown field or a value of the wrong type.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"go.starlark.net/syntax"
)

// param is one parameter of a Tilt builtin; required ones have no default in Tilt's API.
type param struct {
	name     string
	required bool
}

// signature is a Tilt builtin as this checker knows it: parameters in positional order, and the
// kind of value it returns (empty for None).
type signature struct {
	params  []param
	returns string
}

func req(name string) param { return param{name: name, required: true} }
func opt(name string) param { return param{name: name} }

// tiltBuiltins lists the Tilt API (docs.tilt.dev/api.html) the Tiltfile may use. A builtin missing
// here makes the check fail with "undefined", which is how a misspelt builtin is caught: add the
// builtin, with Tilt's own parameter list, when the Tiltfile needs one more.
var tiltBuiltins = map[string]signature{
	"docker_build": {params: []param{
		req("ref"), req("context"), opt("build_args"), opt("dockerfile"), opt("dockerfile_contents"),
		opt("live_update"), opt("match_in_env_vars"), opt("ignore"), opt("only"), opt("entrypoint"),
		opt("target"), opt("ssh"), opt("network"), opt("secret"), opt("extra_tag"), opt("container_args"),
		opt("cache_from"), opt("pull"), opt("platform"), opt("extra_hosts"),
	}},
	"k8s_yaml": {params: []param{req("yaml"), opt("allow_duplicates")}},
	"k8s_resource": {params: []param{
		opt("workload"), opt("new_name"), opt("port_forwards"), opt("extra_pod_selectors"),
		opt("trigger_mode"), opt("resource_deps"), opt("objects"), opt("auto_init"),
		opt("pod_readiness"), opt("links"), opt("labels"), opt("discovery_strategy"),
	}},
	"local_resource": {params: []param{
		req("name"), opt("cmd"), opt("deps"), opt("trigger_mode"), opt("resource_deps"), opt("ignore"),
		opt("auto_init"), opt("serve_cmd"), opt("cmd_bat"), opt("serve_cmd_bat"), opt("allow_parallel"),
		opt("links"), opt("labels"), opt("env"), opt("serve_env"), opt("readiness_probe"), opt("dir"),
		opt("serve_dir"),
	}},
	"local": {params: []param{
		req("command"), opt("quiet"), opt("command_bat"), opt("echo_off"), opt("env"), opt("dir"),
		opt("stdin"),
	}, returns: "Blob"},
	"kustomize":          {params: []param{req("pathToDir"), opt("kustomize_bin"), opt("flags")}, returns: "Blob"},
	"read_file":          {params: []param{req("file_path"), opt("default")}, returns: "Blob"},
	"blob":               {params: []param{req("contents")}, returns: "Blob"},
	"watch_file":         {params: []param{req("file_path")}},
	"sync":               {params: []param{req("local_path"), req("remote_path")}, returns: "LiveUpdateStep"},
	"run":                {params: []param{req("cmd"), opt("trigger"), opt("echo_off")}, returns: "LiveUpdateStep"},
	"fall_back_on":       {params: []param{req("files")}, returns: "LiveUpdateStep"},
	"initial_sync":       {params: []param{}, returns: "LiveUpdateStep"},
	"restart_container":  {params: []param{}, returns: "LiveUpdateStep"},
	"port_forward":       {params: []param{req("local_port"), opt("container_port"), opt("name"), opt("link_path"), opt("host")}, returns: "PortForward"},
	"link":               {params: []param{req("url"), opt("name")}, returns: "Link"},
	"allow_k8s_contexts": {params: []param{req("contexts")}},
	"update_settings": {params: []param{
		opt("max_parallel_updates"), opt("k8s_upsert_timeout_secs"),
		opt("suppress_unused_image_warnings"), opt("k8s_server_side_apply"),
	}},
	"watch_settings":   {params: []param{req("ignore")}},
	"version_settings": {params: []param{opt("check_updates"), opt("constraint")}},
	"warn":             {params: []param{req("msg")}},
}

// recorded is what a recording builtin returns when Tilt's returns a value (a Blob, a live update
// step, a port forward, a link): the call itself, so the calls that take it can be inspected.
type recorded struct {
	kind string
	call call
}

func (r *recorded) String() string        { return fmt.Sprintf("<%s from %s>", r.kind, r.call.Fn) }
func (r *recorded) Type() string          { return r.kind }
func (r *recorded) Freeze()               {}
func (r *recorded) Truth() starlark.Bool  { return starlark.True }
func (r *recorded) Hash() (uint32, error) { return 0, fmt.Errorf("unhashable: %s", r.kind) }

type call struct {
	Fn   string         `json:"fn"`
	Args map[string]any `json:"args"`
}

type output struct {
	Calls []call `json:"calls"`
}

const usage = "usage: deploy-check tiltfile <Tiltfile> | deploy-check manifests <file.yaml>..."

func main() {
	switch {
	case len(os.Args) == 3 && os.Args[1] == "tiltfile":
		runTiltfile(os.Args[2])
	case len(os.Args) >= 3 && os.Args[1] == "manifests":
		if err := checkManifests(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(64)
	}
}

func runTiltfile(path string) {
	calls, err := evaluate(path)
	if err != nil {
		if evalErr, ok := err.(*starlark.EvalError); ok {
			fmt.Fprintln(os.Stderr, evalErr.Backtrace())
		} else {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(1)
	}
	encoder := json.NewEncoder(os.Stdout)
	encoder.SetIndent("", "  ")
	if err := encoder.Encode(output{Calls: calls}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func evaluate(path string) ([]call, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	calls := []call{}
	predeclared := starlark.StringDict{
		// Tilt's trigger modes are opaque constants; their names are what a test wants to see.
		"TRIGGER_MODE_AUTO":   starlark.String("TRIGGER_MODE_AUTO"),
		"TRIGGER_MODE_MANUAL": starlark.String("TRIGGER_MODE_MANUAL"),
		// Tilt's struct() is Starlark's own; its values are only ever read inside the Tiltfile.
		"struct": starlark.NewBuiltin("struct", starlarkstruct.Make),
	}
	for name, sig := range tiltBuiltins {
		predeclared[name] = starlark.NewBuiltin(name, recorder(sig, &calls))
	}
	thread := &starlark.Thread{
		Name: filepath.Base(path),
		Print: func(_ *starlark.Thread, msg string) {
			fmt.Fprintln(os.Stderr, msg)
		},
		// load() would fetch Tilt extensions over the network: the Tiltfile must not need any.
		Load: func(_ *starlark.Thread, module string) (starlark.StringDict, error) {
			return nil, fmt.Errorf("load(%q): the Tiltfile is checked without Tilt extensions", module)
		},
	}
	// The dialect Tilt enables on top of standard Starlark.
	options := &syntax.FileOptions{Set: true, While: true, TopLevelControl: true, GlobalReassign: true, Recursion: true}
	if _, err := starlark.ExecFileOptions(options, thread, path, src, predeclared); err != nil {
		return nil, err
	}
	return calls, nil
}

func recorder(sig signature, calls *[]call) func(*starlark.Thread, *starlark.Builtin, starlark.Tuple, []starlark.Tuple) (starlark.Value, error) {
	return func(_ *starlark.Thread, fn *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
		bound, err := bind(fn.Name(), sig, args, kwargs)
		if err != nil {
			return nil, err
		}
		c := call{Fn: fn.Name(), Args: bound}
		*calls = append(*calls, c)
		if sig.returns == "" {
			return starlark.None, nil
		}
		return &recorded{kind: sig.returns, call: c}, nil
	}
}

// bind matches arguments to parameters as Tilt's own argument unpacking does: positionals in
// order, then keywords by name, each at most once, every required one present.
func bind(fn string, sig signature, args starlark.Tuple, kwargs []starlark.Tuple) (map[string]any, error) {
	if len(args) > len(sig.params) {
		return nil, fmt.Errorf("%s: got %d positional arguments, want at most %d", fn, len(args), len(sig.params))
	}
	bound := map[string]any{}
	for i, arg := range args {
		value, err := toJSON(arg)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", fn, sig.params[i].name, err)
		}
		bound[sig.params[i].name] = value
	}
	for _, kwarg := range kwargs {
		name := string(kwarg[0].(starlark.String))
		if !hasParam(sig, name) {
			return nil, fmt.Errorf("%s: unexpected keyword argument %q", fn, name)
		}
		if _, dup := bound[name]; dup {
			return nil, fmt.Errorf("%s: got multiple values for argument %q", fn, name)
		}
		value, err := toJSON(kwarg[1])
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", fn, name, err)
		}
		bound[name] = value
	}
	for _, p := range sig.params {
		if _, ok := bound[p.name]; p.required && !ok {
			return nil, fmt.Errorf("%s: missing argument for %s", fn, p.name)
		}
	}
	return bound, nil
}

func hasParam(sig signature, name string) bool {
	for _, p := range sig.params {
		if p.name == name {
			return true
		}
	}
	return false
}

// toJSON turns a Starlark value into what encoding/json writes; a recorded value becomes its call
// under "$fn" and "args", so a kustomize() inside a k8s_yaml() stays visible.
func toJSON(v starlark.Value) (any, error) {
	switch v := v.(type) {
	case starlark.NoneType:
		return nil, nil
	case starlark.Bool:
		return bool(v), nil
	case starlark.Int:
		n, ok := v.Int64()
		if !ok {
			return nil, fmt.Errorf("integer %s out of range", v)
		}
		return n, nil
	case starlark.Float:
		return float64(v), nil
	case starlark.String:
		return string(v), nil
	case *recorded:
		return map[string]any{"$fn": v.call.Fn, "$type": v.kind, "args": v.call.Args}, nil
	case *starlark.List:
		return sequenceToJSON(v)
	case starlark.Tuple:
		return sequenceToJSON(v)
	case *starlark.Dict:
		out := map[string]any{}
		for _, item := range v.Items() {
			key, ok := item[0].(starlark.String)
			if !ok {
				return nil, fmt.Errorf("dict key %s is not a string", item[0])
			}
			value, err := toJSON(item[1])
			if err != nil {
				return nil, err
			}
			out[string(key)] = value
		}
		return out, nil
	default:
		return nil, fmt.Errorf("cannot record a %s", v.Type())
	}
}

func sequenceToJSON(seq starlark.Indexable) ([]any, error) {
	out := make([]any, 0, seq.Len())
	for i := 0; i < seq.Len(); i++ {
		value, err := toJSON(seq.Index(i))
		if err != nil {
			return nil, err
		}
		out = append(out, value)
	}
	return out, nil
}
