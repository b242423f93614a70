package appliance

import (
	"strings"
	"testing"
)

func TestParseJoinToken(t *testing.T) {
	fp := strings.Repeat("ab", 32)
	if got, sec, err := parseJoinToken(" " + fp + ".s3cret\n"); err != nil || got != fp || sec != "s3cret" {
		t.Fatalf("good token: %q %q %v", got, sec, err)
	}
	for _, bad := range []string{"", "nodot", fp + ".", "abcd.secret", strings.Repeat("zz", 32) + ".s"} {
		if _, _, err := parseJoinToken(bad); err == nil {
			t.Errorf("token %q accepted", bad)
		}
	}
	if tokenSecret(fp+".s3cret") != "s3cret" || tokenSecret("plain") != "plain" {
		t.Fatal("tokenSecret")
	}
}

func TestIsLocalHost(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "::1": true, "localhost": true, "myhost": true,
		"192.0.2.1": false, "otherhost": false,
	} {
		if got := isLocalHost(host, "myhost"); got != want {
			t.Errorf("isLocalHost(%q) = %v", host, got)
		}
	}
}
