# twistd -ny tac/edge.tac
# The same service tree as `twistd relay-edge`; the configuration file comes
# from $RELAY_CONFIG, or etc/edge.toml.

from relay.tac import application_for

application = application_for("edge")
