# Consul client agent of a machine that runs an ec-node (or a gateway): /etc/consul.d/consul.hcl.
# The node registers its service and HTTP check with this agent on 127.0.0.1:8500; the agent
# runs the check and gossips, so when the machine dies, Serf marks it failed and every
# service on it critical within seconds.
datacenter  = "dc1"
data_dir    = "/opt/consul"
server      = false
bind_addr   = "10.0.0.21"
client_addr = "127.0.0.1"
retry_join  = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
# A client agent that is stopped (SIGTERM) leaves the cluster instead of being failed.
leave_on_terminate = true

acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
  # The agent token lets the agent register itself and sync the node's services.
  tokens { agent = "REPLACE-WITH-AGENT-TOKEN" }
}

encrypt = "REPLACE-WITH-consul-keygen-OUTPUT"
