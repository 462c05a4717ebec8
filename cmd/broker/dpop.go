package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/mobile-token-broker/broker/broker"
)

// dpopMode is BROKER_DPOP: optional or required.
type dpopMode string

func (m *dpopMode) UnmarshalText(b []byte) error {
	switch v := strings.TrimSpace(string(b)); v {
	case broker.DPoPOptional, broker.DPoPRequired:
		*m = dpopMode(v)
		return nil
	}
	return fmt.Errorf("must be %s or %s", broker.DPoPOptional, broker.DPoPRequired)
}

// dpopAlgorithms is BROKER_DPOP_ALGORITHMS: comma-separated JWS algorithms
// of DPoP proofs, asymmetric ones only.
type dpopAlgorithms []string

func (a *dpopAlgorithms) UnmarshalText(b []byte) error {
	var out []string
	var problems []error
	for i, name := range strings.Split(string(b), ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if !broker.ValidDPoPAlgorithm(name) {
			problems = append(problems, fmt.Errorf("entry %d is not one of ES256, ES384, ES512, PS256, PS384, PS512, RS256, RS384, RS512, EdDSA (never none or an HMAC)", i+1))
			continue
		}
		out = append(out, name)
	}
	if err := errors.Join(problems...); err != nil {
		return err
	}
	if len(out) == 0 {
		return errors.New("no algorithm given")
	}
	*a = out
	return nil
}
