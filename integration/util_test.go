package integration

import (
	"encoding/json"
	"strings"
)

func containsJSONEmptyList(doc, field string) bool {
	var m map[string]any
	if err := json.Unmarshal([]byte(doc), &m); err != nil {
		return false
	}
	l, ok := m[field].([]any)
	return ok && len(l) == 0
}

func containsString(s, sub string) bool { return strings.Contains(s, sub) }
