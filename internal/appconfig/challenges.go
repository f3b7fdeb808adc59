package appconfig

import (
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/acmekit/caddy-acme/internal/placeholder"
)

// checkChallenges checks challenges, wildcard_certificates and profile:
// what can be checked without loading the DNS provider module.
func (c *Config) checkChallenges() error {
	ch := c.Challenges
	if ch != nil {
		if ch.HTTP != nil {
			p := ch.HTTP.AlternatePort
			if p < 0 || p > 65535 {
				return fmt.Errorf("challenges.http.alternate_port: expected a port between 1 and 65535, got %d", p)
			}
			if p != 0 && c.HTTPPort != 0 && p != c.HTTPPort {
				return fmt.Errorf("challenges.http.alternate_port (%d) and http_port (%d) disagree: give the port once, as http_port", p, c.HTTPPort)
			}
		}
		if ch.TLSALPN != nil {
			if p := ch.TLSALPN.AlternatePort; p < 0 || p > 65535 {
				return fmt.Errorf("challenges.tls-alpn.alternate_port: expected a port between 1 and 65535, got %d", p)
			}
		}
		if d := ch.DNS; d != nil {
			if len(d.ProviderRaw) == 0 {
				return errors.New(`challenges.dns.provider: required: name the DNS provider module that writes the challenge records, e.g. {"name": "rfc2136", ...} (Caddyfile: dns <provider> ...); it must be compiled into Caddy`)
			}
			if d.TTL < 0 {
				return fmt.Errorf("challenges.dns.ttl: must not be negative, got %s", time.Duration(d.TTL))
			}
			if d.PropagationDelay < 0 {
				return fmt.Errorf("challenges.dns.propagation_delay: must not be negative, got %s", time.Duration(d.PropagationDelay))
			}
			if d.PropagationTimeout < -1 {
				return fmt.Errorf("challenges.dns.propagation_timeout: must be -1 (do not check propagation), 0 (the default, 2m) or positive, got %s", time.Duration(d.PropagationTimeout))
			}
		} else if !c.httpChallenge() && !c.tlsALPNChallenge() {
			return errors.New("challenges: every challenge is disabled: enable http or tls-alpn, or configure dns")
		}
	}
	if c.WildcardCertificates != nil && *c.WildcardCertificates && (ch == nil || ch.DNS == nil) {
		return errors.New("wildcard_certificates: needs challenges.dns: a CA validates a wildcard certificate with the DNS-01 challenge only")
	}
	return checkProfile("", c.Profile)
}

// checkProfile refuses a profile (of the CA whose fields are named with
// prefix) that cannot be a profile name: the CA's directory lists them;
// their syntax is not standardised beyond a short token.
func checkProfile(prefix, p string) error {
	if !validProfile(p) {
		return fmt.Errorf("%sprofile: %q is not a profile name: expected the name of one of the CA's profiles, e.g. shortlived", prefix, p)
	}
	return nil
}

// validProfile reports whether p is empty or a short token.
func validProfile(p string) bool {
	if len(p) > 64 {
		return false
	}
	for _, c := range []byte(p) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// httpChallenge reports whether HTTP-01 is enabled (without dns).
func (c *Config) httpChallenge() bool {
	return c.Challenges == nil || c.Challenges.HTTP == nil || !c.Challenges.HTTP.Disabled
}

// tlsALPNChallenge reports whether TLS-ALPN-01 is enabled (without dns):
// when tls-alpn is given and not disabled, or when HTTP-01 is disabled
// and tls-alpn is not.
func (c *Config) tlsALPNChallenge() bool {
	ch := c.Challenges
	if ch == nil {
		return false
	}
	if ch.TLSALPN != nil {
		return !ch.TLSALPN.Disabled
	}
	return !c.httpChallenge()
}

// challengeSettings fills in the challenge fields of s (the fields are
// checked).
func (c *Config) challengeSettings(s *Settings) error {
	s.HTTPChallenge = c.httpChallenge()
	s.TLSALPNChallenge = c.tlsALPNChallenge()
	s.Profile = c.Profile
	ch := c.Challenges
	if ch == nil {
		return nil
	}
	if ch.HTTP != nil && s.HTTPPort == 0 {
		s.HTTPPort = ch.HTTP.AlternatePort
	}
	if ch.TLSALPN != nil {
		s.TLSALPNPort = ch.TLSALPN.AlternatePort
	}
	s.BindHost = ch.BindHost
	s.NoDistributed = ch.Distributed != nil && !*ch.Distributed
	if ch.DNS != nil {
		dns := *ch.DNS
		var err error
		if dns.OverrideDomain, err = placeholder.Expand("challenges.dns.override_domain", dns.OverrideDomain); err != nil {
			return err
		}
		s.DNS = &dns
		s.HTTPChallenge, s.TLSALPNChallenge = false, false
		s.Wildcards = c.WildcardCertificates == nil || *c.WildcardCertificates
	}
	return nil
}

// LoadDNSProvider loads the DNS provider module of challenges.dns (it
// needs the Caddy context) into s.DNSSolver. It does nothing without
// challenges.dns.
func (c *Config) LoadDNSProvider(ctx caddy.Context, s *Settings, logger *zap.Logger) error {
	if s.DNS == nil {
		return nil
	}
	val, err := ctx.LoadModule(c.Challenges.DNS, "ProviderRaw")
	if err != nil {
		return fmt.Errorf("challenges.dns.provider: loading module: %w", err)
	}
	prov, ok := val.(certmagic.DNSProvider)
	if !ok {
		return fmt.Errorf("challenges.dns.provider: module %T cannot write DNS records (it is not a libdns provider)", val)
	}
	s.DNSSolver = &certmagic.DNS01Solver{
		DNSManager: certmagic.DNSManager{
			DNSProvider:        prov,
			TTL:                time.Duration(s.DNS.TTL),
			PropagationDelay:   time.Duration(s.DNS.PropagationDelay),
			PropagationTimeout: time.Duration(s.DNS.PropagationTimeout),
			Resolvers:          s.DNS.Resolvers,
			OverrideDomain:     s.DNS.OverrideDomain,
			Logger:             logger,
		},
	}
	return nil
}

// Wildcard is the runtime's Options.Wildcard: with wildcard certificates
// on, whether `*.parent` is an entry of domains; nil when they are off.
func (s *Settings) Wildcard() func(parent string) bool {
	if !s.Wildcards {
		return nil
	}
	return s.Matcher.HasWildcard
}
