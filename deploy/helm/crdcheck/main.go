// Command crdcheck strictly decodes the custom resources of rendered Kubernetes manifests
// into the Go API types of the operators that serve them (KEDA, prometheus-operator).
//
// Usage: crdcheck FILE...   (each FILE: YAML documents separated by "---")
//
// A document of a checked kind must decode without an unknown or mistyped field, carry
// the group/version the operator serves, and pass the checks KEDA's admission webhook
// makes without a cluster (replica bounds, fallback, triggers). Other kinds are counted
// and left to kubernetes-validate. Exit 1 and one line per problem when any fails.
package main

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strings"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"
)

// checker decodes one document strictly and runs the kind's own checks.
type checker func(doc []byte) error

var checkers = map[string]checker{
	"keda.sh/v1alpha1/ScaledObject":                 checkScaledObject,
	"keda.sh/v1alpha1/TriggerAuthentication":        strictOnly(&kedav1alpha1.TriggerAuthentication{}),
	"monitoring.coreos.com/v1/ServiceMonitor":       strictOnly(&monitoringv1.ServiceMonitor{}),
	"monitoring.coreos.com/v1/PrometheusRule":       strictOnly(&monitoringv1.PrometheusRule{}),
	"monitoring.coreos.com/v1/PodMonitor":           strictOnly(&monitoringv1.PodMonitor{}),
	"keda.sh/v1alpha1/ClusterTriggerAuthentication": strictOnly(&kedav1alpha1.ClusterTriggerAuthentication{}),
}

// operatorGroups are the API groups whose kinds must all have a checker.
var operatorGroups = []string{"keda.sh/", "monitoring.coreos.com/"}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

func strictOnly(into any) checker {
	return func(doc []byte) error { return yaml.UnmarshalStrict(doc, into) }
}

func checkScaledObject(doc []byte) error {
	var so kedav1alpha1.ScaledObject
	if err := yaml.UnmarshalStrict(doc, &so); err != nil {
		return err
	}
	if err := kedav1alpha1.ValidateTriggers(so.Spec.Triggers); err != nil {
		return err
	}
	if err := kedav1alpha1.CheckReplicaCountBoundsAreValid(&so); err != nil {
		return err
	}
	return kedav1alpha1.CheckFallbackValid(&so)
}

var separator = regexp.MustCompile(`(?m)^---\s*$`)

// Result counts what one run checked.
type Result struct {
	Checked  map[string]int
	Skipped  int
	Problems []string
}

// CheckStream checks every document of one multi-document YAML text.
func CheckStream(name string, text []byte, res *Result) {
	for i, doc := range separator.Split(string(text), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		where := fmt.Sprintf("%s: document %d", name, i+1)
		var h header
		if err := yaml.Unmarshal([]byte(doc), &h); err != nil {
			res.Problems = append(res.Problems, fmt.Sprintf("%s: not YAML: %v", where, err))
			continue
		}
		key := h.APIVersion + "/" + h.Kind
		where = fmt.Sprintf("%s (%s %q)", where, key, h.Metadata.Name)
		check, ok := checkers[key]
		if !ok {
			if isOperatorGroup(h.APIVersion) {
				res.Problems = append(res.Problems, fmt.Sprintf("%s: no checker for this kind "+
					"(wrong apiVersion or kind?)", where))
			} else {
				res.Skipped++
			}
			continue
		}
		if err := check(bytes.TrimSpace([]byte(doc))); err != nil {
			res.Problems = append(res.Problems, fmt.Sprintf("%s: %v", where, err))
			continue
		}
		res.Checked[key]++
	}
}

func isOperatorGroup(apiVersion string) bool {
	for _, g := range operatorGroups {
		if strings.HasPrefix(apiVersion, g) {
			return true
		}
	}
	return false
}

func stripComments(doc string) string {
	var kept []string
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			kept = append(kept, line)
		}
	}
	return strings.Join(kept, "\n")
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: crdcheck FILE...")
		os.Exit(2)
	}
	res := Result{Checked: map[string]int{}}
	for _, path := range os.Args[1:] {
		text, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		CheckStream(path, text, &res)
	}
	for _, p := range res.Problems {
		fmt.Println("FAIL", p)
	}
	for key, n := range res.Checked {
		fmt.Printf("ok %s %d\n", key, n)
	}
	fmt.Printf("skipped %d\n", res.Skipped)
	if len(res.Problems) > 0 {
		os.Exit(1)
	}
}
