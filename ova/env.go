package ova

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Environment is the content of an OVF environment document (ovf-env.xml)
// that vSphere hands to the guest at power-on.
type Environment struct {
	// Properties maps fully qualified keys ("continuum.role") to values.
	Properties map[string]string
	// Platform is the PlatformSection's Kind, e.g. "VMware ESXi", when set.
	Platform string
}

type envDoc struct {
	XMLName  xml.Name `xml:"Environment"`
	Platform struct {
		Kind string `xml:"Kind"`
	} `xml:"PlatformSection"`
	Properties struct {
		Property []struct {
			Key   *string `xml:"key,attr"`
			Value *string `xml:"value,attr"`
		} `xml:"Property"`
	} `xml:"PropertySection"`
}

// ErrNoEnvironment means that no transport carried an OVF environment.
var ErrNoEnvironment = errors.New("no OVF environment found")

// maxEnvSize bounds what is read from a transport: an environment with every
// property of this appliance is a few kilobytes.
const maxEnvSize = 1 << 20

// ParseEnvironment parses an ovf-env.xml document. A document that is not
// well-formed, is not an Environment, or repeats or omits a property's key
// or value is an error.
func ParseEnvironment(r io.Reader) (*Environment, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxEnvSize+1))
	if err != nil {
		return nil, fmt.Errorf("read OVF environment: %w", err)
	}
	if len(data) > maxEnvSize {
		return nil, fmt.Errorf("OVF environment larger than %d bytes", maxEnvSize)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("OVF environment is empty")
	}
	var doc envDoc
	dec := xml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("parse OVF environment: %w", err)
	}
	env := &Environment{Properties: map[string]string{}, Platform: strings.TrimSpace(doc.Platform.Kind)}
	for i, p := range doc.Properties.Property {
		if p.Key == nil || *p.Key == "" {
			return nil, fmt.Errorf("parse OVF environment: property #%d has no key", i+1)
		}
		if p.Value == nil {
			return nil, fmt.Errorf("parse OVF environment: property %s has no value attribute", *p.Key)
		}
		if _, dup := env.Properties[*p.Key]; dup {
			return nil, fmt.Errorf("parse OVF environment: property %s appears twice", *p.Key)
		}
		env.Properties[*p.Key] = *p.Value
	}
	return env, nil
}

// EnvironmentXML renders an ovf-env.xml document with the given properties,
// as vSphere does; tests and the boot test's ISO use it.
func EnvironmentXML(props map[string]string) []byte {
	var b bytes.Buffer
	b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" xmlns:ve="http://www.vmware.com/schema/ovfenv" oe:id="">
  <PlatformSection>
    <Kind>VMware ESXi</Kind>
    <Locale>en</Locale>
  </PlatformSection>
  <PropertySection>
`)
	keys := make([]string, 0, len(props))
	for k := range props {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "    <Property oe:key=\"%s\" oe:value=\"%s\"/>\n", attrEscape(k), attrEscape(props[k]))
	}
	b.WriteString("  </PropertySection>\n</Environment>\n")
	return b.Bytes()
}

func attrEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
