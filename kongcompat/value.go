package kongcompat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// value is a parsed YAML or JSON value with the line it starts on, the
// common tree both input formats are read into. Object keys keep their
// order; null and missing are told apart by kind.
type value struct {
	kind  kind
	b     bool
	num   float64
	isInt bool // the number was written without a fraction or exponent
	str   string
	arr   []*value
	keys  []string
	vals  []*value
	line  int
	// dyn marks a string that is already a Caddy value with placeholders
	// (from a decK template or a Kong vault reference), braces escaped.
	dyn bool
}

type kind uint8

const (
	kNull kind = iota
	kBool
	kNumber
	kString
	kArray
	kObject
)

func (k kind) String() string {
	return [...]string{"null", "boolean", "number", "string", "array", "object"}[k]
}

// article returns the kind with its indefinite article, for messages.
func (k kind) article() string {
	return [...]string{"null", "a boolean", "a number", "a string", "an array", "an object"}[k]
}

// get returns the member key of an object, or nil (also for a null
// member, and when v is not an object).
func (v *value) get(key string) *value {
	if v == nil || v.kind != kObject {
		return nil
	}
	for i, k := range v.keys {
		if k == key {
			if v.vals[i].kind == kNull {
				return nil
			}
			return v.vals[i]
		}
	}
	return nil
}

// set replaces or appends the member key of an object.
func (v *value) set(key string, val *value) {
	for i, k := range v.keys {
		if k == key {
			v.vals[i] = val
			return
		}
	}
	v.keys = append(v.keys, key)
	v.vals = append(v.vals, val)
}

// text returns the string of v if it is a string, else "".
func (v *value) text() string {
	if v == nil || v.kind != kString {
		return ""
	}
	return v.str
}

// Limits that keep hostile input cheap: nesting depth, and the number of
// nodes produced (YAML aliases can multiply a small file).
const (
	maxDepth = 64
	maxNodes = 200_000
)

// tooManyValues is the error of an input over maxNodes values; aliases
// says whether YAML aliases were expanded on the way (each use counts).
func tooManyValues(aliases bool) error {
	msg := fmt.Sprintf("more than %d values (objects, arrays and scalars), the limit of the kong adapter", maxNodes)
	if aliases {
		msg += "; every use of a YAML alias counts its values again"
	}
	return errors.New(msg)
}

// parse reads a YAML document or a JSON value. Input whose first
// non-space byte is { or [ is JSON (so that broken JSON is reported as
// such, not read leniently as YAML); anything else is YAML.
func parse(body []byte) (*value, error) {
	body = bytes.TrimPrefix(body, []byte("\ufeff"))
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(bytes.TrimSpace(trimmed)) == 0 {
		return nil, errors.New("empty input: expected a Kong declarative file or an acme plugin object")
	}
	if trimmed[0] == '{' || trimmed[0] == '[' {
		return parseJSON(body)
	}
	return parseYAML(body)
}

// parseYAML reads exactly one YAML document.
func parseYAML(body []byte) (*value, error) {
	dec := yaml.NewDecoder(bytes.NewReader(body))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty input: expected a Kong declarative file or an acme plugin object")
		}
		return nil, fmt.Errorf("parsing YAML: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, fmt.Errorf("parsing YAML: %w", err)
		}
		return nil, fmt.Errorf("line %d: a second YAML document: give one Kong configuration per file", extra.Line)
	}
	c := &yamlConverter{}
	return c.convert(&doc, 0)
}

type yamlConverter struct {
	nodes   int
	aliases bool // an alias was expanded
}

func (c *yamlConverter) convert(n *yaml.Node, depth int) (*value, error) {
	c.nodes++
	if c.nodes > maxNodes {
		return nil, tooManyValues(c.aliases)
	}
	if depth > maxDepth {
		return nil, fmt.Errorf("line %d: nested more than %d levels deep", n.Line, maxDepth)
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return &value{kind: kNull, line: n.Line}, nil
		}
		return c.convert(n.Content[0], depth)
	case yaml.AliasNode:
		if n.Alias == nil {
			return nil, fmt.Errorf("line %d: unknown alias", n.Line)
		}
		c.aliases = true
		v, err := c.convert(n.Alias, depth+1)
		if err != nil {
			return nil, err
		}
		cp := *v
		cp.line = n.Line
		return &cp, nil
	case yaml.SequenceNode:
		v := &value{kind: kArray, line: n.Line}
		for _, e := range n.Content {
			ev, err := c.convert(e, depth+1)
			if err != nil {
				return nil, err
			}
			v.arr = append(v.arr, ev)
		}
		return v, nil
	case yaml.MappingNode:
		v := &value{kind: kObject, line: n.Line}
		var merges []*yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
				merges = append(merges, val)
				continue
			}
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: a mapping key must be a string", k.Line)
			}
			ev, err := c.convert(val, depth+1)
			if err != nil {
				return nil, err
			}
			if v.has(k.Value) {
				return nil, fmt.Errorf("line %d: key %q appears twice", k.Line, k.Value)
			}
			v.keys = append(v.keys, k.Value)
			v.vals = append(v.vals, ev)
		}
		// merge keys (<<: *anchor) add the keys the mapping lacks
		for _, m := range merges {
			mv, err := c.convert(m, depth+1)
			if err != nil {
				return nil, err
			}
			sources := []*value{mv}
			if mv.kind == kArray {
				sources = mv.arr
			}
			for _, src := range sources {
				if src.kind != kObject {
					return nil, fmt.Errorf("line %d: a merge key (<<) needs a mapping", m.Line)
				}
				for i, k := range src.keys {
					if !v.has(k) {
						v.keys = append(v.keys, k)
						v.vals = append(v.vals, src.vals[i])
					}
				}
			}
		}
		return v, nil
	case yaml.ScalarNode:
		return scalar(n)
	}
	return nil, fmt.Errorf("line %d: unexpected YAML node", n.Line)
}

