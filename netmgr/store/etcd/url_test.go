package etcd

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

func TestParseURL(t *testing.T) {
	for _, c := range []struct {
		url  string
		want Options
	}{
		{"etcd://198.18.0.1:2379", Options{Endpoints: []string{"198.18.0.1:2379"}}},
		{"etcd://a:2379,b.example:32379/", Options{Endpoints: []string{"a:2379", "b.example:32379"}}},
		{"etcd://[fd00::1]:2379?prefix=/cluster-b", Options{Endpoints: []string{"[fd00::1]:2379"}, Prefix: "/cluster-b"}},
		{"etcd://h:1?cacert=/ca.pem&cert=/c.pem&key=/k.pem&dial-timeout=2s&timeout=10s",
			Options{Endpoints: []string{"h:1"}, CACert: "/ca.pem", Cert: "/c.pem", Key: "/k.pem", DialTimeout: 2 * time.Second, RequestTimeout: 10 * time.Second}},
		{"etcd://h:1?cacert=/ca.pem", Options{Endpoints: []string{"h:1"}, CACert: "/ca.pem"}},
	} {
		got, err := ParseURL(c.url)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", c.url, got, err, c.want)
		}
	}
	for _, bad := range []string{
		"", "etcd://", "http://h:2379", "etcd:/h:2379", "etcd://h", "etcd://h:", "etcd://:2379", "etcd://h:0",
		"etcd://h:65536", "etcd://h:x", "etcd://h:1,", "etcd://h:1?prefix=", "etcd://h:1?cert=/c.pem",
		"etcd://h:1?timeout=0s", "etcd://h:1?timeout=5", "etcd://h:1?tls=1", "etcd://h:1?prefix=/a&prefix=/b",
		"etcd://user@h:1", "etcd://h:1?%zz",
	} {
		_, err := ParseURL(bad)
		if !errors.Is(err, store.ErrInvalid) || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseURL(%q): %v, want one line wrapping ErrInvalid", bad, err)
		}
	}
	if _, err := Open(context.Background(), "etcd://h"); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("Open of a bad URL: %v", err)
	}
	if !IsURL("etcd://h:1") || IsURL("/var/lib/netmgr/state.db") {
		t.Error("IsURL")
	}
}
