# twistd -ny tac/cloud.tac
# The same service tree as `twistd relay-cloud`; the configuration file comes
# from $RELAY_CONFIG, or etc/cloud.toml.
from twisted.application.service import Application

from relay.tac import application_for

application: Application = application_for("cloud")
