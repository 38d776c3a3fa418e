package lpmos_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// Every metric the Grafana dashboard (docs/grafana-dashboard.json) queries is one
// docs/contract.md documents: renaming a metric means touching both.
func TestDashboardUsesDocumentedMetrics(t *testing.T) {
	raw, err := os.ReadFile("docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	doc, err := os.ReadFile("docs/contract.md")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`lpmos_[a-z_]+`)
	seen := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				m = strings.TrimSuffix(m, "_bucket")
				seen++
				if !strings.Contains(string(doc), "`"+m+"`") {
					t.Errorf("panel %q queries %s, which docs/contract.md does not list", p.Title, m)
				}
			}
		}
	}
	if seen < 10 {
		t.Fatalf("the dashboard queries only %d metrics", seen)
	}
}
