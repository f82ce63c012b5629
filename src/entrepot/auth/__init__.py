"""Access control: who the client is (htpasswd, external or built-in tokens) and what it
may do (Docker token-spec scopes, access rules)."""
