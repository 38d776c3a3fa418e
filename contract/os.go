package contract

import (
	"errors"
	"fmt"
	"strings"
)

// OSRef names an operating system image: what a task asks for, what a region's
// catalog offers and what a heartbeat advertises. Names may contain spaces ("Rocky
// Linux"), so the pair always travels as two fields, never joined and split again.
type OSRef struct {
	OSType    string `json:"os_type"`
	OSVersion string `json:"os_version"`
}

// String is the pair for a person ("ubuntu 22.04"); never parse it back.
func (o OSRef) String() string { return o.OSType + " " + o.OSVersion }

// Is compares two references the way the catalog does: case-insensitively.
func (o OSRef) Is(p OSRef) bool {
	return strings.EqualFold(o.OSType, p.OSType) && strings.EqualFold(o.OSVersion, p.OSVersion)
}

// Validate checks both names with ValidateOSName.
func (o OSRef) Validate() error {
	if err := ValidateOSName("os_type", o.OSType); err != nil {
		return err
	}
	return ValidateOSName("os_version", o.OSVersion)
}

// maxOSName bounds a name: it becomes part of log lines, pages and the catalog.
const maxOSName = 64

// ValidateOSName is the one rule for an OS type or version, used by task creation and
// by the image catalog: 1 to 64 printable characters with no leading or trailing
// space (inner spaces are fine).
func ValidateOSName(field, v string) error {
	switch {
	case v == "":
		return &ValidationError{Field: field, Message: "is required"}
	case len(v) > maxOSName || HasControl(v):
		return &ValidationError{Field: field, Message: fmt.Sprintf("must be 1-%d printable characters", maxOSName)}
	case strings.TrimSpace(v) != v:
		return &ValidationError{Field: field, Message: "must not start or end with a space"}
	}
	return nil
}

// HasControl reports whether s holds a control character (a log or script injection).
func HasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

// ErrInvalid is wrong input (HTTP 400); every ValidationError wraps it.
var ErrInvalid = errors.New("invalid")

// ValidationError names the request field that is wrong.
type ValidationError struct {
	Field   string
	Message string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Message }
func (e *ValidationError) Unwrap() error { return ErrInvalid }
