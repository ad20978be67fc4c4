# twistd -ny tac/cloud.tac
# The same service tree as `twistd relay-cloud`; the configuration file comes
# from $RELAY_CONFIG, or etc/cloud.toml.

from relay.tac import application_for

application = application_for("cloud")
