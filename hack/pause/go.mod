// The pause process of the real node's pod sandboxes (hack/node-up.sh). No dependencies, so it
// builds offline with any Go toolchain.
module modelservice.local/hack/pause

go 1.22
