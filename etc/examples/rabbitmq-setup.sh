#!/usr/bin/env bash
# Set up RabbitMQ for relay: a vhost, the cloud's user, and one user per edge
# whose permissions cover only its own queue and the cloud's inbox.
#
#   rabbitmq-setup.sh CLOUD_PASSWORD EDGE_ID:EDGE_PASSWORD [EDGE_ID:EDGE_PASSWORD ...]
#
# Topology (declared by relay itself on every connect): for each destination
# D in relay.to-cloud, relay.jobs and relay.to-edge.<edge-id> there is a
# durable quorum queue D, a direct exchange D and a binding D -> D. Messages
# are published to the exchange D. Publishing through an exchange of its own
# (rather than the default exchange, which reaches every queue) is what lets
# a broker permission limit where an edge may write.
#
# Start relay-cloud once before the edges: it declares relay.to-cloud, which
# an edge's user may write to but not declare (or delete).
set -euo pipefail

VHOST=${RELAY_VHOST:-relay}
[ $# -ge 2 ] || { sed -n '2,8p' "$0"; exit 2; }
cloud_password=$1; shift

rabbitmqctl add_vhost "$VHOST" 2>/dev/null || true
# Quorum queues by default in this vhost, so nothing relay declares is classic.
rabbitmqctl set_vhost_metadata "$VHOST" --default-queue-type quorum 2>/dev/null || true

rabbitmqctl add_user relay-cloud "$cloud_password" 2>/dev/null \
  || rabbitmqctl change_password relay-cloud "$cloud_password"
#                                       configure      write          read
rabbitmqctl set_permissions -p "$VHOST" relay-cloud '^relay\.' '^relay\.' '^relay\.'

for pair in "$@"; do
  edge=${pair%%:*}; password=${pair#*:}
  [[ $edge =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]] || { echo "bad edge id: $edge" >&2; exit 2; }
  own="relay\\.to-edge\\.${edge}"
  rabbitmqctl add_user "edge-$edge" "$password" 2>/dev/null \
    || rabbitmqctl change_password "edge-$edge" "$password"
  # configure: only its own queue/exchange (declare, bind);
  # write: the cloud's inbox exchange, and its own queue (needed to bind it);
  # read: only its own queue and exchange.
  rabbitmqctl set_permissions -p "$VHOST" "edge-$edge" \
    "^${own}\$" "^(relay\\.to-cloud|${own})\$" "^${own}\$"
  echo "edge $edge: amqps://edge-$edge:<password>@<broker>:5671/$VHOST"
done
