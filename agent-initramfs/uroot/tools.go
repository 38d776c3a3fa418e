//go:build tools

// Package uroot pins the u-root commands that scripts/build-initramfs.sh puts into the
// initramfs. u-root v0.16.0 builds in module mode from the go.mod of the directory it
// runs in, so every command it compiles must be required by this tools module's go.mod
// (docs/lab.md, pitfall 7). A module of its own keeps u-root's command dependencies (terminal
// UI and shell libraries) out of the main module; the agent is built from the main module.
package uroot

import (
	_ "github.com/u-root/u-root"
	_ "github.com/u-root/u-root/cmds/core/cat"
	_ "github.com/u-root/u-root/cmds/core/dhclient"
	_ "github.com/u-root/u-root/cmds/core/dmesg"
	_ "github.com/u-root/u-root/cmds/core/gosh"
	_ "github.com/u-root/u-root/cmds/core/init"
	_ "github.com/u-root/u-root/cmds/core/ip"
	_ "github.com/u-root/u-root/cmds/core/ls"
	_ "github.com/u-root/u-root/cmds/core/lsmod"
	_ "github.com/u-root/u-root/cmds/core/mkdir"
	_ "github.com/u-root/u-root/cmds/core/more"
	_ "github.com/u-root/u-root/cmds/core/mount"
	_ "github.com/u-root/u-root/cmds/core/ps"
	_ "github.com/u-root/u-root/cmds/core/shutdown"
	_ "github.com/u-root/u-root/cmds/core/wget"
)
