"""Entry point of the ``accel`` plugin (group ``torchopt.plugins``)."""

from torchopt.plugins import PluginInfo

plugin = PluginInfo(name='accel', module='torchopt_accel')
