package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// apiTypes are the kinds deploy/k8s may hold, each decoded into the Go type the API server uses.
var apiTypes = map[string]func() any{
	"apps/v1 Deployment":  func() any { return &appsv1.Deployment{} },
	"apps/v1 StatefulSet": func() any { return &appsv1.StatefulSet{} },
	"v1 Service":          func() any { return &corev1.Service{} },
	"v1 ConfigMap":        func() any { return &corev1.ConfigMap{} },
	"v1 Namespace":        func() any { return &corev1.Namespace{} },
}

// checkManifests decodes every document of every file strictly into its Kubernetes API type, so a
// misspelt or misplaced field, or a value of the wrong type, is an error here rather than a field
// the cluster drops or an apply that fails. It returns one error per bad document.
func checkManifests(paths []string) error {
	var problems []error
	for _, path := range paths {
		docs, err := documents(path)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", path, err))
			continue
		}
		for i, doc := range docs {
			if err := checkDocument(doc); err != nil {
				problems = append(problems, fmt.Errorf("%s, document %d: %w", path, i+1, err))
			}
		}
	}
	return errors.Join(problems...)
}

func documents(path string) ([][]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(file))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(stripComments(doc))) > 0 {
			docs = append(docs, doc)
		}
	}
}

// stripComments drops comment-only lines, so a document of comments alone counts as empty.
func stripComments(doc []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line...)
			out = append(out, '\n')
		}
	}
	return out
}

func checkDocument(doc []byte) error {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return err
	}
	newObject, ok := apiTypes[head.APIVersion+" "+head.Kind]
	if !ok {
		return fmt.Errorf("%s %s is not a kind this check knows", head.APIVersion, head.Kind)
	}
	return yaml.UnmarshalStrict(doc, newObject())
}