// nonEmpty reports whether v is present and, for an array or object,
// not empty.
func nonEmpty(v *value) bool {
	switch {
	case v == nil:
		return false
	case v.kind == kArray:
		return len(v.arr) > 0
	case v.kind == kObject:
		return len(v.keys) > 0
	}
	return true
}

func (v *value) has(key string) bool { return slices.Contains(v.keys, key) }

// scalar converts a YAML scalar by its resolved tag. Timestamps, binary
// and custom tags stay strings, as written.
func scalar(n *yaml.Node) (*value, error) {
	v := &value{line: n.Line}
	switch n.ShortTag() {
	case "!!null":
		v.kind = kNull
	case "!!bool":
		var b bool
		if err := n.Decode(&b); err != nil {
			return nil, fmt.Errorf("line %d: invalid boolean", n.Line)
		}
		v.kind, v.b = kBool, b
	case "!!int":
		v.kind, v.isInt = kNumber, true
		var i int64
		if err := n.Decode(&i); err == nil {
			v.num = float64(i)
			break
		}
		var f float64
		if err := n.Decode(&f); err != nil {
			return nil, fmt.Errorf("line %d: invalid number", n.Line)
		}
		v.num = f
	case "!!float":
		var f float64
		if err := n.Decode(&f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("line %d: invalid number (NaN and infinities are not accepted)", n.Line)
		}
		v.kind, v.num = kNumber, f
		v.isInt = f == math.Trunc(f) && !strings.ContainsAny(n.Value, ".eE")
	default:
		v.kind, v.str = kString, n.Value
	}
	return v, nil
}

// parseJSON reads exactly one JSON value, keeping the line each value
// starts on.
func parseJSON(body []byte) (*value, error) {
	p := &jsonParser{dec: json.NewDecoder(bytes.NewReader(body)), body: body, line: 1}
	p.dec.UseNumber()
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	if _, err := p.dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("line %d: unexpected data after the JSON value", p.lineAt(p.dec.InputOffset()))
	}
	return v, nil
}

type jsonParser struct {
	dec   *json.Decoder
	body  []byte
	off   int64 // offset counted up to
	line  int   // line at off
	nodes int
}

// lineAt returns the line of offset off (counting on from the last
// offset asked for, which is the common case).
func (p *jsonParser) lineAt(off int64) int {
	if off > int64(len(p.body)) {
		off = int64(len(p.body))
	}
	if off < p.off {
		p.off, p.line = 0, 1
	}
	if off > p.off {
		p.line += bytes.Count(p.body[p.off:off], []byte("\n"))
		p.off = off
	}
	return p.line
}

// startLine returns the line where the next token starts.
func (p *jsonParser) startLine() int {
	off := p.dec.InputOffset()
	for off < int64(len(p.body)) {
		switch p.body[off] {
		case ' ', '\t', '\r', '\n', ',', ':':
			off++
			continue
		}
		break
	}
	return p.lineAt(off)
}

func (p *jsonParser) value(depth int) (*value, error) {
	p.nodes++
	if p.nodes > maxNodes {
		return nil, tooManyValues(false)
	}
	line := p.startLine()
	if depth > maxDepth {
		return nil, fmt.Errorf("line %d: nested more than %d levels deep", line, maxDepth)
	}
	tok, err := p.dec.Token()
	if err != nil {
		return nil, p.syntaxError(err)
	}
	v := &value{line: line}
	switch t := tok.(type) {
	case nil:
		v.kind = kNull
	case bool:
		v.kind, v.b = kBool, t
	case string:
		v.kind, v.str = kString, t
	case json.Number:
		f, err := strconv.ParseFloat(string(t), 64)
		if err != nil || math.IsInf(f, 0) {
			return nil, fmt.Errorf("line %d: number out of range", line)
		}
		v.kind, v.num = kNumber, f
		v.isInt = !strings.ContainsAny(string(t), ".eE")
	case json.Delim:
		switch t {
		case '[':
			v.kind = kArray
			for p.dec.More() {
				e, err := p.value(depth + 1)
				if err != nil {
					return nil, err
				}
				v.arr = append(v.arr, e)
			}
			if _, err := p.dec.Token(); err != nil {
				return nil, p.syntaxError(err)
			}
		case '{':
			v.kind = kObject
			for p.dec.More() {
				kline := p.startLine()
				kt, err := p.dec.Token()
				if err != nil {
					return nil, p.syntaxError(err)
				}
				key, _ := kt.(string)
				e, err := p.value(depth + 1)
				if err != nil {
					return nil, err
				}
				if v.has(key) {
					return nil, fmt.Errorf("line %d: key %q appears twice", kline, key)
				}
				v.keys = append(v.keys, key)
				v.vals = append(v.vals, e)
			}
			if _, err := p.dec.Token(); err != nil {
				return nil, p.syntaxError(err)
			}
		default:
			return nil, fmt.Errorf("line %d: unexpected %q", line, t)
		}
	}
	return v, nil
}

func (p *jsonParser) syntaxError(err error) error {
	line := p.lineAt(p.dec.InputOffset())
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("parsing JSON: line %d: unexpected end of input", line)
	}
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		line = p.lineAt(se.Offset)
	}
	return fmt.Errorf("parsing JSON: line %d: %w", line, err)
}
