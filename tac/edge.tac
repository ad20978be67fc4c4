# twistd -ny tac/edge.tac
# The same service tree as `twistd relay-edge`; the configuration file comes
# from $RELAY_CONFIG, or etc/edge.toml.
from twisted.application.service import Application

from relay.tac import application_for

application: Application = application_for("edge")
