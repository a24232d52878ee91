"""Entry point of the ``accel`` plugin (group ``torchopt.plugins``)."""

from torchopt.plugins import PluginInfo

__all__ = ['plugin']

plugin = PluginInfo(name='accel', module='torchopt_accel')
