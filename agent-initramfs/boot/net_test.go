package boot

import "testing"

func TestPickNIC(t *testing.T) {
	nics := []nic{
		{Name: "eno1", MAC: "aa:bb:cc:00:00:01"},
		{Name: "eno2", MAC: "aa:bb:cc:00:00:02", Carrier: true},
		{Name: "eno3", MAC: "aa:bb:cc:00:00:03", Carrier: true},
	}
	for _, tc := range []struct {
		name, bootMAC, want string
		wantErr             bool
	}{
		{name: "first with carrier", want: "eno2"},
		{name: "BOOTIF wins, even without carrier yet", bootMAC: "AA:BB:CC:00:00:01", want: "eno1"},
		{name: "BOOTIF names no NIC: no fallback", bootMAC: "aa:bb:cc:00:00:09", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pickNIC(nics, tc.bootMAC)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if got.Name != tc.want {
				t.Errorf("picked %q, want %q", got.Name, tc.want)
			}
		})
	}
	if _, err := pickNIC(nics[:1], ""); err == nil {
		t.Error("no carrier anywhere: want error")
	}
	if _, err := pickNIC(nil, ""); err == nil {
		t.Error("no NICs: want error")
	}
}
