// Package images owns LPMOS's OS images: the catalog that maps an
// (os_type, os_version) to a file in the appliance's images directory, the HTTP
// handler that serves those files with Range support, and the streaming writer
// the agent uses to put an image on a disk.
//
// The writer is built to run inside the agent's initramfs, so the package keeps
// its imports to the standard library, the decompressors and x/sys.
package images
