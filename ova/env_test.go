package ova

import (
	"errors"
	"net"
	"strings"
	"testing"
)

func TestParseEnvironment(t *testing.T) {
	vsphere := `<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" xmlns:ve="http://www.vmware.com/schema/ovfenv" oe:id="" ve:vCenterId="vm-42">
  <PlatformSection><Kind>VMware ESXi</Kind><Version>8.0.2</Version></PlatformSection>
  <PropertySection>
    <Property oe:key="continuum.role" oe:value="coordinator"/>
    <Property oe:key="continuum.join_token" oe:value="a&amp;b&quot;c"/>
    <Property oe:key="other.key" oe:value=""/>
  </PropertySection>
  <ve:EthernetAdapterSection><ve:Adapter ve:mac="00:50:56:00:00:01" ve:network="VM Network" ve:unitNumber="7"/></ve:EthernetAdapterSection>
</Environment>`
	tests := []struct {
		name    string
		doc     string
		want    map[string]string
		wantErr string
	}{
		{name: "vsphere document", doc: vsphere,
			want: map[string]string{"continuum.role": "coordinator", "continuum.join_token": `a&b"c`, "other.key": ""}},
		{name: "no properties", doc: `<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"/>`, want: map[string]string{}},
		{name: "empty", doc: "  \n", wantErr: "empty"},
		{name: "not xml", doc: "role=coordinator", wantErr: "parse OVF environment"},
		{name: "truncated", doc: vsphere[:len(vsphere)/2], wantErr: "parse OVF environment"},
		{name: "wrong root", doc: `<Envelope/>`, wantErr: "parse OVF environment"},
		{name: "key missing", doc: `<Environment><PropertySection><Property value="x"/></PropertySection></Environment>`, wantErr: "no key"},
		{name: "value missing", doc: `<Environment><PropertySection><Property key="continuum.ip"/></PropertySection></Environment>`, wantErr: "continuum.ip has no value"},
		{name: "duplicate", doc: `<Environment><PropertySection><Property key="a" value="1"/><Property key="a" value="2"/></PropertySection></Environment>`, wantErr: "appears twice"},
		{name: "too large", doc: "<Environment>" + strings.Repeat(" ", maxEnvSize) + "</Environment>", wantErr: "larger than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env, err := ParseEnvironment(strings.NewReader(tc.doc))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(env.Properties) != len(tc.want) {
				t.Fatalf("properties = %v, want %v", env.Properties, tc.want)
			}
			for k, v := range tc.want {
				if env.Properties[k] != v {
					t.Errorf("%s = %q, want %q", k, env.Properties[k], v)
				}
			}
		})
	}
}

func TestEnvironmentXMLRoundTrip(t *testing.T) {
	in := map[string]string{"continuum.role": "proxy", "continuum.join_token": `<&'">`, "continuum.ip": ""}
	env, err := ParseEnvironment(strings.NewReader(string(EnvironmentXML(in))))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range in {
		if env.Properties[k] != v {
			t.Errorf("%s = %q, want %q", k, env.Properties[k], v)
		}
	}
	if env.Platform != "VMware ESXi" {
		t.Errorf("platform = %q", env.Platform)
	}
}

var testToken = strings.Repeat("ab", 32) + ".secret"

func props(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[PropertyClass+"."+kv[i]] = kv[i+1]
	}
	return m
}

