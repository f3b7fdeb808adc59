package kongcompat

import (
	"fmt"
	"sort"
	"strings"
)

// inventory is what a Kong configuration holds: the acme plugins, and a
// count of everything else (which the adapter ignores).
type inventory struct {
	acme    []pluginRef
	counts  map[string]int // entity kind → number, acme plugins excluded
	plugins map[string]int // other plugins by name
	managed int            // certificates tagged managed-by-acme
	keys    []keyRef       // keys entities, for config.account_key
	keySets map[string]string
	vaults  map[string]envVault
}

// pluginRef is one acme plugin in the input.
type pluginRef struct {
	v      *value
	loc    string // where it is: "plugins[0]", "services[1].plugins[0]"; "" for an Admin API object
	parent string // the foreign key its nesting sets: service, route, consumer, consumer_group
}

// keyRef is a Kong keys entity and the key set it is nested in.
type keyRef struct {
	v   *value
	set string // name of the enclosing key_sets entity, if nested
}

func newInventory() *inventory {
	return &inventory{
		counts:  make(map[string]int),
		plugins: make(map[string]int),
		keySets: make(map[string]string),
		vaults:  make(map[string]envVault),
	}
}

// formatVersions are the declarative formats Kong 3.x reads.
var formatVersions = []string{"1.1", "2.1", "3.0"}

// nestedKinds are the entity collections Kong's declarative format
// allows inside other entities.
var nestedKinds = map[string]bool{
	"routes": true, "plugins": true, "snis": true, "targets": true, "keys": true, "consumers": true,
	"acls": true, "basicauth_credentials": true, "hmacauth_credentials": true, "jwt_secrets": true,
	"keyauth_credentials": true, "oauth2_credentials": true, "mtls_auth_credentials": true,
}

// foreignKeyOf is the field a nested plugin's parent sets.
var foreignKeyOf = map[string]string{
	"services": "service", "routes": "route", "consumers": "consumer", "consumer_groups": "consumer_group",
}

// declarative takes inventory of a declarative file.
func (inv *inventory) declarative(root *value) {
	for i, kind := range root.keys {
		if strings.HasPrefix(kind, "_") {
			continue
		}
		list := root.vals[i]
		switch list.kind {
		case kNull:
		case kArray:
			for j, e := range list.arr {
				inv.entity(kind, fmt.Sprintf("%s[%d]", kind, j), e, "")
			}
		default:
			inv.counts[kind]++
		}
	}
}

func (inv *inventory) entity(kind, loc string, e *value, parent string) {
	if kind == "plugins" {
		name := e.get("name").text()
		if name == "acme" {
			inv.acme = append(inv.acme, pluginRef{v: e, loc: loc, parent: parent})
			return
		}
		if name == "" {
			name = "(unnamed)"
		}
		inv.plugins[name]++
		return
	}
	inv.counts[kind]++
	switch kind {
	case "certificates":
		if tags := e.get("tags"); tags != nil && tags.kind == kArray {
			for _, t := range tags.arr {
				if t.text() == "managed-by-acme" {
					inv.managed++
					break
				}
			}
		}
	case "keys":
		inv.keys = append(inv.keys, keyRef{v: e, set: parent})
	case "key_sets":
		if id, name := e.get("id").text(), e.get("name").text(); id != "" && name != "" {
			inv.keySets[id] = name
		}
	case "vaults":
		prefix, name := e.get("prefix").text(), e.get("name").text()
		if prefix != "" && name != "" {
			inv.vaults[prefix] = envVault{kind: name, prefix: e.get("config").get("prefix").text()}
		}
	}
	if e.kind != kObject {
		return
	}
	childParent := foreignKeyOf[kind]
	if kind == "key_sets" {
		childParent = e.get("name").text()
	}
	for i, nk := range e.keys {
		if !nestedKinds[nk] || e.vals[i].kind != kArray {
			continue
		}
		for j, child := range e.vals[i].arr {
			inv.entity(nk, fmt.Sprintf("%s.%s[%d]", loc, nk, j), child, childParent)
		}
	}
}

// use takes one entity of kind out of the ignored ones: the adapter
// used it.
func (inv *inventory) use(kind string) {
	if inv.counts[kind]--; inv.counts[kind] <= 0 {
		delete(inv.counts, kind)
	}
}

// adminList takes inventory of the Admin API's plugin list.
func (inv *inventory) adminList(data *value) {
	for i, e := range data.arr {
		if e.get("name").text() == "acme" {
			inv.acme = append(inv.acme, pluginRef{v: e, loc: fmt.Sprintf("data[%d]", i)})
			continue
		}
		inv.entity("plugins", "", e, "")
	}
}

// ignored describes what the adapter leaves out, or "" if nothing.
func (inv *inventory) ignored() string {
	var parts []string
	kinds := make([]string, 0, len(inv.counts))
	for k := range inv.counts {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s (%d)", k, inv.counts[k]))
	}
	if len(inv.plugins) > 0 {
		names := make([]string, 0, len(inv.plugins))
		for n := range inv.plugins {
			names = append(names, n)
		}
		sort.Strings(names)
		var ps []string
		for _, n := range names {
			if c := inv.plugins[n]; c > 1 {
				ps = append(ps, fmt.Sprintf("%s (%d)", n, c))
			} else {
				ps = append(ps, n)
			}
		}
		parts = append(parts, "plugins "+strings.Join(ps, ", "))
	}
	if len(parts) == 0 {
		return ""
	}
	msg := "ignored, as this adapter migrates the acme plugin and not the rest of a gateway: " + strings.Join(parts, ", ")
	if inv.managed > 0 {
		msg += fmt.Sprintf("; among the certificates, %d tagged managed-by-acme (issued by Kong's acme plugin in database mode) are not part of the adapted config either: copy them with the data migration so that they are not ordered again", inv.managed)
	}
	return msg
}

// findKey looks up the keys entity config.account_key names: kid
// key_id, in the key set named key_set if given.
func (inv *inventory) findKey(keyID, keySet string) *value {
	for _, k := range inv.keys {
		if k.v.get("kid").text() != keyID {
			continue
		}
		if keySet == "" {
			return k.v
		}
		set := k.set
		if ref := k.v.get("set"); ref != nil {
			switch ref.kind {
			case kString:
				set = ref.str
			case kObject:
				set = ref.get("name").text()
				if set == "" {
					set = ref.get("id").text()
				}
			case kNull, kBool, kNumber, kArray:
			}
		}
		if name, ok := inv.keySets[set]; ok {
			set = name
		}
		if set == keySet {
			return k.v
		}
	}
	return nil
}
