package control

import (
	"html/template"
	"net/http"

	"lpmos.dev/lpmos/store"
)

// A minimal read-only dashboard; the full web UI replaces it.
var dashboardTmpl = template.Must(template.New("dash").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LPMOS</title></head>
<body><h1>LPMOS control plane</h1>
<h2>Regions</h2><table><tr><th>Region</th><th>Health</th><th>Unmatched</th></tr>
{{range .Regions}}<tr><td>{{.Name}}</td><td>{{if .Online}}online{{else}}offline{{end}}</td><td>{{.Unmatched}}</td></tr>{{end}}
</table>
<h2>Tasks</h2><table><tr><th>Task</th><th>Region</th><th>MAC</th><th>OS</th><th>Status</th></tr>
{{range .Tasks}}<tr><td>{{.TaskID}}</td><td>{{.RegionID}}</td><td>{{.TargetMAC}}</td><td>{{.OSType}} {{.OSVersion}}</td><td>{{.Status}}</td></tr>{{end}}
</table>
<p>REST API: <code>/api/v1/tasks</code>, <code>/api/v1/regions</code>, <code>/api/v1/unmatched</code>.</p>
</body></html>`))

func (s *Server) pageRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		regions, err := s.store.ListRegions(r.Context())
		if err != nil {
			http.Error(w, "etcd unavailable", http.StatusServiceUnavailable)
			return
		}
		tasks, err := s.store.ListTasks(r.Context(), store.ListFilter{})
		if err != nil {
			http.Error(w, "etcd unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = dashboardTmpl.Execute(w, map[string]any{"Regions": regions, "Tasks": tasks})
	})
}
