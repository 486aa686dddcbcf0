package gitops

// Update tells the external tests to rewrite their golden files (go test
// -update).
func Update() bool { return *update }
