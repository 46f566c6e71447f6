package etcd

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/netmgr/netmgr/netmgr/store"
)

// Scheme is the scheme of a store URL for etcd.
const Scheme = "etcd://"

// ParseURL reads a store URL (podctl's --store) into Options:
//
//	etcd://HOST:PORT[,HOST:PORT...][?prefix=/x&cacert=FILE&cert=FILE&key=FILE&dial-timeout=5s&timeout=5s]
//
// HOST is a name, an IPv4 address or a bracketed IPv6 address; the port is required. prefix is the
// key prefix (default DefaultPrefix, "/netmgr/"): two clusters sharing one etcd use two prefixes.
// cacert turns TLS on, with the CAs of that PEM file; cert and key are a client certificate for an
// etcd that requires one. dial-timeout bounds the first check that etcd answers, timeout each call
// (both Go durations, default 5s). Paths are taken as they are (make them absolute). Anything else
// is a one-line error wrapping store.ErrInvalid.
func ParseURL(u string) (Options, error) {
	var o Options
	bad := func(format string, a ...any) (Options, error) {
		return Options{}, fmt.Errorf("%w: store URL %q: %s", store.ErrInvalid, u, fmt.Sprintf(format, a...))
	}
	rest, ok := strings.CutPrefix(u, Scheme)
	if !ok {
		return bad("want etcd://HOST:PORT[,HOST:PORT...][?prefix=/x&cacert=FILE&cert=FILE&key=FILE]")
	}
	hosts, query, _ := strings.Cut(rest, "?")
	hosts = strings.TrimSuffix(hosts, "/")
	if hosts == "" {
		return bad("no HOST:PORT")
	}
	for _, hp := range strings.Split(hosts, ",") {
		host, port, err := net.SplitHostPort(hp)
		if err != nil || host == "" || strings.ContainsAny(host, "/@ ") {
			return bad("%q is not HOST:PORT", hp)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return bad("%q: port %q is not a number from 1 to 65535", hp, port)
		}
		o.Endpoints = append(o.Endpoints, hp)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return bad("query: %v", err)
	}
	for k, vs := range q {
		if len(vs) != 1 {
			return bad("%s given %d times", k, len(vs))
		}
		v := vs[0]
		switch k {
		case "prefix":
			if v == "" {
				return bad("empty prefix")
			}
			o.Prefix = v
		case "cacert":
			o.CACert = v
		case "cert":
			o.Cert = v
		case "key":
			o.Key = v
		case "dial-timeout", "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return bad("%s=%q is not a positive duration such as 5s", k, v)
			}
			if k == "timeout" {
				o.RequestTimeout = d
			} else {
				o.DialTimeout = d
			}
		default:
			return bad("unknown option %q (known: prefix, cacert, cert, key, dial-timeout, timeout)", k)
		}
	}
	if (o.Cert == "") != (o.Key == "") {
		return bad("cert and key go together")
	}
	return o, nil
}

// IsURL tells whether s is meant as an etcd store URL (it starts with etcd://).
func IsURL(s string) bool { return strings.HasPrefix(s, Scheme) }

// Open parses an etcd:// store URL (see ParseURL) and connects, as New.
func Open(ctx context.Context, u string) (*Store, error) {
	o, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	return New(ctx, o)
}
