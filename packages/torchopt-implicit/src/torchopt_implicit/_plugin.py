"""Entry point of the ``implicit`` plugin (group ``torchopt.plugins``).

Core loads this object on first use of a path the plugin serves; it names the module to import.
"""

from torchopt.plugins import PluginInfo

plugin = PluginInfo(name='implicit', module='torchopt_implicit')
