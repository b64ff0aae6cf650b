# Consul server (3 or 5 of them, each on its own machine): /etc/consul.d/consul.hcl.
# Replace the addresses and the tokens; see docs/deploy.md.
datacenter       = "dc1"
data_dir         = "/opt/consul"
server           = true
bootstrap_expect = 3
# This machine's address on the cluster network, and the API on loopback only.
bind_addr   = "10.0.0.11"
client_addr = "127.0.0.1"
retry_join  = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
ui_config { enabled = true }

# Production timing (raft_multiplier 1 is what Consul recommends for production servers).
performance { raft_multiplier = 1 }

acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
}

# Encrypt gossip: `consul keygen` once, the same key on every agent.
encrypt = "REPLACE-WITH-consul-keygen-OUTPUT"
