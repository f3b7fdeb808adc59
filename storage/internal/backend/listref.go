package backend

import "slices"

// ListReference is what certmagic's contract says List(dir, recursive)
// returns when stored are the keys of the files in a storage: the direct
// children of dir, or every file and directory below it, sorted. It is
// slow and obviously right: the storages' fuzz tests compare their List
// with it.
func ListReference(dir string, stored []string, recursive bool) []string {
	out := []string{}
	for _, k := range stored {
		if !Under(dir, k) {
			continue
		}
		if !recursive {
			c, _ := Child(dir, k)
			out = append(out, c)
			continue
		}
		for _, p := range append(Parents(k), k) {
			if Under(dir, p) {
				out = append(out, p)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
