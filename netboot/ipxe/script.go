// Package ipxe owns the iPXE side of the boot path: the scripts (bootstrap,
// per-machine installer, local disk), the HTTP handler that serves them with
// the kernel and initramfs, and the embedded iPXE binaries.
package ipxe

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/url"
	"path"
	"strings"
	"text/template"

	"lpmos.dev/lpmos/netboot"
)

// URL paths served by Handler, relative to the base URL.
const (
	PathBootstrap = "/boot.ipxe"
	pathScripts   = "/boot/"       // + MAC in hexhyp form + ".ipxe"
	PathFiles     = "/boot/files/" // + name from Config.Files
	PathBinaries  = "/ipxe/"       // + iPXE binary name (UEFI HTTP boot)
)

// ScriptURL is the per-machine script URL handed to iPXE by DHCP.
func ScriptURL(base string, mac net.HardwareAddr) string {
	return strings.TrimRight(base, "/") + pathScripts + hexhyp(mac) + ".ipxe"
}

// FactsQuery, appended to ScriptURL in a DHCP file name, makes iPXE report
// its architecture and firmware: iPXE expands settings in the file name
// before fetching it.
const FactsQuery = "?arch=${buildarch:uristring}&platform=${platform:uristring}"

// BinaryURL is where UEFI HTTP-boot clients fetch an iPXE binary.
func BinaryURL(base, name string) string {
	return strings.TrimRight(base, "/") + PathBinaries + name
}

func hexhyp(mac net.HardwareAddr) string { return strings.ReplaceAll(mac.String(), ":", "-") }

// scripts are the templates, parsed once; missingkey=error turns a typo into an error
// instead of an empty string on the kernel command line.
var scripts = template.Must(template.New("").Option("missingkey=error").Parse(`
{{- define "bootstrap" -}}
#!ipxe
# LPMOS bootstrap: iPXE reports its own MAC, architecture and firmware, the
# appliance answers with this machine's script.
chain --autofree {{.Base}}/boot/${mac:hexhyp}.ipxe?arch=${buildarch:uristring}&platform=${platform:uristring} || goto failed
exit
:failed
echo LPMOS: no boot script for ${mac}, handing back to the firmware
exit
{{end}}
{{- define "install" -}}
#!ipxe
# LPMOS: machine {{.MAC}}{{if .TaskID}}, task {{.TaskID}}{{end}}
echo LPMOS: booting the agent for {{.MAC}}
kernel {{.Kernel}}{{range .Initrds}} initrd={{.Name}}{{end}}{{range .Args}} {{.}}{{end}} || goto failed
{{- range .Initrds}}
initrd --name {{.Name}} {{.URL}} || goto failed
{{- end}}
boot || goto failed
:failed
echo LPMOS: boot failed, retrying in 10 s
sleep 10
chain --autofree --replace {{.Self}}
{{end}}
{{- define "localdisk" -}}
#!ipxe
# LPMOS: machine {{.MAC}}{{if .TaskID}}, task {{.TaskID}}{{end}} is installed: boot the local disk.
echo LPMOS: {{.MAC}} is installed, booting from local disk
# UEFI: exit returns to the boot manager, which tries the next entry.
iseq ${platform} efi && exit ||
# BIOS: boot the first hard disk; if that fails, exit to the next BIOS device.
sanboot --no-describe --drive 0x80 || exit
{{end}}`))

type initrd struct{ Name, URL string }

type installData struct {
	MAC, TaskID, Kernel, Self string
	Initrds                   []initrd
	Args                      []string
}

type localData struct{ MAC, TaskID string }

// RenderBootstrap writes the /boot.ipxe script that chains to the
// per-machine script at base.
func RenderBootstrap(w io.Writer, base string) error {
	if err := checkURL("base URL", base); err != nil {
		return err
	}
	return render(w, "bootstrap", struct{ Base string }{strings.TrimRight(base, "/")})
}

