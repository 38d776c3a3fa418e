package boot

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		name, cmdline string
		want          Settings
		wantErr       bool
	}{
		{
			name:    "all",
			cmdline: "BOOT_IMAGE=vmlinuz console=ttyS0 lpmos.url=http://10.0.2.2:8081 lpmos.task=550e8400 lpmos.token=c0ffee BOOTIF=01-52-54-00-AB-cd-01 lpmos.reboot_delay=90\n",
			want:    Settings{RegionalURL: "http://10.0.2.2:8081", TaskID: "550e8400", AgentToken: "c0ffee", MAC: "52:54:00:ab:cd:01", RebootDelay: 90 * time.Second},
		},
		{
			name:    "quoted and duration",
			cmdline: `lpmos.url="http://appliance:8081/" lpmos.reboot_delay=2m quiet`,
			want:    Settings{RegionalURL: "http://appliance:8081/", RebootDelay: 2 * time.Minute},
		},
		{
			name:    "defaults: reboot after DefaultRebootDelay, no shell",
			cmdline: `lpmos.url=http://x`,
			want:    Settings{RegionalURL: "http://x", RebootDelay: DefaultRebootDelay},
		},
		{
			name:    "debug",
			cmdline: `lpmos.url=http://x lpmos.debug=1 lpmos.reboot_delay=0`,
			want:    Settings{RegionalURL: "http://x", Debug: true},
		},
		{
			name:    "no url keeps the delay",
			cmdline: "console=ttyS0 lpmos.reboot_delay=30s",
			want:    Settings{RebootDelay: 30 * time.Second},
			wantErr: true,
		},
		{
			name:    "bad BOOTIF",
			cmdline: "lpmos.url=http://x BOOTIF=52:54:00:ab:cd:01",
			want:    Settings{RegionalURL: "http://x", RebootDelay: DefaultRebootDelay},
			wantErr: true,
		},
		{
			name:    "bad delay",
			cmdline: "lpmos.url=http://x lpmos.reboot_delay=soon",
			want:    Settings{RegionalURL: "http://x", RebootDelay: DefaultRebootDelay},
			wantErr: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCmdline(strings.NewReader(tc.cmdline))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if _, err := ParseCmdline(strings.NewReader("quiet")); !errors.Is(err, ErrNoURL) {
		t.Errorf("missing url: err = %v, want ErrNoURL", err)
	}
}

// A failed agent drops to a shell only when asked (lpmos.debug=1); by default it
// reboots after DefaultRebootDelay; lpmos.reboot_delay=0 halts.
func TestFatalAction(t *testing.T) {
	for _, c := range []struct {
		cmdline string
		action  string
		delay   time.Duration
	}{
		{"lpmos.url=http://x", "reboot", DefaultRebootDelay},
		{"lpmos.url=http://x lpmos.reboot_delay=30", "reboot", 30 * time.Second},
		{"lpmos.url=http://x lpmos.reboot_delay=0", "halt", 0},
		{"lpmos.url=http://x lpmos.debug=1", "shell", 0},
		{"lpmos.reboot_delay=soon", "reboot", DefaultRebootDelay}, // a broken command line still reboots
	} {
		s, _ := ParseCmdline(strings.NewReader(c.cmdline))
		if a, d := fatalAction(s); a != c.action || d != c.delay {
			t.Errorf("%q: %s after %v, want %s after %v", c.cmdline, a, d, c.action, c.delay)
		}
	}
}