func TestParseConfig(t *testing.T) {
	boot := []string{"role", "coordinator", "node_id", "c1", "bootstrap", "True"}
	with := func(base []string, kv ...string) map[string]string {
		return props(append(append([]string{}, base...), kv...)...)
	}
	tests := []struct {
		name  string
		props map[string]string
		check func(t *testing.T, c *Config)
		bad   []string // fully qualified keys expected in the error, in order
	}{
		{name: "bootstrap with DHCP", props: with(boot), check: func(t *testing.T, c *Config) {
			if !c.DHCP() || !c.Bootstrap || c.NodeID != "c1" || c.APIPort != 8443 || c.RaftPort != 8300 || c.Hostname != "continuum" {
				t.Errorf("config = %+v", c)
			}
		}},
		{name: "join with static network", props: props("role", "coordinator", "hostname", "cdp-2.example.com",
			"ip", "10.0.0.12", "netmask", "255.255.255.0", "gateway", "10.0.0.1", "dns", "10.0.0.2, 10.0.0.3",
			"ntp", "pool.ntp.org,10.0.0.4", "bootstrap", "False", "join_address", "https://10.0.0.11:8443", "join_token", testToken),
			check: func(t *testing.T, c *Config) {
				if c.DHCP() || !c.IP.Equal(net.IPv4(10, 0, 0, 12)) || c.NodeID != "cdp-2" || len(c.DNS) != 2 || len(c.NTP) != 2 {
					t.Errorf("config = %+v", c)
				}
				if ones, _ := c.Mask.Size(); ones != 24 {
					t.Errorf("mask = %v", c.Mask)
				}
				args := strings.Join(c.RoleArgs(c.IP), " ")
				want := "coordinator --node-id cdp-2 --data-dir /data/coordinator --api-addr 10.0.0.12:8443 --raft-addr 10.0.0.12:8300 --join https://10.0.0.11:8443 --join-token " + testToken
				if args != want {
					t.Errorf("args = %s\nwant   %s", args, want)
				}
			}},
		{name: "prefix length netmask", props: with(boot, "ip", "192.168.1.5", "netmask", "/20", "gateway", "192.168.0.1"), check: func(t *testing.T, c *Config) {
			if ones, _ := c.Mask.Size(); ones != 20 {
				t.Errorf("mask = %v", c.Mask)
			}
		}},
		{name: "proxy", props: props("role", "proxy", "proxy_role", "target", "proxy_peer", "10.0.9.9:7000", "node_id", "p1", "join_address", "https://c:8443", "join_token", testToken),
			check: func(t *testing.T, c *Config) {
				args := strings.Join(c.RoleArgs(net.IPv4(10, 0, 2, 15)), " ")
				if args != "proxy --role target --node-id p1 --listen 10.0.2.15:8443 --admin-addr 10.0.2.15:9443 --ca /data/proxy/ca.pem --cert /data/proxy/cert.pem --key /data/proxy/key.pem --target-filter 10.0.9.9:7000" {
					t.Errorf("args = %s", args)
				}
			}},
		{name: "empty environment", props: map[string]string{}, bad: []string{"continuum.role", "continuum.node_id", "continuum.join_address", "continuum.join_token"}},
		{name: "unknown role", props: props("role", "filter", "node_id", "x"), bad: []string{"continuum.role"}},
		{name: "bad node id", props: with(boot, "node_id", "-x"), bad: []string{"continuum.node_id"}},
		{name: "node id from bad hostname", props: props("role", "coordinator", "hostname", "a_b", "bootstrap", "true"), bad: []string{"continuum.hostname"}},
		{name: "bad ip", props: with(boot, "ip", "10.0.0.300", "netmask", "24"), bad: []string{"continuum.ip"}},
		{name: "ipv6 static ip", props: with(boot, "ip", "fd00::1", "netmask", "64"), bad: []string{"continuum.ip", "continuum.netmask"}},
		{name: "static ip without netmask", props: with(boot, "ip", "10.0.0.5"), bad: []string{"continuum.netmask"}},
		{name: "non-contiguous netmask", props: with(boot, "ip", "10.0.0.5", "netmask", "255.0.255.0"), bad: []string{"continuum.netmask"}},
		{name: "gateway outside subnet", props: with(boot, "ip", "10.0.0.5", "netmask", "24", "gateway", "10.0.1.1"), bad: []string{"continuum.gateway"}},
		{name: "bad dns", props: with(boot, "ip", "10.0.0.5", "netmask", "24", "dns", "10.0.0.2,dns.example"), bad: []string{"continuum.dns"}},
		{name: "bad ntp", props: with(boot, "ntp", "ok.example,bad_name!"), bad: []string{"continuum.ntp"}},
		{name: "bad bootstrap", props: with(boot, "bootstrap", "yes please"), bad: []string{"continuum.bootstrap", "continuum.join_address", "continuum.join_token"}},
		{name: "bootstrap and join", props: with(boot, "join_address", "https://a:1"), bad: []string{"continuum.join_address"}},
		{name: "join without token", props: props("role", "coordinator", "node_id", "c2", "join_address", "https://10.0.0.1:8443"), bad: []string{"continuum.join_token"}},
		{name: "malformed join token", props: props("role", "coordinator", "node_id", "c2", "join_address", "https://10.0.0.1:8443", "join_token", "abc.def"), bad: []string{"continuum.join_token"}},
		{name: "join address not https", props: props("role", "coordinator", "node_id", "c2", "join_address", "http://10.0.0.1:8443", "join_token", testToken), bad: []string{"continuum.join_address"}},
		{name: "join address without port", props: props("role", "coordinator", "node_id", "c2", "join_address", "https://10.0.0.1", "join_token", testToken), bad: []string{"continuum.join_address"}},
		{name: "bad ports", props: with(boot, "api_port", "0", "raft_port", "70000"), bad: []string{"continuum.api_port", "continuum.raft_port"}},
		{name: "same ports", props: with(boot, "api_port", "9000", "raft_port", "9000"), bad: []string{"continuum.raft_port"}},
		{name: "source proxy", props: props("role", "proxy", "proxy_role", "source", "proxy_peer", "tp.example:7000", "node_id", "p2", "join_address", "https://c:8443", "join_token", testToken),
			check: func(t *testing.T, c *Config) {
				if args := strings.Join(c.RoleArgs(net.IPv4(10, 0, 2, 15)), " "); !strings.HasSuffix(args, "--target tp.example:7000 --spill-dir /data/proxy/spill") {
					t.Errorf("args = %s", args)
				}
			}},
		{name: "proxy without peer", props: props("role", "proxy", "proxy_role", "source", "node_id", "p", "join_address", "https://c:8443", "join_token", testToken), bad: []string{"continuum.proxy_peer"}},
		{name: "proxy peer without port", props: props("role", "proxy", "proxy_role", "source", "proxy_peer", "tp:x", "node_id", "p", "join_address", "https://c:8443", "join_token", testToken), bad: []string{"continuum.proxy_peer"}},
		{name: "proxy cannot bootstrap", props: props("role", "proxy", "node_id", "p", "proxy_role", "both", "bootstrap", "true"), bad: []string{"continuum.proxy_role", "continuum.proxy_peer", "continuum.bootstrap", "continuum.join_address", "continuum.join_token"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig(tc.props)
			if tc.bad == nil {
				if err != nil {
					t.Fatal(err)
				}
				tc.check(t, c)
				return
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want *ConfigError", err)
			}
			var got []string
			for _, p := range ce.Problems {
				got = append(got, p.Key)
			}
			if strings.Join(got, ",") != strings.Join(tc.bad, ",") {
				t.Fatalf("wrong properties = %v, want %v (%v)", got, tc.bad, err)
			}
			if c != nil {
				t.Fatal("config returned with an error")
			}
		})
	}
}

func TestConfigErrorNeverShowsToken(t *testing.T) {
	_, err := ParseConfig(props("role", "coordinator", "node_id", "c", "join_address", "ftp://x", "join_token", "s3cret.s3cret"))
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("err = %v", err)
	}
}