// RenderPlan writes the script that carries out p for the machine with mac.
// base is the handler's base URL (file names in p resolve against it).
// Every value is checked first: a control character or a space inside one
// word is refused (ErrUnsafeValue), since a newline would inject iPXE
// commands and a space extra kernel arguments.
func RenderPlan(w io.Writer, base string, mac net.HardwareAddr, p *netboot.Plan) error {
	if p == nil {
		return fmt.Errorf("ipxe: nil plan")
	}
	if len(mac) == 0 {
		return fmt.Errorf("ipxe: plan without MAC")
	}
	if p.TaskID != "" {
		if err := checkWord("task id", p.TaskID); err != nil {
			return err
		}
	}
	if p.LocalDisk {
		return render(w, "localdisk", localData{MAC: mac.String(), TaskID: p.TaskID})
	}
	if err := checkURL("base URL", base); err != nil {
		return err
	}
	base = strings.TrimRight(base, "/")
	if p.Kernel == "" {
		return fmt.Errorf("ipxe: plan for %s has no kernel", mac)
	}
	kernel, err := fileURL(base, "kernel", p.Kernel)
	if err != nil {
		return err
	}
	d := installData{MAC: mac.String(), TaskID: p.TaskID, Kernel: kernel, Self: ScriptURL(base, mac)}
	seen := map[string]bool{}
	for i, name := range p.Initrds {
		u, err := fileURL(base, fmt.Sprintf("initrd %d", i), name)
		if err != nil {
			return err
		}
		// UEFI iPXE hands initrds to the kernel's EFI stub by name: the
		// command line needs initrd=<name> matching initrd --name.
		n := path.Base(name)
		if seen[n] {
			return fmt.Errorf("ipxe: two initrds named %q", n)
		}
		seen[n] = true
		d.Initrds = append(d.Initrds, initrd{Name: n, URL: u})
	}
	if p.RegionalURL != "" {
		if err := checkURL("regional URL", p.RegionalURL); err != nil {
			return err
		}
		d.Args = append(d.Args, "lpmos.url="+p.RegionalURL)
	}
	if p.TaskID != "" {
		d.Args = append(d.Args, "lpmos.task="+p.TaskID)
	}
	if p.AgentToken != "" {
		if err := checkWord("agent token", p.AgentToken); err != nil {
			return err
		}
		d.Args = append(d.Args, "lpmos.token="+p.AgentToken)
	}
	// BOOTIF (pxelinux convention) tells the agent which NIC booted.
	d.Args = append(d.Args, "BOOTIF="+netboot.BootIF(mac))
	for i, a := range p.Args {
		if err := checkWord(fmt.Sprintf("kernel argument %d", i), a); err != nil {
			return err
		}
		d.Args = append(d.Args, a)
	}
	return render(w, "install", d)
}

// render executes into a buffer first, so a failing template never leaves
// half a script on the wire.
func render(w io.Writer, name string, data any) error {
	var buf bytes.Buffer
	if err := scripts.ExecuteTemplate(&buf, name, data); err != nil {
		return fmt.Errorf("ipxe: render %s: %w", name, err)
	}
	_, err := w.Write(buf.Bytes())
	return err
}

func fileURL(base, what, name string) (string, error) {
	if strings.HasPrefix(name, "http://") || strings.HasPrefix(name, "https://") {
		return name, checkURL(what, name)
	}
	if err := checkWord(what, name); err != nil {
		return "", err
	}
	if !isPlainName(name) {
		return "", fmt.Errorf("%w: %s %q is not a plain file name", netboot.ErrUnsafeValue, what, name)
	}
	return base + PathFiles + url.PathEscape(name), nil
}

func isPlainName(name string) bool {
	return name != "." && name != ".." && !strings.ContainsAny(name, `/\`)
}

// checkWord refuses control characters, spaces and iPXE's ${...} expansion.
func checkWord(what, v string) error {
	if err := netboot.CheckWord(what, v); err != nil {
		return err
	}
	if strings.Contains(v, "${") {
		return fmt.Errorf("%w: %s contains an iPXE expansion", netboot.ErrUnsafeValue, what)
	}
	return nil
}

func checkURL(what, v string) error {
	if err := checkWord(what, v); err != nil {
		return err
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: %s %q is not an http(s) URL", netboot.ErrUnsafeValue, what, v)
	}
	return nil
}
